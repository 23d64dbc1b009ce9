"""Where the trainer's data time goes, and whether the loader keeps up with a GPU, measured without one.

1. Per item: `VocalDataset.__getitem__` of 1.5 s crops (65,536 samples) split into its parts (open + seek + decode,
   resample, RMS check, normalise + augment), per file format of the corpus, median over the corpus's items.
2. Loader: `Trainer.micro_batches` (the trainer's own sampler, epoch handling, DataLoader and workers) consumed by a
   simulated GPU: the main process sleeps `--step-ms` per step (a GPU step leaves the CPU idle, as sleep does). Data
   wait is the share of wall time spent in `next(stream)`, over all steps and split into the steps that start an
   epoch and the others, for each `--workers` x `--prefetch`.
3. What a GPU needs: items/s at `--target-sps` steps/s x batch 8 (the issue's 6 steps/s on one H100), against what
   one worker delivers.

    PYTHONPATH=$PWD python bench/data_wait.py [--data DIR] [--minutes 8] [--steps 120] [--step-ms 167]
"""
import argparse, statistics, tempfile, time, warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from lyracodec.audio import load_audio
from lyracodec.core import cache_dir
from lyracodec.dataset import VocalDataset, rms_db, _augment, AugmentConfig
from lyracodec.demo_corpus import make_demo_corpus
from lyracodec.trainer import Trainer, load_config
from lyracodec.train_config import DataSection

def corpus(a) -> Path:
    if a.data: return Path(a.data)
    return make_demo_corpus(cache_dir() / f'demo_{a.minutes:g}min', a.minutes)

