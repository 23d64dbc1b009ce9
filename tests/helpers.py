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

def save_two_tiny_models(d: Path):
    "A tiny random model in `d/model` and one of another config (4 channels) in `d/other`, seeded."
    import torch
    from lyracodec.vae import VAE, VAEConfig, save_pretrained
    torch.manual_seed(0)
    save_pretrained(VAE(VAEConfig.preset('tiny')).eval(), d / 'model')
    save_pretrained(VAE(VAEConfig.preset('tiny', channels=4)).eval(), d / 'other')
