"""Comparison mode: several finished runs side by side (Markdown, CSV and a grouped bar chart).

    python -m medix_r1.eval compare RUN_DIR RUN_DIR ... [--output-dir DIR]

Each run folder must hold the ``summary.csv`` an eval writes; its label is the ``label`` or
``model`` of its ``run.json`` (the folder name when labels collide or are missing). A file that
cannot be read is one error naming it; an existing ``compare.md`` / ``.csv`` / ``.png`` in the
output folder is replaced only with ``overwrite``.
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
            info = read_run_info(info_path)
            named = info.get("label") if info.get("label") not in (None, "") else None
            label = str(named) if named is not None else Path(str(info.get("model", label))).name or label
        if label in runs:
            label = f"{label} ({run_dir})"
        runs[label] = read_summary(summary)
    return runs


def read_run_info(path: Path) -> dict:
    """A run's run.json as a dict; ValueError naming the file when it is not a JSON object."""
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(info, dict):
        raise ValueError(f"{path}: expected a JSON object (the run's settings), got a {type(info).__name__}")
    return info


def read_summary(path: Path) -> list[dict]:
    """A run's summary.csv rows; ValueError naming the file when a row is short or not numbers."""
    try:
        rows = read_summary_csv(path)
        for r in rows:
            if not isinstance(r.get("benchmark"), str) or not r["benchmark"]:
                raise ValueError(f"a row without its benchmark name: {r}")
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, csv.Error) as e:
        if str(path) in str(e):
            raise ValueError(str(e)) from None
        raise ValueError(f"{path} is not a readable eval summary.csv (a short or malformed row? "
                         f"{type(e).__name__}: {e})") from None
    return rows


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


OUTPUTS = ("compare.md", "compare.csv", "compare.png")


def compare(run_dirs: list[str | Path], output_dir: str | Path | None = None, overwrite: bool = False) -> str:
    """The comparison as Markdown; with ``output_dir`` also compare.md/.csv and compare.png (existing
    ones are replaced only with ``overwrite``; checked before anything is read or written)."""
    if output_dir is not None:
        output_dir = Path(output_dir)
        if output_dir.exists() and not output_dir.is_dir():
            raise ValueError(f"--output-dir {output_dir} is a file, not a folder")
        there = [n for n in OUTPUTS if (output_dir / n).exists()]
        if there and not overwrite:
            raise ValueError(f"--output-dir {output_dir} already holds {', '.join(there)}: pass --overwrite to "
                             f"replace them, or another --output-dir")
    runs = load_runs(run_dirs)
    markdown, table_csv = comparison_table(runs)
    if output_dir is not None:
        try:
            output_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ValueError(f"--output-dir {output_dir}: cannot create it ({e.strerror or e})") from None
        (output_dir / "compare.md").write_text(markdown)
        (output_dir / "compare.csv").write_text(table_csv)
        bar_chart(runs, output_dir / "compare.png", title="Accuracy by run (LLM judge)")
    return markdown
