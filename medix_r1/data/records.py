"""MediX-R1 training records: loading, checking and a resumable sampler.

A record has ``id``, ``images`` (list, possibly empty), ``problem`` and ``solution``
(``"<TAG> answer"``); PubMedQA records also carry ``question`` and ``contexts``, which lets the
trainer shorten the abstract (:mod:`medix_r1.data.prompts`). Local JSONL is parsed line by line so a
malformed record is reported as ``file:line``; JSON arrays, Parquet and hub datasets go through the
``datasets`` library.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from medix_r1.rewards import MODALITY_TAGS, validate_solution

log = logging.getLogger("medix_r1.train")

BUNDLED = {"pubmedqa": Path(__file__).parent / "pubmedqa" / "train.jsonl"}
REQUIRED = ("id", "problem", "solution")
FIELDS = ("problem", "solution", "images", "id")  # what data.columns may map a dataset's columns to


class MalformedRecord(ValueError):
    """A record that is not valid JSON or lacks/garbles a MediX-R1 field; names file and line."""


def check_record(raw, where: str) -> dict:
    """Return the normalised record or raise MalformedRecord naming ``where`` (file:line)."""
    if not isinstance(raw, dict):
        raise MalformedRecord(f"{where}: expected a JSON object, got {type(raw).__name__}")
    missing = [k for k in REQUIRED if raw.get(k) in (None, "")]
    if missing:
        raise MalformedRecord(f"{where}: missing field(s) {missing} (a MediX-R1 record needs "
                              f"id, images, problem, solution)")
    if not isinstance(raw["problem"], str) or not isinstance(raw["solution"], str):
        raise MalformedRecord(f"{where}: 'problem' and 'solution' must be strings")
    images = raw.get("images") or []
    if not isinstance(images, (list, tuple)):
        raise MalformedRecord(f"{where}: 'images' must be a list, got {type(images).__name__}")
    record = dict(raw)
    record["id"] = str(raw["id"])
    record["images"] = list(images)
    try:
        validate_solution(record["solution"], record["id"])
    except (ValueError, TypeError) as e:
        raise MalformedRecord(f"{where}: {e}") from None
    return record


class DataError(ValueError):
    """The training data cannot be read (one line naming the file, and the line where there is one)."""


def _read_jsonl(path: Path) -> list[tuple[str, object]]:
    rows = []
    with open(path, "rb") as fh:
        for lineno, raw in enumerate(fh, 1):
            where = f"{path}:{lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                rows.append((where, MalformedRecord(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})")))
                continue
            if not line.strip():
                continue
            try:
                rows.append((where, json.loads(line)))
            except json.JSONDecodeError as e:
                rows.append((where, MalformedRecord(f"{where}: invalid JSON ({e.msg} at column {e.colno})")))
    return rows


def _read_with_datasets(path: Path | str, split: str, subset: str = "") -> list[tuple[str, object]]:
    import datasets

    if isinstance(path, Path):
        if path.suffix == ".parquet":
            ds = datasets.Dataset.from_parquet(str(path))
        elif path.suffix == ".json":
            try:
                ds = datasets.Dataset.from_json(str(path))
            except Exception as e:
                raise MalformedRecord(f"{path}: cannot be read as JSON records: {e}") from None
        else:
            raise ValueError(f"data file {path}: expected .jsonl, .json or .parquet")
        name = str(path)
    else:
        ds = datasets.load_dataset(path, subset or None, split=split)
        name = f"hub:{path}{'/' + subset if subset else ''}[{split}]"
    ds = keep_images_encoded(ds)  # image columns stay bytes until a record is sampled
    return [(f"{name}:record {i}", row) for i, row in enumerate(ds)]


def keep_images_encoded(ds):
    """A ``datasets.Dataset`` whose ``images`` column holds Image features, cast to ``decode=False``:
    rows then carry ``{"bytes", "path"}`` dicts and images are decoded only when a record is sampled
    (iterating a decoding Image column would hold every decoded image of the data in memory)."""
    import datasets

    feature = (ds.features or {}).get("images")
    inner = getattr(feature, "feature", None)
    if isinstance(inner, datasets.Image) and inner.decode:
        return ds.cast_column("images", type(feature)(datasets.Image(decode=False)))
    return ds


def load_records(source: str, *, split: str = "train", on_malformed: str = "fail", max_records: int = 0,
                 columns: dict | None = None, subset: str = "", default_modality: str = "") -> tuple[list[dict], int]:
    """Records from a bundled name, a local file/folder or ``hub:NAME`` (``subset``: the hub
    configuration name). ``columns`` renames the data's columns to the record's fields and
    ``default_modality`` tags solutions that have no modality tag (:func:`to_record_fields`).

    Returns (records, number skipped). With ``on_malformed="fail"`` the first malformed record
    raises :class:`MalformedRecord` naming its file and line.
    """
    if on_malformed not in ("fail", "skip"):
        raise ValueError(f"on_malformed must be 'fail' or 'skip', got {on_malformed!r}")
    if source in BUNDLED:
        files = [BUNDLED[source]]
    elif source.startswith("hub:"):
        files = [source[4:]]
    else:
        path = Path(source)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in (".jsonl", ".json", ".parquet"))
            if not files:
                raise ValueError(f"data folder {path} has no .jsonl/.json/.parquet files")
        elif path.is_file():
            files = [path]
        else:
            raise FileNotFoundError(f"data.train: {source!r} is not a bundled set ({sorted(BUNDLED)}), "
                                    f"an existing file or folder, or hub:NAME")
    records, skipped = [], 0
    for f in files:
        rows = _read_jsonl(f) if isinstance(f, Path) and f.suffix == ".jsonl" else \
            _read_with_datasets(f, split, subset)
        check_columns_exist(rows, columns)
        for where, raw in rows:
            try:
                if isinstance(raw, Exception):
                    raise raw
                records.append(check_record(to_record_fields(raw, columns, default_modality), where))
            except MalformedRecord as e:
                if on_malformed == "fail":
                    raise
                skipped += 1
                log.warning("skipping malformed record: %s", e)
            if max_records and len(records) >= max_records:
                break
        if max_records and len(records) >= max_records:
            break
    if skipped:
        log.warning("skipped %d malformed record(s) of %d", skipped, skipped + len(records))
    if not records:
        raise ValueError(f"data.train {source!r}: no valid records")
    return records, skipped


# ----------------------------------------------------------------------------- other datasets' shapes
# Applied to a raw row before check_record: data.columns renames, data.default_modality tags.

def check_columns_exist(rows: list[tuple[str, object]], columns: dict | None) -> None:
    """On a file's first JSON object: every column ``columns`` maps from, and every field a record
    needs after the mapping, exists; the error names the column and lists the file's columns."""
    first = next(((where, raw) for where, raw in rows if isinstance(raw, dict)), None)
    if first is None:
        return
    where, raw = first
    have = sorted(raw)
    for src, dst in (columns or {}).items():
        if src not in raw:
            raise ValueError(f"data.columns maps {src!r} to {dst!r}, but {where.rsplit(':', 1)[0]} has no column "
                             f"{src!r}; its columns: {have}")
    present = set(to_record_fields(raw, columns, ""))
    missing = [k for k in REQUIRED if k not in present]
    if missing:
        raise ValueError(f"{where.rsplit(':', 1)[0]}: no column for the record field(s) {missing}; its columns: "
                         f"{have} (map them with data.columns, e.g. --set data.columns={{question: problem}})")


