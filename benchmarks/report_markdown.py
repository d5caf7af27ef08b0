"""The Markdown of a results CSV (``python -m benchmarks report``, :mod:`.report`): the summary that goes
into benchmarks/README.md and ``<stem>.md``, section by section: the provenance line and summary
table, the speed-up of the fastest medix implementation per shape, every row, what was skipped, the
scaling fits, where a peer won, which backend ``auto`` should pick, and the plots.
"""
from __future__ import annotations

from pathlib import Path

from .suite import PEER_FAMILIES


def num(x):
    """A CSV cell as a float (nan when empty or not a number)."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def op_names(rows):
    return list(dict.fromkeys(r["op"] for r in rows))


def ms(x):
    v = num(x) / 1e3
    return f"{v:.3g}" if v >= 0.01 else f"{v:.2g}"


def header(csv_path: Path, rows: list[dict], meta: dict | None) -> list[str]:
    """The run's provenance line (the meta file's ``note`` first, where it has one) and the summary table:
    each medix implementation's speed-up over each peer, min-max over the op's shapes."""
    r0 = rows[0]
    loads = [num(r["load_1m_start"]) for r in rows] + [num(r["load_1m_end"]) for r in rows]
    out = [(f"{meta['note']} " if meta and meta.get("note") else "") +
           f"Results `{csv_path.name}` ({r0['profile']} profile): {r0['device_name']}, {r0['dtype']} "
           f"(reward ops: float32 inputs), medix {r0['medix']}, torch {r0['torch']}, triton {r0['triton']}, "
           f"driver {r0['driver']}, trl {r0['trl_version']}, liger-kernel {r0['liger_version']}, {r0['date']}. "
           f"Load average (1 min) during the cases: {min(loads):.2f}-{max(loads):.2f}. "
           f"Peaks: {num(r0['peak_GBps']):.1f} GB/s, {num(r0['peak_TFLOPs']):.3f} TFLOP/s ({r0['peak_source']})."]
    if meta:
        out[0] += (f" Memory: {meta.get('mem_method')}; OMP_WAIT_POLICY={meta.get('omp_wait_policy', '?')}; "
                   f"wall time {meta.get('wall_s')} s.")
    out.append("")
    fams = [f for f in PEER_FAMILIES if any(r[f"x_vs_{f}"] not in ("", None) for r in rows)]
    out.append("Summary: speed-up of each medix implementation over each peer, min-max over the op's shapes "
               "(peer median / medix median; > 1: medix is faster), and the load average during those cases:")
    out.append("")
    out.append("| op | medix impl | shapes | " + " | ".join(f"x vs {f}" for f in fams) + " | load 1m |")
    out.append("|" + "---|" * (4 + len(fams)))
    for op in op_names(rows):
        for impl in dict.fromkeys(r["impl"] for r in rows if r["op"] == op and r["role"] == "ours"):
            rs = [r for r in rows if r["op"] == op and r["impl"] == impl]
            cells = []
            for f in fams:
                v = [num(r[f"x_vs_{f}"]) for r in rs if r[f"x_vs_{f}"] not in ("", None)]
                cells.append("-" if not v else f"{min(v):.2f}" if min(v) == max(v) else f"{min(v):.2f}-{max(v):.2f}")
            ld = [num(r["load_1m_start"]) for r in rs] + [num(r["load_1m_end"]) for r in rs]
            mark = " (*)" if impl.endswith("-inplace") else ""
            out.append(f"| {op} | {impl}{mark} | {len(rs)} | " + " | ".join(cells)
                       + f" | {min(ld):.1f}-{max(ld):.1f} |")
    out.append("")
    if any(r["impl"].endswith("-inplace") and r["role"] == "ours" for r in rows):
        out.append("(*) in place on one private logits tensor that every timed call reuses: it allocates no "
                   "gradient buffer where every other row allocates (and page-faults) a fresh [T, V] one per call; "
                   "not the cost of a training step (see the fair protocol, bench_policy_loss_cpu.py --fair).")
        out.append("")
    return out


def auto_lines(csv_path: Path, auto_rows: list[dict], full: bool = True) -> list[str]:
    if not auto_rows:
        return []
    out = []
    if full:
        out.append(f"Which medix backend is fastest (what `backend=\"auto\"` should pick on this device; table: "
                   f"`{csv_path.stem}.auto.csv`):")
        out.append("")
        out += crossovers(auto_rows)
        out.append("")
    mism = [r for r in auto_rows if r["fastest_backend"] != r["auto_at_measurement"]]
    sig = [r for r in mism if str(r["significant"]) == "1"]
    table = "" if full else f" (table: `results/{csv_path.stem}.auto.csv`)"
    out.append(f"`auto` resolved to `{auto_rows[0]['auto_at_measurement']}` here{table}; it was not the fastest at "
               f"{len(mism)} of {len(auto_rows)} shapes, beyond the noise (p10 of auto's choice above the "
               f"winner's p90 and > 5% slower) at {len(sig)}" + (":" if sig else "."))
    for r in sig:
        out.append(f"- {r['op']} {r['shape']}: {r['fastest_backend']} {ms(r['fastest_us'])} ms vs "
                   f"auto ({r['auto_at_measurement']}) {ms(r['auto_us'])} ms (x{r['auto_slowdown']})")
    out.append("")
    return out


def readme_section(csv_path: Path, rows: list[dict], meta: dict | None, auto_rows: list[dict]) -> str:
    """What benchmarks/README.md holds of a run: the provenance line, the summary table, the auto check
    and a link to the run's full tables (``<stem>.md``: every shape and row, scaling, plots)."""
    out = header(csv_path, rows, meta) + auto_lines(csv_path, auto_rows, full=False)
    out.append(f"Every shape and row, the scaling fits and the plots: [results/{csv_path.stem}.md]"
               f"(results/{csv_path.stem}.md).")
    return "\n".join(out)


