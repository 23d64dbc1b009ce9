"""Recipe comparison at an equal CPU budget: which loss recipe gives the best held-out reconstructions?

Trains `VAE(VAEConfig.preset('tiny'))` once per recipe (`seed`: MSE + KL, `spectral`: STFT + mel + KL,
`adversarial`: spectral + GAN) from the same initial weights on the same batches, with a plain AdamW loop, until
each run has used the same *process CPU time* (`time.process_time`, evaluation excluded). A CPU-time budget rather
than a wall-clock one keeps the comparison fair on a machine shared with other jobs; each worker runs with
`torch.set_num_threads(--threads)` (1 by default) and the recipes run concurrently as separate processes
(`--sequential` to run them one after another). Held-out clips are encoded deterministically (z = mean) and the
figures printed are: multi-resolution STFT distance, multi-scale mel distance (both lower is better) and SI-SDR
(dB, higher is better), at step 0 and at the end.

Data: the demo corpus (`lyracodec.dataset.make_demo_corpus` + `VocalDataset`) when that module exists; otherwise
synthetic sung vowels generated here (glottal harmonics with vibrato through moving formants, breath noise, a stereo
image), training and held-out clips from different seeds. Metrics: `lyracodec.metrics` when it exists; otherwise
the same definitions computed here (auraloss MR-STFT 2048..32 hop fft/4, DAC-scale log10-mel L1, SI-SDR). The
output says which were used.

    PYTHONPATH=$PWD python bench/recipes.py --budget 240 --recipes seed,spectral,adversarial
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

SR = 44100
CROP = 32768        # training crop (16 latent frames)
EVAL_LEN = 65536    # held-out clip (1.49 s, 32 latent frames)

# ---------------------------------------------------------------- data
VOWELS = {  # formant frequencies (Hz) and bandwidths of sung vowels
    'a': (800, 1150, 2900), 'e': (400, 1600, 2700), 'i': (350, 1700, 2700), 'o': (450, 800, 2830), 'u': (325, 700, 2530)}

def synth_voice(seconds: float, seed: int) -> torch.Tensor:
    "One synthetic sung phrase `[2, T]`: harmonics of a vibrato f0 through moving formants, breath noise, stereo image."
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.rand(*s, generator=g)
    T = int(seconds * SR)
    t = torch.arange(T) / SR
    # notes: a new pitch and vowel every 0.15..0.5 s
    n_notes = max(1, int(seconds / 0.15))
    lens = 0.15 + 0.35 * rnd(n_notes)
    bounds = (torch.cumsum(lens, 0) / lens.sum() * T).long()
    idx = torch.bucketize(torch.arange(T), bounds, right=True).clamp_max(n_notes - 1)  # note index per sample
    base = 110 + 220 * rnd(1)
    semis = torch.randint(-5, 8, (n_notes,), generator=g).float()
    f0_note = base * 2 ** (semis / 12)
    k = torch.ones(401) / 401  # smooth glides between notes
    f0 = torch.nn.functional.conv1d(f0_note[idx][None, None], k[None, None], padding=200)[0, 0]
    f0 = f0 * (1 + 0.015 * torch.sin(2 * math.pi * (4.5 + rnd(1)) * t))  # vibrato
    phase = 2 * math.pi * torch.cumsum(f0, 0) / SR
    names = list(VOWELS)
    vow = torch.tensor([VOWELS[names[i]] for i in torch.randint(0, 5, (n_notes,), generator=g)], dtype=torch.float32)
    formants = torch.nn.functional.conv1d(vow[idx].T[:, None], k[None, None], padding=200)[:, 0]  # [3, T]
    voiced = torch.zeros(T)
    for h in range(1, 41):
        fh = h * f0
        amp = sum(g_ / (1 + ((fh - formants[i]) / (60 + 40 * i)) ** 2) for i, g_ in enumerate((1.0, 0.6, 0.3)))
        amp = amp * (fh < SR / 2 - 1000) / h ** 0.6
        voiced += amp * torch.sin(h * phase)
    env_note = torch.sin(math.pi * ((torch.arange(T) - torch.cat([torch.zeros(1), bounds[:-1].float()])[idx]) /
                                    (bounds - torch.cat([torch.zeros(1), bounds[:-1].float()]))[idx]).clamp(0, 1)).clamp_min(0) ** 0.5
    breath = torch.randn(T, generator=g) * 0.02
    mono = voiced * env_note + breath * env_note
    pan = 0.3 + 0.4 * rnd(1)
    delay = int(rnd(1).item() * 20)
    left, right = mono * (1 - pan), torch.roll(mono, delay) * pan
    x = torch.stack([left, right])
    return 0.95 * x / x.abs().max()

def synthetic_data(n_train: int=16, n_valid: int=8) -> tuple:
    "Training clips (3 s each) and held-out clips (`EVAL_LEN` samples), from disjoint seeds."
    train = torch.stack([synth_voice(3.0, 1000 + i) for i in range(n_train)])  # [N, 2, 3*SR]
    valid = torch.stack([synth_voice(EVAL_LEN / SR + 0.01, 2000 + i)[:, :EVAL_LEN] for i in range(n_valid)])
    return train, valid

def corpus_data(cache: Path, epochs: int=2) -> tuple:
    "Training crops (`epochs` passes of `VocalDataset`, 2·CROP samples each) and held-out crops (valid split)."
    from lyracodec.dataset import make_demo_corpus, VocalDataset
    root = make_demo_corpus(cache / 'corpus')
    train = VocalDataset(root, target_length=2 * CROP, split='train', seed=0)
    crops = []
    for e in range(epochs):
        train.set_epoch(e)
        crops += [train[i] for i in range(len(train))]
    valid = VocalDataset(root, target_length=EVAL_LEN, split='valid')
    return torch.stack(crops), torch.stack([valid[i] for i in range(min(len(valid), 12))])

def load_data(cache: Path) -> tuple:
    """(train, valid, source): crops of the demo corpus if `lyracodec.dataset` exists, else synthetic clips.
    Built once and cached in `cache`, so that reading and decoding audio is outside every run's CPU budget."""
    try:
        import lyracodec.dataset  # noqa: F401
        kind, build = 'corpus', corpus_data
    except ImportError:
        kind, build = 'synthetic', lambda c: synthetic_data()
    f = cache / f'bench_{kind}.pt'
    if f.is_file(): tr, va = torch.load(f, weights_only=True)
    else:
        tr, va = build(cache)
        cache.mkdir(parents=True, exist_ok=True)
        tmp = f.with_suffix('.tmp'); torch.save((tr, va), tmp); os.replace(tmp, f)
    if kind == 'corpus':
        return tr, va, (f'demo corpus (make_demo_corpus, 2 min, seed 0): {len(tr)} training crops of {tr.shape[-1]} '
                        f'samples (VocalDataset train split, 2 epochs), {len(va)} held-out crops of {EVAL_LEN} (valid split)')
    return tr, va, f'synthetic sung vowels generated in the bench ({len(tr)} x 3 s train, {len(va)} x {EVAL_LEN} held out)'

