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
from .report_markdown import markdown, num, op_names, readme_section
from .suite import PARAM_COLUMNS

README = Path(__file__).resolve().parent / "README.md"
AXIS_PARAM = {"tokens": "tokens", "n": "n"}


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
    for op in op_names(rows):
        op_rows = [r for r in rows if r["op"] == op]
        for var in ("tokens", "vocab", "hidden", "n"):
            for fixed, by_impl in sweeps(op_rows, var).items():
                for impl, pts in by_impl.items():
                    t = fit_exponent([x for x, _ in pts], [num(r["median_us"]) for _, r in pts])
                    mems = [num(r["peak_mem_MB"]) for _, r in pts]
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
        best = min(cands, key=lambda r: num(r["median_us"]))
        try:
            auto = _backend.resolve_backend("auto", torch.empty(0, device=device), op)
        except Exception:
            auto = ""
        auto_row = next((r for r in cands if r["backend"].split(" ")[0] == auto), None)
        slowdown = num(auto_row["median_us"]) / num(best["median_us"]) if auto_row else float("nan")
        # significant: auto's choice is slower beyond the noise (its p10 above the winner's p90) and by > 5%
        significant = bool(auto_row is not None and auto_row is not best
                           and num(auto_row["p10_us"]) > num(best["p90_us"]) and slowdown > 1.05)
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


# ----------------------------------------------------------------------------- plots

def plot(csv_path: Path, rows: list[dict]) -> list[Path]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []
    for op in op_names(rows):
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
            t = [num(r["median_us"]) / 1e3 for _, r in pts]
            lo = [num(r["median_us"]) / 1e3 - num(r["p10_us"]) / 1e3 for _, r in pts]
            hi = [num(r["p90_us"]) / 1e3 - num(r["median_us"]) / 1e3 for _, r in pts]
            axes[0].errorbar(xs, t, yerr=[lo, hi], fmt=style + "o", ms=3, capsize=2, label=impl)
            mem = [num(r["peak_mem_MB"]) for _, r in pts]
            axes[1].plot(xs, [m if m > 0 else float("nan") for m in mem], style + "o", ms=3, label=impl)
        fixed_s = ", ".join(f"{k}={v}" for k, v in fixed) if fixed and fixed[0] != "single shape" else ""
        mem_positive = any(num(r["peak_mem_MB"]) > 0 for v in by_impl.values() for _, r in v)
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
