#!/usr/bin/env bash
# The wheels the GPU check carries to the GPU machine (which has no network and no Liger / TRL):
# pure-Python wheels for its Python 3.12, saved in .whl/ (gitignored), installed there with --no-deps.
# Cut Cross-Entropy: the fused-linear sweep's peer (benchmarks/gpu/sweep_fused_linear.py).
# TRL needs `datasets` (and that dill + multiprocess); everything else it imports is on that machine.
#   bash benchmarks/gpu/wheels.sh            # PYTHON=... to pick the pip (default: python3)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
PY="${PYTHON:-python3}"
mkdir -p .whl
"$PY" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl liger-kernel==0.8.5 trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
  cut-cross-entropy==25.1.1
ls -l .whl
du -sh .whl
