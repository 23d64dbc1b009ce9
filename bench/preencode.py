"""Pre-encoding benchmark: `lyracodec_preencode` end to end against the model's own encode speed, and peak memory
against the length of a file.

Usage (from the checkout root):
    PYTHONPATH=$PWD nice .venv/bin/python bench/preencode.py [--preset tiny] [--threads 1] [--runs 3] [--minutes 1 10 60]

* Corpus: the demo corpus (`make_demo_corpus`, `--corpus-minutes` (10) of 3-6 s clips in wav, flac, ogg and mp3, the
  mp3s at 48 kHz so they are resampled) in `$LYRACODEC_CACHE/bench_preencode_10min` (made once, then reused).
* Model's own encode speed: `encode_audio` on every file one at a time, the audio already decoded and resampled in
  memory (not timed), default chunking, the same compute precision: the speed of the model and nothing else.
* Pipeline: `lyracodec.preencode.main` into a fresh folder, timed from the call to its return: model load, listing,
  reading, resampling, hashing, batching, shards, index and statistics included.
* Both are run `--runs` times, alternately (so background load hits both alike); figures are medians, in audio
  seconds per second (x real time); ratio = pipeline / model's own.
* Peak memory: for each of `--minutes`, one stereo file of that length (16-bit WAV of noise and a tone, written
  block by block) is pre-encoded by a fresh process with `--workers 0` (reading in the same process, so one
  figure covers reader and model); the process reports its own VmHWM (peak RSS of its address space) and
  its speed. These children run first, before this process imports torch.
"""
import argparse, os, statistics, subprocess, sys, tempfile, time
from pathlib import Path

CHILD = r'''
import sys, time, torch
torch.set_num_threads({threads})
from lyracodec.preencode import main
t = time.perf_counter()
rc = main([{model!r}, {audio!r}, {out!r}, '-q', '--workers', '0', '--batch', '{batch}', '--precision', {precision!r}])
dt = time.perf_counter() - t
hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0]
print(rc, dt, int(hwm) / 1024, flush=True)
'''

def long_wav(path: Path, minutes: float, sr: int=44100):
    "A stereo 16-bit WAV of `minutes`, written 10 s at a time."
    import numpy as np, soundfile as sf
    rng, n, t0 = np.random.default_rng(0), int(minutes * 60 * sr), 0
    with sf.SoundFile(str(path), 'w', sr, 2, subtype='PCM_16') as f:
        while t0 < n:
            m = min(10 * sr, n - t0)
            t = (t0 + np.arange(m)) / sr
            tone = 0.3 * np.sin(2 * np.pi * 220 * t)[:, None]
            f.write((tone + 0.05 * rng.standard_normal((m, 2))).astype('float32'))
            t0 += m

def peak_memory(model: str, minutes: float, a) -> tuple:
    with tempfile.TemporaryDirectory(dir=a.tmp) as d:
        audio = Path(d) / 'audio'; audio.mkdir()
        long_wav(audio / 'long.wav', minutes)
        code = CHILD.format(threads=a.threads, model=model, audio=str(audio), out=str(Path(d) / 'lat'), batch=a.batch,
                            precision=a.precision)
        r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=os.environ)
        if r.returncode: raise RuntimeError(f'child for {minutes} min failed: {r.stderr.strip().splitlines()[-3:]}')
        rc, dt, hwm = r.stdout.split()
        return float(hwm), float(dt), int(rc)

