"""The GPU check's bench phase: the benchmark rows, run in parts, collected and tabulated.

``benchmarks.gpu.rows`` measures the ceilings (copy bandwidth, bf16 matmul) once, then every op's
rows; a row that kills its process is noted and the next part starts after it. The parts' CSVs and
meta files in WORK/bench are what the summary and targets.csv are made of.
"""
from __future__ import annotations

import time
from pathlib import Path

from .check_common import as_float, read_csv, read_json


def phase_bench(check, limit):
    from .rows import OPS
    bench_dir = check.work / "bench"
    bench_dir.mkdir(exist_ok=True)
    remaining, part, notes, t_end = list(OPS), 0, [], time.monotonic() + limit
    while remaining:
        left = t_end - time.monotonic()
        if left < 10:
            notes.append(f"no time for {','.join(remaining)}")
            break
        name = f"bench-part{part}"
        cmd = [check.py, "-m", "benchmarks.gpu.rows", "--out-dir", str(bench_dir), "--name", name,
               "--ops", ",".join(remaining)]
        if not (bench_dir / "ceilings.json").exists():
            cmd.append("--ceilings")
        if check.dry:
            cmd.append("--dry-run")
        res = check.sh(cmd, check.logs / f"{name}.log", timeout=left)
        got = read_csv(bench_dir / f"{name}.csv") or read_csv(bench_dir / f"{name}.partial.csv")
        done = {r["op"] for r in got}
        if res["rc"] == 0 and not res["timed_out"]:
            break
        pending = [o for o in remaining if o not in done]
        if not pending:
            break
        why = "killed at the time limit" if res["timed_out"] else f"exited {res['rc']}"
        notes.append(f"{pending[0]}: {why} (log {name}.log)")
        if res["timed_out"]:
            break
        remaining = pending[1:]  # the row that took its process down is not retried
        part += 1
    rows, meta = bench_rows(check.work)
    ceil = read_json(bench_dir / "ceilings.json")
    if not rows:
        return "failed", "; ".join(notes) or "no rows"
    ops = sorted({r["op"] for r in rows})
    status = "ok" if not notes else "partial"
    note = (f"{len(rows)} rows over {len(ops)} ops; copy {ceil.get('copy_GBps', '?')} GB/s, bf16 matmul "
            f"{ceil.get('matmul_TFLOPs', '?')} TFLOP/s")
    if meta.get("errors"):
        note += f"; {len(meta['errors'])} implementation error(s)"
    return status, note + ("; " + "; ".join(notes) if notes else "")



def bench_rows(work: Path) -> tuple[list[dict], dict]:
    """The rows of every bench part in WORK/bench (a part's .partial.csv when it did not finish) and their meta."""
    rows, meta = [], {"skipped": {}, "errors": []}
    for path in sorted((work / "bench").glob("bench-part*.csv")):
        if path.name.endswith(".partial.csv") and path.with_name(path.name.replace(".partial", "")).exists():
            continue
        rows += read_csv(path)
        m = read_json(path.with_suffix(".meta.json"))
        meta["skipped"].update(m.get("skipped") or {})
        meta["errors"] += m.get("errors") or []
    return rows, meta



def bench_tables(rows: list[dict], ceil: dict) -> list[str]:
    """One Markdown table per op and shape, fastest first, each row's rate against the ceiling it is bound by."""
    if not rows:
        return ["(no rows)"]
    copy = as_float(ceil.get("copy_GBps"))
    mm = as_float(ceil.get("matmul_TFLOPs"))
    L = []
    for op in dict.fromkeys(r["op"] for r in rows):
        for shape in dict.fromkeys(r["shape"] for r in rows if r["op"] == op):
            case = sorted((r for r in rows if r["op"] == op and r["shape"] == shape),
                          key=lambda r: as_float(r["median_us"]))
            compute = case[0]["bound"] == "compute"
            L += [f"**{op}** {shape} {case[0]['dtype']}", "",
                  "| impl | backend | median ms | p10-p90 ms | "
                  + ("TFLOP/s | % matmul" if compute else "GB/s | % copy")
                  + " | peak MB | vs fastest |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
            best = as_float(case[0]["median_us"])
            for r in case:
                med = as_float(r["median_us"])
                if compute:
                    rate = as_float(r["flops"]) / (med * 1e-6) / 1e12
                    frac = rate / mm if mm > 0 else float("nan")
                else:
                    rate = as_float(r["bytes_moved"]) / (med * 1e-6) / 1e9
                    frac = rate / copy if copy > 0 else float("nan")
                L.append(f"| {r['impl']} | {r['backend']} | {med / 1e3:.4g} | "
                         f"{as_float(r['p10_us']) / 1e3:.4g}-{as_float(r['p90_us']) / 1e3:.4g} | {rate:.4g} | "
                         f"{frac:.1%} | {r['peak_mem_MB'] or '-'} | x{med / best:.2f} |")
            L.append("")
    return L
