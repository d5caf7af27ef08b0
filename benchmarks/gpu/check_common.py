"""What the GPU check's modules share: the repository root, the phase and output-file names, and
the small CSV / JSON readers and writers (a missing or broken file reads as empty)."""
from __future__ import annotations

import csv
import datetime
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PHASES = ("env", "build", "correctness", "sanitizer", "bench", "pytest")
OUT_FILES = ("summary.md", "bench.csv", "targets.csv", "correctness.csv", "ptxas.txt", "env.txt", "logs.tar.gz")


def now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


def as_float(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def read_csv(path) -> list[dict]:
    try:
        with open(path, newline="") as fh:
            return list(csv.DictReader(fh))
    except OSError:
        return []


def write_csv(path, rows, cols) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in cols})


def read_json(path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def last_json(log: Path) -> dict:
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return {}
