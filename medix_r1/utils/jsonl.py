"""The one append-only JSON-lines store: every resumable output of the project goes through it.

Rows are appended (and flushed) the moment they exist, so a killed process loses at most the line
it was writing. Two kinds of file use it:

- files one process owns (eval generations and judge rounds, scored rewards): :func:`read_jsonl`
  with ``repair=True`` drops a torn last line and cuts it off the file, and any other bad line is
  an error (the file was not written by us);
- files several processes may append to at once (the judge reply cache, shared by a training run
  and an evaluation): ``repair=False, strict=False`` skips torn or foreign lines without touching
  the file (truncating would cut another writer's line).

:class:`JsonlWriter` (and :func:`append_jsonl` for a single row) starts on a new line when the
file does not end with one (a killed writer's torn line stays apart), and writes each row with
one ``write()`` in append mode, so concurrent appenders never interleave lines.

:func:`input_lines` is the reader for JSON-lines files a person wrote (training records, responses
to score): every problem comes with its line number for the caller to report or count.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path


def read_jsonl(path, *, repair: bool = True, strict: bool = True) -> list[dict]:
    """All complete JSON objects of ``path`` (an empty list when it does not exist).

    A last line without a newline or not valid JSON is torn: dropped, and with ``repair`` cut off
    the file. A bad line anywhere else raises ValueError naming its byte offset (``strict``) or is
    skipped (``strict=False``)."""
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
            row, problem = (json.loads(line) if line.strip() else None), None
        except ValueError:
            row, problem = None, "not valid JSON"
        if newline < 0 or (problem and end == len(data)):
            break  # torn last line (no newline yet, or cut short): written when a process was killed
        if problem is None and row is not None and not isinstance(row, dict):
            problem = "not a JSON object"
        if problem and strict:
            raise ValueError(f"{path}: line at byte {start} is {problem}")
        if problem is None and row is not None:
            rows.append(row)
        good_end = start = end
    if repair and good_end != len(data):
        with open(path, "r+b") as f:
            f.truncate(good_end)
    return rows


def input_lines(path) -> Iterator[tuple[int, object, str | None]]:
    """``(line number, object, None)`` for every non-blank line of ``path``, or ``(line number, None,
    problem)`` for a line that is not UTF-8 or not JSON."""
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield lineno, None, f"not valid UTF-8 ({e.reason} at byte {e.start})"
                continue
            if not text.strip():
                continue
            try:
                yield lineno, json.loads(text), None
            except json.JSONDecodeError as e:
                yield lineno, None, f"not valid JSON ({e.msg} at column {e.colno})"


def _needs_newline(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            if fh.tell() == 0:
                return False
            fh.seek(-1, os.SEEK_END)
            return fh.read(1) != b"\n"
    except FileNotFoundError:
        return False


def _line(row: dict) -> str:
    if not isinstance(row, dict):
        raise TypeError(f"row must be a dict, got {type(row).__name__}")
    return json.dumps(row, ensure_ascii=False) + "\n"


class JsonlWriter:
    """Appends one JSON object per line; each is flushed (and fsynced with ``fsync``) at once."""

    def __init__(self, path, *, fsync: bool = True):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        start_on_new_line = _needs_newline(self.path)
        self._file = open(self.path, "a", encoding="utf-8", errors="replace")  # noqa: SIM115 (closed by close())
        if start_on_new_line:
            self._file.write("\n")

    def write(self, row: dict) -> None:
        self._file.write(_line(row))
        self._file.flush()
        if self.fsync:
            os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def append_jsonl(path, row: dict, *, fsync: bool = False) -> None:
    """Append one row (open, write, close): for files other processes append to as well."""
    with JsonlWriter(path, fsync=fsync) as out:
        out.write(row)
