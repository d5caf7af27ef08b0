"""Training runs side by side: their metrics.jsonl curves in one plot, first / last 10-step means.

    python -m medix_r1.eval.studies run-curves RUN_A/metrics.jsonl RUN_B/metrics.jsonl [--labels a,b] --out PATH.png

(``python -m benchmarks run-curves ...`` runs the same.)

Plots, per step, the total reward, the format, judge and embedding rewards, the response length and
the step time of each run (one line per run), and prints a Markdown table of each metric's mean
over the first and the last 10 steps. Used to check that a change keeps the learning of the
embedded CPU run (benchmarks/results/train_cpu_default.md).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from medix_r1.utils.cli import command_name

PANELS = [("reward/total", "total reward"), ("reward/format", "format reward"), ("reward/judge", "judge reward"),
          ("reward/embedding", "embedding reward"), ("rollout/response_len", "response length (tokens)"),
          ("time/step", "step time (s)")]


def read_history(path: Path) -> list[dict]:
    if not path.is_file():
        raise ValueError(f"{path}: no such metrics file")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "step" in r and "reward/total" in r]
    if not rows:
        raise ValueError(f"{path}: no training steps in it (a metrics.jsonl of python -m medix_r1.train?)")
    return rows


def window_means(rows: list[dict], key: str, k: int = 10) -> tuple[float, float]:
    values = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    mean = (lambda v: sum(v) / len(v) if v else float("nan"))
    return mean(values[:k]), mean(values[-k:])


def table(runs: dict[str, list[dict]]) -> str:
    lines = ["| metric | " + " | ".join(f"{name}: first 10 -> last 10" for name in runs) + " |",
             "|---|" + "---|" * len(runs)]
    for key, title in PANELS:
        cells = []
        for rows in runs.values():
            first, last = window_means(rows, key)
            cells.append(f"{first:.3f} -> {last:.3f}" if "reward" in key else f"{first:.1f} -> {last:.1f}")
        lines.append(f"| {title} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(runs: dict[str, list[dict]], out: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 3, figsize=(13, 6.5))
    for ax, (key, title) in zip(axes.flat, PANELS):
        for name, rows in runs.items():
            pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            ax.plot([s for s, _ in pts], [v for _, v in pts], marker=".", label=name)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=command_name("medix_r1.eval.studies") + " run-curves", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("metrics", nargs="+", help="metrics.jsonl files of training runs")
    p.add_argument("--labels", default=None, help="comma-separated names, one per file (default: the folder names)")
    p.add_argument("--out", required=True, help="PNG to write")
    args = p.parse_args(argv)
    paths = [Path(m) for m in args.metrics]
    labels = args.labels.split(",") if args.labels else [q.parent.name for q in paths]
    if len(labels) != len(paths) or len(set(labels)) != len(labels):
        raise ValueError(f"--labels needs {len(paths)} distinct names, got {args.labels!r}")
    runs = {name: read_history(q) for name, q in zip(labels, paths)}
    print(table(runs))
    print(f"wrote {plot(runs, Path(args.out))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
