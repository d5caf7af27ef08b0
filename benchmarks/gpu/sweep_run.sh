#!/usr/bin/env bash
# One device call for issue 25 (benchmarks/gpu/README.md): the CUDA build (or the carried .gpu/_C.so), the
# kernel sweep (benchmarks/gpu/sweep.py), compute-sanitizer memcheck over every CUDA kernel, and the GPU pytest
# run, each within its own budget; about 9-10 minutes with the build, 6-7 with a carried _C.so. OUT gets at most
# 8 files: sweep.csv, sweep.meta.json, winners.md, defaults.py.txt, summary.md (phases), all.tar.gz (every log
# and summary) and the built _C.so (carry it as .gpu/_C.so next time while csrc/ is unchanged).
#
#   bash benchmarks/gpu/sweep_run.sh OUT [--dry-run]
#   budgets (seconds): B_BUILD (env + build: 170), B_SWEEP (220; 300 with a carried _C.so), B_SAN (60), B_TEST (100);
#   0 skips a phase
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT" || exit 2
[ $# -ge 1 ] && [ "${1#-}" = "$1" ] || { echo "usage: bash benchmarks/gpu/sweep_run.sh OUT [--dry-run]" >&2; exit 2; }
OUT="$(mkdir -p "$1" && cd "$1" && pwd)" || exit 2; shift
DRY=(); [ "${1:-}" = "--dry-run" ] && DRY=(--dry-run)
PY="${PYTHON:-python3}"
W="$(mktemp -d /tmp/medix-sweep-run.XXXXXX)"
export MEDIX_GPU_WORK="$W/kwork"  # check.sh installs the carried wheels (.whl: Liger, TRL) into $MEDIX_GPU_WORK/site
T0=$(date +%s)
phase() { echo "| $1 | $2 | $(( $(date +%s) - $3 )) | $4 |" >> "$W/phases.md"; }
echo "| phase | status | s | note |" > "$W/phases.md"; echo "| --- | --- | --- | --- |" >> "$W/phases.md"

B_BUILD="${B_BUILD:-170}"; B_SWEEP="${B_SWEEP:-220}"
t=$(date +%s)
if [ -f .gpu/_C.so ] && [ ${#DRY[@]} -eq 0 ]; then  # carried from a previous call: no build
  cp .gpu/_C.so "medix_kernels/$("$PY" -c 'import sysconfig;print("_C"+sysconfig.get_config_var("EXT_SUFFIX"))')"
  bash benchmarks/gpu/check.sh "$W/k1" --phases env --budget-s 60 > "$W/build_console.log" 2>&1
  phase build carried "$t" ".gpu/_C.so"; B_SWEEP="${B_SWEEP_CARRIED:-300}"
elif [ "$B_BUILD" -gt 0 ]; then
  bash benchmarks/gpu/check.sh "$W/k1" "${DRY[@]}" --phases env,build --budget-s "$B_BUILD" > "$W/build_console.log" 2>&1
  phase build "exit $?" "$t" "$(grep -E '^\| build \|' "$W/k1/summary.md" 2>/dev/null | cut -d'|' -f3,5 | tr -d '\n' | cut -c1-200)"
else
  bash benchmarks/gpu/check.sh "$W/k1" --phases env --budget-s 60 > "$W/build_console.log" 2>&1
  phase build skipped "$t" "B_BUILD=0"
fi
export PYTHONPATH="$MEDIX_GPU_WORK/site:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
[ ${#DRY[@]} -eq 1 ] && export PYTHONPATH="$ROOT:$MEDIX_GPU_WORK/site"  # the dry run keeps its own packages first

if [ "$B_SWEEP" -gt 0 ]; then
  t=$(date +%s)
  timeout -k 10 $((B_SWEEP + 60)) "$PY" -m benchmarks.gpu.sweep "$W/sweep" "${DRY[@]}" --budget-s "$B_SWEEP" \
    --ptxas "$W/k1/ptxas.txt" > "$W/sweep_console.log" 2>&1
  rc=$?; tail -5 "$W/sweep_console.log"
  phase sweep "exit $rc" "$t" "$(grep -c '' "$W/sweep/sweep.csv" 2>/dev/null) CSV lines"
fi
if [ "${B_SAN:-60}" -gt 0 ]; then
  t=$(date +%s)
  bash benchmarks/gpu/check.sh "$W/k3" "${DRY[@]}" --phases sanitizer --budget-s "${B_SAN:-60}" > "$W/san_console.log" 2>&1
  phase sanitizer "exit $?" "$t" "$(grep -E '^\| sanitizer \|' "$W/k3/summary.md" 2>/dev/null | cut -d'|' -f3,5 | tr -d '\n' | cut -c1-200)"
fi
if [ "${B_TEST:-100}" -gt 0 ]; then
  t=$(date +%s)
  bash benchmarks/gpu/check.sh "$W/k4" "${DRY[@]}" --phases pytest --budget-s "${B_TEST:-100}" > "$W/test_console.log" 2>&1
  phase pytest "exit $?" "$t" "$(grep -E '^\| pytest \|' "$W/k4/summary.md" 2>/dev/null | cut -d'|' -f3,5 | tr -d '\n' | cut -c1-200)"
fi

{ echo "# sweep_run.sh ${DRY[*]}: $(date -Iseconds), $(( $(date +%s) - T0 )) s"; echo; cat "$W/phases.md"; echo
  sed -n '/^## Targets/,/^## Rows/p' "$W/sweep/winners.md" 2>/dev/null | head -60; } > "$OUT/summary.md"
for f in sweep.csv sweep.meta.json winners.md defaults.py.txt; do cp "$W/sweep/$f" "$OUT/" 2>/dev/null; done
so=$(ls medix_kernels/_C*.so 2>/dev/null | head -1); [ -n "$so" ] && [ ${#DRY[@]} -eq 0 ] && cp "$so" "$OUT/_C.so"
tar -czf "$OUT/all.tar.gz" --exclude=./kwork/site --exclude=./kwork/build --exclude="*.o" -C "$W" . 2>/dev/null
cat "$OUT/summary.md"
exit 0