def markdown(csv_path: Path, rows: list[dict], meta: dict | None, auto_rows: list[dict], scal: list[dict]) -> str:
    """``<stem>.md``: every table of a run."""
    out = header(csv_path, rows, meta) + speedup_table(rows) + every_row_table(rows) + skipped_lines(meta)
    out += scaling_table(scal) + peer_wins(rows) + auto_lines(csv_path, auto_rows) + plot_links(csv_path, rows)
    return "\n".join(out)


def speedup_table(rows: list[dict]) -> list[str]:
    """Per op and shape, the fastest medix implementation and its speed-up over each peer family."""
    fams = [f for f in PEER_FAMILIES if any(r[f"x_vs_{f}"] not in ("", None) for r in rows)]
    out = ["Speed-up of the fastest medix implementation over each peer (peer median / medix median; "
           "> 1: medix is faster), per op and shape:", ""]
    out.append("| op | shape | fastest medix | median ms | peak MB | % of peak | " +
               " | ".join(f"x vs {f}" for f in fams) + " | load |")
    out.append("|" + "---|" * (7 + len(fams)))
    for op in op_names(rows):
        for shape in dict.fromkeys(r["shape"] for r in rows if r["op"] == op):
            case = [r for r in rows if r["op"] == op and r["shape"] == shape]
            ours = [r for r in case if r["role"] == "ours"]
            if not ours:
                continue
            best = min(ours, key=lambda r: num(r["median_us"]))
            mem = "" if best["peak_mem_MB"] == "" else f"{num(best['peak_mem_MB']):.1f}"
            out.append(f"| {op} | {shape} | {best['impl']} | {ms(best['median_us'])} | {mem} | "
                       f"{100 * num(best['frac_peak']):.1f} | " +
                       " | ".join(str(best[f"x_vs_{f}"]) if best[f"x_vs_{f}"] != "" else "-" for f in fams) +
                       f" | {best['load_1m_start']} |")
    out.append("")
    return out


def every_row_table(rows: list[dict]) -> list[str]:
    """Every row of the CSV, folded away in a <details> block."""
    out = ["<details><summary>Every row (median and p10-p90 in ms, peak extra memory, throughput)</summary>", ""]
    out.append("| op | shape | impl | backend | median | p10-p90 | peak MB | GB/s | TFLOP/s | % peak | "
               "x vs best peer | load |")
    out.append("|" + "---|" * 12)
    for r in rows:
        mem = "" if r["peak_mem_MB"] == "" else f"{num(r['peak_mem_MB']):.1f}"
        out.append(f"| {r['op']} | {r['shape']} | {r['impl']} | {r['backend']} | {ms(r['median_us'])} | "
                   f"{ms(r['p10_us'])}-{ms(r['p90_us'])} | {mem} | {r['GBps']} | {r['TFLOPs'] or '-'} | "
                   f"{100 * num(r['frac_peak']):.1f} | {r['x_vs_best_peer']} ({r['best_peer']}) | "
                   f"{r['load_1m_start']} |")
    return out + ["", "</details>", ""]


