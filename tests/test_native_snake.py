"The native library's build: compilers without OpenMP or AMX, a build shared by processes, the cache reused."
import os, subprocess, sys, textwrap
import pytest
from pathlib import Path


from helpers import ROOT

CHECK = textwrap.dedent('''
    import torch
    from lyracodec.engine import native_snake, snake_rows
    torch.set_num_threads(2)
    k = native_snake()
    x = 5 * torch.randn(50000, 48, generator=torch.Generator().manual_seed(0))
    b, f, ib = torch.randn(48), torch.rand(48), torch.rand(48) + 0.5
    out, ref = torch.empty_like(x), torch.empty_like(x)
    k(x, b, f, ib, out); snake_rows(x, b, f, ib, ref)
    assert (out - ref).abs().max() <= 1e-6 * ref.abs().max(), (out - ref).abs().max()
    assert k.fallbacks == 0
    from lyracodec.engine import native_residual, FusedResidual, PackedSnake, PackedConv
    from lyracodec.residual import ResidualUnit
    u = ResidualUnit(64, 3).eval()
    fr = FusedResidual(PackedSnake(u.layers[0]), PackedConv(u.layers[1], torch.bfloat16), PackedSnake(u.layers[2]),
                       PackedConv(u.layers[3], torch.bfloat16))
    rows = torch.randn(300, 64, generator=torch.Generator().manual_seed(1)).bfloat16()
    fr32 = FusedResidual(PackedSnake(u.layers[0]), PackedConv(u.layers[1], torch.float32), PackedSnake(u.layers[2]),
                         PackedConv(u.layers[3], torch.float32))
    for kernel, f, x in ((native_residual(fast=False), fr, rows), (native_residual(torch.float32, fast=False), fr32, rows.float())):
        outs = []
        for threads in (1, 3):  # blocks split over threads (OpenMP, or pthreads without it): the same values
            torch.set_num_threads(threads); y = x.clone(); kernel(y, torch.zeros(64), f); outs.append(y)
        assert torch.equal(outs[0], outs[1]) and not torch.equal(outs[0], x)
''')

def _fake_cc(d: Path, refuse_openmp: bool) -> Path:
    "A `cc` that logs each call to d/calls and, if asked, refuses -fopenmp like a compiler without OpenMP."
    cc = d / 'cc'
    refuse = 'for a in "$@"; do [ "$a" = "-fopenmp" ] && { echo "cc: error: unsupported option -fopenmp" >&2; exit 1; }; done\n' if refuse_openmp else ''
    cc.write_text(f'#!/bin/sh\necho "$@" >> {d / "calls"}\n{refuse}exec gcc "$@"\n'); cc.chmod(0o755)
    return cc

