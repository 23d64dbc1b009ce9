"""Recipe comparison at an equal CPU budget: which loss recipe gives the best held-out reconstructions?

Trains `VAE(VAEConfig.preset('tiny'))` once per recipe (`seed`: MSE + KL, `spectral`: STFT + mel + KL,
`adversarial`: spectral + GAN) from the same initial weights on the same batches, with a plain AdamW loop, until
each run has used the same *process CPU time* (`time.process_time`, evaluation excluded). A CPU-time budget rather
than a wall-clock one keeps the comparison fair on a machine shared with other jobs; each worker runs with
`torch.set_num_threads(--threads)` (1 by default) and the recipes run concurrently as separate processes
(`--sequential` to run them one after another). Held-out clips are encoded deterministically (z = mean) and the
figures printed are: multi-resolution STFT distance, multi-scale mel distance (both lower is better) and SI-SDR
(dB, higher is better), at step 0 and at the end.

Data: the demo corpus (`lyracodec.demo_corpus.make_demo_corpus` + `VocalDataset`). Metrics: `lyracodec.metrics`.

    PYTHONPATH=$PWD python bench/recipes.py --budget 240 --recipes seed,spectral,adversarial
"""
import argparse
import json
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

def corpus_data(cache: Path, epochs: int=2) -> tuple:
    "Training crops (`epochs` passes of `VocalDataset`, 2·CROP samples each) and held-out crops (valid split)."
    from lyracodec.dataset import VocalDataset
    from lyracodec.demo_corpus import make_demo_corpus
    root = make_demo_corpus(cache / 'corpus')
    train = VocalDataset(root, target_length=2 * CROP, split='train', seed=0)
    crops = []
    for e in range(epochs):
        train.set_epoch(e)
        crops += [train[i] for i in range(len(train))]
    valid = VocalDataset(root, target_length=EVAL_LEN, split='valid')
    return torch.stack(crops), torch.stack([valid[i] for i in range(min(len(valid), 12))])

def load_data(cache: Path) -> tuple:
    """(train, valid, source): crops of the demo corpus, built once and cached in `cache`, so that reading and
    decoding audio is outside every run's CPU budget."""
    f = cache / 'bench_corpus.pt'
    if f.is_file(): tr, va = torch.load(f, weights_only=True)
    else:
        tr, va = corpus_data(cache)
        cache.mkdir(parents=True, exist_ok=True)
        tmp = f.with_suffix('.tmp'); torch.save((tr, va), tmp); os.replace(tmp, f)
    return tr, va, (f'demo corpus (make_demo_corpus, 2 min, seed 0): {len(tr)} training crops of {tr.shape[-1]} '
                    f'samples (VocalDataset train split, 2 epochs), {len(va)} held-out crops of {EVAL_LEN} (valid split)')

def batch_from(train: torch.Tensor, B: int, g: torch.Generator) -> torch.Tensor:
    "A batch `[B, 2, CROP]` of random crops of random clips `[N, 2, L]`."
    i = torch.randint(0, train.shape[0], (B,), generator=g)
    s = torch.randint(0, train.shape[-1] - CROP + 1, (B,), generator=g)
    return torch.stack([train[a, :, b:b + CROP] for a, b in zip(i.tolist(), s.tolist())])

# ---------------------------------------------------------------- metrics
def metric_fns() -> tuple:
    "(mrstft, mel, si_sdr, source): the figures of lyracodec.metrics."
    from lyracodec.metrics import mrstft_distance, mel_distance, si_sdr
    return mrstft_distance, lambda r, e: mel_distance(r, e, SR), si_sdr, 'lyracodec.metrics'

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
        used += dt; step += 1; step_times.append(dt); last = {k: float(v) for k, v in logs.items()}
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