def skipped_lines(meta: dict | None) -> list[str]:
    """The implementations the run skipped or that failed, with the reason (nothing is faked)."""
    if not (meta and (meta.get("skipped") or meta.get("errors"))):
        return []
    out = ["Skipped (not faked) in this run:", ""]
    out += [f"- {k}: {v}" for k, v in meta.get("skipped", {}).items()]
    out += [f"- failed: {e}" for e in meta.get("errors", [])]
    return out + [""]


SCALING_OPS = ("grpo_loss", "fused_linear_grpo_loss", "selective_log_softmax", "selective_log_softmax_entropy",
               "fused_linear_selective_log_softmax")


def scaling_table(scal: list[dict]) -> list[str]:
    """The fitted exponents of time and peak memory (:func:`.report.scaling`) of the [T, V] ops."""
    if not scal:
        return []
    out = ["Scaling (least-squares exponent b of time ~ x^b and peak memory ~ x^b over a sweep of one "
           "variable, the others fixed; R^2 in brackets):", ""]
    out.append("| op | variable | fixed | impl | points | time exponent | memory exponent |")
    out.append("|---|---|---|---|---|---|---|")
    for s in scal:
        if s["op"] not in SCALING_OPS:
            continue
        mem = f"{s['mem_exp']} ({s['mem_r2']})" if s["mem_exp"] != "" else (s["mem_note"] or "-")
        out.append(f"| {s['op']} | {s['var']} | {s['fixed']} | {s['impl']} | {s['points']} | "
                   f"{s['time_exp']} ({s['time_r2']}) | {mem} |")
    return out + [""]


def peer_wins(rows: list[dict]) -> list[str]:
    """The shapes where the fastest peer beat the fastest medix implementation (and whether within the noise)."""
    slower = []
    for op in op_names(rows):
        for shape in dict.fromkeys(r["shape"] for r in rows if r["op"] == op):
            case = [r for r in rows if r["op"] == op and r["shape"] == shape]
            ours = [r for r in case if r["role"] == "ours"]
            peers = [r for r in case if r["role"] == "peer"]
            if ours and peers:
                b_ours = min(ours, key=lambda r: num(r["median_us"]))
                b_peer = min(peers, key=lambda r: num(r["median_us"]))
                if num(b_peer["median_us"]) < num(b_ours["median_us"]):
                    slower.append(f"- {op} {shape}: {b_peer['impl']} {ms(b_peer['median_us'])} ms < "
                                  f"{b_ours['impl']} {ms(b_ours['median_us'])} ms (x{b_ours['x_vs_best_peer']}"
                                  + (", within p10-p90" if num(b_peer["p90_us"]) >= num(b_ours["p10_us"]) else "")
                                  + ")")
    return ["Shapes where a peer beat every medix implementation: " + ("none." if not slower else ""), *slower, ""]


def plot_links(csv_path: Path, rows: list[dict]) -> list[str]:
    pngs = [(op, csv_path.with_name(f"{csv_path.stem}-{op}.png")) for op in op_names(rows)]
    pngs = [(op, p) for op, p in pngs if p.exists()]
    if not pngs:
        return []
    return ["Plots: " + ", ".join(f"[{op}]({p.name})" for op, p in pngs), ""]  # next to this .md


def crossovers(auto_rows: list[dict]) -> list[str]:
    lines = []
    for op in dict.fromkeys(r["op"] for r in auto_rows):
        rs = sorted([r for r in auto_rows if r["op"] == op],
                    key=lambda r: tuple(int(r[k]) if r[k] not in ("", None) else 0 for k in ("tokens", "n", "vocab")))
        winners = [r["fastest_backend"] for r in rs]
        if len(set(winners)) == 1:
            lines.append(f"- `{op}`: `{winners[0]}` fastest at every measured shape ({len(rs)})")
        else:
            def flag(r):
                quiet = r["significant"] in (0, "0") or r["fastest_backend"] == r["auto_at_measurement"]
                return "" if quiet else " (significant)"
            parts = ", ".join(f"{r['shape']}: `{r['fastest_backend']}`" + flag(r) for r in rs)
            lines.append(f"- `{op}`: winner changes with the shape: {parts}")
    return lines
