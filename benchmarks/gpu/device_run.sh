#!/usr/bin/env bash
# Everything the lent GPU machine runs in one call (benchmarks/gpu/README.md): the kernel check's build and
# correctness, the trainer check, then the kernel check's sanitizer, benchmark rows and GPU tests, each
# within its own time budget; OUT gets at most 8 files (the device tool's limit): the three summaries,
# the benchmark and target CSVs, every log in all.tar.gz, and the built extension (_C.so, to carry to a
# second call so that it need not build again while csrc/ is unchanged).
#
#   bash benchmarks/gpu/device_run.sh OUT [--dry-run]
#   budgets (seconds): B_BUILD (env+build+correctness, default 200), B_TRAIN (180), B_BENCH (200)
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT" || exit 2
[ $# -ge 1 ] || { echo "usage: bash benchmarks/gpu/device_run.sh OUT [--dry-run]" >&2; exit 2; }
OUT="$(mkdir -p "$1" && cd "$1" && pwd)" || exit 2; shift
DRY=(); [ "${1:-}" = "--dry-run" ] && DRY=(--dry-run)
W="$(mktemp -d /tmp/medix-device-run.XXXXXX)"
export MEDIX_GPU_WORK="$W/kwork"
first=env,build,correctness
if [ -f .gpu/_C.so ] && [ ${#DRY[@]} -eq 0 ]; then  # carried from a previous call: skip the build
  cp .gpu/_C.so "medix_kernels/$(python3 -c 'import sysconfig;print("_C"+sysconfig.get_config_var("EXT_SUFFIX"))')"
  first=env,correctness
fi
bash benchmarks/gpu/check.sh "$W/k1" "${DRY[@]}" --phases "$first" --budget-s "${B_BUILD:-200}"
bash benchmarks/gpu/train_check.sh "$W/t" "${DRY[@]}" --budget-s "${B_TRAIN:-180}"
bash benchmarks/gpu/check.sh "$W/k2" "${DRY[@]}" --phases sanitizer,bench,pytest --budget-s "${B_BENCH:-200}"
cp "$W/k1/summary.md" "$OUT/summary_build.md" 2>/dev/null
cp "$W/k2/summary.md" "$OUT/summary_bench.md" 2>/dev/null
cp "$W/t/train_summary.md" "$OUT/" 2>/dev/null
cp "$W/k2/bench.csv" "$W/k2/targets.csv" "$OUT/" 2>/dev/null
so=$(ls medix_kernels/_C*.so 2>/dev/null | head -1); [ -n "$so" ] && [ ${#DRY[@]} -eq 0 ] && cp "$so" "$OUT/_C.so"
tar -czf "$OUT/all.tar.gz" -C "$W" k1 t k2 2>/dev/null
echo "== results"; cat "$OUT"/summary_build.md "$OUT"/train_summary.md "$OUT"/summary_bench.md 2>/dev/null | cut -c1-220
