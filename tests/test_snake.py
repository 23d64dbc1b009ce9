"Snake's CUDA paths checked on CPU: the Triton kernels in Triton's interpreter, the compiled formula with Inductor on CPU."
import os, subprocess, sys, textwrap
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from helpers import ROOT
from lyracodec import snake as S
from lyracodec.snake import (SNAKE_TOL, Snake, resolve_impl, set_snake_impl, snake, snake_errors, snake_naive,
                             triton_interpreter, triton_unavailable)

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
needs_triton = pytest.mark.skipif(S.load_triton() is None, reason='Triton is not installed')

@needs_triton
@pytest.mark.parametrize('dtype', DTYPES, ids=str)
@pytest.mark.parametrize('shape', [(2, 3, 300), (1, 2, 2100), (3, 1, 17)], ids=str)
def test_triton_kernel_matches_naive(dtype, shape):
    "Values and the gradients of x, log α, log β: one block, several blocks with a masked tail, a row shorter than 16."
    with triton_interpreter(): err = snake_errors('triton', dtype, shape)
    assert max(err.values()) < SNAKE_TOL[dtype], err

@needs_triton
def test_triton_kernel_non_contiguous_and_autocast_dtypes():
    "A transposed input, and bf16 activations with float32 parameters (what autocast hands Snake)."
    x = torch.randn(2, 300, 4).transpose(1, 2).requires_grad_()  # [2, 4, 300], not contiguous
    la, lb = (torch.randn(4) * 0.3).requires_grad_(), (torch.randn(4) * 0.3).requires_grad_()
    with triton_interpreter(): y = snake(x, la, lb, impl='triton')
    y.backward(torch.ones_like(y))
    grads = [t.grad.clone() for t in (x, la, lb)]
    for t in (x, la, lb): t.grad = None
    ref = snake_naive(x, la, lb); ref.backward(torch.ones_like(ref))
    torch.testing.assert_close(y, ref)
    for g, t in zip(grads, (x, la, lb)): torch.testing.assert_close(g, t.grad, rtol=1e-5, atol=1e-4)
    xb = torch.randn(2, 4, 100).bfloat16()
    with triton_interpreter(): yb = snake(xb, la.detach(), lb.detach(), impl='triton')
    assert yb.dtype == torch.bfloat16 and yb.shape == xb.shape

@needs_triton
def test_triton_refused_on_cpu_without_interpreter():
    x = torch.randn(1, 2, 8)
    assert 'CUDA' in triton_unavailable(x)
    with pytest.raises(RuntimeError, match="impl='triton'.*CUDA"): snake(x, torch.zeros(2), torch.zeros(2), impl='triton')
    with triton_interpreter(): assert triton_unavailable(torch.zeros(1, 2, 3, dtype=torch.float64)) is not None

@pytest.mark.parametrize('dtype', DTYPES, ids=str)
@pytest.mark.parametrize('block', [37, 600, 1 << 22], ids=lambda b: f'block{b}')
def test_fused_blocks_match_naive(dtype, block, monkeypatch):
    """The fused function in blocks split by channel, by batch rows, or one block; half-precision gradients of log α
    and log β as close as float32's, since every block is worked on in float32."""
    monkeypatch.setattr(S, 'BLOCK_ELEMENTS', block)
    err = snake_errors('fused', dtype, (3, 5, 300))
    assert max(err.values()) < SNAKE_TOL[dtype], err
    assert max(err['log_alpha'], err['log_beta']) < 1e-5, err  # was 1.2e-2 in bfloat16 when computed in the dtype

@pytest.mark.parametrize('dtype', DTYPES, ids=str)
def test_compiled_formula_matches_naive(dtype):
    err = snake_errors('compiled', dtype, (2, 3, 2500))
    assert max(err.values()) < SNAKE_TOL[dtype], err

def test_compiled_formula_one_graph_for_many_shapes():
    "Dynamic shapes: after the first call no width, length or batch size recompiles (forward and backward)."
    def step(shape):  # parameters as in the model: nn.Parameter, whose shapes Dynamo would keep static
        x = torch.randn(shape, requires_grad=True)
        la, lb = nn.Parameter(torch.zeros(shape[1])), nn.Parameter(torch.zeros(shape[1]))
        snake(x, la, lb, impl='compiled').sum().backward()
        assert la.grad.shape == (shape[1],) and lb.grad is not None
    step((2, 3, 2500))
    # Inductor's CPU code guards once on B·T > 4096 (its reduction accumulator); all shapes here are on one side of it
    with torch.compiler.set_stance('fail_on_recompile'):
        for shape in ((3, 6, 2000), (2, 16, 3000), (4, 2, 1500), (2, 64, 4096)): step(shape)

