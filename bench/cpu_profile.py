"""Where the CPU time of the codec goes: per layer (forward hooks) and per op (torch.profiler), fp32 and bf16.

Usage (from the checkout root):
    .venv/bin/python bench/cpu_profile.py [--preset full] [--frames 128] [--threads 2] [--onednn]

Full preset with random weights (speed does not depend on them), weight norm folded, inference mode, one window of
`--frames` latent frames (the chunk size), one warm-up call then one measured call per direction and precision.
Per layer kind: time and, for convolutions, GFLOP/s (2·Cin·Cout·k per output sample, summed). Per op: the
profiler's self CPU time grouped into convolutions, Snake's elementwise ops, copies and the rest. `--onednn` also
runs one small call with ONEDNN_VERBOSE=1 in a child and counts which oneDNN implementation ran which convolution.
"""
import argparse, collections, os, subprocess, sys, time

def conv_flops(m, y) -> float:
    "Multiply-adds ×2 of a Conv1d / ConvTranspose1d call with output `y` (transposed: per input sample)."
    import torch
    k = m.kernel_size[0]
    if isinstance(m, torch.nn.ConvTranspose1d): n = y.shape[-1] // m.stride[0]
    else: n = y.shape[-1]
    return 2.0 * y.shape[0] * m.in_channels * m.out_channels // m.groups * k * n

def layer_times(model, call, x) -> dict:
    "Seconds and FLOP per layer kind (conv by stride/kernel, transposed conv, snake) from forward hooks."
    import torch
    from lyracodec.snake import Snake
    acc = collections.defaultdict(lambda: [0.0, 0.0, 0])
    start = {}
    def pre(m, inp): start[m] = time.perf_counter()
    def post(m, inp, out):
        dt = time.perf_counter() - start.pop(m)
        if isinstance(m, torch.nn.ConvTranspose1d): key = f'convT k{m.kernel_size[0]} s{m.stride[0]} {m.in_channels}->{m.out_channels}'
        elif isinstance(m, torch.nn.Conv1d):
            kind = 'conv k1' if m.kernel_size[0] == 1 else f'conv k{m.kernel_size[0]} s{m.stride[0]}' if m.stride[0] > 1 else 'conv k7 dilated' if m.dilation[0] > 1 else f'conv k{m.kernel_size[0]}'
            key = kind
        else: key = 'snake'
        a = acc[key]; a[0] += dt; a[2] += 1
        if not isinstance(m, Snake): a[1] += conv_flops(m, out)
    hs = []
    for m in model.modules():
        if isinstance(m, (torch.nn.Conv1d, torch.nn.ConvTranspose1d, Snake)):
            hs += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    t = time.perf_counter(); call(x); total = time.perf_counter() - t
    for h in hs: h.remove()
    return total, dict(acc)

def op_groups(call, x) -> dict:
    "Self CPU seconds per op group from torch.profiler."
    from torch.profiler import profile, ProfilerActivity
    with profile(activities=[ProfilerActivity.CPU]) as prof: call(x)
    groups, convs = collections.Counter(), collections.Counter()
    for e in prof.key_averages():
        if 'conv' in e.key: convs[e.key] += e.self_cpu_time_total / 1e6
        n = e.key
        g = ('convolution' if 'conv' in n else
             'snake elementwise' if any(s in n for s in ('sin', 'mul', 'square', 'add', 'pow', 'exp', 'reciprocal', 'div')) else
             'copies / layout' if any(s in n for s in ('copy', 'to_dense', 'reorder', 'contiguous', 'cat', 'pad', 'clone', '_to_copy', 'empty')) else 'other')
        groups[g] += e.self_cpu_time_total / 1e6
    return dict(groups), convs

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--preset', default='full'); p.add_argument('--frames', type=int, default=128)
    p.add_argument('--threads', type=int, default=2); p.add_argument('--onednn', action='store_true')
    p.add_argument('--child', default=None, help=argparse.SUPPRESS)
    a = p.parse_args()
    import torch
    torch.set_num_threads(a.threads)
    from lyracodec.vae import VAE, VAEConfig
    from lyracodec.codec import autocast_to
    torch.manual_seed(0)
    model = VAE(VAEConfig.preset(a.preset)).eval().fold_weight_norm()
    hop = model.hop_length
    if a.child:  # ONEDNN_VERBOSE run: one small call, output parsed by the parent
        dt = None if a.child == 'fp32' else torch.bfloat16
        with torch.inference_mode(), autocast_to(dt, 'cpu'):
            model.encode(0.1 * torch.randn(1, 2, a.frames * hop)); model.decode(torch.randn(1, 64, a.frames))
        return
    print(f'{a.preset} preset, {a.frames} frames, {a.threads} threads, torch {torch.__version__}, load {os.getloadavg()[0]:.1f}')
    x, z = 0.1 * torch.randn(1, 2, a.frames * hop), torch.randn(1, 64, a.frames)
    for name, dt in (('fp32', None), ('bf16', torch.bfloat16)):
        for what, call, inp in (('encode', model.encode, x), ('decode', model.decode, z)):
            with torch.inference_mode(), autocast_to(dt, 'cpu'):
                call(inp[..., :inp.shape[-1] // 4])  # warm-up (oneDNN primitive creation)
                total, layers = layer_times(model, call, inp)
                groups, convs = op_groups(call, inp)
            gsum = sum(groups.values())
            print(f'\n{name} {what}: {total:.2f} s ({a.frames * hop / model.sample_rate / total:.2f}x real time), load {os.getloadavg()[0]:.1f}')
            print('  ops (profiler self time): ' + ', '.join(f'{g} {v / gsum:.0%}' for g, v in sorted(groups.items(), key=lambda kv: -kv[1])))
            print('  convolution ops (self s): ' + ', '.join(f'{k} {v:.2f}' for k, v in convs.most_common(4)))
            print(f'  {"layer kind":34s} {"calls":>5} {"s":>6} {"share":>6} {"GFLOP/s":>8}')
            for k, (s, f, n) in sorted(layers.items(), key=lambda kv: -kv[1][0]):
                print(f'  {k:34s} {n:5d} {s:6.2f} {s / total:6.0%} {f / s / 1e9 if f else float("nan"):8.1f}')
    if a.onednn:
        for name in ('fp32', 'bf16'):
            r = subprocess.run([sys.executable, __file__, '--preset', a.preset, '--frames', '4', '--threads', str(a.threads),
                                '--child', name], capture_output=True, text=True, env={**os.environ, 'ONEDNN_VERBOSE': '1'})
            impls = collections.Counter()
            for line in r.stdout.splitlines():
                f = line.split(',')
                if len(f) > 6 and f[0] == 'onednn_verbose' and 'exec' in f and any(k in f for k in ('convolution', 'deconvolution', 'reorder')):
                    i = f.index('exec'); kind, impl = f[i + 2], f[i + 3]
                    impls[(kind, impl)] += 1
            print(f'\noneDNN primitives run, {name} (ONEDNN_VERBOSE=1, 4-frame call):')
            for (kind, impl), n in impls.most_common(12): print(f'  {kind:14s} {impl:40s} {n:4d}')

if __name__ == '__main__': main()
