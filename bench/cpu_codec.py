"""The codec on this CPU against the hardware's limit: one table of model calls, end-to-end commands, stable-audio-tools.

Usage (from the checkout root; run it when the machine is otherwise idle):
    .venv/bin/python bench/cpu_codec.py [--threads 2] [--frames 128] [--runs 3] [--e2e-seconds 60]
                                        [--exact-frames 600] [--skip-e2e] [--skip-sat] [--sat-dir DIR]
                                        [--e2e-runs 3] [--e2e-auto-only]

* Peak: a 2048 x 2048 matmul on `--threads` threads, fp32 and bf16, median of 10 (the CPU's practical limit at that
  precision), measured in this run; every GFLOP/s figure is also given as its share of that peak.
* Work: the full preset's FLOP per second of stereo audio per direction, counted by torch's FlopCounterMode
  (convolutions; elementwise work is not counted, so the shares are of useful matrix work).
* Model calls: full preset, random weights (speed does not depend on them), weight norm folded, one window of
  `--frames` latent frames, fp32 and bf16, by four paths: `eager` (the model), `tuned` (the model through
  `lyracodec.codec.CompiledRun`: Inductor with freezing), `packed` (`lyracodec.engine.PackedCodec`, eager Snake) and
  `packed+` (the packed engine with its native kernels: Snake in C and, in bf16 on a CPU with AMX, the residual units
  of up to 256 channels fused into one pass each: what the commands run on a CPU). For packed+ in bf16 the same calls
  are also timed with the residual units as matmuls again (`fuse_residuals(None)`), and for both packed paths with
  Snake skipped (the matmuls and copies alone).
  Each configuration runs in a fresh process: "first call" is the first call's time (oneDNN primitive creation;
  compiling for tuned, building the native Snake for packed+) with an empty cache (cold) and again with the cache
  the cold process left (warm);
  then the median of `--runs` calls; peak RSS is the process's VmHWM; the error is the relative RMS difference
  against eager fp32 on the same input.
* Exactness: chunked (the default plan) against whole-file output, fp32, `--exact-frames` frames, full preset.
* End to end: `lyracodec_encode` then `lyracodec_decode` on a `--e2e-seconds` stereo WAV, wall time of each
  command including start-up (imports, model load, compiling), share of the peak in useful FLOP. Every command
  starts from an empty LyraCodec cache (it measures the reach, builds the native library, packs the weights and
  keeps them), except the "warm cache" rows, which find what the command before them left there. Each row is the
  median of `--e2e-runs` runs (`--e2e-auto-only`: only the rows of what the commands pick by default). The peak is
  measured again after these rows, and their shares are of the higher of the two peaks.
* stable-audio-tools: its Oobleck encoder and decoder (from the PyPI package, installed with --no-deps into its own
  folder and imported with the modules it needs only for other models stubbed), the same shape, weights and input,
  weight norm removed like ours, eager at each precision, same window, in this run.
"""
import argparse, json, os, shutil, statistics, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOP, SR = 2048, 44100

