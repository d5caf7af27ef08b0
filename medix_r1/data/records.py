"""MediX-R1 training records: loading and checking (the samplers are in :mod:`medix_r1.data.sampling`).

A record has ``id``, ``images`` (list, possibly empty; MBZUAI/medix-rl-data calls the column
``image``, and ``data.image_column`` names any other), ``problem`` and ``solution``
(``"<TAG> answer"``); PubMedQA records also carry ``question`` and ``contexts``, which lets the
trainer shorten the abstract (:mod:`medix_r1.data.prompts`). Local JSONL is parsed line by line so a
malformed record is reported as ``file:line``; JSON arrays, Parquet and hub datasets go through the
``datasets`` library.
"""
from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from pathlib import Path

from medix_r1.rewards import MODALITY_TAGS, validate_solution
from medix_r1.utils.jsonl import input_lines

log = logging.getLogger("medix_r1.train")

BUNDLED = {"pubmedqa": Path(__file__).parent / "pubmedqa" / "train.jsonl"}
REQUIRED = ("id", "problem", "solution")
FIELDS = ("problem", "solution", "images", "id")  # what data.columns may map a dataset's columns to


class MalformedRecord(ValueError):
    """A record that is not valid JSON or lacks/garbles a MediX-R1 field; names file and line."""


IMAGE_COLUMNS = ("images", "image")  # ours, then MBZUAI/medix-rl-data's


def image_column_of(raw: dict, image_column: str = "") -> str | None:
    """The column holding a record's images: ``image_column`` when named, else 'images' or 'image'."""
    if image_column:
        return image_column
    return next((c for c in IMAGE_COLUMNS if c in raw), None)


def _is_image_ref(x) -> bool:
    """A path, encoded bytes, a {'bytes', 'path'} dict or a decoded PIL image (checked without decoding)."""
    if isinstance(x, (str, bytes, bytearray)):
        return bool(x)
    if isinstance(x, dict):
        return x.get("bytes") is not None or bool(x.get("path"))
    return hasattr(x, "mode") and hasattr(x, "size") and hasattr(x, "convert")  # PIL.Image.Image


def record_images(raw: dict, where: str, image_column: str = "") -> list:
    """The record's images as a list: a single image becomes [image], None or a missing column []."""
    column = image_column_of(raw, image_column)
    value = raw.get(column) if column else None
    if value is None:
        return []
    images = list(value) if isinstance(value, (list, tuple)) else [value]
    for k, x in enumerate(images):
        if not _is_image_ref(x):
            raise MalformedRecord(f"{where}: column {column!r}, image {k}: expected a path, encoded bytes, a "
                                  f"{{'bytes', 'path'}} dict or a PIL image, got {type(x).__name__} {str(x)[:40]!r}")
    return images


def check_record(raw, where: str, image_column: str = "", any_solution: bool = False) -> dict:
    """Return the normalised record or raise MalformedRecord naming ``where`` (file:line).

    The images end up in ``images`` whichever column held them (``image_column``, else 'images'
    or 'image'); they are not decoded here. The solution must start with a known modality tag
    unless ``any_solution`` (reward.parity=official: the official reward takes any string)."""
    if not isinstance(raw, dict):
        raise MalformedRecord(f"{where}: expected a JSON object, got {type(raw).__name__}")
    missing = [k for k in REQUIRED if raw.get(k) in (None, "")]
    if missing:
        raise MalformedRecord(f"{where}: missing field(s) {missing} (a MediX-R1 record needs "
                              f"id, images, problem, solution)")
    if not isinstance(raw["problem"], str) or not isinstance(raw["solution"], str):
        raise MalformedRecord(f"{where}: 'problem' and 'solution' must be strings")
    images = raw["images"] if isinstance(raw.get("images"), LazyImages) else record_images(raw, where, image_column)
    record = {k: v for k, v in raw.items() if k not in IMAGE_COLUMNS and k != image_column}
    record["id"] = str(raw["id"])
    record["images"] = images
    try:
        if not any_solution:
            validate_solution(record["solution"], record["id"])
    except (ValueError, TypeError) as e:
        raise MalformedRecord(f"{where}: {e}") from None
    return record