def to_record_fields(raw, columns: dict | None, default_modality: str):
    """A raw row with the dataset's column names mapped to the record's (``{dataset name: field}``)
    and, when ``default_modality`` is set, that tag put before a solution that has none."""
    if not isinstance(raw, dict):
        return raw
    if columns:
        out = {k: v for k, v in raw.items() if k not in columns}
        out.update({dst: raw[src] for src, dst in columns.items() if src in raw})
        raw = out
    solution = raw.get("solution")
    if default_modality and isinstance(solution, (str, int, float)) and not isinstance(solution, bool) \
            and solution != "" and not has_modality_tag(str(solution)):
        raw = {**raw, "solution": f"{default_modality} {solution}"}
    return raw


def has_modality_tag(solution: str) -> bool:
    text = solution.strip()
    return text.startswith("<") and text[:text.find(">") + 1].upper() in MODALITY_TAGS


class PromptSampler:
    """Shuffled epochs over ``n`` records; the state (epoch, index, seed) makes resumes exact."""

    def __init__(self, n: int, seed: int):
        if n < 1:
            raise ValueError(f"PromptSampler needs at least one record, got n={n}")
        self.n, self.seed, self.epoch, self.index = n, seed, 0, 0
        self._perm = self._permutation()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.index >= self.n:
                self.epoch, self.index = self.epoch + 1, 0
                self._perm = self._permutation()
            out.append(int(self._perm[self.index]))
            self.index += 1
        return out

    def state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "n": self.n}

    def load_state(self, state: dict) -> None:
        if state["n"] != self.n:
            raise ValueError(f"checkpoint data position is for {state['n']} records, the data has {self.n}")
        self.seed, self.epoch, self.index = state["seed"], state["epoch"], state["index"]
        self._perm = self._permutation()