CHILD = r'''
import json, os, statistics, sys, time
t_start = time.perf_counter()
import torch
torch.set_num_threads({threads})
from lyracodec.vae import VAE, VAEConfig
from lyracodec.codec import autocast_to, CompiledRun
from lyracodec.engine import PackedCodec
torch.manual_seed(0)
model = VAE(VAEConfig.preset('full')).eval().fold_weight_norm()
g = torch.Generator().manual_seed(1)
x = 0.1 * torch.randn(1, 2, {frames} * 2048, generator=g)
z = torch.randn(1, 64, {frames}, generator=g)
dt = None if {prec!r} == 'fp32' else torch.bfloat16
res = dict(build_s=time.perf_counter() - t_start)
engine = PackedCodec(model, dt) if {mode!r}.startswith('packed') else None
kernel_s = engine.compile_kernels() if {mode!r} == 'packed+' else 0.0  # the native Snake: counted in the first encode call
for what, inp in (('encode', x), ('decode', z)):
    if {mode!r} == 'tuned': run = CompiledRun(model, what, {frames}, dt)
    elif engine is not None: run = getattr(engine, what)  # packed+ built or loaded its native Snake above
    else:
        f = model.encode if what == 'encode' else model.decode
        def run(a, f=f):
            with autocast_to(dt, 'cpu'): return f(a).float()
    with torch.no_grad():
        t = time.perf_counter(); y = run(inp).float(); first = time.perf_counter() - t + (kernel_s if what == 'encode' else 0.0)
        ts = []
        for _ in range({runs}):
            t = time.perf_counter(); run(inp); ts.append(time.perf_counter() - t)
    res[what] = dict(first_s=first, median_s=statistics.median(ts), runs=ts)
    ref = {ref!r}
    if ref and os.path.exists(ref + what): r = torch.load(ref + what); res[what]['err'] = ((y - r).norm() / r.norm()).item()
    elif ref: torch.save(y, ref + what); res[what]['err'] = 0.0
res['peak_mb'] = int([l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')][0]) / 1024
if engine is not None and engine.residual is not None:  # the same calls with the residual units as matmuls again
    res['fused_units'] = sum(op[4] is not None for steps in (engine.enc, engine.dec) for kind, op in steps if kind == 'res')
    engine.fuse_residuals(None)
    for what, inp in (('encode', x), ('decode', z)):
        f = getattr(engine, what); f(inp); ts = []
        for _ in range({runs}):
            t = time.perf_counter(); f(inp); ts.append(time.perf_counter() - t)
        res[what]['unfused_s'] = statistics.median(ts)
if engine is not None:  # the same calls with Snake skipped (wrong output): what the matmuls and the rest cost alone
    engine.kernel = lambda *args: None
    for what, inp in (('encode', x), ('decode', z)):
        f = getattr(engine, what); f(inp); ts = []
        for _ in range({runs}):
            t = time.perf_counter(); f(inp); ts.append(time.perf_counter() - t)
        res[what]['no_snake_s'] = statistics.median(ts)
print('RESULT ' + json.dumps(res))
'''

SAT_CHILD = r'''
import json, statistics, sys, time, types, importlib.abc, importlib.machinery
SAT = {sat!r}
sys.path.insert(0, SAT)
class _Any(type):
    def __getattr__(cls, n): return _Stub
class _Stub(metaclass=_Any):
    def __init__(self, *a, **k): pass
    def __call__(self, *a, **k): return a[0] if a and callable(a[0]) else _Stub
class _StubModule(types.ModuleType):
    __path__ = []
    def __getattr__(self, n):
        if n.startswith('__'): raise AttributeError(n)
        return _Stub
class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    "Stand-ins for third-party modules that SAT's own files import and that are not installed (used by other models)."
    def find_spec(self, name, path, target=None):
        top = name.split('.')[0]
        f = sys._getframe(1)
        while f is not None and f.f_code.co_filename.startswith('<frozen'): f = f.f_back
        if f is None or not f.f_code.co_filename.startswith(SAT): return None
        if top in sys.stdlib_module_names or top.startswith('_') or top in ('torch', 'numpy', 'stable_audio_tools'): return None
        for m in sys.meta_path:
            if m is self: continue
            try: s = m.find_spec(name, path, target)
            except Exception: s = None
            if s is not None: return None
        return importlib.machinery.ModuleSpec(name, self, is_package=True)
    def create_module(self, spec): return _StubModule(spec.name)
    def exec_module(self, m): pass
sys.meta_path.append(_Finder())
import torch
torch.set_num_threads({threads})
from stable_audio_tools.models.autoencoders import OobleckEncoder, OobleckDecoder
kw = dict(channels=128, c_mults=[1, 2, 4, 8, 16], strides=[2, 4, 4, 8, 8], use_snake=True)
torch.manual_seed(0)
enc = OobleckEncoder(in_channels=2, latent_dim=128, **kw).eval()
dec = OobleckDecoder(out_channels=2, latent_dim=64, **kw).eval()
for m in list(enc.modules()) + list(dec.modules()):
    try: torch.nn.utils.remove_weight_norm(m)
    except ValueError: pass
g = torch.Generator().manual_seed(1)
x = 0.1 * torch.randn(1, 2, {frames} * 2048, generator=g)
z = torch.randn(1, 64, {frames}, generator=g)
res = {{}}
for prec in ('fp32', 'bf16'):
    ctx = (lambda: torch.autocast('cpu', dtype=torch.bfloat16)) if prec == 'bf16' else torch.no_grad
    for what, f, a in (('encode', enc, x), ('decode', dec, z)):
        with torch.no_grad(), ctx():
            f(a); ts = []
            for _ in range({runs}):
                t = time.perf_counter(); f(a); ts.append(time.perf_counter() - t)
        res[prec + ' ' + what] = statistics.median(ts)
print('RESULT ' + json.dumps(res))
'''

