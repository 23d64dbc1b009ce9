"""LyraCodec at GPU speed, in one table: Snake per implementation, the model-only training step with each Snake,
the trainer's steps/s and data wait, inference fp32/bf16 as a multiple of real time, peak memory, and the time to the
first compiled step. It runs on the CPU too, with small sizes, so that it never rots.

    PYTHONPATH=$PWD python bench/gpu.py                          # CUDA: full preset, batch 8 x 65536, bf16 autocast
    PYTHONPATH=$PWD python bench/gpu.py --device cpu --small     # CPU: tiny preset, small sizes, 1 thread (~3 min)
    ... --only snake step  (sections: snake step trainer infer compile trainer_compile)
    ... --set data.num_workers=16  (trainer config overrides)

* Snake: forward + backward of `lyracodec.snake.snake` per `impl` (naive, fused, compiled = torch.compile of the
  formula, triton = the CUDA kernel), median of --repeats after one warm-up call (which compiles, where there is
  compiling to do; its time is in the note).
* step: the model alone, fwd + bwd + AdamW (fused on CUDA), loss L1 + 1e-4 KL, with every Snake switched to one impl.
* trainer: `Trainer.train_step` on the demo corpus (`make_demo_corpus`, 2 minutes for --small, 8 otherwise so that an
  epoch of 1.5 s crops lasts ~20 steps at batch 8; cached under $LYRACODEC_CACHE or ~/.cache/lyracodec), config
  `default` (CUDA: full preset) or `demo` (--small); steps/s over --trainer-steps after 5 warm-up steps, and the share
  of wall time spent blocked waiting for the next batch. One synchronisation at the end of the window, none per step.
* infer: `encode_audio` then `decode_latents` (weight norm folded, audio already on the device), fp32 and bf16
  autocast, after one full-size warm-up; x real time = seconds of audio per second of compute (batch included).
  On CUDA cudnn.benchmark is on for the whole run.
* compile: a fresh model under `torch.compile(model)`: seconds from the call to the end of the first training step, then
  the steady step time. trainer_compile: `Trainer` with `run.compile=true`, seconds from construction to the end of
  its first step (after `compile` in the same process, graphs the two share come from the caches; not run by default
  with --small, where it adds minutes).
  Inductor's and Triton's on-disk caches point to a fresh temporary folder (cold start) unless --warm-cache.
* Peak memory: CUDA `torch.cuda.max_memory_allocated` after a reset per row; CPU the process's peak resident set
  (VmHWM, reset per row through /proc/self/clear_refs, with its growth over the row's starting RSS in brackets; where
  the reset is refused, `ru_maxrss`, which never goes down, marked *). Data-loader worker processes are not counted.
"""
import argparse, contextlib, gc, os, resource, statistics, sys, tempfile, time
from pathlib import Path

_CACHE = None
if '--warm-cache' not in sys.argv:  # before torch: compile caches in a fresh folder, so first-compile times are cold
    _CACHE = tempfile.TemporaryDirectory(prefix='lyracodec_bench_')
    os.environ['TORCHINDUCTOR_CACHE_DIR'] = os.path.join(_CACHE.name, 'inductor')
    os.environ['TRITON_CACHE_DIR'] = os.path.join(_CACHE.name, 'triton')

import torch
import torch.nn.functional as F

from lyracodec.snake import snake, set_snake_impl, triton_unavailable, IMPLS
from lyracodec.vae import VAE, VAEConfig
from lyracodec.codec import encode_audio, decode_latents

SNAKE_IMPLS = [i for i in IMPLS if i != 'auto']  # fused, naive, triton, compiled
DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}

# ---------------------------------------------------------------- sizes
FULL = dict(snake_shape=(8, 128, 65536), snake_dtypes=('fp32', 'bf16'), preset='full', batch=8, length=65536,
            amp='bf16', config='default', trainer_overrides=['data.num_workers=8'], infer_batch=8, infer_seconds=9.75,
            compile_preset='full', repeats=10, corpus_minutes=8)
