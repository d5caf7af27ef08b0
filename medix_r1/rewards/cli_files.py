"""The files of ``python -m medix_r1.rewards score``: the input checked line by line before anything is
scored, and an existing output resumed only when it is verifiably this command's output for this input
(complete lines that match the input, at most a torn start of the next line, which is cut off)."""
from __future__ import annotations

import json
import os
from pathlib import Path

from medix_r1.utils.jsonl import input_lines

from .parsing import parse_solution

REQUIRED = ("problem", "response", "solution")


class InputError(Exception):
    """A problem with the input or output file; the message names the file and line."""


def read_inputs(path: Path, parity: str) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line; raises InputError naming the first bad line."""
    if not path.is_file():
        raise InputError(f"{path}: {'a directory, not a file' if path.is_dir() else 'no such file'}")
    records = []
    for lineno, obj, problem in input_lines(path):
        where = f"{path}:{lineno}"
        if problem is not None:
            raise InputError(f"{where}: {problem}")
        if not isinstance(obj, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        missing = [k for k in REQUIRED if k not in obj]
        if missing:
            raise InputError(f"{where}: missing field(s) {', '.join(missing)} (each line needs "
                             f"{', '.join(REQUIRED)})")
        for k in REQUIRED:
            if not isinstance(obj[k], str):
                raise InputError(f"{where}: field '{k}' must be a string, got {type(obj[k]).__name__}")
        try:  # a \\ud800-style escape decodes to a lone surrogate, which no UTF-8 output can hold
            output_line(obj)
        except UnicodeEncodeError as e:
            raise InputError(f"{where}: contains a lone surrogate ({e.object[e.start:e.end]!r}), "
                             f"which is not text; fix the line") from None
        try:
            parse_solution(obj["solution"], parity)
        except ValueError as e:
            raise InputError(f"{where}: bad 'solution': {e}") from None
        records.append((lineno, obj))
    return records


def output_line(row: dict) -> bytes:
    """One output line, as written (UTF-8; raises UnicodeEncodeError on lone surrogates)."""
    return (json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8")


def line_start(record: dict) -> bytes:
    """The bytes that the output line of ``record`` starts with, up to its rewards' value."""
    text = output_line({**record, "rewards": "\x00"}).decode("utf-8")
    return text[:text.rindex('"\\u0000"')].encode("utf-8")


def check_paths(in_path: Path, out_path: Path) -> None:
    if out_path.is_dir():
        raise InputError(f"--output {out_path} is a directory; give a file path")
    if in_path.exists() and out_path.exists() and os.path.samefile(in_path, out_path):
        raise InputError(f"--output {out_path} is the --input file; scoring would destroy it, choose another path")


def resume_output(path: Path, records: list[tuple[int, dict]]) -> list[dict]:
    """The output's complete lines (checked against the inputs); a torn last line is cut off the file.
    Raises InputError, leaving the file as it is, unless every byte of it is verifiably this command's
    output for ``records``."""
    if not path.exists():
        return []
    data = path.read_bytes()
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline, else an unterminated (torn) line
    done, good_bytes = [], 0
    for k, raw in enumerate(lines):
        where = f"{path}:{k + 1}"
        try:
            obj = json.loads(raw.decode("utf-8"))
            if not isinstance(obj, dict) or not isinstance(obj.get("rewards"), dict):
                raise ValueError("no 'rewards' object")
        except ValueError as e:
            if k == len(lines) - 1 and not tail:  # a torn last line that happens to end in a newline
                break
            raise InputError(f"{where}: the existing output has a malformed line ({e}); it is not a "
                             f"partial output of this command: choose another --output or pass --overwrite") from None
        if k >= len(records):
            raise InputError(f"{path} has more lines ({len(lines)}) than the input has records ({len(records)})")
        original = {key: value for key, value in obj.items() if key != "rewards"}
        lineno, record = records[k]
        if original != {key: value for key, value in record.items() if key != "rewards"}:
            raise InputError(f"{where} does not match input line {lineno}: the output belongs to another input; "
                             f"choose another --output or pass --overwrite")
        done.append(obj)
        good_bytes += len(raw) + 1
    torn = data[good_bytes:]
    if torn:  # only the start of the next record's line (a kill mid-write) may be cut off
        nxt = len(done)
        start = line_start(records[nxt][1]) if nxt < len(records) else b""
        if not start or not (torn.startswith(start) or start.startswith(torn)):
            raise InputError(f"{path}:{nxt + 1}: not a line of this command's output for this input (the file "
                             f"is left as it is); choose another --output or pass --overwrite")
    if good_bytes != len(data):
        with open(path, "r+b") as fh:  # drop the torn line: it is rewritten from the input
            fh.truncate(good_bytes)
    return done