def batch_from(train: torch.Tensor, B: int, g: torch.Generator) -> torch.Tensor:
    "A batch `[B, 2, CROP]` of random crops of random clips `[N, 2, L]`."
    i = torch.randint(0, train.shape[0], (B,), generator=g)
    s = torch.randint(0, train.shape[-1] - CROP + 1, (B,), generator=g)
    return torch.stack([train[a, :, b:b + CROP] for a, b in zip(i.tolist(), s.tolist())])

# ---------------------------------------------------------------- metrics
def metric_fns() -> tuple:
    "(mrstft, mel, si_sdr, source): lyracodec.metrics when it exists, else local definitions."
    try:
        from lyracodec.metrics import mrstft_distance, mel_distance, si_sdr
        return mrstft_distance, lambda r, e: mel_distance(r, e, SR), si_sdr, 'lyracodec.metrics'
    except ImportError:
        pass
    import auraloss
    from lyracodec.losses import MultiScaleMelLoss
    ffts = [2048, 1024, 512, 256, 128, 64, 32]
    mr = auraloss.freq.MultiResolutionSTFTLoss(fft_sizes=ffts, hop_sizes=[n // 4 for n in ffts], win_lengths=ffts)
    mel = MultiScaleMelLoss(SR)
    def si_sdr(ref, est):  # [B, C, T] -> [B] dB, channels flattened, zero-mean
        r, e = ref.reshape(ref.shape[0], -1), est.reshape(est.shape[0], -1)
        r, e = r - r.mean(-1, keepdim=True), e - e.mean(-1, keepdim=True)
        a = (e * r).sum(-1, keepdim=True) / (r.pow(2).sum(-1, keepdim=True) + 1e-8)
        s = a * r
        return 10 * torch.log10(s.pow(2).sum(-1) / ((e - s).pow(2).sum(-1) + 1e-8) + 1e-8)
    return (lambda r, e: mr(e, r)), (lambda r, e: mel(r, e)), si_sdr, \
        'local (auraloss MR-STFT 2048..32 hop fft/4; 7-scale log10-mel L1; SI-SDR) - lyracodec.metrics not on this branch'

@torch.no_grad()
def evaluate(model, valid: torch.Tensor, fns) -> dict:
    "Held-out figures with deterministic encoding (z = posterior mean)."
    mr, mel, sisdr, _ = fns
    model.eval()
    recon = torch.cat([model.decode(model.encode(valid[i:i + 4]), valid.shape[-1]) for i in range(0, len(valid), 4)])
    model.train()
    return {'mrstft': float(mr(valid, recon)), 'mel': float(mel(valid, recon)),
            'si_sdr': float(sisdr(valid, recon).median())}

# ---------------------------------------------------------------- one run
def run(recipe: str, budget: float, threads: int, batch: int, lr: float, adv_frac: float, cache: Path, seed: int=0) -> dict:
    "Train one recipe until `budget` CPU seconds of training are spent; returns figures."
    torch.set_num_threads(threads)
    from lyracodec.vae import VAE, VAEConfig
    from lyracodec.losses import (LossConfig, ReconstructionLoss, MultiScaleSTFTDiscriminator, discriminator_loss,
                                  generator_adversarial_loss)
    train, valid, data_src = load_data(cache)
    fns = metric_fns()
    torch.manual_seed(seed)
    model = VAE(VAEConfig.preset('tiny'))
    cfg = LossConfig(recipe=recipe)
    crit = ReconstructionLoss(cfg, SR)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.8, 0.99), weight_decay=1e-3)
    disc = opt_d = None
    if cfg.uses_discriminator:
        disc = MultiScaleSTFTDiscriminator.from_config(cfg)
        opt_d = torch.optim.AdamW(disc.parameters(), lr=2 * lr, betas=(0.8, 0.99), weight_decay=1e-3)
    before = evaluate(model, valid, fns)
    g = torch.Generator().manual_seed(1 + 1000 * seed)  # seed 0 -> 1, seed 1 -> 1001
    used, step, t_wall, step_times, adv_from = 0.0, 0, time.time(), [], None
    last = {}
    while used < budget:
        t0 = time.process_time()
        x = batch_from(train, batch, g)
        mu, logvar, z, xr = model(x)
        loss, logs = crit(x, xr, mu, logvar, step, model.kl)
        if disc is not None and used >= adv_frac * budget:  # adversarial terms after a spectral warm-up
            adv_from = step if adv_from is None else adv_from
            opt_d.zero_grad(); d = discriminator_loss(disc, x, xr, cfg.gan_loss); d.backward(); opt_d.step()
            adv, fm = generator_adversarial_loss(disc, x, xr, cfg.gan_loss)
            loss = loss + cfg.adv_weight * adv + cfg.fm_weight * fm
            logs.update(disc=d.item(), adv=adv.item(), fm=fm.item())
        opt.zero_grad(); loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        dt = time.process_time() - t0
        used += dt; step += 1; step_times.append(dt); last = logs
    after = evaluate(model, valid, fns)
    step_times.sort()
    return {'recipe': recipe, 'steps': step, 'cpu_s': round(used, 1), 'wall_s': round(time.time() - t_wall, 1),
            'median_step_cpu_s': round(step_times[len(step_times) // 2], 3), 'adv_from_step': adv_from,
            'before': before, 'after': after, 'last_logs': last, 'data': data_src, 'metrics': fns[3],
            'threads': threads, 'batch': batch, 'lr': lr, 'seed': seed}

# ---------------------------------------------------------------- main
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--recipes', default='seed,spectral', help='comma-separated recipes')
    p.add_argument('--budget', type=float, default=180.0, help='training CPU seconds per recipe')
    p.add_argument('--threads', type=int, default=1, help='torch threads per run')
    p.add_argument('--batch', type=int, default=4)
    p.add_argument('--lr', type=float, default=1e-3)
    p.add_argument('--adv-frac', type=float, default=0.5, help="share of the budget before the discriminator starts")
    p.add_argument('--seed', type=int, default=0, help='initial weights and batch order (same for every recipe)')
    p.add_argument('--sequential', action='store_true', help='run recipes one after another instead of concurrently')
    p.add_argument('--cache', type=Path, default=Path(tempfile.gettempdir()) / 'lyracodec_bench_recipes')
    p.add_argument('--worker', help=argparse.SUPPRESS)
    p.add_argument('--out', type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.worker:
        res = run(a.worker, a.budget, a.threads, a.batch, a.lr, a.adv_frac, a.cache, a.seed)
        a.out.write_text(json.dumps(res))
        return 0
    recipes = [r.strip() for r in a.recipes.split(',') if r.strip()]
    load_data(a.cache)  # build the data once, before the workers start
    tmp = Path(tempfile.mkdtemp(prefix='recipes_'))
    base = [sys.executable, __file__, '--budget', str(a.budget), '--threads', str(a.threads), '--batch', str(a.batch),
            '--lr', str(a.lr), '--adv-frac', str(a.adv_frac), '--cache', str(a.cache), '--seed', str(a.seed)]
    cmds = [base + ['--worker', r, '--out', str(tmp / f'{r}.json')] for r in recipes]
    print(f"{len(recipes)} recipe(s), {a.budget:.0f} CPU s each, {a.threads} thread(s) each, "
          f"{'sequential' if a.sequential else 'concurrent'}, seed {a.seed}; load average at start {os.getloadavg()}", flush=True)
    t0 = time.time()
    if a.sequential:
        codes = [subprocess.call(c) for c in cmds]
    else:
        procs = [subprocess.Popen(c) for c in cmds]
        codes = [pr.wait() for pr in procs]
    if any(codes):
        print(f'a worker failed: exit codes {dict(zip(recipes, codes))}', file=sys.stderr)
        return 1
    res = [json.loads((tmp / f'{r}.json').read_text()) for r in recipes]
    print(f'wall {time.time() - t0:.0f} s; load average at end {os.getloadavg()}')
    print(f"data: {res[0]['data']}\nmetrics: {res[0]['metrics']}")
    b = res[0]['before']
    print(f"\n{'recipe':<12}{'steps':>6}{'cpu s':>7}{'wall s':>7}{'s/step':>7}{'MR-STFT':>9}{'mel':>8}{'SI-SDR dB':>10}")
    print(f"{'(step 0)':<12}{0:>6}{'':>7}{'':>7}{'':>7}{b['mrstft']:>9.3f}{b['mel']:>8.3f}{b['si_sdr']:>10.2f}")
    for r in res:
        f = r['after']
        print(f"{r['recipe']:<12}{r['steps']:>6}{r['cpu_s']:>7.0f}{r['wall_s']:>7.0f}{r['median_step_cpu_s']:>7.2f}"
              f"{f['mrstft']:>9.3f}{f['mel']:>8.3f}{f['si_sdr']:>10.2f}")
    wins = {r['recipe']: 0 for r in res}
    for key, better in (('mrstft', min), ('mel', min), ('si_sdr', max)):
        wins[better(res, key=lambda r: r['after'][key])['recipe']] += 1
    winner = max(wins, key=wins.get)
    print(f"\nmetrics won: {wins}; winner: {winner}")
    for r in res:
        if r['adv_from_step'] is not None: print(f"({r['recipe']}: discriminator on from step {r['adv_from_step']})")
    return 0

if __name__ == '__main__':
    sys.exit(main())