SMALL = dict(snake_shape=(4, 32, 16384), snake_dtypes=('fp32', 'bf16'), preset='tiny', batch=4, length=16384,
             amp='none', config='demo', trainer_overrides=[], infer_batch=1, infer_seconds=4.0,
             compile_preset='tiny', repeats=5, corpus_minutes=2)

# ---------------------------------------------------------------- measuring
def sync(dev):
    if dev.type == 'cuda': torch.cuda.synchronize(dev)

class Peak:
    "Peak memory of a block: CUDA allocator peak, or the process's peak RSS on CPU."
    def __init__(self, dev): self.dev, self.bytes, self.start, self.note = dev, None, None, ''
    def __enter__(self):
        gc.collect()
        if self.dev.type == 'cuda': torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats(self.dev)
        else:
            self.start = _status_bytes('VmRSS')
            try:
                with open('/proc/self/clear_refs', 'w') as f: f.write('5')
            except OSError: self.note = '*'
        return self
    def __exit__(self, *exc):
        if self.dev.type == 'cuda': self.bytes = torch.cuda.max_memory_allocated(self.dev)
        else:
            hwm = None if self.note else _status_bytes('VmHWM')
            if hwm is None: self.note, hwm = '*', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
            self.bytes = hwm
    def __str__(self):
        if self.bytes is None: return ''
        grew = f' (+{max(0, self.bytes - self.start) / 2**20:.0f} MB)' if self.start is not None else ''
        return f'{self.bytes / 2**30:.2f} GB{self.note}{grew}'

def _status_bytes(key: str):
    "A memory figure of this process from /proc/self/status (Linux), in bytes; None elsewhere."
    try: return next(int(l.split()[1]) * 1024 for l in open('/proc/self/status') if l.startswith(key + ':'))
    except (OSError, StopIteration): return None

def autocast(dev, amp: str):
    return torch.autocast(dev.type, dtype=DTYPES[amp]) if amp != 'none' else contextlib.nullcontext()

ROWS = []
def row(section: str, variant: str, result: str, peak='', note=''):
    ROWS.append((section, variant, result, str(peak), note))
    print(f'  {section} | {variant} | {result} | {peak} | {note}', flush=True)

def skip_impl(impl: str, dev) -> str:
    "Why `impl` cannot run here ('' when it can)."
    if impl == 'triton':
        why = triton_unavailable(torch.empty(1, 1, 1, device=dev))
        return why or ''
    if impl == 'compiled' and dev.type == 'cuda' and triton_unavailable(torch.empty(1, 1, 1, device=dev)):
        return 'torch.compile on CUDA needs Triton'
    return ''

# ---------------------------------------------------------------- sections
def bench_snake(dev, S, a):
    B, C, T = S['snake_shape']
    for dname in S['snake_dtypes']:
        torch.manual_seed(0)
        x = torch.randn(B, C, T, device=dev).to(DTYPES[dname]).requires_grad_()
        la, lb = (torch.randn(C, device=dev) * 0.3).requires_grad_(), (torch.randn(C, device=dev) * 0.3).requires_grad_()
        base = None
        for impl in ('naive', 'fused', 'compiled', 'triton'):
            label = f'{impl} [{B}, {C}, {T}] {dname}'
            why = skip_impl(impl, dev)
            if why: row('snake fwd+bwd', label, 'n/a', note=why); continue
            times = []
            with Peak(dev) as pk:
                for i in range(a.repeats + 1):
                    for t in (x, la, lb): t.grad = None
                    sync(dev); t0 = time.perf_counter()
                    y = snake(x, la, lb, impl=impl)
                    y.backward(torch.ones_like(y))
                    sync(dev); times.append(time.perf_counter() - t0)
                    del y
            med = statistics.median(times[1:])
            base = base or med
            row('snake fwd+bwd', label, f'{med * 1e3:.2f} ms', pk,
                f'{base / med:.2f}x naive; first call {times[0] * 1e3:.0f} ms')
        del x, la, lb