def throughput(model_dir: str, corpus: Path, a) -> dict:
    import torch
    from lyracodec.vae import load_pretrained
    from lyracodec.codec import encode_audio, compute_dtype
    from lyracodec.audio import load_audio, collect_files, AUDIO_EXTENSIONS
    from lyracodec.preencode import main
    torch.set_num_threads(a.threads)
    model = load_pretrained(model_dir)
    dtype = compute_dtype(a.precision, torch.device('cpu'))
    xs = [load_audio(p, model.sample_rate) for p, _ in collect_files([corpus], AUDIO_EXTENSIONS)[0]]  # [2, T] each
    seconds = sum(x.shape[-1] for x in xs) / model.sample_rate
    encode_audio(model, xs[0], dtype=dtype)  # warm-up
    own, pipe = [], []
    for run in range(a.runs):
        t = time.perf_counter()
        for x in xs: encode_audio(model, x, dtype=dtype)
        own.append(seconds / (time.perf_counter() - t))
        with tempfile.TemporaryDirectory(dir=a.tmp) as d:
            t = time.perf_counter()
            rc = main([model_dir, str(corpus), str(Path(d) / 'lat'), '-q', '--workers', str(a.workers), '--batch',
                       str(a.batch), '--precision', a.precision])
            pipe.append(seconds / (time.perf_counter() - t))
            assert rc == 0, rc
        print(f'  run {run + 1}: own {own[-1]:.1f}x, pipeline {pipe[-1]:.1f}x real time (load {os.getloadavg()[0]:.1f})',
              flush=True)
    return dict(files=len(xs), seconds=seconds, own=own, pipe=pipe)

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--preset', default='tiny', help='model preset (random weights: speed does not depend on them)')
    p.add_argument('--threads', type=int, default=1, help='torch threads (1: fastest on shared cores)')
    p.add_argument('--runs', type=int, default=3)
    p.add_argument('--workers', type=int, default=1, help='DataLoader workers of the pipeline')
    p.add_argument('--batch', type=int, default=1, help='--batch of the pipeline (1: its default on a CPU)')
    p.add_argument('--precision', default='fp32', help='compute precision of both')
    p.add_argument('--corpus-minutes', type=float, default=10.0, help='size of the demo corpus')
    p.add_argument('--minutes', type=float, nargs='*', default=[1, 10, 60], help='file lengths for the memory check')
    p.add_argument('--tmp', default=None, help='folder for temporary files (default: the system temp folder)')
    a = p.parse_args()
    from lyracodec.core import cache_dir
    from lyracodec.demo_corpus import make_demo_corpus
    print(f'{a.threads} torch thread(s), {os.cpu_count()} CPUs visible, load {os.getloadavg()[0]:.1f}', flush=True)
    with tempfile.TemporaryDirectory(dir=a.tmp) as d:
        model_dir = str(Path(d) / 'model')
        subprocess.run([sys.executable, '-c', 'import torch; from lyracodec.vae import VAE, VAEConfig, save_pretrained; '
                        f'torch.manual_seed(0); save_pretrained(VAE(VAEConfig.preset({a.preset!r})).eval(), {model_dir!r})'],
                       check=True, env=os.environ)
        for m in sorted(a.minutes):  # first, while this process has not imported torch
            t = time.perf_counter()
            hwm, dt, rc = peak_memory(model_dir, m, a)
            print(f'peak memory, one {m:g} min file, {a.preset} preset, --workers 0: VmHWM {hwm:.0f} MB; '
                  f'{m * 60 / dt:.1f}x real time end to end (exit {rc}; {time.perf_counter() - t:.0f} s with writing '
                  f'the file; load {os.getloadavg()[0]:.1f})', flush=True)
        corpus = make_demo_corpus(cache_dir() / f'bench_preencode_{a.corpus_minutes:g}min', a.corpus_minutes)
        import torch
        print(f'torch {torch.__version__}; corpus {corpus}', flush=True)
        r = throughput(model_dir, corpus, a)
    own, pipe = statistics.median(r['own']), statistics.median(r['pipe'])
    print(f'{a.preset} preset, {r["files"]} files, {r["seconds"]:.0f} s of audio, --workers {a.workers} --batch {a.batch} '
          f'--precision {a.precision}, {a.threads} thread(s): model\'s own encode {own:.1f}x real time, pipeline '
          f'{pipe:.1f}x real time (medians of {a.runs}); ratio {pipe / own:.2f}', flush=True)

if __name__ == '__main__':
    main()