def test_auto_dispatch(monkeypatch):
    cpu = torch.zeros(1, 2, 3)
    assert resolve_impl('auto', cpu) == 'fused'
    cuda = SimpleNamespace(device=torch.device('cuda'), dtype=torch.bfloat16)
    assert resolve_impl('auto', cuda) == (S.CUDA_IMPL if S.load_triton() is not None else 'fused')
    assert resolve_impl('auto', SimpleNamespace(device=torch.device('cuda'), dtype=torch.float64)) == 'fused'
    with pytest.raises(ValueError, match='impl must be one of'): resolve_impl('fast', cpu)
    with pytest.raises(ValueError, match='impl must be one of'): Snake(4, impl='fast')
    monkeypatch.setattr(torch.compiler, 'is_compiling', lambda: True)  # inside torch.compile: the plain formula
    if S.load_triton() is not None: assert resolve_impl('auto', cuda) == 'compiled'
    assert resolve_impl('auto', cpu) == 'compiled'  # on the CPU too: Inductor fuses the formula, not the fused backward
    x, la, lb = torch.randn(2, 3, 50), torch.randn(3), torch.randn(3)
    torch.testing.assert_close(S.snake_compiled(x, la, lb), snake_naive(x, la, lb))

def test_module_impls_agree_and_switch():
    torch.manual_seed(0)
    model = nn.Sequential(Snake(4), nn.Conv1d(4, 4, 3, padding=1), Snake(4, fused=False))
    with torch.no_grad():
        for m in model:
            if isinstance(m, Snake): m.alpha.normal_(0, 0.5); m.beta.normal_(0, 0.5)
    x = torch.randn(2, 4, 256)
    impls = ['fused', 'naive', 'compiled'] + (['triton'] if S.load_triton() is not None else [])
    outs, grads = {}, {}
    for impl in impls:
        assert set_snake_impl(model, impl) == 2
        model.zero_grad()
        with triton_interpreter(): y = model(x)
        y.square().mean().backward()
        outs[impl] = y.detach()
        grads[impl] = [p.grad.clone() for p in model.parameters()]
    for impl in impls[1:]:
        torch.testing.assert_close(outs[impl], outs['fused'], rtol=1e-5, atol=1e-5)
        for a, b in zip(grads[impl], grads['fused']): torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert "impl='triton'" in repr(model) or S.load_triton() is None

def test_import_and_fallback_without_triton():
    "With Triton absent the module imports, 'auto' is the fused function everywhere and impl='triton' says why not."
    code = textwrap.dedent('''
        import sys; sys.modules['triton'] = None  # import triton now raises ImportError
        import torch
        from types import SimpleNamespace
        import lyracodec.snake as S
        from lyracodec.snake import Snake, snake, resolve_impl
        assert S.load_triton() is None and S.TRITON_ERROR and 'triton' in S.TRITON_ERROR.lower(), S.TRITON_ERROR
        y = Snake(3)(torch.randn(2, 3, 10)); assert y.shape == (2, 3, 10)
        assert resolve_impl('auto', SimpleNamespace(device=torch.device('cuda'), dtype=torch.float32)) == 'fused'
        try: snake(torch.randn(1, 3, 4), torch.zeros(3), torch.zeros(3), impl='triton')
        except RuntimeError as e: print('refused:', e)
    ''')
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "refused: Snake impl='triton': Triton is not importable" in r.stdout

def test_cpu_commands_do_not_import_triton():
    "Triton is imported only when a CUDA tensor or the interpreter asks for it: the CPU commands' start-up skips it."
    code = textwrap.dedent('''
        import sys, torch
        import lyracodec.codec, lyracodec.preencode, lyracodec.metrics
        from lyracodec.snake import Snake
        Snake(4)(torch.randn(1, 4, 16)).sum().backward()
        assert 'triton' not in sys.modules, 'triton was imported'
        import lyracodec.snake as S
        assert (S.load_triton() is None) == (S.TRITON_ERROR is not None)
        assert not {'triton', 'tl', 'TRITON_ERROR'} & set(S.__all__)  # a star import never shadows the user's own triton
    ''')
    r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]

def test_bench_snake_runs():
    "bench/snake.py keeps working (tiny shape, one repeat)."
    r = subprocess.run([sys.executable, 'bench/snake.py', '--shape', '2', '4', '512', '--repeats', '1'],
                       capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert 'speed-up (naive / fused)' in r.stdout

def test_bench_gpu_runs_on_cpu():
    "bench/gpu.py's CPU mode keeps working (two of its sections, one repeat): a table and no FAILED row."
    r = subprocess.run([sys.executable, 'bench/gpu.py', '--device', 'cpu', '--small', '--only', 'snake', 'infer',
                        '--repeats', '1', '--infer-runs', '1', '--warm-cache'],
                       capture_output=True, text=True, cwd=ROOT, timeout=600, env={**os.environ, 'PYTHONPATH': str(ROOT)})
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert 'fused [4, 32, 16384] fp32' in r.stdout and 'x real time' in r.stdout
    assert 'FAILED' not in r.stdout
