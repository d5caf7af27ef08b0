"""Append-only JSON-lines files that survive a kill at any point.

Every generation and every judge round is appended (and flushed) the moment it completes, so a
killed eval loses at most the line being written. On resume :func:`read_jsonl` drops a torn
last line (no trailing newline, or not valid JSON) and truncates the file back to the last
complete line, so the next append starts on a clean line.
"""
from __future__ import annotations

import json
import os
from pathlib import Path


def read_jsonl(path: Path, *, repair: bool = True) -> list[dict]:
    """All complete JSON objects of ``path`` (empty list when it does not exist).

    A torn last line is dropped (and cut off the file when ``repair``); a bad line anywhere
    else means the file was not written by us, which is an error, not something to skip.
    """
    path = Path(path)
    if not path.exists():
        return []
    data = path.read_bytes()
    rows, good_end, start = [], 0, 0
    while start < len(data):
        newline = data.find(b"\n", start)
        end = len(data) if newline < 0 else newline + 1
        line = data[start:end]
        try:
            row = json.loads(line) if line.strip() else None
        except ValueError:
            row = "torn"
        if row == "torn" or newline < 0:
            if end != len(data):
                raise ValueError(f"{path}: line at byte {start} is not valid JSON")
            break  # torn last line: written when the process was killed
        if row is not None:
            if not isinstance(row, dict):
                raise ValueError(f"{path}: line at byte {start} is not a JSON object")
            rows.append(row)
        good_end = start = end
    if repair and good_end != len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return rows


class JsonlWriter:
    """Appends one JSON object per line, flushed and fsynced so it survives a kill."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")

    def write(self, row: dict) -> None:
        if not isinstance(row, dict):
            raise TypeError(f"row must be a dict, got {type(row).__name__}")
        self._file.write(json.dumps(row, ensure_ascii=False) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
