"""The judge's reply cache: key -> reply text, persisted in the project's JSONL store.

One line per paid call: ``{"key": sha256, "text": reply}``. Failed calls are never cached (a
resumed run retries them). Several processes (a training run, an evaluation) may append to the
same file, so it is read tolerantly (torn or foreign lines are skipped, never cut off) and each
reply is appended with one write (see :mod:`medix_r1.utils.jsonl`).
"""
from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path

from medix_r1.utils.jsonl import append_jsonl, read_jsonl


def cache_key(*parts) -> str:
    """A stable hash of the given JSON-serialisable parts."""
    return hashlib.sha256(json.dumps(parts, ensure_ascii=False).encode("utf-8", "replace")).hexdigest()


class ReplyCache:
    """key -> reply text, in memory, mirrored to ``path`` when a path is given."""

    def __init__(self, path=None):
        self.path = Path(path) if path else None
        self._data: dict[str, str] = {}
        self._lock = threading.Lock()
        if self.path is not None:
            for row in read_jsonl(self.path, repair=False, strict=False):
                if isinstance(row.get("key"), str) and isinstance(row.get("text"), str):
                    self._data[row["key"]] = row["text"]

    def __len__(self) -> int:
        return len(self._data)

    def get(self, key: str):
        return self._data.get(key)

    def put(self, key: str, text: str) -> None:
        with self._lock:
            self._data[key] = text
            if self.path is not None:
                append_jsonl(self.path, {"key": key, "text": text})
