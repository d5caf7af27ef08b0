"""Per-benchmark and overall scores with 95% bootstrap confidence intervals; Markdown and CSV.

Accuracy is the mean item score in percent. The interval is the percentile bootstrap (2.5th and
97.5th percentiles of the resampled means, ``resamples`` draws with a fixed seed, so a summary
is reproducible). The overall row is the macro average over benchmarks, as the paper reports
it; its interval resamples items within each benchmark (a stratified bootstrap).
The judge failure rate is failed judge rounds / judge rounds asked (items settled by exact
match or by an empty answer ask no judge).
"""
from __future__ import annotations

import csv
import io

import numpy as np

COLUMNS = ["benchmark", "n", "accuracy", "ci_low", "ci_high", "exact_match", "judge_rounds",
           "judge_failed_rounds", "judge_failure_rate", "items_all_rounds_failed"]


def bootstrap_ci(scores, *, resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile-bootstrap interval of the mean of ``scores`` (fractions, not percent)."""
    values = np.asarray(scores, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"scores must be a non-empty 1-d sequence, got shape {values.shape}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def _stratified_macro_ci(groups: list[np.ndarray], resamples: int, seed: int):
    rng = np.random.default_rng(seed)
    total = np.zeros(resamples)
    for values in groups:
        total += values[rng.integers(0, values.size, size=(resamples, values.size))].mean(axis=1)
    means = total / len(groups)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def summarize(items: list[dict], *, resamples: int = 2000, seed: int = 0) -> list[dict]:
    """One row per benchmark (in first-seen order) plus an ``overall`` row (macro average)."""
    if not items:
        raise ValueError("summarize needs at least one judged item")
    by_bench: dict[str, list[dict]] = {}
    for item in items:
        by_bench.setdefault(item["benchmark"], []).append(item)
    rows, groups = [], []
    for name, group in by_bench.items():
        scores = np.array([float(i["score"]) for i in group])
        groups.append(scores)
        low, high = bootstrap_ci(scores, resamples=resamples, seed=seed)
        rows.append(_row(name, group, scores.mean(), low, high))
    macro = float(np.mean([g.mean() for g in groups]))
    low, high = _stratified_macro_ci(groups, resamples, seed)
    rows.append(_row("overall", items, macro, low, high))
    return rows


def _row(name, group, mean, low, high) -> dict:
    rounds = sum(len(i["rounds"]) for i in group)
    failed = sum(sum(1 for r in i["rounds"] if r["failed"]) for i in group)
    return {
        "benchmark": name,
        "n": len(group),
        "accuracy": round(100 * float(mean), 2),
        "ci_low": round(100 * low, 2),
        "ci_high": round(100 * high, 2),
        "exact_match": sum(1 for i in group if i["decided_by"] == "exact_match"),
        "judge_rounds": rounds,
        "judge_failed_rounds": failed,
        "judge_failure_rate": round(100 * failed / rounds, 2) if rounds else 0.0,
        "items_all_rounds_failed": sum(1 for i in group if i.get("judge_failed")),
    }


def to_csv(rows: list[dict]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def to_markdown(rows: list[dict], title: str | None = None) -> str:
    """A Markdown table: accuracy with its 95% CI, exact matches and judge failures."""
    lines = [f"### {title}", ""] if title else []
    lines += ["| Benchmark | n | Accuracy % | 95% CI | Exact match | Judge rounds | "
              "Judge failure % |",
              "|---|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['benchmark']} | {r['n']} | {r['accuracy']:.1f} | "
                     f"[{r['ci_low']:.1f}, {r['ci_high']:.1f}] | {r['exact_match']} | "
                     f"{r['judge_rounds']} | {r['judge_failure_rate']:.1f} |")
    return "\n".join(lines) + "\n"


def judge_stats_markdown(sessions: list[dict]) -> str:
    """The judge client's counters, one line per session that judged (empty when none did).

    ``requests`` counts what was sent (HTTP requests, or local generate calls), so a resumed run
    that re-pays nothing shows only cache hits.
    """
    if not sessions:
        return ""

    def ms(value):
        return "-" if value is None else f"{1000 * value:.0f}"

    lines = ["", "Judge sessions (client counters): calls, requests sent, transport retries, "
             "failed calls, cache hits, latency p50/p90 ms, wall s", "",
             "| Started | Items | Calls | Requests | Retries | Failed | Cache hits | p50 | p90 | "
             "Wall s |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for s in sessions:
        lines.append(f"| {s.get('started', '?')} | {s.get('items', '?')} | {s.get('calls', 0)} | "
                     f"{s.get('requests', 0)} | {s.get('retries', 0)} | {s.get('failures', 0)} | "
                     f"{s.get('cache_hits', 0)} | {ms(s.get('latency_p50_s'))} | "
                     f"{ms(s.get('latency_p90_s'))} | {s.get('seconds', '?')} |")
    return "\n".join(lines) + "\n"


def read_summary_csv(path) -> list[dict]:
    """Rows of a summary.csv written by :func:`to_csv` (numbers converted back)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows or set(COLUMNS) - set(rows[0]):
        raise ValueError(f"{path} is not a medix eval summary.csv (expected columns {COLUMNS})")
    for r in rows:
        for key in COLUMNS[1:]:
            r[key] = float(r[key]) if "." in r[key] else int(r[key])
    return rows