def _model_step_fn(model, opt, x, dev, amp):
    def step():
        with autocast(dev, amp):
            mu, logvar, z, y = model(x)
            loss = F.l1_loss(y.float(), x) + 1e-4 * model.kl(mu.float(), logvar.float())
        loss.backward()
        opt.step(); opt.zero_grad(set_to_none=True)
    return step

def _new_model(preset, dev, impl='auto'):
    torch.manual_seed(0)
    model = VAE(VAEConfig.preset(preset)).to(dev).train()
    set_snake_impl(model, impl)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.8, 0.99), weight_decay=1e-3, fused=dev.type == 'cuda')
    return model, opt

def bench_step(dev, S, a):
    B, T = S['batch'], S['length']
    impls = ['naive', 'fused', 'triton' if dev.type == 'cuda' else None, 'compiled']
    for impl in [i for i in impls if i]:
        label = f'{S["preset"]}, {B} x {T}, {S["amp"]}, Snake {impl}'
        why = skip_impl(impl, dev)
        if why: row('model step', label, 'n/a', note=why); continue
        model, opt = _new_model(S['preset'], dev, impl)
        x = 0.1 * torch.randn(B, 2, T, device=dev)
        step = _model_step_fn(model, opt, x, dev, S['amp'])
        t0 = time.perf_counter(); step(); step(); sync(dev); warm = time.perf_counter() - t0
        times = []
        with Peak(dev) as pk:
            for _ in range(a.steps):
                sync(dev); t0 = time.perf_counter(); step(); sync(dev); times.append(time.perf_counter() - t0)
        row('model step', label, f'{statistics.median(times):.3f} s', pk, f'2 warm-up steps {warm:.1f} s')
        del model, opt, x, step

def _corpus(a, S) -> Path:
    "--data, or the demo corpus (made once, cached): 2 minutes for --small (the demo's), 8 for 1.5 s crops at batch 8."
    from lyracodec.core import cache_dir
    from lyracodec.demo_corpus import make_demo_corpus
    minutes = S['corpus_minutes']
    if a.data: return Path(a.data)
    return make_demo_corpus(cache_dir() / ('demo' if minutes == 2 else f'demo_{minutes:g}min'), minutes)

def bench_trainer(dev, S, a):
    from lyracodec.trainer import Trainer, load_config
    corpus = _corpus(a, S)
    over = [f'data.root={corpus}', 'logging.logger=none', 'logging.progress=false', f'run.device={dev.type}',
            *S['trainer_overrides']]
    if dev.type == 'cuda': over += [f'run.amp={S["amp"]}', f'model.preset={S["preset"]}',
                                    f'data.batch_size={S["batch"]}', f'data.target_length={S["length"]}']
    cfg = load_config(S['config'], over + a.overrides)
    with tempfile.TemporaryDirectory() as d, _keep_threads():
        tr = Trainer(cfg, d, log=lambda *_, **__: None)
        stream, n = tr.micro_batches(), cfg.optim.accum_steps
        with Peak(dev) as pk:
            for _ in range(5): tr.train_step([next(stream) for _ in range(n)])
            sync(dev)
            wait, t_start = 0.0, time.perf_counter()
            for _ in range(a.trainer_steps):
                t0 = time.perf_counter(); xs = [next(stream) for _ in range(n)]; wait += time.perf_counter() - t0
                tr.train_step(xs)
            sync(dev); wall = time.perf_counter() - t_start
        dd = cfg.data
        sps = a.trainer_steps / wall
        row('trainer', f'{cfg.model.preset}, {dd.batch_size} x {dd.target_length}, amp {cfg.run.amp}, '
            f'{dd.num_workers} workers, {torch.get_num_threads()} thread(s), loss {cfg.loss.recipe}', f'{sps:.2f} steps/s', pk,
            f'data wait {100 * wait / wall:.1f}%; {sps * dd.batch_size * dd.target_length / dd.sample_rate:.1f} s audio/s')
        del tr

