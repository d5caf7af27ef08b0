"""An append-only JSONL cache of judge replies.

One line per paid call: ``{"key": sha256, "text": reply}``. Failed calls are never cached (a
resumed run retries them). A line cut short by a kill is ignored on load. Append-only JSONL was
chosen over sqlite because several processes (a training run, an evaluation) may append to the
same file without locking a database, and a torn last line loses at most one reply.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path


def cache_key(*parts) -> str:
    """A stable hash of the given JSON-serialisable parts."""
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode("utf-8", "replace")).hexdigest()


class ReplyCache:
    """key -> reply text, in memory, mirrored to ``path`` (JSONL) when a path is given."""

    def __init__(self, path=None):
        self.path = Path(path) if path else None
        self._data: dict[str, str] = {}
        self._lock = threading.Lock()
        if self.path is not None and self.path.is_file():
            with open(self.path, encoding="utf-8", errors="replace") as fh:
                for line in fh:
                    try:
                        row = json.loads(line)
                        self._data[row["key"]] = row["text"]
                    except (ValueError, KeyError, TypeError):
                        continue  # torn or foreign line

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str):
        return self._data.get(key)

    def put(self, key: str, text: str) -> None:
        with self._lock:
            self._data[key] = text
            if self.path is None:
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            line = json.dumps({"key": key, "text": text}, ensure_ascii=False) + "\n"
            # One write() of one line in append mode: concurrent appenders do not interleave lines.
            with open(self.path, "a", encoding="utf-8", errors="replace") as fh:
                if fh.tell() > 0 and not _ends_with_newline(self.path):
                    fh.write("\n")  # a previous writer was killed mid-line
                fh.write(line)
                fh.flush()  # survives a killed process (the OS has the bytes)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as fh:
        fh.seek(-1, os.SEEK_END)
        return fh.read(1) == b"\n"