class DataError(ValueError):
    """The training data cannot be read (one line naming the file, and the line where there is one)."""


def _read_jsonl(path: Path) -> list[tuple[str, object]]:
    return [(f"{path}:{n}", obj if problem is None else MalformedRecord(f"{path}:{n}: {problem}"))
            for n, obj, problem in input_lines(path)]


@contextlib.contextmanager
def _quiet_logger(name: str):
    """The named logger silenced for the block (the caller reports the failure itself)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _read_with_datasets(path: Path | str, split: str, subset: str = "", image_column: str = "",
                        columns: dict | None = None) -> list[tuple[str, object]]:
    import datasets

    if isinstance(path, Path):
        if path.suffix == ".parquet":
            try:  # a 0-byte file, a file with no rows, a garbled one: one line naming it
                with _quiet_logger("datasets"):  # its own ERROR log of the same failure would come first
                    ds = datasets.Dataset.from_parquet(str(path))
            except Exception as e:
                raise MalformedRecord(f"{path}: cannot be read as Parquet records ({type(e).__name__}: {e})") from None
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
    if image_column and image_column not in ds.column_names:
        raise ValueError(f"{name}: data.image_column {image_column!r} is not a column of the data "
                         f"(columns: {ds.column_names})")
    mapped = {(columns or {}).get(c, c) for c in ds.column_names}  # data.columns renames first
    missing = [c for c in ("problem", "solution") if c not in mapped]
    if missing:
        raise ValueError(f"{name}: the data has no column(s) {missing} (columns: {ds.column_names}); a MediX-R1 "
                         f"record needs problem, solution and optionally id and image(s) (data.columns maps "
                         f"other names, e.g. --set data.columns={{question: problem}})")
    ds = keep_images_encoded(ds, image_column)  # image columns stay bytes until a record is sampled
    column = image_column or next((c for c in IMAGE_COLUMNS if c in ds.column_names), None)
    counts = image_counts(ds, column, name) if column else None
    text = ds.remove_columns([column]) if column else ds  # the images stay in the (memory-mapped) dataset
    rows = []
    for i, row in enumerate(text):
        if "id" not in row:
            row["id"] = f"{Path(str(name)).stem}-{i}"
        if column:
            row["images"] = LazyImages(ds, column, i, counts[i])
        rows.append((f"{name}:record {i}", row))
    return rows


def image_counts(ds, column: str, name: str) -> list[int]:
    """Images per row of ``column``, from the Arrow offsets (no image is read); a ValueError naming
    the column when it holds something other than images (paths, bytes, {bytes, path} structs)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    array = ds.data.column(column)
    kind = array.type.value_type if pa.types.is_list(array.type) or pa.types.is_large_list(array.type) \
        else array.type
    t = pa.types
    image_like = any(test(kind) for test in (t.is_null, t.is_string, t.is_large_string, t.is_binary,
                                              t.is_large_binary)) \
        or (t.is_struct(kind) and bool({"bytes", "path"} & {f.name for f in kind}))
    if not image_like:
        raise ValueError(f"{name}: column {column!r} holds {array.type}, not images (paths, encoded bytes or "
                         f"{{'bytes', 'path'}} structs); name the image column with data.image_column")
    if not (t.is_list(array.type) or t.is_large_list(array.type)):  # one image (or null) per row
        return [0 if null else 1 for null in array.is_null().to_pylist()]
    return pc.fill_null(pc.list_value_length(array), 0).to_pylist()


