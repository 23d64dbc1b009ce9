#!/usr/bin/env bash
# Run ON the GPU machine (the device tool), after `bash bench/gpu_wheels.sh` here:
#   run(command="bash bench/gpu_device.sh", carry=[".whl"], timeout_s=330)
#   run(command="bash bench/gpu_device.sh compile_time", carry=[".whl"], timeout_s=330)   # second call: run.compile modes
# 1. installs the carried wheels (the image lacks soundfile, fastcore, auraloss), 2. checks every Snake path on the
# device against the float64 reference (seconds), 3. runs bench/gpu.py with the arguments given (default: the sections
# that need no compile of the whole model; full preset, batch 8 x 65536, bf16), stopping it after $GPU_BENCH_S seconds
# (default 270) so that a second call fits the session's device time. Rows print as they finish; all is kept in $OUT.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d)}; mkdir -p "$OUT"
DEVICE=${DEVICE:-cuda}
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1
python3 -c 'import soundfile, fastcore, auraloss' || { echo 'missing packages: run bench/gpu_wheels.sh here, then carry .whl'; exit 1; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || echo 'no nvidia-smi'
  python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__, "cuda", torch.version.cuda)'
  nproc; } 2>&1 | tee "$OUT/machine.txt"
DEVICE=$DEVICE python3 - <<'PY' 2>&1 | tee "$OUT/check.txt"
import os, torch
from lyracodec.snake import snake_errors, SNAKE_TOL, triton_unavailable
dev = os.environ['DEVICE']
for impl in ('fused', 'triton', 'compiled'):
    if impl == 'triton' and triton_unavailable(torch.zeros(1, 1, 1, device=dev)): print('triton: not on', dev); continue
    for dt in (torch.float32, torch.bfloat16, torch.float16):
        e = snake_errors(impl, dt, (2, 64, 5000), device=dev)
        print(f'{impl:8s} {str(dt):15s}', {k: f'{v:.1e}' for k, v in e.items()}, 'ok' if max(e.values()) < SNAKE_TOL[dt] else 'TOO FAR')
PY
args=("$@"); [ ${#args[@]} -eq 0 ] && args=(--only snake step infer trainer)
script=bench/gpu.py
if [ "${args[0]}" = compile_time ]; then  # first step and steady step of each run.compile mode, full preset
    script=bench/compile_time.py
    args=(--device "$DEVICE" --preset full --batch 8 --length 65536 --amp bf16 --threads 0 --variants snake blocks model "${args[@]:1}")
fi
timeout "${GPU_BENCH_S:-270}" python3 "$script" "${args[@]}" 2>&1 | tee "$OUT/gpu_bench.txt"
echo "$script exit ${PIPESTATUS[0]} (124: stopped at ${GPU_BENCH_S:-270} s; the rows above it stand)"
