"""Bar charts (PNG, matplotlib Agg backend) of accuracy with 95% confidence intervals."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt
import numpy as np


def bar_chart(runs: dict[str, list[dict]], path: Path, title: str = "Accuracy (LLM judge)") -> Path:
    """Grouped bars: one group per benchmark, one bar per run, CI as error bars.

    ``runs`` maps a run label to its summary rows (see :func:`medix_r1.eval.summary.summarize`).
    A single run gives a plain bar chart.
    """
    if not runs:
        raise ValueError("bar_chart needs at least one run")
    benchmarks: list[str] = []
    for rows in runs.values():
        for r in rows:
            if r["benchmark"] not in benchmarks:
                benchmarks.append(r["benchmark"])
    x = np.arange(len(benchmarks))
    width = 0.8 / len(runs)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.4 * len(benchmarks) * max(1, len(runs) / 2)), 3.6))
    for k, (label, rows) in enumerate(runs.items()):
        by_name = {r["benchmark"]: r for r in rows}
        acc = np.array([by_name[b]["accuracy"] if b in by_name else np.nan for b in benchmarks])
        low = np.array([by_name[b]["ci_low"] if b in by_name else np.nan for b in benchmarks])
        high = np.array([by_name[b]["ci_high"] if b in by_name else np.nan for b in benchmarks])
        err = np.vstack([acc - low, high - acc])
        bars = ax.bar(x + (k - (len(runs) - 1) / 2) * width, acc, width, yerr=err, capsize=3,
                      label=label)
        for bar, value, top in zip(bars, acc, high):
            if not np.isnan(value):  # above the error bar, where the whisker cannot cover it
                ax.annotate(f"{value:.1f}", (bar.get_x() + bar.get_width() / 2,
                                             value if np.isnan(top) else max(value, top)),
                            ha="center", va="bottom", fontsize=7, xytext=(0, 2),
                            textcoords="offset points")
    ax.set_xticks(x)
    ax.set_xticklabels(benchmarks, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel("accuracy % (95% CI)")
    ax.set_ylim(0, 106)
    ax.set_title(title, fontsize=10)
    if len(runs) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
