"""Everything derived from a results CSV: plots, the Markdown tables in benchmarks/README.md, the
scaling report (fitted exponents, crossovers) and the auto-choice table.

    python -m benchmarks report benchmarks/results/cpu-quick.csv [--readme]

Outputs next to the CSV: ``<stem>-<op>.png`` (time and peak memory against tokens, one line per
implementation), ``<stem>.md`` (every table: per op and shape, every row, scaling fits), ``<stem>.auto.csv`` (per op
and shape, the fastest medix backend and what ``backend="auto"`` resolves to at report time;
tests/test_benchmarks.py checks that ``resolve_backend`` follows it). The meta file's ``note``
(provenance added by hand: the command, the machine's state) heads the tables. With ``--readme``
the summary table (and a link to ``<stem>.md``) also goes into benchmarks/README.md between
``<!-- BEGIN RESULTS <stem> -->`` / ``<!-- END RESULTS <stem> -->`` (replaced in place, appended
at the end the first time).
"""
from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

from . import common
from .suite import PARAM_COLUMNS, PEER_FAMILIES

README = Path(__file__).resolve().parent / "README.md"
AXIS_PARAM = {"tokens": "tokens", "n": "n"}


def _f(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def _params(r: dict) -> dict:
    return {k: int(r[k]) for k in PARAM_COLUMNS if r.get(k) not in ("", None)}


def _axis(op_rows: list[dict]) -> str:
    return "tokens" if op_rows and op_rows[0].get("tokens") not in ("", None) else "n"


# ----------------------------------------------------------------------------- fits

def fit_exponent(xs: list[float], ys: list[float]):
    """Least-squares slope b of log y = a + b log x (and R^2); None below 2 distinct x."""
    pts = [(math.log(x), math.log(y)) for x, y in zip(xs, ys) if x > 0 and y > 0]
    if len({p[0] for p in pts}) < 2:
        return None
    n = len(pts)
    mx = sum(p[0] for p in pts) / n
    my = sum(p[1] for p in pts) / n
    sxx = sum((p[0] - mx) ** 2 for p in pts)
    sxy = sum((p[0] - mx) * (p[1] - my) for p in pts)
    b = sxy / sxx
    ss_tot = sum((p[1] - my) ** 2 for p in pts)
    ss_res = sum((p[1] - (my + b * (p[0] - mx))) ** 2 for p in pts)
    return b, (1 - ss_res / ss_tot) if ss_tot > 0 else 1.0, n


def sweeps(op_rows: list[dict], var: str) -> dict:
    """{(fixed params tuple): {impl: [(x, row)]}} for rows that differ only in ``var``."""
    out = {}
    for r in op_rows:
        p = _params(r)
        if var not in p:
            continue
        fixed = tuple(sorted((k, v) for k, v in p.items() if k != var))
        out.setdefault(fixed, {}).setdefault(r["impl"], []).append((p[var], r))
    return {k: v for k, v in out.items() if len({x for rows in v.values() for x, _ in rows}) >= 2}


def scaling(rows: list[dict]) -> list[dict]:
    """Exponents of time and peak memory in each swept variable, per op and implementation."""
    out = []
    for op in _ops(rows):
        op_rows = [r for r in rows if r["op"] == op]
        for var in ("tokens", "vocab", "hidden", "n"):
            for fixed, by_impl in sweeps(op_rows, var).items():
                for impl, pts in by_impl.items():
                    t = fit_exponent([x for x, _ in pts], [_f(r["median_us"]) for _, r in pts])
                    mems = [_f(r["peak_mem_MB"]) for _, r in pts]
                    # below 1 MB the worker's page-level noise dominates: no exponent (O(1) here)
                    small = max(mems, default=0.0) < 1.0
                    m = fit_exponent([x for x, _ in pts], mems) if all(v > 0 for v in mems) and not small else None
                    if t is None:
                        continue
                    out.append({"op": op, "var": var, "fixed": ", ".join(f"{k}={v}" for k, v in fixed),
                                "impl": impl, "points": t[2], "time_exp": round(t[0], 2), "time_r2": round(t[1], 3),
                                "mem_exp": "" if m is None else round(m[0], 2),
                                "mem_r2": "" if m is None else round(m[1], 3),
                                "mem_note": "" if m is not None else
                                ("peak extra < 1 MB at every point (constant)" if small else
                                 "peak extra 0 at some point" if any(v == 0 for v in mems) else "")})
    return out


# ----------------------------------------------------------------------------- auto choice

def auto_table(rows: list[dict]) -> list[dict]:
    """Per (op, shape): the fastest plain medix backend and what backend='auto' resolves to."""
    import torch

    from medix_kernels import _backend
    out = []
    cases = {}
    for r in rows:
        if r["role"] == "ours" and r["impl"] == f"medix-{r['backend'].split(' ')[0]}":
            cases.setdefault((r["op"], r["shape"], r["dtype"], r["device"]), []).append(r)
    for (op, shape, dtype, device), cands in cases.items():
        if len(cands) < 1:
            continue
        best = min(cands, key=lambda r: _f(r["median_us"]))
        try:
            auto = _backend.resolve_backend("auto", torch.empty(0, device=device), op)
        except Exception:
            auto = ""
        auto_row = next((r for r in cands if r["backend"].split(" ")[0] == auto), None)
        slowdown = _f(auto_row["median_us"]) / _f(best["median_us"]) if auto_row else float("nan")
        # significant: auto's choice is slower beyond the noise (its p10 above the winner's p90) and by > 5%
        significant = bool(auto_row is not None and auto_row is not best and _f(auto_row["p10_us"]) > _f(best["p90_us"])
                           and slowdown > 1.05)
        out.append({"op": op, "shape": shape, **{k: best.get(k, "") for k in PARAM_COLUMNS}, "dtype": dtype,
                    "device": device, "fastest_backend": best["backend"].split(" ")[0],
                    "fastest_us": best["median_us"], "fastest_p90_us": best["p90_us"],
                    "candidates": ";".join(f"{r['backend'].split(' ')[0]}={r['median_us']}" for r in cands),
                    "auto_at_measurement": auto, "auto_us": auto_row["median_us"] if auto_row else "",
                    "auto_p10_us": auto_row["p10_us"] if auto_row else "",
                    "auto_slowdown": round(slowdown, 3) if math.isfinite(slowdown) else "",
                    "significant": int(significant)})
    return out


AUTO_COLUMNS = ["op", "shape", *PARAM_COLUMNS, "dtype", "device", "fastest_backend", "fastest_us", "fastest_p90_us",
                "candidates", "auto_at_measurement", "auto_us", "auto_p10_us", "auto_slowdown", "significant"]


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


# ----------------------------------------------------------------------------- plots

def plot(csv_path: Path, rows: list[dict]) -> list[Path]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    for op in _ops(rows):
        op_rows = [r for r in rows if r["op"] == op]
        var = _axis(op_rows)
        groups = sweeps(op_rows, var)
        if not groups:  # a single shape: plot it as one point per implementation
            groups = {("single shape",): {r["impl"]: [(_params(r).get(var, 1), r)] for r in op_rows}}
        fixed, by_impl = max(groups.items(), key=lambda kv: len({x for v in kv[1].values() for x, _ in v}))
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for impl, pts in sorted(by_impl.items()):
            pts = sorted(pts, key=lambda p: p[0])
            xs = [x for x, _ in pts]
            style = "-" if pts[0][1]["role"] == "ours" else "--"
            t = [_f(r["median_us"]) / 1e3 for _, r in pts]
            lo = [_f(r["median_us"]) / 1e3 - _f(r["p10_us"]) / 1e3 for _, r in pts]
            hi = [_f(r["p90_us"]) / 1e3 - _f(r["median_us"]) / 1e3 for _, r in pts]
            axes[0].errorbar(xs, t, yerr=[lo, hi], fmt=style + "o", ms=3, capsize=2, label=impl)
            mem = [_f(r["peak_mem_MB"]) for _, r in pts]
            axes[1].plot(xs, [m if m > 0 else float("nan") for m in mem], style + "o", ms=3, label=impl)
        fixed_s = ", ".join(f"{k}={v}" for k, v in fixed) if fixed and fixed[0] != "single shape" else ""
        mem_positive = any(_f(r["peak_mem_MB"]) > 0 for v in by_impl.values() for _, r in v)
        for ax, ylab in zip(axes, ("time per call (ms): median, p10-p90", "peak extra memory (MB)")):
            ax.set_xscale("log", base=2)
            if ax is axes[0] or mem_positive:
                ax.set_yscale("log")
            ax.set_xlabel(var + (f"  ({fixed_s})" if fixed_s else ""))
            ax.set_ylabel(ylab)
            ax.grid(alpha=0.3, which="both")
        axes[1].text(0.02, 0.02, "0 MB (in place / chunked) not drawn on a log axis", transform=axes[1].transAxes,
                     fontsize=7, color="gray")
        axes[0].legend(fontsize=7)
        r0 = op_rows[0]
        fig.suptitle(f"{op} ({r0['dtype']}, {r0['device_name']}; load {r0['load_1m_start']})", fontsize=9)
        fig.tight_layout()
        path = csv_path.with_name(f"{csv_path.stem}-{op}.png")
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    return written


# ----------------------------------------------------------------------------- markdown

def _ops(rows):
    return list(dict.fromkeys(r["op"] for r in rows))


def _ms(x):
    v = _f(x) / 1e3
    return f"{v:.3g}" if v >= 0.01 else f"{v:.2g}"


def _header(csv_path: Path, rows: list[dict], meta: dict | None) -> list[str]:
    """The run's provenance line (the meta file's ``note`` first, where it has one) and the summary table:
    each medix implementation's speed-up over each peer, min-max over the op's shapes."""
    r0 = rows[0]
    loads = [_f(r["load_1m_start"]) for r in rows] + [_f(r["load_1m_end"]) for r in rows]
    out = [(f"{meta['note']} " if meta and meta.get("note") else "") +
           f"Results `{csv_path.name}` ({r0['profile']} profile): {r0['device_name']}, {r0['dtype']} "
           f"(reward ops: float32 inputs), medix {r0['medix']}, torch {r0['torch']}, triton {r0['triton']}, "
           f"driver {r0['driver']}, trl {r0['trl_version']}, liger-kernel {r0['liger_version']}, {r0['date']}. "
           f"Load average (1 min) during the cases: {min(loads):.2f}-{max(loads):.2f}. "
           f"Peaks: {_f(r0['peak_GBps']):.1f} GB/s, {_f(r0['peak_TFLOPs']):.3f} TFLOP/s ({r0['peak_source']})."]
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
    for op in _ops(rows):
        for impl in dict.fromkeys(r["impl"] for r in rows if r["op"] == op and r["role"] == "ours"):
            rs = [r for r in rows if r["op"] == op and r["impl"] == impl]
            cells = []
            for f in fams:
                v = [_f(r[f"x_vs_{f}"]) for r in rs if r[f"x_vs_{f}"] not in ("", None)]
                cells.append("-" if not v else f"{min(v):.2f}" if min(v) == max(v) else f"{min(v):.2f}-{max(v):.2f}")
            ld = [_f(r["load_1m_start"]) for r in rs] + [_f(r["load_1m_end"]) for r in rs]
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


def _auto_lines(csv_path: Path, auto_rows: list[dict], full: bool = True) -> list[str]:
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
        out.append(f"- {r['op']} {r['shape']}: {r['fastest_backend']} {_ms(r['fastest_us'])} ms vs "
                   f"auto ({r['auto_at_measurement']}) {_ms(r['auto_us'])} ms (x{r['auto_slowdown']})")
    out.append("")
    return out


def readme_section(csv_path: Path, rows: list[dict], meta: dict | None, auto_rows: list[dict]) -> str:
    """What benchmarks/README.md holds of a run: the provenance line, the summary table, the auto check
    and a link to the run's full tables (``<stem>.md``: every shape and row, scaling, plots)."""
    out = _header(csv_path, rows, meta) + _auto_lines(csv_path, auto_rows, full=False)
    out.append(f"Every shape and row, the scaling fits and the plots: [results/{csv_path.stem}.md]"
               f"(results/{csv_path.stem}.md).")
    return "\n".join(out)


def markdown(csv_path: Path, rows: list[dict], meta: dict | None, auto_rows: list[dict], scal: list[dict]) -> str:
    out = _header(csv_path, rows, meta)
    fams = [f for f in PEER_FAMILIES if any(r[f"x_vs_{f}"] not in ("", None) for r in rows)]
    out.append("Speed-up of the fastest medix implementation over each peer (peer median / medix median; "
               "> 1: medix is faster), per op and shape:")
    out.append("")
    out.append("| op | shape | fastest medix | median ms | peak MB | % of peak | " +
               " | ".join(f"x vs {f}" for f in fams) + " | load |")
    out.append("|" + "---|" * (7 + len(fams)))
    for op in _ops(rows):
        for shape in dict.fromkeys(r["shape"] for r in rows if r["op"] == op):
            case = [r for r in rows if r["op"] == op and r["shape"] == shape]
            ours = [r for r in case if r["role"] == "ours"]
            if not ours:
                continue
            best = min(ours, key=lambda r: _f(r["median_us"]))
            mem = "" if best["peak_mem_MB"] == "" else f"{_f(best['peak_mem_MB']):.1f}"
            out.append(f"| {op} | {shape} | {best['impl']} | {_ms(best['median_us'])} | {mem} | "
                       f"{100 * _f(best['frac_peak']):.1f} | " +
                       " | ".join(str(best[f"x_vs_{f}"]) if best[f"x_vs_{f}"] != "" else "-" for f in fams) +
                       f" | {best['load_1m_start']} |")
    out.append("")
    out.append("<details><summary>Every row (median and p10-p90 in ms, peak extra memory, throughput)</summary>")
    out.append("")
    out.append("| op | shape | impl | backend | median | p10-p90 | peak MB | GB/s | TFLOP/s | % peak | "
               "x vs best peer | load |")
    out.append("|" + "---|" * 12)
    for r in rows:
        mem = "" if r["peak_mem_MB"] == "" else f"{_f(r['peak_mem_MB']):.1f}"
        out.append(f"| {r['op']} | {r['shape']} | {r['impl']} | {r['backend']} | {_ms(r['median_us'])} | "
                   f"{_ms(r['p10_us'])}-{_ms(r['p90_us'])} | {mem} | {r['GBps']} | {r['TFLOPs'] or '-'} | "
                   f"{100 * _f(r['frac_peak']):.1f} | {r['x_vs_best_peer']} ({r['best_peer']}) | "
                   f"{r['load_1m_start']} |")
    out.append("")
    out.append("</details>")
    out.append("")
    if meta and (meta.get("skipped") or meta.get("errors")):
        out.append("Skipped (not faked) in this run:")
        out.append("")
        for k, v in meta.get("skipped", {}).items():
            out.append(f"- {k}: {v}")
        for e in meta.get("errors", []):
            out.append(f"- failed: {e}")
        out.append("")
    if scal:
        out.append("Scaling (least-squares exponent b of time ~ x^b and peak memory ~ x^b over a sweep of one "
                   "variable, the others fixed; R^2 in brackets):")
        out.append("")
        out.append("| op | variable | fixed | impl | points | time exponent | memory exponent |")
        out.append("|---|---|---|---|---|---|---|")
        for s in scal:
            if s["op"] not in ("grpo_loss", "fused_linear_grpo_loss", "selective_log_softmax",
                               "selective_log_softmax_entropy", "fused_linear_selective_log_softmax"):
                continue
            mem = f"{s['mem_exp']} ({s['mem_r2']})" if s["mem_exp"] != "" else (s["mem_note"] or "-")
            out.append(f"| {s['op']} | {s['var']} | {s['fixed']} | {s['impl']} | {s['points']} | "
                       f"{s['time_exp']} ({s['time_r2']}) | {mem} |")
        out.append("")
    slower = []
    for op in _ops(rows):
        for shape in dict.fromkeys(r["shape"] for r in rows if r["op"] == op):
            case = [r for r in rows if r["op"] == op and r["shape"] == shape]
            ours = [r for r in case if r["role"] == "ours"]
            peers = [r for r in case if r["role"] == "peer"]
            if ours and peers:
                b_ours = min(ours, key=lambda r: _f(r["median_us"]))
                b_peer = min(peers, key=lambda r: _f(r["median_us"]))
                if _f(b_peer["median_us"]) < _f(b_ours["median_us"]):
                    slower.append(f"- {op} {shape}: {b_peer['impl']} {_ms(b_peer['median_us'])} ms < "
                                  f"{b_ours['impl']} {_ms(b_ours['median_us'])} ms (x{b_ours['x_vs_best_peer']}"
                                  + (", within p10-p90" if _f(b_peer["p90_us"]) >= _f(b_ours["p10_us"]) else "")
                                  + ")")
    out.append("Shapes where a peer beat every medix implementation: " + ("none." if not slower else ""))
    out += slower
    out.append("")
    out += _auto_lines(csv_path, auto_rows)
    pngs = [(op, csv_path.with_name(f"{csv_path.stem}-{op}.png")) for op in _ops(rows)]
    pngs = [(op, p) for op, p in pngs if p.exists()]
    if pngs:
        out.append("Plots: " + ", ".join(f"[{op}]({p.name})" for op, p in pngs))  # next to this .md
        out.append("")
    return "\n".join(out)


def update_readme(section: str, text: str, readme: Path = README) -> None:
    begin, end = f"<!-- BEGIN RESULTS {section} -->", f"<!-- END RESULTS {section} -->"
    body = readme.read_text() if readme.exists() else ""
    block = f"{begin}\n{text}\n{end}"
    if begin in body and end in body:
        body = re.sub(re.escape(begin) + r".*?" + re.escape(end), lambda _: block, body, flags=re.S)
    else:
        body = body.rstrip() + "\n\n" + block + "\n"
    readme.write_text(body)


def generate(csv_path, readme: bool = False, readme_path: Path = README) -> str:
    csv_path = Path(csv_path)
    rows = common.read_csv(csv_path)
    meta_path = csv_path.with_suffix(".meta.json")
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else None
    plot(csv_path, rows)
    auto_rows = auto_table(rows)
    common.write_csv(csv_path.with_suffix(".auto.csv"), auto_rows, AUTO_COLUMNS)
    scal = scaling(rows)
    text = markdown(csv_path, rows, meta, auto_rows, scal)
    csv_path.with_suffix(".md").write_text(text + "\n")
    if readme:
        update_readme(csv_path.stem, readme_section(csv_path, rows, meta, auto_rows), readme_path)
    print(f"report: {csv_path.with_suffix('.md')}, {csv_path.with_suffix('.auto.csv')}, plots "
          f"{csv_path.stem}-*.png" + (f", {readme_path}" if readme else ""))
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks report", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("csv")
    p.add_argument("--readme", action="store_true", help="also write the tables into benchmarks/README.md")
    args = p.parse_args(argv)
    generate(args.csv, readme=args.readme)
    return 0
