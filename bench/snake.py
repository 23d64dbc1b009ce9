"""Fused vs naive Snake, forward + backward, on [8, 128, 65536] float32 (CPU). Prints medians and their ratio.
Usage: python bench/snake.py [--repeats 7] [--shape 8 128 65536]"""
import argparse, statistics, time
import torch
from lyracodec.snake import snake, snake_naive

def time_fwd_bwd(fn, x, log_a, log_b, repeats):
    "Median seconds of forward + backward over `repeats` runs, after one warm-up run."
    times = []
    for i in range(repeats + 1):
        for t in (x, log_a, log_b): t.grad = None
        t0 = time.perf_counter()
        y = fn(x, log_a, log_b)
        y.backward(torch.ones_like(y))
        if i: times.append(time.perf_counter() - t0)
        del y
    return statistics.median(times)

def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument('--repeats', type=int, default=7)
    p.add_argument('--shape', type=int, nargs=3, default=[8, 128, 65536])
    a = p.parse_args()
    torch.manual_seed(0)
    B, C, T = a.shape
    x = torch.randn(B, C, T, requires_grad=True)
    log_a = (torch.randn(C) * 0.3).requires_grad_()
    log_b = (torch.randn(C) * 0.3).requires_grad_()
    print(f'shape [{B}, {C}, {T}] float32, {torch.get_num_threads()} threads, torch {torch.__version__}, '
          f'median of {a.repeats}')
    naive = time_fwd_bwd(snake_naive, x, log_a, log_b, a.repeats)
    fused = time_fwd_bwd(snake, x, log_a, log_b, a.repeats)
    print(f'naive forward+backward: {naive * 1e3:8.1f} ms')
    print(f'fused forward+backward: {fused * 1e3:8.1f} ms')
    print(f'speed-up (naive / fused): {naive / fused:.2f}x')

if __name__ == '__main__': main()