def child(code: str, env=None) -> dict:
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT,
                       env={**os.environ, 'PYTHONPATH': str(ROOT), **(env or {})})
    line = [l for l in r.stdout.splitlines() if l.startswith('RESULT ')]
    if r.returncode or not line: raise RuntimeError(r.stderr.strip().splitlines()[-3:] if r.stderr.strip() else f'exit {r.returncode}')
    return json.loads(line[-1][7:])

def matmul_peak(threads: int) -> dict:
    import torch
    torch.set_num_threads(threads)
    out = {}
    for name, dt in (('fp32', torch.float32), ('bf16', torch.bfloat16)):
        a, b = torch.randn(2048, 2048, dtype=dt), torch.randn(2048, 2048, dtype=dt)
        for _ in range(3): a @ b
        ts = []
        for _ in range(10):
            t = time.perf_counter(); a @ b; ts.append(time.perf_counter() - t)
        out[name] = 2 * 2048 ** 3 / statistics.median(ts) / 1e9
    return out

def flops_per_second() -> dict:
    "FLOP per second of stereo audio, encode and decode, full preset (FlopCounterMode on 8 frames)."
    import torch
    from torch.utils.flop_counter import FlopCounterMode
    from lyracodec.vae import VAE, VAEConfig
    model = VAE(VAEConfig.preset('full')).eval().fold_weight_norm()
    out = {}
    for what, f, a in (('encode', model.encode, torch.zeros(1, 2, 8 * HOP)), ('decode', model.decode, torch.zeros(1, 64, 8))):
        with torch.no_grad(), FlopCounterMode(display=False) as fc: f(a)
        out[what] = fc.get_total_flops() / (8 * HOP / SR)
    return out

def exactness(frames: int, threads: int) -> dict:
    import torch
    torch.set_num_threads(threads)
    from lyracodec.vae import VAE, VAEConfig
    from lyracodec.codec import encode_audio, decode_latents, iter_encode, iter_decode
    from lyracodec.engine import PackedCodec
    torch.manual_seed(0)
    model = VAE(VAEConfig.preset('full')).eval().fold_weight_norm()
    x = 0.1 * torch.randn(1, 2, frames * HOP - 1000, generator=torch.Generator().manual_seed(2))
    eng = PackedCodec(model)
    with torch.no_grad():
        z = model.encode(x); zc = encode_audio(model, x)
        y = model.decode(z, x.shape[-1]); yc = decode_latents(model, z, x.shape[-1])
        zp = torch.cat(list(iter_encode(model, x, run=eng.encode)), -1)
        yp = torch.cat(list(iter_decode(model, z, x.shape[-1], run=eng.decode)), -1)
    rel = lambda a, b: ((a - b).abs().max() / b.abs().max()).item()
    return dict(encode=rel(zc, z), decode=rel(yc, y), packed_encode=rel(zp, z), packed_decode=rel(yp, y))

def window_sweep(sizes: list, threads: int) -> list:
    "Packed-engine seconds per kept frame at each window size (its own overlap subtracted), fp32 and bf16: the chunk size's trade-off."
    import torch
    torch.set_num_threads(threads)
    from lyracodec.vae import VAE, VAEConfig
    from lyracodec.codec import chunk_defaults
    from lyracodec.engine import PackedCodec
    torch.manual_seed(0)
    model = VAE(VAEConfig.preset('full')).eval().fold_weight_norm()
    out = []
    with torch.no_grad():
      for dt in (torch.float32, torch.bfloat16):
        eng = PackedCodec(model, dt, compiled=True)
        eng.compile_kernels()
        for w in sizes:
            row = [w, 'fp32' if dt == torch.float32 else 'bf16']
            for what, f, a in (('encode', eng.encode, 0.1 * torch.randn(1, 2, w * HOP)), ('decode', eng.decode, torch.randn(1, 64, w))):
                of = chunk_defaults(model, what)[1]
                f(a); t = time.perf_counter(); f(a); row.append((time.perf_counter() - t) / (w - of))
            out.append(row)
    return out

