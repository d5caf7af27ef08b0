"""Comparison mode: several finished runs side by side (Markdown, CSV and a grouped bar chart).

    python -m medix_r1.eval compare RUN_DIR RUN_DIR ... [--output-dir DIR]

Each run folder must hold the ``summary.csv`` an eval writes; its label is the ``label`` or
``model`` of its ``run.json`` (the folder name when labels collide or are missing).
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from .charts import bar_chart
from .summary import read_summary_csv


def load_runs(run_dirs: list[str | Path]) -> dict[str, list[dict]]:
    """Label -> summary rows for each run folder, in the order given."""
    if len(run_dirs) < 1:
        raise ValueError("compare needs at least one run folder")
    runs: dict[str, list[dict]] = {}
    for run_dir in map(Path, run_dirs):
        summary = run_dir / "summary.csv"
        if not summary.is_file():
            raise ValueError(f"{run_dir} is not a finished eval run (no summary.csv)")
        label = run_dir.name
        info_path = run_dir / "run.json"
        if info_path.is_file():
            info = json.loads(info_path.read_text())
            label = info.get("label") or Path(str(info.get("model", label))).name or label
        if label in runs:
            label = f"{label} ({run_dir})"
        runs[label] = read_summary_csv(summary)
    return runs


def comparison_table(runs: dict[str, list[dict]]) -> tuple[str, str]:
    """(Markdown, CSV): one row per benchmark, one accuracy-with-CI column per run."""
    benchmarks: list[str] = []
    for rows in runs.values():
        benchmarks += [r["benchmark"] for r in rows if r["benchmark"] not in benchmarks]
    # "overall" last: it is the macro average of each run's own benchmarks.
    benchmarks.sort(key=lambda b: b == "overall")
    labels = list(runs)
    md = ["| Benchmark | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["benchmark"] + [f"{lab} {col}" for lab in labels
                                     for col in ("n", "accuracy", "ci_low", "ci_high")])
    for bench in benchmarks:
        cells, values = [], []
        for label in labels:
            row = next((r for r in runs[label] if r["benchmark"] == bench), None)
            if row is None:
                cells.append("–")
                values += ["", "", "", ""]
            else:
                cells.append(f"{row['accuracy']:.1f} [{row['ci_low']:.1f}, {row['ci_high']:.1f}]"
                             f" (n={row['n']})")
                values += [row["n"], row["accuracy"], row["ci_low"], row["ci_high"]]
        md.append(f"| {bench} | " + " | ".join(cells) + " |")
        writer.writerow([bench] + values)
    return "\n".join(md) + "\n", out.getvalue()


def compare(run_dirs: list[str | Path], output_dir: str | Path | None = None) -> str:
    """The comparison as Markdown; with ``output_dir`` also compare.md/.csv and compare.png."""
    runs = load_runs(run_dirs)
    markdown, table_csv = comparison_table(runs)
    if output_dir is not None:
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "compare.md").write_text(markdown)
        (output_dir / "compare.csv").write_text(table_csv)
        bar_chart(runs, output_dir / "compare.png", title="Accuracy by run (LLM judge)")
    return markdown
