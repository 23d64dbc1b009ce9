"Shared helpers for the pytest suite."
import os, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

def run_cli(name: str, *args, timeout: float=600, cwd=None, env=None) -> subprocess.CompletedProcess:
    "Run one of the package's console scripts from the current venv, capturing its output."
    exe = BIN / name
    cmd = [str(exe)] if exe.exists() else [sys.executable, '-m', name]
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env={**os.environ, **(env or {})})

def proc_nbs(dest: Path, timeout: float=900) -> Path:
    """`nbdev_proc_nbs` (what the docs site is built from) on a copy of the project in `dest`; returns its `_proc/`.
    A stub `quarto` goes first on PATH: without one, nbdev tries `sudo` to install Quarto and then runs a bare
    `pip install -e` outside the venv. Processing the notebooks needs no Quarto."""
    import shutil
    for name in ('nbs', 'lyracodec'): shutil.copytree(ROOT / name, dest / name, symlinks=True)
    for name in ('settings.ini', '_quarto.yml', 'setup.py', 'README.md'): shutil.copy(ROOT / name, dest / name)
    stub = dest / 'stub_bin'; stub.mkdir()
    (stub / 'quarto').write_text('#!/bin/sh\necho 1.5.0\n'); (stub / 'quarto').chmod(0o755)
    scratch = dest / 'tmp'; scratch.mkdir()  # docs processing runs the import cells: what they create must not outlive them
    env = {**os.environ, 'PATH': f'{stub}{os.pathsep}{BIN}{os.pathsep}{os.environ.get("PATH", "")}', 'TMPDIR': str(scratch)}
    r = subprocess.run([str(BIN / 'nbdev_proc_nbs')], cwd=dest, capture_output=True, text=True, timeout=timeout, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    left = sorted(str(p.relative_to(scratch)) for p in scratch.rglob('*'))
    assert not left, f'docs processing left temporary files behind: {left}'
    return dest / '_proc'

def save_two_tiny_models(d: Path):
    "A tiny random model in `d/model` and one of another config (4 channels) in `d/other`, seeded."
    import torch
    from lyracodec.vae import VAE, VAEConfig, save_pretrained
    torch.manual_seed(0)
    save_pretrained(VAE(VAEConfig.preset('tiny')).eval(), d / 'model')
    save_pretrained(VAE(VAEConfig.preset('tiny', channels=4)).eval(), d / 'other')