class LazyImages(Sequence):
    """A record's images, left in the Arrow-backed dataset until indexed (then still encoded:
    ``{"bytes", "path"}`` dicts or paths). Holding the records of a 47 GB set then costs its text only."""

    def __init__(self, ds, column: str, row: int, count: int):
        self.ds, self.column, self.row, self.count = ds, column, row, count

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[j] for j in range(*k.indices(self.count))]
        if not -self.count <= k < self.count:
            raise IndexError(k)
        value = self.ds[self.row][self.column]
        return (value if isinstance(value, (list, tuple)) else [value])[k]

    def __repr__(self) -> str:
        return f"<{self.count} image(s) of row {self.row}, column {self.column!r}>"


def keep_images_encoded(ds, image_column: str = ""):
    """A ``datasets.Dataset`` whose image column (``image_column``, else 'images' and 'image') holds
    Image features, a list of them or a single one, cast to ``decode=False``: rows then carry
    ``{"bytes", "path"}`` dicts and images are decoded only when a record is sampled (iterating a
    decoding Image column would hold every decoded image of the data in memory; the official set is
    47 GB)."""
    import datasets

    for column in ([image_column] if image_column else IMAGE_COLUMNS):
        feature = (ds.features or {}).get(column)
        if isinstance(feature, datasets.Image) and feature.decode:
            ds = ds.cast_column(column, datasets.Image(decode=False))
            continue
        inner = getattr(feature, "feature", None)
        if isinstance(inner, datasets.Image) and inner.decode:
            ds = ds.cast_column(column, type(feature)(datasets.Image(decode=False)))
    return ds


def load_records(source: str, *, split: str = "train", on_malformed: str = "fail", max_records: int = 0,
                 columns: dict | None = None, subset: str = "", default_modality: str = "",
                 image_column: str = "", any_solution: bool = False) -> tuple[list[dict], int]:
    """Records from a bundled name, a local file/folder or ``hub:NAME`` (``subset``: the hub
    configuration name). ``columns`` renames the data's columns to the record's fields and
    ``default_modality`` tags solutions that have no modality tag (:func:`to_record_fields`);
    ``image_column`` names the column holding the images ('' = 'images', else 'image').
    ``any_solution`` (reward.parity=official) keeps every string solution as it is: no tag is
    added and none is required, as the official reward scores an untagged one 0 on accuracy.

    Returns (records, number skipped). With ``on_malformed="fail"`` the first malformed record
    raises :class:`MalformedRecord` naming its file and line.
    """
    if on_malformed not in ("fail", "skip"):
        raise ValueError(f"on_malformed must be 'fail' or 'skip', got {on_malformed!r}")
    check_image_column(image_column, columns)
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
            _read_with_datasets(f, split, subset, image_column, columns)
        check_columns_exist(rows, columns, image_column)
        # the image column's name once data.columns has renamed the row (pic -> images: images)
        mapped_image_column = (columns or {}).get(image_column, image_column)
        for where, raw in rows:
            try:
                if isinstance(raw, Exception):
                    raise raw
                fields = to_record_fields(raw, columns, "" if any_solution else default_modality)
                records.append(check_record(fields, where, mapped_image_column, any_solution))
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

def check_image_column(image_column: str, columns: dict | None) -> None:
    """``data.image_column`` must name a column of images, not one a record field comes from."""
    if not image_column:
        return
    target = (columns or {}).get(image_column, image_column)
    if target in REQUIRED:
        raise ValueError(f"data.image_column {image_column!r} is the record's {target!r} field (id, problem and "
                         f"solution are text); name the column that holds the images")


def check_columns_exist(rows: list[tuple[str, object]], columns: dict | None, image_column: str = "") -> None:
    """On a file's first JSON object: every column ``columns`` maps from, the ``image_column`` when
    named, and every field a record needs after the mapping, exist; the error names the column and
    lists the file's columns."""
    first = next(((where, raw) for where, raw in rows if isinstance(raw, dict)), None)
    if first is None:
        return
    where, raw = first
    have = sorted(raw)
    if image_column and image_column not in raw and not isinstance(raw.get("images"), LazyImages):
        raise ValueError(f"{where.rsplit(':', 1)[0]}: data.image_column {image_column!r} is not a column of the "
                         f"data; its columns: {have}")
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
