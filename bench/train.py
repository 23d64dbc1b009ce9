"""Training throughput of the demo preset: steps/s and the share of wall time spent waiting for data.

Runs the real `Trainer` on the demo config (tiny preset, demo corpus from $LYRACODEC_CACHE or ~/.cache/lyracodec)
for `--steps` steps, `--runs` times, timing each optimiser step from the moment it asks for a batch to the end of
the update. The data-wait share is (time blocked in `next(batches)`) / (time of the whole step). Medians are printed.

    PYTHONPATH=$PWD python bench/train.py --steps 40 --runs 3 [--set data.num_workers=0 ...]
"""
import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from lyracodec.trainer import Trainer, load_config, cache_dir
from lyracodec.demo_corpus import make_demo_corpus

def one_run(cfg, run_dir: Path, steps: int, warmup: int) -> tuple:
    "(steps/s, data-wait share) over `steps` timed steps after `warmup` untimed ones."
    tr = Trainer(cfg, run_dir)
    stream = tr.micro_batches()
    t_data = t_total = 0.0
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        xs = [next(stream) for _ in range(cfg.optim.accum_steps)]
        t1 = time.perf_counter()
        tr.train_step(xs)
        t2 = time.perf_counter()
        if i >= warmup: t_data += t1 - t0; t_total += t2 - t0
    return steps / t_total, t_data / t_total

def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument('--steps', type=int, default=40)
    p.add_argument('--warmup', type=int, default=5)
    p.add_argument('--runs', type=int, default=3)
    p.add_argument('--set', dest='overrides', action='append', default=[])
    a = p.parse_args()
    corpus = make_demo_corpus(cache_dir() / 'demo')
    cfg = load_config('demo', [f'data.root={corpus}', 'logging.logger=none', 'logging.progress=false'] + a.overrides)
    res = []
    for r in range(a.runs):
        with tempfile.TemporaryDirectory() as d: res.append(one_run(cfg, Path(d), a.steps, a.warmup))
        print(f'run {r}: {res[-1][0]:.2f} steps/s, data wait {100 * res[-1][1]:.1f}%', flush=True)
    sps = statistics.median(x for x, _ in res); wait = statistics.median(w for _, w in res)
    d = cfg.data
    print(f'demo preset ({cfg.model.preset}, batch {d.batch_size} x {d.target_length} samples, {d.num_workers} workers, '
          f'{cfg.run.threads or torch.get_num_threads()} thread(s)): median {sps:.2f} steps/s '
          f'({sps * d.batch_size * d.target_length / d.sample_rate:.2f} s of audio per s), '
          f'data wait {100 * wait:.1f}% of wall time (goal < 5%)')

if __name__ == '__main__': main()
