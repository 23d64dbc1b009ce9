"""VocalDataset throughput: items/s with 0, 1 and 2 DataLoader workers on folders of long files at 44.1 kHz (no
resampling) and 48 kHz (resampled), next to the items/s the tiny preset consumes in training. The training figure is a
proxy: forward + backward + AdamW step of VAE(VAEConfig.preset('tiny')) on a [batch, 2, 40960] batch with an L1 + KL
loss (the trainer adds STFT losses and a discriminator, so it consumes fewer items/s than this proxy).
Also: the per-item cost of varispeed augmentation and of torchaudio's pitch_shift (phase vocoder), and indexing time.
Usage: python bench/dataset.py [--files 3] [--minutes 10] [--batches 30] [--repeats 3] [--threads N] [--dir DIR]"""
import argparse, shutil, statistics, tempfile, time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio

from lyracodec.dataset import VocalDataset, AugmentConfig, audio_loader
from lyracodec.demo_corpus import demo_clip
from lyracodec.vae import VAE, VAEConfig

def write_long_files(d: Path, sr: int, n: int, minutes: float):
    "`n` stereo 16-bit WAVs of `minutes` each: demo-corpus clips repeated with random gains (so crops are audible)."
    d.mkdir(parents=True, exist_ok=True)
    clips = [demo_clip(i, 0, 5.0, sr) for i in range(4)]
    rng = np.random.default_rng(0)
    for k in range(n):
        with sf.SoundFile(d / f'long_{k}.wav', 'w', sr, 2, subtype='PCM_16') as f:
            for _ in range(int(minutes * 60 / 5)): f.write(clips[int(rng.integers(4))] * rng.uniform(0.3, 1.0))

def items_per_s(ds, workers: int, batch: int, batches: int, repeats: int) -> float:
    "Median items/s over `repeats` passes of `batches` batches, after a warm-up batch (workers persistent)."
    dl = audio_loader(ds, batch_size=batch, num_workers=workers)
    rates, it = [], iter(dl)
    def next_batch():
        nonlocal it
        try: return next(it)
        except StopIteration: it = iter(dl); return next(it)
    next_batch()  # warm-up: worker start, resampler kernels
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(batches): next_batch()
        rates.append(batches * batch / (time.perf_counter() - t0))
    return statistics.median(rates)

def train_items_per_s(batch: int, repeats: int) -> float:
    "Items/s of forward + backward + AdamW on the tiny preset, batch [batch, 2, 40960] (median step time)."
    torch.manual_seed(0)
    model = VAE(VAEConfig.preset('tiny'))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 2, 40960) * 0.1
    times = []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        mu, logvar, z, y = model(x)
        loss = (y - x).abs().mean() + 1e-4 * model.kl(mu, logvar)
        opt.zero_grad(); loss.backward(); opt.step()
        if i: times.append(time.perf_counter() - t0)
    return batch / statistics.median(times)

def per_item_ms(fn, repeats: int=7) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter(); fn(); times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--files', type=int, default=3)
    p.add_argument('--minutes', type=float, default=10.0)
    p.add_argument('--batch', type=int, default=8)
    p.add_argument('--batches', type=int, default=30)
    p.add_argument('--repeats', type=int, default=3)
    p.add_argument('--threads', type=int, default=0, help='torch threads in the main process (0: leave as is)')
    p.add_argument('--dir', default=None, help='where to write the long files (default: a temporary folder)')
    a = p.parse_args()
    if a.threads: torch.set_num_threads(a.threads)
    root = Path(a.dir or tempfile.mkdtemp(prefix='lyra_bench_'))
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads in the main process (workers use 1), '
          f'batch {a.batch} x [2, 40960], median of {a.repeats} x {a.batches} batches')
    try:
        train = train_items_per_s(a.batch, a.repeats)
        print(f'tiny preset training proxy (fwd+bwd+AdamW, [{a.batch}, 2, 40960]): {train:8.1f} items/s')
        for sr in (44100, 48000):
            d = root / f'sr{sr}'
            t0 = time.perf_counter(); write_long_files(d, sr, a.files, a.minutes); tw = time.perf_counter() - t0
            t0 = time.perf_counter(); ds = VocalDataset(d, split=None, seed=0); ti = time.perf_counter() - t0
            print(f'{sr} Hz: {a.files} x {a.minutes:g} min WAV (written in {tw:.1f} s), indexed in {ti * 1e3:.1f} ms, '
                  f'{len(ds)} items/epoch')
            for w in (0, 1, 2):
                r = items_per_s(ds, w, a.batch, a.batches, a.repeats)
                print(f'  {w} worker(s): {r:8.1f} items/s  = {r / train:6.1f}x the training proxy')
                if w == 0 and torch.get_num_threads() > 1:  # collation's torch.stack uses the thread pool
                    n = torch.get_num_threads(); torch.set_num_threads(1)
                    r = items_per_s(ds, 0, a.batch, a.batches, a.repeats)
                    torch.set_num_threads(n)
                    print(f'  0 worker(s), 1 torch thread: {r:8.1f} items/s  = {r / train:6.1f}x the training proxy')
        d = root / 'sr44100'
        plain = VocalDataset(d, split=None, seed=0)
        speed = VocalDataset(d, split=None, seed=0, augment=AugmentConfig(p_speed=1.0))
        for i in range(100): speed[i]  # warm the cache of varispeed kernels (one per 1 % speed step)
        t_plain = per_item_ms(lambda: plain[0], 31)
        t_speed = per_item_ms(lambda: speed[0], 31)
        x = plain[0]
        t_pitch = per_item_ms(lambda: torchaudio.functional.pitch_shift(x, 44100, 2), 3)
        print(f'per item (main process, kernels cached): plain {t_plain:.2f} ms, with varispeed {t_speed:.2f} ms '
              f'(+{t_speed - t_plain:.2f} ms); torchaudio pitch_shift (+2 semitones, not used) {t_pitch:.1f} ms')
    finally:
        if not a.dir: shutil.rmtree(root, ignore_errors=True)

if __name__ == '__main__': main()
