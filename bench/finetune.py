"""Fine-tuning vs training from scratch, on audio the source never heard (issue 17's goals), CPU, tiny preset.

1. Source: the demo model (`lyracodec_train --demo`, 600 steps on the synthetic demo corpus, a quarter of it mono),
   logged every step: its largest loss spike (loss / median of the 50 steps before) is the mono-material spike figure.
2. Target domain: `make_bells_corpus` (mono FM bells, electric pianos, whistles): a training folder and a held-out
   folder of other seeds, neither seen by the source.
3. Equal step budget on the target domain, the demo recipe for all: from scratch; fine-tuned from the source
   (`--init`); fine-tuned with `model.freeze=encoder`.
4. Held-out figures of every model (source, scratch, fine-tunes) on the held-out folder: mel distance, MR-STFT,
   SI-SDR (`lyracodec.metrics`, whole files, latents = posterior mean); and the frozen fine-tune's latents vs the
   source's (max |difference|, must be 0.0).
5. Step cost, `freeze: encoder` vs full: median time of a training step (forward, backward, AdamW) and the peak
   resident memory of a process doing only that, each in its own process, alternating.

    PYTHONPATH=$PWD .venv/bin/python bench/finetune.py [--steps 300] [--source RUN] [--out DIR]
"""
import argparse, os, re, statistics, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN = [sys.executable, '-c', 'import sys; from lyracodec.trainer import main; sys.exit(main())']
STEP_LINE = re.compile(r'step\s+(\d+)\s+loss\s+([0-9.eE+-]+|nan|inf)')

def run(cmd: list, log: Path) -> float:
    "Run a command, its output into `log`; seconds taken. Fails loudly."
    t = time.perf_counter()
    with open(log, 'w') as f: rc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, 'PYTHONPATH': str(ROOT)}).returncode
    if rc != 0: sys.exit(f'{" ".join(map(str, cmd))} failed (exit {rc}); see {log}')
    return time.perf_counter() - t

def losses(log: Path) -> list:
    "The per-step training losses a run printed (logging.every=1)."
    return [float(m.group(2)) for m in STEP_LINE.finditer(log.read_text(errors='replace'))]

def largest_spike(xs: list, window: int=50) -> tuple:
    "(largest loss / median of the `window` losses before it, at which index) over the run."
    best = (0.0, -1)
    for i in range(window, len(xs)):
        r = xs[i] / statistics.median(xs[i - window:i])
        if r > best[0]: best = (r, i)
    return best

def train(out: Path, data, steps: int, init: list, sets: list, log: Path) -> float:
    "A demo-recipe run of `steps` steps, every loss printed: on the demo corpus (`data` None) or on `data`."
    sets = ['logging.every=1', f'checkpoint.every={steps}', f'logging.valid_every={steps}',
            f'logging.audio_every={steps}', f'run.max_steps={steps}', *sets]
    where = ['--demo'] if data is None else ['demo', str(data)]
    return run(TRAIN + where + ['--out', str(out), *init] + [a for kv in sets for a in ('--set', kv)], log)

def heldout(model_dir: Path, folder: Path) -> dict:
    "Held-out figures of a model folder on every file of `folder` (whole files, mono shown on both channels)."
    import torch
    from lyracodec.vae import VAE
    from lyracodec.audio import load_audio
    from lyracodec.metrics import mel_distance, mrstft_distance, si_sdr
    m = VAE.from_pretrained(model_dir).eval()
    rows, zs = [], []
    with torch.inference_mode():
        for f in sorted(folder.glob('*.wav')):
            x = load_audio(f, m.sample_rate)  # [2, T]
            n = x.shape[-1] // m.hop_length * m.hop_length
            x = x[None, :, :n]
            z = m.encode(x); y = m.decode(z)[..., :n]
            zs.append(z)
            rows.append((mel_distance(x, y).item(), mrstft_distance(x, y).item(), si_sdr(x, y).mean().item()))
    return {'mel': statistics.mean(r[0] for r in rows), 'mrstft': statistics.mean(r[1] for r in rows),
            'si_sdr': statistics.mean(r[2] for r in rows), 'latents': zs}

STEP_COST = r'''
import resource, statistics, sys, time, torch
from lyracodec.vae import VAE, VAEConfig
from lyracodec.losses import LossConfig, ReconstructionLoss
from lyracodec.finetune import freeze
torch.set_num_threads(1); torch.manual_seed(0)
frozen, batch, length, steps = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
m = VAE(VAEConfig.preset('tiny')).train()
freeze(m, frozen)
opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=1e-4)
crit = ReconstructionLoss(LossConfig(recipe='spectral'))
x = 0.1 * torch.randn(batch, 2, length)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
times = []
for i in range(steps):
    t = time.perf_counter()
    mu, logvar, z, y = m(x)
    loss, _ = crit(x, y, mu, logvar, 0, m.kl)
    loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
    times.append(time.perf_counter() - t)
print(statistics.median(times[2:]), base, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
'''

