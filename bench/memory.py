"""Peak memory of the command-line tools against the length of the file: it must not grow with it.

Usage (from the checkout root):
    /work/main/.venv/bin/python bench/memory.py [--minutes 1 5 20] [--rate 48000] [--threads 2]

For each duration a noise-like stereo 16-bit WAV at `--rate` is written (block by block, so the parent never holds
it), then `lyracodec_encode`, `lyracodec_reconstruct`, `lyracodec_eval` (file vs its reconstruction) and
`lyracodec_eval --model` (reconstructs it into a temporary file, then scores) run on it in
fresh processes with a tiny random model. The figure is each child's own peak RSS (VmHWM, read by a wrapper right
before it exits) and its wall time. Everything is written to a temporary folder that is removed at the end.
"""
import argparse, os, subprocess, sys, tempfile, time
from pathlib import Path

WRAP = r'''
import atexit, sys
def hwm():
    v = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0]
    print(f'VMHWM {{int(v) / 1024:.0f}}', file=sys.stderr)
atexit.register(hwm)
import torch; torch.set_num_threads({threads})
from lyracodec.{mod} import {fn} as main
rc = main({argv!r})
hwm(); atexit.unregister(hwm)
sys.exit(rc)
'''

def write_noise(path: Path, minutes: float, rate: int):
    import numpy as np, soundfile as sf
    rng = np.random.default_rng(0)
    with sf.SoundFile(path, 'w', rate, 2, subtype='PCM_16') as f:
        left = int(minutes * 60 * rate)
        while left > 0:
            n = min(left, rate * 10)
            f.write((0.2 * rng.standard_normal((n, 2))).astype('float32')); left -= n

def run(mod: str, fn: str, argv: list, threads: int) -> tuple:
    t = time.perf_counter()
    r = subprocess.run([sys.executable, '-c', WRAP.format(mod=mod, fn=fn, argv=argv, threads=threads)],
                       capture_output=True, text=True, env={**os.environ, 'PYTHONPATH': str(Path(__file__).parent.parent)})
    dt = time.perf_counter() - t
    mb = [l.split()[1] for l in r.stderr.splitlines() if l.startswith('VMHWM')]
    if r.returncode or not mb: sys.exit(f'{mod}.{fn} failed:\n{r.stderr[-2000:]}')
    return float(mb[-1]), dt

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--minutes', type=float, nargs='+', default=[1, 5, 20])
    p.add_argument('--rate', type=int, default=48000)
    p.add_argument('--threads', type=int, default=2)
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        model = d / 'model'
        subprocess.run([sys.executable, '-c', 'import torch; torch.manual_seed(0)\nfrom lyracodec.vae import VAE, VAEConfig, '
                        f'save_pretrained\nsave_pretrained(VAE(VAEConfig.preset("tiny")), {str(model)!r})'], check=True,
                       env={**os.environ, 'PYTHONPATH': str(Path(__file__).parent.parent)})
        print(f'tiny model, {a.rate} Hz 16-bit stereo input, {a.threads} threads; peak RSS of each process (MB) and wall time')
        print(f'{"minutes":>8} {"encode MB":>10} {"s":>6} {"reconstruct MB":>15} {"s":>6} {"eval MB":>8} {"s":>6} {"eval --model MB":>16} {"s":>6}')
        for m in a.minutes:
            src = d / f'in{m:g}'; src.mkdir(); song = src / 'song.wav'
            write_noise(song, m, a.rate)
            enc = run('codec', 'encode_main', [str(song), '--model', str(model), '-o', str(d / f'lat{m:g}'), '-q',
                                               '--precision', 'fp32'], a.threads)
            rec = run('codec', 'reconstruct_main', [str(song), '--model', str(model), '-o', str(d / f'rec{m:g}'), '-q',
                                                    '--precision', 'fp32'], a.threads)
            ev = run('metrics', 'eval_main', [str(song), str(d / f'rec{m:g}' / 'song.wav'), '--csv', str(d / f'm{m:g}.csv'),
                                              '-q', '--sample-rate', '44100'], a.threads)
            evm = run('metrics', 'eval_main', [str(song), '--model', str(model), '--csv', str(d / f'mm{m:g}.csv'), '-q',
                                               '--sample-rate', '44100', '--precision', 'fp32'], a.threads)
            print(f'{m:8g} {enc[0]:10.0f} {enc[1]:6.1f} {rec[0]:15.0f} {rec[1]:6.1f} {ev[0]:8.0f} {ev[1]:6.1f} {evm[0]:16.0f} {evm[1]:6.1f}', flush=True)
            for f in (song, d / f'rec{m:g}' / 'song.wav'): f.unlink()

if __name__ == '__main__': main()
