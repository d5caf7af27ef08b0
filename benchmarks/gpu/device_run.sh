#!/usr/bin/env bash
# Everything the lent GPU machine runs in one call (benchmarks/gpu/README.md): the kernel check's build and
# correctness, the trainer check, then the kernel check's sanitizer, benchmark rows and GPU tests, each
# within its own time budget; OUT gets at most 8 files (the device tool's limit): the three summaries,
# the benchmark and target CSVs, every log in all.tar.gz, and the built extension (_C.so, to carry to a
# second call so that it need not build again while csrc/ is unchanged).
#
#   bash benchmarks/gpu/device_run.sh OUT [--dry-run]
#   budgets (seconds): B_BUILD (env + build, beside the trainer check: default 200), B_TRAIN (180),
#   B_BENCH (correctness + benchmark rows, 120), B_SAN (compute-sanitizer, 60; 0 = skip); B_TRAIN=0 skips
#   the trainer check, and a carried .gpu/_C.so skips the build
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT" || exit 2
[ $# -ge 1 ] || { echo "usage: bash benchmarks/gpu/device_run.sh OUT [--dry-run]" >&2; exit 2; }
OUT="$(mkdir -p "$1" && cd "$1" && pwd)" || exit 2; shift
DRY=(); [ "${1:-}" = "--dry-run" ] && DRY=(--dry-run)
W="$(mktemp -d /tmp/medix-device-run.XXXXXX)"
export MEDIX_GPU_WORK="$W/kwork"
first=build
if [ -f .gpu/_C.so ] && [ ${#DRY[@]} -eq 0 ]; then  # carried from a previous call: skip the build
  cp .gpu/_C.so "medix_kernels/$(python3 -c 'import sysconfig;print("_C"+sysconfig.get_config_var("EXT_SUFFIX"))')"
  first=""
fi
if [ -z "$first" ]; then : > "$W/build_console.log"; true & else
# The build is CPU work (nvcc / g++, one job per file) and the trainer check GPU work: they run side by
# side. Each trainer run records the kernel backends it imported (cuda joins once the build lands).
bash benchmarks/gpu/check.sh "$W/k1" "${DRY[@]}" --phases "$first" --budget-s "${B_BUILD:-200}" > "$W/build_console.log" 2>&1 &
fi
build_pid=$!
[ "${B_TRAIN:-180}" -gt 0 ] && bash benchmarks/gpu/train_check.sh "$W/t" "${DRY[@]}" --budget-s "${B_TRAIN:-180}"
wait "$build_pid"; cat "$W/build_console.log"
bash benchmarks/gpu/check.sh "$W/k2" "${DRY[@]}" --phases correctness,bench --budget-s "${B_BENCH:-120}"
[ "${B_SAN:-60}" -gt 10 ] && bash benchmarks/gpu/check.sh "$W/k3" "${DRY[@]}" --phases sanitizer --budget-s "${B_SAN:-60}"
cp "$W/k1/summary.md" "$OUT/summary_build.md" 2>/dev/null
cp "$W/k2/summary.md" "$OUT/summary_bench.md" 2>/dev/null
cp "$W/t/train_summary.md" "$OUT/" 2>/dev/null
cp "$W/k2/bench.csv" "$W/k2/targets.csv" "$OUT/" 2>/dev/null
so=$(ls medix_kernels/_C*.so 2>/dev/null | head -1); [ -n "$so" ] && [ ${#DRY[@]} -eq 0 ] && cp "$so" "$OUT/_C.so"
tar -czf "$OUT/all.tar.gz" -C "$W" k1 t k2 k3 build_console.log 2>/dev/null
echo "== results"; cat "$OUT"/train_summary.md 2>/dev/null | cut -c1-220
for k in k1 k2 k3; do grep -E "^\| (env|build|correctness|sanitizer|bench) \|" "$W/$k/summary.md" 2>/dev/null | cut -c1-300; done
grep -E "^\| .*medix-cuda" "$W/k2/summary.md" 2>/dev/null | cut -c1-260
exit 0