def per_item_parts(ds: VocalDataset, items: int) -> dict:
    "Median ms per part and format over the first `items` crops (fixed starts, no retries: the common path)."
    parts = defaultdict(lambda: defaultdict(list))
    rng = np.random.default_rng(0)
    aug = AugmentConfig()
    for i in range(min(items, len(ds))):
        fi = int(np.searchsorted(ds._cum, i, side='right'))
        f = ds.files[fi]
        key = f'{f.format.lower()} {f.sample_rate // 1000} kHz'
        start = ds._random_start(fi, rng)
        t0 = time.perf_counter()
        with sf.SoundFile(str(f.path)) as h:
            n = ds.target_length * f.sample_rate // ds.sample_rate
            if start: h.seek(min(start * f.sample_rate // ds.sample_rate, h.frames))
            h.read(n, dtype='float32', always_2d=True)
        t1 = time.perf_counter()
        x = load_audio(f.path, ds.sample_rate, start, ds.target_length).numpy()  # decode + resample + stereo
        t2 = time.perf_counter()
        rms_db(x)
        t3 = time.perf_counter()
        x = _augment(x * (0.95 / max(float(np.abs(x).max()), 1e-5)), aug, rng)
        t4 = time.perf_counter()
        ds[i]
        t5 = time.perf_counter()
        for name, t in (('decode', t1 - t0), ('load_audio', t2 - t1), ('rms', t3 - t2), ('norm+aug', t4 - t3),
                        ('__getitem__', t5 - t4)):
            parts[key][name].append(1e3 * t)
    return {k: {n: statistics.median(v) for n, v in d.items()} | {'items': len(d['decode'])} for k, d in parts.items()}

def loader_wait(root: Path, workers: int, prefetch: int, steps: int, step_s: float, batch: int, length: int) -> dict:
    "Data wait of the trainer's stream consumed every `step_s` seconds (after 3 warm-up steps)."
    over = [f'data.root={root}', 'logging.logger=none', 'logging.progress=false', 'run.device=cpu', 'model.preset=tiny',
            f'data.batch_size={batch}', f'data.target_length={length}', f'data.num_workers={workers}',
            'logging.recon_clips=0', 'logging.valid_clips=1']
    if 'prefetch_factor' in DataSection.__dataclass_fields__: over.append(f'data.prefetch_factor={prefetch}')
    cfg = load_config('default', over)
    with tempfile.TemporaryDirectory() as d, warnings.catch_warnings():
        warnings.simplefilter('ignore')
        tr = Trainer(cfg, d, log=lambda *_, **__: None)
        per_epoch = getattr(tr.sampler, 'batches_per_epoch', None) or len(tr.sampler) // batch
        stream = tr.micro_batches()
        for _ in range(3): next(stream); time.sleep(step_s)
        waits, starts = [], []
        t_start = time.perf_counter()
        for _ in range(steps):
            starts.append(tr.position in (0, per_epoch))  # the next batch is the first of an epoch
            t0 = time.perf_counter(); next(stream); waits.append(time.perf_counter() - t0)
            time.sleep(step_s)
        wall = time.perf_counter() - t_start
        del tr, stream
    w, s = np.array(waits), np.array(starts)
    return dict(share=w.sum() / wall, epoch_steps=int(s.sum()), epoch_ms=1e3 * float(np.median(w[s])) if s.any() else float('nan'),
                other_ms=1e3 * float(np.median(w[~s])), other_p99_ms=1e3 * float(np.percentile(w[~s], 99)),
                epoch_share=w[s].sum() / wall, per_epoch=per_epoch)

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--data', default=None, help='audio folder (default: the demo corpus of --minutes, cached)')
    p.add_argument('--minutes', type=float, default=8.0)
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--length', type=int, default=65536)
    p.add_argument('--steps', type=int, default=120, help='simulated steps per loader setting')
    p.add_argument('--step-ms', type=float, default=167.0, help='simulated GPU step (6 steps/s = 167 ms)')
    p.add_argument('--target-sps', type=float, default=6.0)
    p.add_argument('--workers', type=int, nargs='+', default=[1, 2])
    p.add_argument('--prefetch', type=int, nargs='+', default=[2, 4])
    p.add_argument('--items', type=int, default=200, help='items timed in part 1')
    a = p.parse_args()
    root = corpus(a)
    torch.set_num_threads(1)  # like a DataLoader worker
    ds = VocalDataset(root, target_length=a.length, split='train', augment=AugmentConfig())
    print(f'{root}: {len(ds.files)} training files, {len(ds)} items of {a.length} samples; torch {torch.__version__}')
    print('\n1. per item, ms (median; decode = soundfile open+seek+read at the file rate; load_audio = decode + resample '
          '+ stereo; __getitem__ = the whole item)')
    res = per_item_parts(ds, a.items)
    cols = ['decode', 'load_audio', 'rms', 'norm+aug', '__getitem__']
    print(f'{"format":14s} {"items":>5s} ' + ' '.join(f'{c:>11s}' for c in cols))
    for k, v in sorted(res.items()):
        print(f'{k:14s} {v["items"]:5d} ' + ' '.join(f'{v[c]:11.2f}' for c in cols))
    mean_item = sum(v['__getitem__'] * v['items'] for v in res.values()) / sum(v['items'] for v in res.values())
    need = a.target_sps * a.batch
    print(f'\n3. a GPU at {a.target_sps:g} steps/s x batch {a.batch} needs {need:.0f} items/s; one worker gives '
          f'{1e3 / mean_item:.0f} items/s ({mean_item:.2f} ms per item, mix of this corpus): '
          f'{need * mean_item / 1e3:.2f} of one core')
    print(f'\n2. trainer stream, simulated step {a.step_ms:g} ms, {a.steps} steps per row')
    print(f'{"workers":>7s} {"prefetch":>8s} {"wait %":>7s} {"epoch starts":>12s} {"at start ms":>11s} '
          f'{"share of it %":>13s} {"other ms":>8s} {"other p99":>9s}')
    for w in a.workers:
        for pf in (a.prefetch if 'prefetch_factor' in DataSection.__dataclass_fields__ else [2]):
            r = loader_wait(root, w, pf, a.steps, a.step_ms / 1e3, a.batch, a.length)
            print(f'{w:7d} {pf:8d} {100 * r["share"]:7.2f} {r["epoch_steps"]:12d} {r["epoch_ms"]:11.1f} '
                  f'{100 * r["epoch_share"]:13.2f} {r["other_ms"]:8.2f} {r["other_p99_ms"]:9.2f}')
    print(f'(an epoch is {r["per_epoch"]} steps of this corpus)')

if __name__ == '__main__': main()