def bench_infer(dev, S, a):
    torch.manual_seed(0)
    model = VAE(VAEConfig.preset(S['preset'])).to(dev).eval().fold_weight_norm()
    B, secs = S['infer_batch'], S['infer_seconds']
    x = 0.1 * torch.randn(B, 2, int(secs * model.sample_rate), device=dev)
    for dname in ('fp32', 'bf16'):
        dtype = None if dname == 'fp32' else DTYPES[dname]
        decode_latents(model, encode_audio(model, x, dtype=dtype), x.shape[-1], dtype=dtype)  # warm-up, full size:
        # with cudnn.benchmark the first call of each shape searches algorithms (one fp32 decode peaked at 67 GB so)
        enc, dec = [], []
        with Peak(dev) as pk:
            for _ in range(a.infer_runs):
                sync(dev); t0 = time.perf_counter(); z = encode_audio(model, x, dtype=dtype); sync(dev)
                t1 = time.perf_counter(); decode_latents(model, z, x.shape[-1], dtype=dtype); sync(dev)
                enc.append(t1 - t0); dec.append(time.perf_counter() - t1)
        e, d_ = statistics.median(enc), statistics.median(dec)
        audio = B * secs
        row('inference', f'{S["preset"]}, {B} x {secs:g} s, {dname}', f'{audio / (e + d_):.0f}x real time', pk,
            f'encode {e:.3f} s ({audio / e:.0f}x), decode {d_:.3f} s ({audio / d_:.0f}x)')
    del model, x

def bench_compile(dev, S, a):
    B, T = S['batch'], S['length']
    model, opt = _new_model(S['compile_preset'], dev)
    x = 0.1 * torch.randn(B, 2, T, device=dev)
    cmodel = torch.compile(model)
    step = _model_step_fn(cmodel, opt, x, dev, S['amp'])
    with Peak(dev) as pk:
        t0 = time.perf_counter(); step(); sync(dev); first = time.perf_counter() - t0
        times = []
        for _ in range(a.steps):
            sync(dev); t0 = time.perf_counter(); step(); sync(dev); times.append(time.perf_counter() - t0)
    row('compile', f'torch.compile(model), {S["compile_preset"]}, {B} x {T}, {S["amp"]}', f'first step {first:.1f} s', pk,
        f'then {statistics.median(times):.3f} s/step (median of {a.steps}, incl. recompiles)')
    del model, opt, cmodel, step, x
    torch._dynamo.reset()

def bench_trainer_compile(dev, S, a):
    B, T = S['batch'], S['length']
    from lyracodec.trainer import Trainer, load_config
    corpus = _corpus(a, S)
    over = [f'data.root={corpus}', 'logging.logger=none', 'logging.progress=false', f'run.device={dev.type}',
            'run.compile=true', f'model.preset={S["compile_preset"]}', *S['trainer_overrides']]
    if dev.type == 'cuda': over += [f'run.amp={S["amp"]}', f'data.batch_size={B}', f'data.target_length={T}']
    cfg = load_config(S['config'], over + a.overrides)
    with tempfile.TemporaryDirectory() as d, _keep_threads(), Peak(dev) as pk:
        t0 = time.perf_counter()
        tr = Trainer(cfg, d, log=lambda *_, **__: None)
        stream = tr.micro_batches()
        tr.train_step([next(stream) for _ in range(cfg.optim.accum_steps)]); sync(dev)
        first = time.perf_counter() - t0
        t1 = time.perf_counter()
        for _ in range(a.steps): tr.train_step([next(stream) for _ in range(cfg.optim.accum_steps)])
        sync(dev)
        rest = (time.perf_counter() - t1) / a.steps
    row('compile', f'Trainer run.compile=true, {cfg.model.preset}, {cfg.data.batch_size} x {cfg.data.target_length}',
        f'first step {first:.1f} s', pk, f'then {rest:.3f} s/step (construction included in the first; '
        f'compile caches shared with the row above)')

