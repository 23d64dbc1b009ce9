"""Time to the first compiled training step for each `run.compile` mode (none, snake: the Snake formula alone,
model: the whole forward pass, blocks: each encoder/decoder block on its own), applied by the trainer's own
`compile_model`, each in a fresh process with cold Inductor and Triton caches.
Model-only step (fwd + bwd + AdamW, L1 + 1e-4 KL) of a preset on random audio; prints the first step (compile
included) and the median of the next steps, against the same step uncompiled.

    PYTHONPATH=$PWD python bench/compile_time.py [--preset tiny] [--batch 4] [--length 16384] [--device cpu] [--steps 3]
"""
import argparse, json, os, statistics, subprocess, sys, tempfile, time

VARIANTS = ('none', 'snake', 'model', 'blocks')  # run.compile's modes, applied by the trainer's own compile_model

def one(variant: str, a) -> dict:
    import torch
    import torch.nn.functional as F
    from lyracodec.vae import VAE, VAEConfig
    from lyracodec.runtime import compile_model
    if a.threads: torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    torch.manual_seed(0)
    model = VAE(VAEConfig.preset(a.preset)).to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=dev.type == 'cuda')
    fwd = compile_model(model, variant)  # in place, as `run.compile` does
    x = 0.1 * torch.randn(a.batch, 2, a.length, device=dev)
    amp = torch.autocast(dev.type, dtype=torch.bfloat16) if a.amp == 'bf16' else torch.autocast(dev.type, enabled=False)
    def step():
        with amp:
            mu, logvar, z, y = fwd(x)
            loss = F.l1_loss(y.float(), x) + 1e-4 * model.kl(mu.float(), logvar.float())
        loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        if dev.type == 'cuda': torch.cuda.synchronize()
    t0 = time.perf_counter(); step(); first = time.perf_counter() - t0
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter(); step(); times.append(time.perf_counter() - t0)
    return dict(variant=variant, first=first, steady=statistics.median(times))

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--preset', default='tiny')
    p.add_argument('--batch', type=int, default=4)
    p.add_argument('--length', type=int, default=16384)
    p.add_argument('--device', default='cpu')
    p.add_argument('--amp', default='none', choices=['none', 'bf16'])
    p.add_argument('--steps', type=int, default=3)
    p.add_argument('--threads', type=int, default=1)
    p.add_argument('--variants', nargs='+', default=list(VARIANTS), choices=VARIANTS)
    p.add_argument('--one', default=None, help=argparse.SUPPRESS)  # child process: one variant, JSON on the last line
    a = p.parse_args()
    if a.one: print(json.dumps(one(a.one, a))); return
    print(f'{a.preset}, [{a.batch}, 2, {a.length}], {a.device}, amp {a.amp}, {a.threads} thread(s); '
          f'each variant in a fresh process with empty compile caches')
    for v in a.variants:
        with tempfile.TemporaryDirectory(prefix='lyra_compile_') as d:
            env = {**os.environ, 'TORCHINDUCTOR_CACHE_DIR': f'{d}/inductor', 'TRITON_CACHE_DIR': f'{d}/triton'}
            args = [sys.executable, __file__, '--one', v] + [s for s in sys.argv[1:]]
            t0 = time.perf_counter()
            r = subprocess.run(args, capture_output=True, text=True, env=env)
            if r.returncode: print(f'{v:17s} FAILED: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}'); continue
            res = json.loads(r.stdout.strip().splitlines()[-1])
            print(f'{v:17s} first step {res["first"]:7.1f} s   then {res["steady"]:.3f} s/step   '
                  f'(process {time.perf_counter() - t0:.0f} s)', flush=True)

if __name__ == '__main__': main()
