"""CPU policy loss (grpo_loss and fused_linear_grpo_loss, forward + backward): a wrapper over the
suite (``python -m benchmarks``). Without options it measures the shape this script always used,
fp32 4 x 1024 tokens x 49,152 vocabulary (SmolLM2) with H = 576, and writes
benchmarks/results/policy_loss_cpu.csv (+ .meta.json) and policy_loss_cpu.png; ``--quick`` runs
the suite's quick sweep instead (its own CSV name).

Implementations (benchmarks/ops/loss.py): grpo_loss on the C++ backend (``medix-cpu``, and
``medix-cpu-inplace``: d logits written over the logits) against the eager reference and
torch.compile of it (and TRL / verl's formulas); fused_linear_grpo_loss (``medix-cpu``: chunked,
no full logits) against the full-logits path (``medix-cpu-unfused``: ``h @ W^T``, then grpo_loss
with inplace_backward=True) and the peers. Time: interleaved rounds (A B C, B C A, ...), median;
each row has the 1-minute load average at the start and end of its case.

Peak extra memory (``peak_mem_MB``), one definition for every implementation and both ops: the
growth of the process's peak RSS (VmHWM) during one steady-state call (after a warm-up call at
the same shape) beyond the RSS before it, measured in the suite's memory worker process, where
every malloc block of 64 KiB or more is its own mapping (MALLOC_MMAP_THRESHOLD_=65536,
MALLOC_TRIM_THRESHOLD_=0) so memory freed by an earlier call cannot hide this one's. It includes
what the call returns: the gradients (d logits for grpo_loss, none new for the in-place variants
whose gradient is the logits' own storage; d hidden and the [V, H] d weight for the fused-linear
op, which every implementation returns alike). This script adds ``outputs_MB`` (the returned
gradients' bytes) and ``peak_mem_no_outputs_MB`` = peak_mem_MB - outputs_MB, and the definition
itself in ``peak_mem_definition``, to every row of the CSV, and prints the issue targets.

    python benchmarks/bench_policy_loss_cpu.py [--quick] [--report] [other python -m benchmarks options]

The committed CSV was written with ``--peers eager,compile --mem-budget-gb 5.5`` (the shared
machine's default budget, 40% of the available RAM, skipped both cases at the time).

``--report`` also runs the suite's report (per-op plots, and the README table when writing to
benchmarks/results); by default only this script's CSV and PNG are written.
"""
import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.__main__ import main

SHAPE = "tokens=4096,vocab=49152,hidden=576"
NAME = "policy_loss_cpu"
PEAK_DEFINITION = ("peak RSS growth of one steady-state call beyond the RSS before it (suite memory worker, "
                   "malloc blocks >= 64 KiB mmapped); includes the returned gradients; same for every row")
IN_PLACE = ("medix-cpu-inplace", "liger-triton")  # their gradient is the logits' own storage


def outputs_bytes(row: dict) -> int:
    """Bytes of the gradients one call returns (new memory that the peak includes)."""
    e = 2 if row["dtype"] in ("bfloat16", "float16") else 4
    t = int(row["tokens"] or 0)
    if row["op"] == "grpo_loss":
        return 0 if row["impl"] in IN_PLACE else t * int(row["vocab"]) * e
    if row["op"] == "fused_linear_grpo_loss":
        return (t + int(row["vocab"])) * int(row["hidden"]) * e
    return 0


def annotate(path: str) -> list[dict]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        rows, fields = list(reader), list(reader.fieldnames)
    for r in rows:
        out_mb = outputs_bytes(r) / 2**20
        r["outputs_MB"] = round(out_mb, 1)
        r["peak_mem_no_outputs_MB"] = round(float(r["peak_mem_MB"]) - out_mb, 1) if r["peak_mem_MB"] else ""
        r["peak_mem_definition"] = PEAK_DEFINITION
    extra = [c for c in ("outputs_MB", "peak_mem_no_outputs_MB", "peak_mem_definition") if c not in fields]
    i = fields.index("mem_method") + 1 if "mem_method" in fields else len(fields)
    fields = fields[:i] + extra + fields[i:]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return rows