def write_wav(path: Path, seconds: float):
    import numpy as np, soundfile as sf
    rng = np.random.default_rng(0)
    t = np.arange(int(seconds * SR)) / SR
    x = 0.3 * np.stack([np.sin(2 * np.pi * 220 * t), np.sin(2 * np.pi * 330 * t + 1)], 1) + 0.05 * rng.standard_normal((t.size, 2))
    sf.write(path, x.astype('float32'), SR, subtype='PCM_16')

def e2e(seconds: float, threads: int, d: Path, cases: list, runs: int=3) -> list:
    import torch
    from lyracodec.vae import VAE, VAEConfig, save_pretrained
    torch.manual_seed(0)
    save_pretrained(VAE(VAEConfig.preset('full')), d / 'model')
    (d / 'in').mkdir(); write_wav(d / 'in' / 'song.wav', seconds)
    env = {**os.environ, 'OMP_NUM_THREADS': str(threads), 'LYRACODEC_CACHE': str(d / 'cache')}
    bin_ = Path(sys.executable).parent
    rows = []
    for k, (prec, engine, comp, warm) in enumerate(cases):
        times = {'encode': [], 'decode': []}
        for run in range(runs):
            tag = f'{k}-{run}-{prec}-{engine}-{comp}'
            for what, prog, src, dst in (('encode', 'lyracodec_encode', d / 'in', d / f'lat-{tag}'),
                                         ('decode', 'lyracodec_decode', d / f'lat-{tag}', d / f'dec-{tag}')):
                if not warm: shutil.rmtree(d / 'cache', ignore_errors=True)  # cold: nothing measured, built or packed yet
                t = time.perf_counter()
                r = subprocess.run([str(bin_ / prog), str(src), '--model', str(d / 'model'), '-o', str(dst), '-q', '--precision', prec,
                                    '--engine', engine, '--compile', comp], capture_output=True, text=True, env=env)
                if r.returncode: raise RuntimeError(f'{prog}: {r.stderr.strip()[-500:]}')
                times[what].append(time.perf_counter() - t)
            shutil.rmtree(d / f'dec-{tag}', ignore_errors=True)  # 21 MB a minute of audio: the disk stays clear
        rows.append((prec, engine, comp, warm, statistics.median(times['encode']), statistics.median(times['decode']),
                     times))
    return rows

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--threads', type=int, default=2); p.add_argument('--frames', type=int, default=128)
    p.add_argument('--runs', type=int, default=3); p.add_argument('--e2e-seconds', type=float, default=60)
    p.add_argument('--exact-frames', type=int, default=600); p.add_argument('--skip-e2e', action='store_true')
    p.add_argument('--skip-sat', action='store_true'); p.add_argument('--sat-dir', default=None,
                   help='folder with stable-audio-tools installed (pip --target); default: install it into a temporary one')
    p.add_argument('--modes', nargs='*', default=['eager', 'tuned', 'packed', 'packed+'])
    p.add_argument('--sweep', type=int, nargs='*', default=[64, 128, 256, 512], help='window sizes to time (packed engine)')
    p.add_argument('--e2e-runs', type=int, default=3, help='runs of each end-to-end row (the median is shown)')
    p.add_argument('--e2e-auto-only', action='store_true', help='only the end-to-end rows of --engine auto --compile auto')
    a = p.parse_args()
    import torch
    flags = Path('/proc/cpuinfo').read_text() if Path('/proc/cpuinfo').exists() else ''
    cpu = next((l.split(':', 1)[1].strip() for l in flags.splitlines() if l.startswith('model name')), '?')
    isa = ', '.join(f for f in ('avx512_bf16', 'amx_bf16') if f in flags) or 'no bf16 units'
    print(f'{cpu} ({isa}); torch {torch.__version__}; {a.threads} threads; load {os.getloadavg()[0]:.1f} '
          f'{os.getloadavg()[1]:.1f} {os.getloadavg()[2]:.1f}', flush=True)
    peak = matmul_peak(a.threads)
    work = flops_per_second()
    print(f'matmul 2048^2 peak: fp32 {peak["fp32"]:.0f} GFLOP/s, bf16 {peak["bf16"]:.0f} GFLOP/s; model work: '
          f'encode {work["encode"] / 1e9:.1f}, decode {work["decode"] / 1e9:.1f} GFLOP per second of stereo', flush=True)
    audio_s = a.frames * HOP / SR
    rows = []
    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        ref = str(d / 'ref-')
        cache = {'TORCHINDUCTOR_CACHE_DIR': str(d / 'inductor'), 'LYRACODEC_CACHE': str(d / 'lyracodec')}
        os.environ['LYRACODEC_CACHE'] = str(d / 'lyracodec')  # the window sweep's native Snake too: not the user's cache
        for prec in ('fp32', 'bf16'):
            for mode in a.modes:
                kw = dict(threads=a.threads, frames=a.frames, runs=a.runs, prec=prec, mode=mode, ref=ref)
                r = child(CHILD.format(**kw), cache)
                warm = child(CHILD.format(**kw), cache) if mode in ('tuned', 'packed+') else None
                rows.append((mode, prec, r, warm))
                print(f'  ran {mode} {prec} (load {os.getloadavg()[0]:.1f})', flush=True)
        sat = None
        if not a.skip_sat and rows:
            try:
                sat_dir = a.sat_dir or str(d / 'sat')
                if not a.sat_dir:
                    r = subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', '--no-deps', '--ignore-requires-python',
                                        '--target', sat_dir, 'stable-audio-tools==0.0.20'], capture_output=True, text=True, timeout=300)
                    if r.returncode: raise RuntimeError(r.stderr.strip().splitlines()[-1:])
                sat = child(SAT_CHILD.format(sat=sat_dir, threads=a.threads, frames=a.frames, runs=a.runs))
            except Exception as e: print(f'stable-audio-tools skipped: {e}')
        if rows: print(f'\nModel calls: full preset, one {a.frames}-frame window ({audio_s:.2f} s of stereo), {a.threads} threads, '
              f'median of {a.runs}')
        if rows: print(f'| path | precision | direction | s | x real time | GFLOP/s | share of peak | first call cold s | '
              f'first call warm s | peak MB | error vs eager fp32 |')
        if rows: print('|---|---|---|---|---|---|---|---|---|---|---|')
        for mode, prec, r, warm in rows:
            for what in ('encode', 'decode'):
                m = (warm or r)[what]; s = m['median_s']
                gf = work[what] * audio_s / s / 1e9
                print(f'| {mode} | {prec} | {what} | {s:.2f} | {audio_s / s:.2f} | {gf:.0f} | {gf / peak[prec]:.0%} | '
                      f'{r[what]["first_s"]:.1f} | {(warm or r)[what]["first_s"]:.1f} | {max(r["peak_mb"], (warm or r)["peak_mb"]):.0f} | '
                      f'{m.get("err", float("nan")):.1e} |')
        for mode, prec, r, warm in rows:
            if 'unfused_s' in (warm or r)['encode']:
                shares = [work[w] * audio_s / (warm or r)[w]['unfused_s'] / 1e9 / peak[prec] for w in ('encode', 'decode')]
                fused = [(warm or r)[w]['unfused_s'] / (warm or r)[w]['median_s'] for w in ('encode', 'decode')]
                print(f'{mode} {prec} with its {(warm or r)["fused_units"]} fused residual units run as matmuls again: {shares[0]:.0%} / '
                      f'{shares[1]:.0%} of peak (fused: {fused[0]:.2f}x / {fused[1]:.2f}x faster)')
        for mode, prec, r, warm in rows:
            if 'no_snake_s' in (warm or r)['encode']:
                shares = [work[w] * audio_s / (warm or r)[w]['no_snake_s'] / 1e9 / peak[prec] for w in ('encode', 'decode')]
                print(f'{mode} {prec} with Snake skipped (the matmuls and copies alone): {shares[0]:.0%} / {shares[1]:.0%} of peak')
        if sat:
            print('\nstable-audio-tools 0.0.20, same window, eager (weight norm removed), same run:')
            print('| precision | direction | SAT s | LyraCodec eager s | LyraCodec best s | best / SAT speed-up |')
            print('|---|---|---|---|---|---|')
            for prec in ('fp32', 'bf16'):
                for what in ('encode', 'decode'):
                    ours = {mode: (warm or r)[what]['median_s'] for mode, p_, r, warm in rows if p_ == prec}
                    s = sat[f'{prec} {what}']
                    print(f'| {prec} | {what} | {s:.2f} | {ours.get("eager", float("nan")):.2f} | {min(ours.values()):.2f} | '
                          f'{s / min(ours.values()):.2f}x |')
        if a.exact_frames:
            ex = exactness(a.exact_frames, a.threads)
            print(f'\nchunked vs whole-file, fp32, full preset, {a.exact_frames} frames, default plan: max |diff| / max |whole| '
                  f'= {ex["encode"]:.1e} (latents), {ex["decode"]:.1e} (audio); the packed engine chunked against the model '
                  f'whole-file: {ex["packed_encode"]:.1e}, {ex["packed_decode"]:.1e}', flush=True)
        if a.sweep:
            print(f'\nWindow size, packed engine (native Snake), ms per kept frame (overlap 16 encode / 20 decode subtracted; load {os.getloadavg()[0]:.1f}):')
            print('| window frames | precision | encode ms/frame | decode ms/frame |')
            print('|---|---|---|---|')
            for w, pr, e, dd in window_sweep(a.sweep, a.threads): print(f'| {w} | {pr} | {e * 1e3:.1f} | {dd * 1e3:.1f} |', flush=True)
        if not a.skip_e2e:
            rows_e2e = (('auto', 'auto', False), ('auto', 'auto', True))
            if not a.e2e_auto_only: rows_e2e = (('model', 'off', False), ('packed', 'off', False)) + rows_e2e
            cases = [(p_, e, c, w) for p_ in ('fp32', 'bf16') for e, c, w in rows_e2e]
            res = e2e(a.e2e_seconds, a.threads, d, cases, a.e2e_runs)
            after = matmul_peak(a.threads)
            top = {k: max(peak[k], after[k]) for k in peak}
            print(f'\nEnd to end, {a.e2e_seconds:g} s stereo WAV, full preset, wall time including start-up, median of '
                  f'{a.e2e_runs} (load {os.getloadavg()[0]:.1f}); matmul peak again after these rows: fp32 {after["fp32"]:.0f}, '
                  f'bf16 {after["bf16"]:.0f} GFLOP/s; shares are of the higher peak (fp32 {top["fp32"]:.0f}, bf16 {top["bf16"]:.0f}):')
            print('| precision | --engine | --compile | encode s | x real time | share of peak | decode s | x real time | share of peak | encode runs s | decode runs s |')
            print('|---|---|---|---|---|---|---|---|---|---|---|')
            for prec, engine, comp, warm, te, td, times in res:
                label = comp if comp == 'off' else f'{comp}, {"warm" if warm else "cold"} cache'
                se = work['encode'] * a.e2e_seconds / te / 1e9 / top[prec]
                sd = work['decode'] * a.e2e_seconds / td / 1e9 / top[prec]
                runs_ = lambda w: ' '.join(f'{t:.1f}' for t in times[w])
                print(f'| {prec} | {engine} | {label} | {te:.1f} | {a.e2e_seconds / te:.2f} | {se:.0%} | {td:.1f} | {a.e2e_seconds / td:.2f} | {sd:.0%} | '
                      f'{runs_("encode")} | {runs_("decode")} |')
    print(f'\nload at the end {os.getloadavg()[0]:.1f} {os.getloadavg()[1]:.1f} {os.getloadavg()[2]:.1f}')

if __name__ == '__main__': main()
