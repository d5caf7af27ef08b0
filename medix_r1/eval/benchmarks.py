"""The 17 MediX-R1 evaluation benchmarks: a registry and loaders into one record format.

Each registry entry names where the data lives on the Hugging Face hub (id, config, split) and a
mapping function from one raw row to an eval record (see :mod:`medix_r1.eval.items`). Rows
are read with the ``datasets`` library: from local files (``data_files=``, any format
``datasets`` reads: json/jsonl, csv, parquet) or from the hub when the machine is online.
The hub ids are the public copies the benchmarks are usually taken from; MIMIC-CXR needs
credentialed PhysioNet access, so those two entries have no hub id and need local files.

``pubmedqa_bundled`` is the official 500-item PubMedQA test split shipped inside the package
(``medix_r1/data/pubmedqa/test.jsonl``, MIT): the default benchmark, no download needed.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .items import TEXT_TAG, make_record

BUNDLED_PUBMEDQA = Path(__file__).resolve().parents[1] / "data" / "pubmedqa" / "test.jsonl"
LETTERS = "ABCDEFGHIJ"


@dataclass(frozen=True)
class Benchmark:
    name: str
    kind: str                      # "text" or "image"
    hub_id: str | None             # None: local files only
    config: str | None
    split: str
    to_record: Callable[[dict, int, str], dict]  # (row, index, benchmark name) -> record
    note: str = ""
    exclude: Callable[[], set] | None = None  # ids of items never to evaluate (trained on)


def _choices_problem(question: str, options: list[str]) -> str:
    lines = [question.strip(), ""] + [f"{LETTERS[i]}. {str(o).strip()}" for i, o in enumerate(options)]
    return "\n".join(lines)


def _mcq_record(*, id, benchmark, question, options, answer_index, context="", images=(),
                modality=TEXT_TAG) -> dict:
    """A multiple-choice item as an open answer: the reference is ``"<letter>. <option text>"``."""
    if not isinstance(answer_index, int) or isinstance(answer_index, bool):
        raise TypeError(f"{benchmark} row {id}: answer index must be an int, got {answer_index!r}")
    if not 0 <= answer_index < len(options):
        raise ValueError(f"{benchmark} row {id}: answer index {answer_index} outside "
                         f"0..{len(options) - 1}")
    letter, text = LETTERS[answer_index], str(options[answer_index]).strip()
    problem = _choices_problem(question, options)
    if context:
        problem = f"Context: {context.strip()}\n\n{problem}"
    return make_record(id=str(id), benchmark=benchmark, question=_choices_problem(question, options),
                       problem=problem, reference=f"{letter}. {text}",
                       exact_answers=[text, letter, f"({letter})", f"{letter}. {text}"],
                       images=images, modality=modality)


def _row_id(row: dict, index: int, *keys: str) -> str:
    for key in keys:
        if row.get(key) not in (None, ""):
            return str(row[key])
    return str(index)


# ---- mapping functions, one per source format (tested on hand-made rows) ----------------------

def from_medix(row: dict, index: int, benchmark: str) -> dict:
    """A MediX-R1 record (id, images, problem, solution ``"<TAG> answer"``)."""
    solution = row["solution"]
    if not isinstance(solution, str) or not solution.lstrip().startswith("<") or ">" not in solution:
        raise ValueError(f"{benchmark} row {index}: solution must look like '<TAG> answer', "
                         f"got {str(solution)[:60]!r}")
    tag, reference = solution.split(">", 1)
    # PubMedQA-style records carry the yes/no/maybe label: that alone is an exact answer too.
    decision = str(row.get("decision") or "").strip()
    return make_record(id=_row_id(row, index, "id"), benchmark=benchmark,
                       question=row.get("question") or row["problem"], problem=row["problem"],
                       reference=reference.strip(), images=row.get("images") or [],
                       exact_answers=[decision.capitalize(), decision], modality=tag.strip() + ">")


def from_mmlu(row: dict, index: int, benchmark: str) -> dict:
    """cais/mmlu: question, choices (4 strings), answer (int 0-3)."""
    return _mcq_record(id=_row_id(row, index, "id"), benchmark=benchmark, question=row["question"],
                       options=list(row["choices"]), answer_index=row["answer"])


def from_medmcqa(row: dict, index: int, benchmark: str) -> dict:
    """openlifescienceai/medmcqa: question, opa..opd, cop (int 0-3)."""
    options = [row["opa"], row["opb"], row["opc"], row["opd"]]
    return _mcq_record(id=_row_id(row, index, "id"), benchmark=benchmark, question=row["question"],
                       options=options, answer_index=row["cop"])


def from_medqa(row: dict, index: int, benchmark: str) -> dict:
    """MedQA-USMLE style: question, options ({"A": text, ...}), answer_idx ("A".."E")."""
    options = row["options"]
    if isinstance(options, list):  # some copies store [{"key": "A", "value": text}, ...]
        options = {o["key"]: o["value"] for o in options}
    if not isinstance(options, dict) or not options:
        raise TypeError(f"{benchmark} row {index}: options must be a dict letter -> text")
    letters = sorted(options)
    answer = str(row["answer_idx"]).strip()
    if answer not in letters:
        raise ValueError(f"{benchmark} row {index}: answer_idx {answer!r} not among {letters}")
    return _mcq_record(id=_row_id(row, index, "id"), benchmark=benchmark, question=row["question"],
                       options=[options[k] for k in letters], answer_index=letters.index(answer))


def from_pubmedqa_hub(row: dict, index: int, benchmark: str) -> dict:
    """qiaojin/PubMedQA pqa_labeled: question, context.contexts, final_decision, long_answer."""
    contexts = row["context"]["contexts"] if isinstance(row["context"], dict) else row["context"]
    decision = str(row["final_decision"]).strip().lower()
    reference = f"{decision.capitalize()}. {row['long_answer'].strip()}"
    return make_record(id=f"pubmedqa-{_row_id(row, index, 'pubid', 'id')}", benchmark=benchmark,
                       question=row["question"],
                       problem="Context: " + " ".join(c.strip() for c in contexts)
                       + "\n\nQuestion: " + row["question"].strip(),
                       reference=reference, exact_answers=[decision.capitalize(), decision])


def from_open_vqa(row: dict, index: int, benchmark: str) -> dict:
    """Open image QA (VQA-RAD, PathVQA, SLAKE): image (or img_name), question, answer."""
    image = row.get("image", row.get("img_name"))
    if image is None:
        raise ValueError(f"{benchmark} row {index}: needs an 'image' or 'img_name' field")
    answer = str(row["answer"]).strip()
    return make_record(id=_row_id(row, index, "qid", "id"), benchmark=benchmark,
                       question=row["question"], problem=row["question"], reference=answer,
                       images=[image])


def from_pmc_vqa(row: dict, index: int, benchmark: str) -> dict:
    """xmcmic/PMC-VQA csv rows: Figure_path, Question, Choice A..D ("A:text"), Answer_label."""
    options = []
    for letter in "ABCD":
        text = str(row[f"Choice {letter}"]).strip()
        options.append(text.split(":", 1)[1].strip() if text[:2] == f"{letter}:" else text)
    label = str(row["Answer_label"]).strip()
    if label not in ("A", "B", "C", "D"):
        raise ValueError(f"{benchmark} row {index}: Answer_label must be A-D, got {label!r}")
    return _mcq_record(id=_row_id(row, index, "index", "id"), benchmark=benchmark,
                       question=row["Question"], options=options, answer_index="ABCD".index(label),
                       images=[row["Figure_path"]])


def from_report(row: dict, index: int, benchmark: str) -> dict:
    """Report tasks (MIMIC-CXR): findings -> impression (summarisation) or image -> report."""
    if "findings" in row and "image" not in row and "images" not in row:
        problem = ("Summarise the following chest X-ray findings into the impression section.\n\n"
                   f"Findings: {row['findings'].strip()}")
        return make_record(id=_row_id(row, index, "study_id", "id"), benchmark=benchmark,
                           question="Summarise the findings into an impression.", problem=problem,
                           reference=row["impression"])
    images = row.get("images") or [row["image"]]
    return make_record(id=_row_id(row, index, "study_id", "id"), benchmark=benchmark,
                       question="Write the radiology report for this chest X-ray.",
                       problem="Write the findings and impression for this chest X-ray.",
                       reference=row.get("report") or row["impression"], images=images,
                       modality="<X_RAY>")


def bundled_training_ids() -> set[str]:
    """Ids of the bundled PubMedQA training records (``pubmedqa-<PubMed id>``, as the hub loader names items)."""
    path = BUNDLED_PUBMEDQA.with_name("train.jsonl")
    return {json.loads(line)["id"] for line in path.read_text(encoding="utf-8").split("\n") if line.strip()}


_MMLU_MEDICAL = ["anatomy", "clinical_knowledge", "college_biology", "college_medicine",
                 "medical_genetics", "professional_medicine"]

REGISTRY: dict[str, Benchmark] = {
    **{f"mmlu_{s}": Benchmark(f"mmlu_{s}", "text", "cais/mmlu", s, "test", from_mmlu)
       for s in _MMLU_MEDICAL},
    "medmcqa": Benchmark("medmcqa", "text", "openlifescienceai/medmcqa", None, "validation",
                         from_medmcqa, "the test split has no answers; validation is used"),
    "medqa": Benchmark("medqa", "text", "GBaker/MedQA-USMLE-4-options", None, "test", from_medqa),
    "usmle": Benchmark("usmle", "text", None, None, "test", from_medqa,
                       "USMLE self-assessment questions: local files in the MedQA layout"),
    "pubmedqa": Benchmark("pubmedqa", "text", "qiaojin/PubMedQA", "pqa_labeled", "train",
                          from_pubmedqa_hub, "hub copy of the 1,000 expert items, less the 500 the bundled "
                          "training set holds (the official test split remains)", exclude=bundled_training_ids),
    "mimic_cxr_summarization": Benchmark(
        "mimic_cxr_summarization", "text", None, None, "test", from_report,
        "credentialed PhysioNet data: local files with findings and impression"),
    "slake": Benchmark("slake", "image", "BoKelvin/SLAKE", None, "test", from_open_vqa),
    "vqa_rad": Benchmark("vqa_rad", "image", "flaviagiammarino/vqa-rad", None, "test",
                         from_open_vqa),
    "pathvqa": Benchmark("pathvqa", "image", "flaviagiammarino/path-vqa", None, "test",
                         from_open_vqa),
    "pmc_vqa": Benchmark("pmc_vqa", "image", "xmcmic/PMC-VQA", None, "test", from_pmc_vqa),
    "pmc_vqa_hard": Benchmark("pmc_vqa_hard", "image", None, None, "test", from_pmc_vqa,
                              "the hard PMC-VQA subset: local csv in the PMC-VQA layout"),
    "mimic_cxr_report": Benchmark("mimic_cxr_report", "image", None, None, "test", from_report,
                                  "credentialed PhysioNet data: local files with images"),
    "pubmedqa_bundled": Benchmark("pubmedqa_bundled", "text", None, None, "test", from_medix,
                                  "bundled official 500-item test split (MIT)"),
}
PAPER_BENCHMARKS = [name for name in REGISTRY if name != "pubmedqa_bundled"]
assert len(PAPER_BENCHMARKS) == 17


def _read_rows(bench: Benchmark, data_files: str | list[str] | None):
    """Rows of one benchmark, as dicts, from local files or the hub (via ``datasets``)."""
    import datasets

    if bench.name == "pubmedqa_bundled" and data_files is None:
        data_files = str(BUNDLED_PUBMEDQA)
    if data_files is not None:
        files = [data_files] if isinstance(data_files, str) else list(data_files)
        suffix = Path(files[0]).suffix.lower().lstrip(".")
        builder = {"jsonl": "json", "json": "json", "csv": "csv", "parquet": "parquet"}.get(suffix)
        if builder is None:
            raise ValueError(f"data_files for {bench.name}: expected .jsonl/.json/.csv/.parquet, "
                             f"got {files[0]!r}")
        try:
            return datasets.load_dataset(builder, data_files=files, split="train")
        except (OSError, datasets.exceptions.DatasetGenerationError) as e:  # missing, unreadable, not UTF-8
            raise ValueError(f"data_files for {bench.name}: cannot read {files}: {e}") from None
    if bench.hub_id is None:
        raise ValueError(f"benchmark {bench.name!r} has no public hub copy ({bench.note}); "
                         f"pass its local files with --data-files {bench.name}=PATH")
    try:
        return datasets.load_dataset(bench.hub_id, bench.config, split=bench.split)
    except OSError as e:  # ConnectionError offline, a missing cache: one line naming the source and the way out
        raise ValueError(f"benchmark {bench.name}: cannot load hub:{bench.hub_id} ({type(e).__name__}: {e}); it needs "
                         f"the network or the hub cache, or local files with --data-files {bench.name}=PATH") from None


def load_benchmark(name: str, *, limit: int | None = None,
                   data_files: str | list[str] | None = None) -> list[dict]:
    """Load one benchmark as eval records (the first ``limit`` items when given)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown benchmark {name!r}; known: {', '.join(REGISTRY)}")
    if limit is not None and (not isinstance(limit, int) or limit < 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    bench = REGISTRY[name]
    rows = _read_rows(bench, data_files)
    if limit is not None and bench.exclude is None:
        rows = rows.select(range(min(limit, len(rows))))
    records = [bench.to_record(dict(row), i, name) for i, row in enumerate(rows)]
    if bench.exclude is not None:
        excluded = bench.exclude()
        records = [r for r in records if r["id"] not in excluded][:limit]
    ids = [r["id"] for r in records]
    if len(set(ids)) != len(ids):
        raise ValueError(f"benchmark {name!r}: item ids are not unique")
    return records


def record_key(record: dict) -> str:
    """A stable key for resume bookkeeping: benchmark, id and a hash of what is asked."""
    digest = hashlib.sha256(json.dumps([record["problem"], record["reference"]]).encode())
    return f"{record['benchmark']}/{record['id']}/{digest.hexdigest()[:12]}"