def step_cost(rounds: int=3, batch: int=4, length: int=65536, steps: int=8) -> dict:
    "Median step time and peak RSS increase (MiB) of `freeze: none` vs `encoder`, alternating processes."
    out = {'none': [], 'encoder': []}
    for _ in range(rounds):
        for kind in out:
            r = subprocess.run([sys.executable, '-c', STEP_COST, kind, str(batch), str(length), str(steps)],
                               capture_output=True, text=True, env={**os.environ, 'PYTHONPATH': str(ROOT)})
            if r.returncode != 0: sys.exit(r.stderr)
            t, base, peak = map(float, r.stdout.split()[-3:])
            out[kind].append((t, peak / 1024, (peak - base) / 1024))
    return {k: tuple(statistics.median(v[i] for v in rows) for i in range(3)) for k, rows in out.items()}

def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--steps', type=int, default=300, help='training steps of each target-domain run')
    p.add_argument('--source', help='a finished `--demo` run folder to start from (default: train one)')
    p.add_argument('--out', help='work folder (default: a new temp folder)')
    p.add_argument('--source-steps', type=int, default=600, help='steps of the demo run that makes the source')
    p.add_argument('--minutes', type=float, default=3.0, help='minutes of target-domain training audio')
    a = p.parse_args()
    sys.path.insert(0, str(ROOT))
    from lyracodec.demo_corpus import make_bells_corpus
    out = Path(a.out or tempfile.mkdtemp(prefix='lyra_ft_bench_')); out.mkdir(parents=True, exist_ok=True)
    print(f'work folder {out}; load {os.getloadavg()[0]:.1f}', flush=True)
    t_source = None
    if a.source: source = Path(a.source)
    else:
        source = out / 'source'
        t_source = train(source, None, a.source_steps, [], [], out / 'source.log')
        r, i = largest_spike(losses(out / 'source.log'))
        print(f'source (demo, {a.source_steps} steps, {t_source:.0f} s): largest loss spike {r:.2f}x the running median (step {i + 1})', flush=True)
    data, test = out / 'bells_train', out / 'bells_test'
    if not data.exists(): make_bells_corpus(data, a.minutes, seed=1)
    if not test.exists(): make_bells_corpus(test, 0.5, seed=2)
    init = ['--init', str(source)]
    runs = {'scratch': ([], []), 'finetune': (init, []), 'finetune, freeze encoder': (init, ['model.freeze=encoder'])}
    results, spikes = {'source': heldout(source / 'best', test)}, {}
    for name, (init_, sets) in runs.items():
        d = out / name.replace(', ', '_').replace(' ', '_')
        secs = train(d, data, a.steps, init_, sets, out / f'{d.name}.log')
        spikes[name] = largest_spike(losses(out / f'{d.name}.log'))
        results[name] = heldout(d / 'best', test)
        print(f'{name}: {a.steps} steps in {secs:.0f} s; largest spike {spikes[name][0]:.2f}x; held-out mel '
              f'{results[name]["mel"]:.4f}', flush=True)
    print(f'\nHeld-out target-domain audio ({len(results["source"]["latents"])} files, {test.name}); '
          f'{a.steps} steps each, tiny preset, 1 thread')
    print(f'{"model":26s} {"mel":>8s} {"MR-STFT":>8s} {"SI-SDR dB":>9s}')
    for name, r in results.items(): print(f'{name:26s} {r["mel"]:8.4f} {r["mrstft"]:8.4f} {r["si_sdr"]:9.2f}')
    s, f = results['scratch']['mel'], results['finetune']['mel']
    fz = results['finetune, freeze encoder']['mel']
    print(f'fine-tune vs scratch: mel {100 * (1 - f / s):.1f} % lower (freeze encoder: {100 * (1 - fz / s):.1f} %); '
          f'vs the source: {100 * (1 - f / results["source"]["mel"]):.1f} % lower')
    diff = max((a_ - b_).abs().max().item() for a_, b_ in zip(results['source']['latents'], results['finetune, freeze encoder']['latents']))
    print(f'freeze encoder: max |latent difference| source vs fine-tuned over the held-out files = {diff}')
    c = step_cost()
    (tn, rn, dn), (te, re_, de) = c['none'], c['encoder']
    print(f'step cost (batch 4 x 65536, 1 thread, medians of 3 processes): full {tn:.3f} s, peak RSS {rn:.0f} MiB '
          f'(+{dn:.0f}); freeze encoder {te:.3f} s, {re_:.0f} MiB (+{de:.0f}): time ratio {te / tn:.2f}, '
          f'peak ratio {re_ / rn:.2f}, increase ratio {de / dn:.2f}')
    print(f'load at the end {os.getloadavg()[0]:.1f}')

if __name__ == '__main__':
    main()