def _run(env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, '-c', CHECK], env={**os.environ, 'PYTHONPATH': str(ROOT), **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

def test_a_compiler_without_openmp_gives_a_threaded_kernel(tmp_path):
    env = {'CC': str(_fake_cc(tmp_path, refuse_openmp=True)), 'LYRACODEC_CACHE': str(tmp_path / 'cache')}
    p = _run(env); out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    calls = (tmp_path / 'calls').read_text().splitlines()
    assert len(calls) == 2 and '-fopenmp' in calls[0] and '-fopenmp' not in calls[1]  # OpenMP refused, then pthreads

def test_processes_share_one_build_and_later_ones_only_load_it(tmp_path):
    env = {'CC': str(_fake_cc(tmp_path, refuse_openmp=False)), 'LYRACODEC_CACHE': str(tmp_path / 'cache')}
    procs = [_run(env) for _ in range(3)]  # at once: each may build, none may load a half-written library
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    native = tmp_path / 'cache' / 'native'
    assert [f.suffix for f in native.iterdir()] == ['.so']  # one library, no temporaries left
    n = len((tmp_path / 'calls').read_text().splitlines())
    p = _run(env); out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert len((tmp_path / 'calls').read_text().splitlines()) == n  # loaded from the cache: the compiler not run again

def test_a_damaged_cached_library_is_built_again(tmp_path):
    env = {'LYRACODEC_CACHE': str(tmp_path / 'cache')}
    p = _run(env); out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    (lib,) = (tmp_path / 'cache' / 'native').iterdir()
    lib.write_bytes(b'not a library')  # what a damaged disk or a bad copy leaves
    p = _run(env); out, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert lib.read_bytes()[:4] == b'\x7fELF'  # rebuilt in place

NO_AMX_CHECK = CHECK + textwrap.dedent('''
    from lyracodec.engine import native_residual
    assert native_residual() is None  # the library was built without AMX code: the engine keeps its matmuls
    assert native_residual(fast=False) is not None  # the portable loops are there
    try: native_residual(fast=True); raise SystemExit('AMX was offered by a library built without it')
    except RuntimeError as e: assert 'no AMX' in str(e)
''')

def test_a_compiler_without_amx_gives_a_library_without_it(tmp_path):
    cc = tmp_path / 'cc'  # refuses every build that still has AMX code, as a compiler without AMX intrinsics does
    cc.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "calls"}\ncase "$*" in *-DLYRA_NO_AMX*) exec gcc "$@";; esac\n'
                  'echo "error: unknown target attribute amx-tile" >&2; exit 1\n'); cc.chmod(0o755)
    env = {'CC': str(cc), 'LYRACODEC_CACHE': str(tmp_path / 'cache')}
    p = subprocess.run([sys.executable, '-c', NO_AMX_CHECK], env={**os.environ, 'PYTHONPATH': str(ROOT), **env},
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    calls = (tmp_path / 'calls').read_text().splitlines()
    assert len(calls) == 3 and '-DLYRA_NO_AMX' in calls[2] and '-fopenmp' in calls[2]  # with OpenMP still, without AMX

AVX2_CHECK = CHECK + textwrap.dedent('''
    from lyracodec.engine import native_residual, native_library, PackedCodec
    from lyracodec.vae import VAE, VAEConfig
    assert native_library().lyra_f32_fast() == 1  # AVX2 and FMA: the float32 unit's 6 x 16 register blocks
    torch.set_num_threads(2)
    x = torch.randn(500, 64, generator=torch.Generator().manual_seed(2))
    ys = []
    for fast in (False, True):
        y = x.clone(); native_residual(torch.float32, fast=fast)(y, torch.zeros(64), fr32); ys.append(y)
    assert (ys[0] - ys[1]).abs().max() <= 1e-5 * ys[0].abs().max(), (ys[0] - ys[1]).abs().max()
    assert PackedCodec(VAE(VAEConfig.preset('tiny')).eval(), torch.float32, compiled=True).residual is not None
''')

PORTABLE_CHECK = CHECK + textwrap.dedent('''
    from lyracodec.engine import native_residual, PackedCodec
    from lyracodec.vae import VAE, VAEConfig
    assert native_residual(torch.float32) is None  # neither AVX-512 nor AVX2: float32 units stay matmuls
    assert PackedCodec(VAE(VAEConfig.preset('tiny')).eval(), torch.float32, compiled=True).residual is None
    try: native_residual(torch.float32, fast=True); raise SystemExit('a fast float32 unit was offered by a library built without one')
    except RuntimeError as e: assert 'no AVX-512 or AVX2' in str(e)
''')

@pytest.mark.parametrize('flags, check', [('-mno-avx512f', AVX2_CHECK), ('-mno-avx512f -mno-avx2', PORTABLE_CHECK)], ids=['avx2', 'portable'])
def test_a_cpu_without_avx512_gets_its_own_float32_unit(tmp_path, flags, check):
    "What a laptop's compiler makes of the library (AVX2, or older): it builds, and the engine fuses float32 units only with AVX2."
    cc = tmp_path / 'cc'
    cc.write_text(f'#!/bin/sh\necho "$@" >> {tmp_path / "calls"}\nexec gcc "$@" {flags}\n'); cc.chmod(0o755)
    env = {'CC': str(cc), 'LYRACODEC_CACHE': str(tmp_path / 'cache')}
    p = subprocess.run([sys.executable, '-c', check], env={**os.environ, 'PYTHONPATH': str(ROOT), **env},
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert len((tmp_path / 'calls').read_text().splitlines()) == 1  # the first build worked
