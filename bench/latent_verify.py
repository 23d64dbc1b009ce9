"""Cost of checking a latent dataset against the cost of making it (issue 19).

Encoding: `lyracodec_preencode` on `--seconds` of noise with a random model of `--preset`, timed from the call to
its return; gives seconds of encoding per byte of float16 latents. Checking: `verify_dataset` (every shard's
SHA-256, the index, the statistics) on a synthetic dataset of `--mb` MB written by `ShardWriter`, timed the same
way; and the first read of every shard by `LatentDataset` (what a training process pays). Both are scaled to 1 GB
of latents and printed as a ratio. Usage: python bench/latent_verify.py [--preset tiny|full] [--mb 256]"""
import argparse, json, os, shutil, sys, tempfile, time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from lyracodec.latents import LatentDataset
from lyracodec.preencode import main as preencode
from lyracodec.shards import INDEX_NAME, META_NAME, PREENCODE_FORMAT, SHARD_DIR, SKIPPED_NAME, STATS_NAME, ShardWriter, merge_moments, read_shard_items, verify_dataset
from lyracodec.vae import VAE, VAEConfig, save_pretrained

def encode_seconds_per_byte(tmp: Path, preset: str, seconds: float) -> float:
    torch.manual_seed(0)
    save_pretrained(VAE(VAEConfig.preset(preset)).eval(), tmp / 'model')
    (tmp / 'audio').mkdir()
    for i in range(4):
        x = 0.1 * np.random.default_rng(i).standard_normal((int(seconds / 4 * 44100), 2)).astype('float32')
        sf.write(tmp / 'audio' / f'{i}.wav', x, 44100)
    t0 = time.perf_counter()
    assert preencode([str(tmp / 'model'), str(tmp / 'audio'), str(tmp / 'enc'), '-q', '--workers', '1', '--precision', 'fp32']) == 0
    el = time.perf_counter() - t0
    nbytes = sum(p.stat().st_size for p in (tmp / 'enc' / SHARD_DIR).iterdir())
    return el / nbytes

def synthetic_dataset(root: Path, mb: float, shard_mb: float=64) -> None:
    (root / SHARD_DIR).mkdir(parents=True)
    w = ShardWriter(root / SHARD_DIR, 'bench', int(shard_mb * 2 ** 20))
    frames, n = 20_000, 0
    while n < mb * 2 ** 20:
        w.add(dict(path=f'{n}.wav', frames=frames, samples=frames * 2048, sha256='0' * 64, size=1, mtime_ns=1),
              torch.randn(64, frames).half())
        n += 64 * frames * 2
    w.flush()
    recs = [r for s in w.written for r in read_shard_items(root / SHARD_DIR / s)]
    (root / INDEX_NAME).write_text(''.join(json.dumps(r) + '\n' for r in recs))
    from safetensors.torch import load_file
    ms = torch.cat([load_file(root / SHARD_DIR / s)['moments'] for s in w.written])
    (root / STATS_NAME).write_text(json.dumps(merge_moments([r['frames'] for r in recs], ms)))
    (root / SKIPPED_NAME).write_text('path,reason\n')
    (root / META_NAME).write_text(json.dumps(dict(format=PREENCODE_FORMAT)))

def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument('--preset', default='tiny'); ap.add_argument('--mb', type=float, default=256)
    ap.add_argument('--seconds', type=float, default=60.0); ap.add_argument('--threads', type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    tmp = Path(tempfile.mkdtemp())
    try:
        enc = encode_seconds_per_byte(tmp, a.preset, a.seconds)
        synthetic_dataset(tmp / 'ds', a.mb)
        nbytes = sum(p.stat().st_size for p in (tmp / 'ds' / SHARD_DIR).iterdir())
        os.system('sync')
        import lyracodec.shards as S; S._VERIFIED.clear()  # writing checked them: measure a cold check
        t0 = time.perf_counter(); faults, _, _ = verify_dataset(tmp / 'ds'); ver = time.perf_counter() - t0
        assert not faults, faults
        S._VERIFIED.clear()
        ds = LatentDataset(tmp / 'ds')
        t0 = time.perf_counter()
        for i in range(len(ds)): ds.read(i, 0, 1)
        first = time.perf_counter() - t0
        gb = 2 ** 30
        print(f'preset {a.preset}, {a.threads} threads: encoding {enc * gb / 3600:.2f} h per GB of float16 latents '
              f'({1 / enc / 1e6:.3f} MB/s)')
        print(f'verify_dataset: {nbytes / 1e6:.0f} MB in {ver:.2f} s = {ver / nbytes * gb:.1f} s per GB '
              f'= {ver / nbytes / enc:.2e} of the encoding time ({ver / nbytes / enc:.4%})')
        print(f'LatentDataset first read of every shard (hashing): {first / nbytes * gb:.1f} s per GB per process')
    finally: shutil.rmtree(tmp, ignore_errors=True)

if __name__ == '__main__': main()
