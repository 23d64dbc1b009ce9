#!/usr/bin/env bash
# Run HERE (not on the GPU machine) before a device session: fetches the wheels the GPU machine's image lacks into
# .whl/ (ignored through .git/info/exclude; carry it with the device tool: carry=[".whl"]). The image already holds
# torch, torchaudio, triton, numpy, scipy, matplotlib, pyyaml, safetensors and tqdm; LyraCodec also imports soundfile
# (with cffi and pycparser), fastcore and auraloss. Python 3.12, x86-64, as on that machine.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qxF '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -rf .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl 'soundfile==0.14.0' 'cffi==2.1.1' 'pycparser==3.12' 'fastcore==1.14.5' 'auraloss==0.4.0'
ls -la .whl
du -sh .whl
