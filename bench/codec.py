"""Codec benchmark: encode/decode real-time factors and peak memory of chunked long decodes.

Usage (from the checkout root):
    PYTHONPATH=$PWD nice /work/main/.venv/bin/python bench/codec.py [--threads 1] [--runs 3] [--minutes 1 5 10]

* Real-time factor = audio seconds per compute second (higher is faster), for `encode_audio` and `decode_latents`
  (chunked, default chunk/overlap) on 10 s of stereo noise-like audio, tiny and full presets, random weights
  (speed does not depend on the weights). Median of `--runs` runs after one warm-up run on 1 s.
* Peak RSS: each duration runs in a fresh subprocess that builds the full model, decodes random latents of that
  length chunk by chunk and streams the audio into a WAV file (what `lyracodec_decode` does); the parent reads
  `resource.getrusage(RUSAGE_CHILDREN).ru_maxrss` after each child exits (children run one at a time, and the
  figure is the running maximum over children, so durations are run in increasing order).
  Linux carries the parent's peak RSS at fork time into the child's ru_maxrss (exec records the old address
  space's high-water mark), so these children are started FIRST, while the parent has not imported torch; each
  child also prints its own VmHWM from /proc/self/status (the new address space only) as a cross-check.
"""
import argparse, os, resource, statistics, subprocess, sys, tempfile, time

CHILD = r'''
import resource, sys, time, torch
torch.set_num_threads({threads})
from lyracodec.vae import VAE, VAEConfig
from lyracodec.codec import iter_decode, write_audio
torch.manual_seed(0)
model = VAE(VAEConfig.preset('full')).eval()
F = -(-int({minutes} * 60 * model.sample_rate) // model.hop_length)
z = torch.randn(1, model.cfg.latent_dim, F)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
write_audio({out!r}, iter_decode(model, z, {minutes} * 60 * model.sample_rate), model.sample_rate)
dt = time.perf_counter() - t
hwm = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0]
print(f'{{before / 1024:.0f}} {{dt:.1f}} {{int(hwm) / 1024:.0f}}', flush=True)
'''

def rtf(preset: str, runs: int, seconds: float=10.0) -> tuple:
    import torch
    from lyracodec.vae import VAE, VAEConfig
    from lyracodec.codec import encode_audio, decode_latents
    torch.manual_seed(0)
    model = VAE(VAEConfig.preset(preset)).eval()
    x = 0.1 * torch.randn(2, int(seconds * model.sample_rate))
    decode_latents(model, encode_audio(model, x[:, :model.sample_rate]))  # warm-up
    enc, dec = [], []
    for _ in range(runs):
        t = time.perf_counter(); z = encode_audio(model, x); enc.append(time.perf_counter() - t)
        t = time.perf_counter(); decode_latents(model, z, x.shape[-1]); dec.append(time.perf_counter() - t)
    return seconds / statistics.median(enc), seconds / statistics.median(dec), enc, dec

def peak_rss(minutes: float, threads: int) -> tuple:
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, 'out.wav')
        code = CHILD.format(threads=threads, minutes=minutes, out=out)
        r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=os.environ)
        if r.returncode: raise RuntimeError(f'child for {minutes} min failed: {r.stderr.strip().splitlines()[-1:]}')
        size = os.path.getsize(out) if os.path.exists(out) else 0
    before, dt, hwm = r.stdout.split()
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, float(before), float(dt), size, float(hwm)

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--threads', type=int, default=1, help='torch threads (1: fastest on shared cores)')
    p.add_argument('--runs', type=int, default=3)
    p.add_argument('--presets', nargs='*', default=['tiny', 'full'])
    p.add_argument('--minutes', type=float, nargs='*', default=[1, 5, 10])
    a = p.parse_args()
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f'{a.threads} torch thread(s), {os.cpu_count()} CPUs visible, load {os.getloadavg()[0]:.1f}; '
          f'parent peak RSS before the children: {own:.0f} MB (torch not imported yet)', flush=True)
    for m in sorted(a.minutes):  # first, while the parent is small (see the module docstring)
        peak, before, dt, size, hwm = peak_rss(m, a.threads)
        print(f'peak RSS full chunked decode {m:g} min stereo -> WAV: {peak:6.0f} MB ru_maxrss (VmHWM {hwm:.0f} MB; '
              f'after building the model {before:.0f} MB; decode {dt:.0f} s = {m * 60 / dt:.2f}x real time; '
              f'WAV {size / 1e6:.0f} MB; load {os.getloadavg()[0]:.1f})', flush=True)
    import torch
    torch.set_num_threads(a.threads)
    print(f'torch {torch.__version__}', flush=True)
    for preset in a.presets:
        e, d, encs, decs = rtf(preset, a.runs)
        print(f'RTF {preset:5s} 10 s stereo: encode {e:7.2f}x  decode {d:7.2f}x real time '
              f'(median of {a.runs}; encode s {[round(v, 2) for v in encs]}, decode s {[round(v, 2) for v in decs]}; '
              f'load {os.getloadavg()[0]:.1f})', flush=True)

if __name__ == '__main__': main()
