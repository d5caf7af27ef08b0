#!/usr/bin/env bash
# The GPU check in one command (benchmarks/gpu/README.md): build medix_kernels._C for sm_90a against
# this machine's torch, correctness of every cuda/triton backend, compute-sanitizer memcheck, the
# benchmark rows and their targets, the GPU tests; everything lands in OUT (at most 8 files).
#
#   bash benchmarks/gpu/check.sh OUT [--dry-run] [--budget-s S] [--phases env,build,...] [--seed N]
#
# On the GPU machine it uses that machine's python3 (torch, triton, nvcc there), and installs the
# carried wheels of .whl/ (Liger-Kernel, TRL and what TRL needs: made by `bash benchmarks/gpu/wheels.sh`)
# with --no-deps into a temporary folder put on PYTHONPATH. --dry-run: this CPU machine, the same
# script with Triton interpreted and tiny shapes (tests/test_gpu_check.py); PYTHON picks the interpreter.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT" || exit 2
if [ $# -lt 1 ] || [ "${1#-}" != "$1" ]; then
  echo "usage: bash benchmarks/gpu/check.sh OUT [--dry-run] [--budget-s S] [--phases a,b] [--seed N]" >&2
  exit 2
fi
OUT="$1"; shift
mkdir -p "$OUT" && OUT="$(cd "$OUT" && pwd)" || exit 2
DRY=0
for a in "$@"; do [ "$a" = "--dry-run" ] && DRY=1; done
PY="${PYTHON:-python3}"
WORK="${MEDIX_GPU_WORK:-$(mktemp -d /tmp/medix-gpu-check.XXXXXX)}"
mkdir -p "$WORK/logs" "$WORK/site"
WLOG="$WORK/logs/wheels.log"
: > "$WLOG"

# Carried wheels: one pip call per wheel (a wheel for another Python -- the dry run's -- is skipped, not fatal).
shopt -s nullglob
wheels=(.whl/*.whl)
if [ ${#wheels[@]} -eq 0 ]; then
  msg="no carried wheels in .whl/: Liger-Kernel and TRL rows will be skipped. Make them with: bash benchmarks/gpu/wheels.sh (then carry .whl)"
  echo "WARNING: $msg" | tee -a "$WLOG"
else
  for w in "${wheels[@]}"; do
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$WORK/site" "$w" >>"$WLOG" 2>&1; then
      echo "installed $w" >>"$WLOG"
    else
      echo "NOT installed $w (see above: another Python's wheel, or broken)" | tee -a "$WLOG"
    fi
  done
  if [ $DRY -eq 1 ]; then
    # The dry run keeps its environment's packages first (they match its Python); the installed copies are checked.
    export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}:$WORK/site"
  else
    export PYTHONPATH="$WORK/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
  fi
fi
export PYTHONPATH="${PYTHONPATH:-$ROOT}"
echo "check.sh: python $("$PY" -c 'import sys; print(sys.executable, sys.version.split()[0])' 2>&1); ${#wheels[@]} carried wheel(s); work $WORK"
exec "$PY" -m benchmarks.gpu.check "$OUT" --work "$WORK" --python "$PY" "$@"
