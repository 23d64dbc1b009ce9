"The native Snake kernel's build: compilers without OpenMP, a build shared by processes, the cache reused."
import os, subprocess, sys, textwrap
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