@contextlib.contextmanager
def _keep_threads():
    "The trainer sets torch's thread count from its config (the demo's: 1); the other sections keep theirs."
    n = torch.get_num_threads()
    try: yield
    finally: torch.set_num_threads(n)

SECTIONS = {'snake': bench_snake, 'step': bench_step, 'trainer': bench_trainer, 'infer': bench_infer,
            'compile': bench_compile, 'trainer_compile': bench_trainer_compile}
SMALL_DEFAULT = ['snake', 'step', 'trainer', 'infer', 'compile']  # trainer_compile adds minutes on 2 cores: ask for it

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    p.add_argument('--small', action='store_true', help='tiny preset and small sizes (the CPU configuration)')
    p.add_argument('--only', nargs='*', choices=list(SECTIONS), default=None,
                   help=f'sections to run (default: all; with --small: {" ".join(SMALL_DEFAULT)})')
    p.add_argument('--repeats', type=int, default=None, help='Snake timings per implementation')
    p.add_argument('--steps', type=int, default=None, help='timed model steps per row')
    p.add_argument('--trainer-steps', type=int, default=None)
    p.add_argument('--infer-runs', type=int, default=3)
    p.add_argument('--data', default=None, help='folder of audio for the trainer sections (default: the demo corpus)')
    p.add_argument('--set', dest='overrides', action='append', default=[], help='trainer config override KEY=VALUE')
    p.add_argument('--warm-cache', action='store_true', help="keep Inductor's and Triton's usual on-disk caches")
    p.add_argument('--threads', type=int, default=None,
                   help="torch CPU threads (default: torch's; 1 with --small, as the demo config: steadier on shared cores)")
    a = p.parse_args()
    dev = torch.device(a.device)
    if dev.type == 'cuda' and not torch.cuda.is_available(): p.error('--device cuda: no CUDA device is visible')
    S = SMALL if a.small else FULL
    a.only = a.only or (SMALL_DEFAULT if a.small else list(SECTIONS))
    a.repeats = a.repeats or S['repeats']
    a.steps = a.steps or (3 if a.small else 10)
    a.trainer_steps = a.trainer_steps or (10 if a.small else 30)
    a.threads = a.threads or (1 if a.small and dev.type == 'cpu' else None)
    if a.threads: torch.set_num_threads(a.threads)
    if dev.type == 'cuda':
        torch.backends.cudnn.benchmark = True  # as a fixed-crop trainer would; warm-up calls take the algorithm search
        name = f'{torch.cuda.get_device_name(dev)}, cudnn.benchmark on'
    else: name = f'CPU, {torch.get_num_threads()} torch thread(s), {os.cpu_count()} cores visible'
    print(f'{name}; torch {torch.__version__}; {"small" if a.small else "full"} sizes; '
          f'{"warm" if a.warm_cache else "cold"} compile caches; load {os.getloadavg()[0]:.1f}', flush=True)
    t_all = time.perf_counter()
    for s in a.only:
        t0 = time.perf_counter()
        try: SECTIONS[s](dev, S, a)
        except Exception as e:  # one broken section must not hide the others' figures; the error is in the table
            row(s, 'FAILED', f'{type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ""}')
        print(f'  ({s}: {time.perf_counter() - t0:.0f} s)', flush=True)
        gc.collect()
        if dev.type == 'cuda': torch.cuda.empty_cache()
    widths = [max(len(r[i]) for r in ROWS + [('section', 'variant', 'result', 'peak memory', 'note')]) for i in range(5)]
    print()
    for r in [('section', 'variant', 'result', 'peak memory', 'note'), tuple('-' * w for w in widths)] + ROWS:
        print('| ' + ' | '.join(c.ljust(w) for c, w in zip(r, widths)) + ' |')
    print(f'\n{name}; total {time.perf_counter() - t_all:.0f} s', flush=True)
    return 1 if any(r[1] == 'FAILED' for r in ROWS) else 0

if __name__ == '__main__': sys.exit(main())