def targets(rows: list[dict]) -> list[str]:
    """The issue targets, from the rows of one case each."""
    by = {(r["op"], r["shape"], r["impl"]): r for r in rows}
    lines = []
    for (op, shape, impl), r in by.items():
        if op == "fused_linear_grpo_loss" and impl == "medix-cpu":
            full = by.get((op, shape, "medix-cpu-unfused"))
            if full and r["peak_mem_MB"] and full["peak_mem_MB"]:
                mem = float(r["peak_mem_MB"]) / float(full["peak_mem_MB"])
                mem_no = float(r["peak_mem_no_outputs_MB"]) / float(full["peak_mem_no_outputs_MB"])
                tim = float(r["median_us"]) / float(full["median_us"])
                lines.append(f"fused_linear_grpo_loss {shape}: peak {r['peak_mem_MB']} MB vs full logits "
                             f"{full['peak_mem_MB']} MB = {mem:.1%} (target <= 15%: {'met' if mem <= 0.15 else 'MISSED'}); "
                             f"without the returned gradients {r['peak_mem_no_outputs_MB']} vs "
                             f"{full['peak_mem_no_outputs_MB']} MB = {mem_no:.1%}; time {tim:.2f}x the full-logits "
                             f"path (target <= 1.3x: {'met' if tim <= 1.3 else 'MISSED'}); "
                             f"load {r['load_1m_start']} -> {r['load_1m_end']}")
        if op == "grpo_loss" and impl == "medix-cpu":
            logits_mb = int(r["tokens"]) * int(r["vocab"]) * 4 / 2**20
            mem = float(r["peak_mem_MB"]) / logits_mb if r["peak_mem_MB"] else float("nan")
            xe, xc = float(r["x_vs_eager"] or "nan"), float(r["x_vs_compile"] or "nan")
            lines.append(f"grpo_loss {shape}: {xe:.2f}x eager (target >= 2.5x: {'met' if xe >= 2.5 else 'MISSED'}), "
                         f"{xc:.2f}x compile (target >= 1.3x: {'met' if xc >= 1.3 else 'MISSED'}), peak "
                         f"{mem:.2f}x the logits (target <= 1.25x: {'met' if mem <= 1.25 else 'MISSED'}); "
                         f"load {r['load_1m_start']} -> {r['load_1m_end']}")
    return lines


def plot(rows: list[dict], png: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    labels = [f"{r['op'].replace('_grpo_loss', '').replace('grpo_loss', 'grpo')}\n{r['impl']}" for r in rows]
    colors = ["tab:blue" if r["role"] == "ours" else "tab:gray" for r in rows]
    axes[0].bar(labels, [float(r["median_us"]) / 1e3 for r in rows], color=colors)
    axes[0].set_ylabel("forward + backward, median (ms)")
    axes[1].bar(labels, [float(r["peak_mem_MB"] or 0) for r in rows], color=colors)
    axes[1].set_ylabel("peak extra memory incl. returned gradients (MB)")
    for ax in axes:
        ax.tick_params(axis="x", labelsize=6, rotation=60)
    fig.suptitle(f"policy loss, CPU {rows[0]['dtype']} {rows[0]['shape']} ({rows[0]['device_name']}); "
                 f"load {rows[0]['load_1m_start']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def run(argv: list[str]) -> int:
    report = "--report" in argv
    args = [a for a in argv if a != "--report"]
    custom = any(a in ("--quick", "--smoke", "--medium", "--full") or a.startswith("--shape") for a in args)
    if not custom:
        args = ["--shape", SHAPE, "--name", NAME, *args]
    if not report:
        args = ["--no-report", *args]
    code = main(["--device", "cpu", "--ops", "grpo_loss,fused_linear_grpo_loss", *args])
    if code or custom:
        return code
    out_dir = args[args.index("--out-dir") + 1] if "--out-dir" in args else os.path.join(os.path.dirname(
        os.path.abspath(__file__)), "results")
    path = os.path.join(out_dir, NAME + ".csv")
    rows = annotate(path)
    if not rows:
        print("no rows (cases skipped: see above; --mem-budget-gb raises the memory budget)")
        return 1
    plot(rows, path.replace(".csv", ".png"))
    for line in targets(rows):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
