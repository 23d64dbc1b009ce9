"""Fused vs naive Snake, forward + backward, on [8, 128, 65536] float32 (CPU). Prints medians and their ratio.
Usage: python bench/snake.py [--repeats 7] [--shape 8 128 65536] [--also compiled triton] [--device cuda] [--dtype bf16]

--also times more implementations of `lyracodec.snake.snake` (`compiled`: torch.compile of the formula; `triton`: the
CUDA kernel, CUDA only) after the two lines above; each line then gives its time and its ratio to naive.
On CUDA every timed run ends with torch.cuda.synchronize()."""
import argparse, statistics, time
import torch
from lyracodec.snake import snake, snake_naive

DTYPES = {'fp32': torch.float32, 'bf16': torch.bfloat16, 'fp16': torch.float16}

def _sync(device):
    if device.type == 'cuda': torch.cuda.synchronize(device)

def time_fwd_bwd(fn, x, log_a, log_b, repeats):
    "Median seconds of forward + backward over `repeats` runs, after one warm-up run."
    times = []
    for i in range(repeats + 1):
        for t in (x, log_a, log_b): t.grad = None
        _sync(x.device)
        t0 = time.perf_counter()
        y = fn(x, log_a, log_b)
        y.backward(torch.ones_like(y))
        _sync(x.device)
        if i: times.append(time.perf_counter() - t0)
        del y
    return statistics.median(times)

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--repeats', type=int, default=7)
    p.add_argument('--shape', type=int, nargs=3, default=[8, 128, 65536])
    p.add_argument('--also', nargs='*', default=[], choices=['compiled', 'triton'], help='more implementations to time')
    p.add_argument('--device', default='cpu')
    p.add_argument('--dtype', default='fp32', choices=sorted(DTYPES))
    a = p.parse_args()
    torch.manual_seed(0)
    dev, dtype = torch.device(a.device), DTYPES[a.dtype]
    B, C, T = a.shape
    x = torch.randn(B, C, T, device=dev).to(dtype).requires_grad_()
    log_a = (torch.randn(C, device=dev) * 0.3).requires_grad_()
    log_b = (torch.randn(C, device=dev) * 0.3).requires_grad_()
    where = '' if dev.type == 'cpu' else f' on {dev}'
    print(f'shape [{B}, {C}, {T}] {str(dtype).removeprefix("torch.")}{where}, {torch.get_num_threads()} threads, torch {torch.__version__}, '
          f'median of {a.repeats}')
    naive = time_fwd_bwd(snake_naive, x, log_a, log_b, a.repeats)
    fused = time_fwd_bwd(lambda *t: snake(*t, impl='fused'), x, log_a, log_b, a.repeats)
    print(f'naive forward+backward: {naive * 1e3:8.1f} ms')
    print(f'fused forward+backward: {fused * 1e3:8.1f} ms')
    print(f'speed-up (naive / fused): {naive / fused:.2f}x')
    for impl in a.also:
        t = time_fwd_bwd(lambda *t, impl=impl: snake(*t, impl=impl), x, log_a, log_b, a.repeats)
        print(f'{impl} forward+backward: {t * 1e3:8.1f} ms (naive / {impl}: {naive / t:.2f}x)')

if __name__ == '__main__': main()
