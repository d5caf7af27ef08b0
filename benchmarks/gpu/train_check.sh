#!/usr/bin/env bash
# The trainer on a GPU in one command (benchmarks/gpu/README.md): a Qwen2.5-1.5B-shaped model built from
# its config, `python -m medix_r1.train --rollout hf` in bf16 with loss.impl fused and plain, torchrun with
# one rank (NCCL), and a timed split of one update micro-batch; results in OUT (train_summary.md,
# train_check.json, train_logs.tar.gz).
#
#   bash benchmarks/gpu/train_check.sh OUT [--dry-run] [--steps N] [--budget-s S] [--phases a,b]
#
# It expects medix_kernels._C built for this machine (benchmarks/gpu/check.sh's build phase, or
# `pip install -e .`); without it the kernels fall back to Triton / torch and the summary says which
# backends ran. The tokenizer comes from .gpu/tokenizer when present (the GPU machine has no SmolLM2
# package: `python -m benchmarks.gpu.train_parts` documents how it is made), else the bundled SmolLM2.
# --dry-run: a 2-layer model on this CPU machine (tests/test_gpu_check.py).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT" || exit 2
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
  echo "usage: bash benchmarks/gpu/train_check.sh OUT [--dry-run] [--steps N] [--budget-s S] [--phases a,b]" >&2
  exit 2
fi
OUT="$1"; shift
mkdir -p "$OUT" || exit 2
PY="${PYTHON:-python3}"
TOK=()
[ -f .gpu/tokenizer/tokenizer.json ] && TOK=(--tokenizer "$ROOT/.gpu/tokenizer")
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m benchmarks.gpu.train_check "$OUT" --python "$PY" "${TOK[@]}" "$@"
