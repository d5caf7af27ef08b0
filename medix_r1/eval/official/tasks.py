"""The 18 tasks of MediX-R1's official evaluation, read in each dataset's own schema.

The 17 of ``eval/eval.py``: sources, splits and columns are those of the official ``eval/tasks.yaml``,
and each row becomes the text the official ``load_dataset_with_params`` (``eval/utils.py``) builds
(https://github.com/mbzuai-oryx/MediX-R1/blob/94fd0184b54d5e77abf909aef87aa6ada1310099/eval/): the
question, then for multiple choice ``"\\n\\nChoices:"`` and one ``"\\nA. option"`` line per option; the
reference is the correct option's text (or the answer column); ids are ``<task>_<n>`` with n counting
the kept rows. The model sees exactly this question (no system prompt, no reformatting) and so does
the judge. The 18th, ``mmmu_medical``, is MMMU's medical subsets as MedEvalKit runs them for the
official leaderboard (:mod:`medix_r1.eval.official.mmmu`: its own prompt, sampling and rule scoring).

One loader per task in :data:`TASKS`; a loader maps one row to one item (or ``None`` to skip it,
as SLAKE's non-English rows). Images that the hub rows only name (SLAKE's ``img_name`` inside its
``imgs.zip``, MIMIC-CXR's PhysioNet URLs) are read from a local folder (``image_dir``).
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from medix_r1.eval.items import make_record

from .mmmu import COLUMNS, SUBJECTS, mmmu_item, score_item

LETTERS = "ABCDEFGHIJ"
BUNDLED_PUBMEDQA_TRAIN = Path(__file__).resolve().parents[2] / "data" / "pubmedqa" / "train.jsonl"


@dataclass(frozen=True)
class OfficialTask:
    name: str
    group: str                  # "llm" or "vlm", as tasks.yaml groups them
    path: str                   # hub dataset
    config: str | None
    split: str
    to_item: Callable           # (row, image_dir) -> dict(question, answer, images[, extra]) or None
    columns: tuple = ()         # the columns the loader reads (checked before any row is)
    sampling: str = "eval_py"   # which official settings generate its answers (official/sampling.py)
    scorer: Callable | None = None  # (record, response) -> {"score", ...} by rules; None: the official judge


def with_choices(question: str, choices) -> str:
    """The official question text: the question, then "\\n\\nChoices:" and "\\nA. text" per option
    (a None option is left out, its letter skipped)."""
    text = question + "\n\nChoices:"
    for i, option in enumerate(choices):
        if option is not None:
            text += f"\n{LETTERS[i]}. {option}"
    return text


def _options(row, columns) -> list:
    value = [row.get(c) for c in columns] if isinstance(columns, (list, tuple)) else row.get(columns)
    return list(value.values()) if isinstance(value, dict) else list(value)


def _image(row, image_dir, key="image", keep_folders=False):
    """The row's image (``key``, else ``image_id`` as the official loader falls back to): a decoded
    one, or a file named by the row under ``image_dir`` (its file name; its relative path with
    ``keep_folders``, as SLAKE's ``img_name`` inside imgs/)."""
    value = row.get(key) if row.get(key) is not None else row.get("image_id")
    if value is None or hasattr(value, "convert") or isinstance(value, dict):
        return value
    if image_dir is None:
        raise ValueError(f"the row names its image ({str(value)[:80]!r}) instead of holding it: give the folder "
                         f"holding these files with --image-dir TASK=DIR")
    path = Path(image_dir) / (str(value) if keep_folders else Path(str(value)).name)
    if not path.is_file():
        raise ValueError(f"image {path} not found (--image-dir): download the dataset's images there")
    return str(path)


def choice_item(row, image_dir, *, question, choices, answer_index=None, answer=None, image=False):
    """A question with lettered options; the answer is an index into them or its own column."""
    options = _options(row, choices) if choices else []
    text = str(row.get(question) or "")
    text = with_choices(text, options) if choices else text
    reference = options[row[answer_index]] if answer_index else row[answer]
    return {"question": text, "answer": str(reference), "images": [_image(row, image_dir)] if image else []}


# tasks.yaml lists PubMedQA's choices as the bare words yes, no, maybe; eval.py reads the file with
# yaml.safe_load, whose YAML 1.1 rules turn yes / no into the booleans True / False, and the loader
# writes each option with an f-string: the official model saw "A. True", "B. False", "C. maybe".
PUBMEDQA_CHOICES = (True, False, "maybe")


def pubmedqa_item(row, image_dir, choices=PUBMEDQA_CHOICES):
    """tasks.yaml's list form: "Contexts:\\n<first context>\\n\\nQuestion:\\n<question>\\n\\n", then the
    choices as the official run rendered them (:data:`PUBMEDQA_CHOICES`); the answer is the decision
    and the long answer on two lines."""
    text = ""
    for column in ("CONTEXTS", "QUESTION"):
        value = row[column]
        text += f"{column.lower().capitalize()}:\n{value[0] if isinstance(value, list) else value}\n\n"
    text += "Choices:" + "".join(f"\n{LETTERS[i]}. {o}" for i, o in enumerate(choices) if o is not None)
    return {"question": text, "answer": f"{row['final_decision']}\n{row['LONG_ANSWER']}\n", "images": []}


def mimic_summary_item(row, image_dir):
    return {"question": f"Write a short summary of the following report.\n\nReport:\n{row['report']}:",
            "answer": str(row["summary"]), "images": []}


def mimic_report_item(row, image_dir):
    return {"question": "Generate a detailed report based on the scan.", "answer": str(row["report"]),
            "images": [_image(row, image_dir)]}


def slake_item(row, image_dir):
    """English rows only; the image is ``img_name`` inside the dataset's imgs folder."""
    if row.get("q_lang") != "en":
        return None
    item = choice_item(row, image_dir, question="question", choices=None, answer="answer")
    item["images"] = [_image(row, image_dir, "img_name", keep_folders=True)]
    return item


_MMLU = ("clinical_knowledge", "college_biology", "college_medicine", "medical_genetics", "professional_medicine",
         "anatomy")
_VQA = ("image", "question", "answer")
_OPEN_VQA = partial(choice_item, question="question", choices=None, answer="answer", image=True)
TASKS: dict[str, OfficialTask] = {
    **{f"mmlu_{s}": OfficialTask(f"mmlu_{s}", "llm", "hails/mmlu_no_train", s, "test",
                                 partial(choice_item, question="question", choices="choices", answer_index="answer"),
                                 ("question", "choices", "answer"))
       for s in _MMLU},
    "medmcqa": OfficialTask("medmcqa", "llm", "openlifescienceai/medmcqa", None, "validation",
                            partial(choice_item, question="question", choices=["opa", "opb", "opc", "opd"],
                                    answer_index="cop"), ("question", "opa", "opb", "opc", "opd", "cop")),
    "medqa": OfficialTask("medqa", "llm", "GBaker/MedQA-USMLE-4-options-hf", None, "test",
                          partial(choice_item, question="sent1", choices=[f"ending{i}" for i in range(4)],
                                  answer_index="label"),
                          ("sent1", "ending0", "ending1", "ending2", "ending3", "label")),
    "usmle_sa": OfficialTask("usmle_sa", "llm", "HuggingSara/usmle_self_assessment", None, "train",
                             partial(choice_item, question="question", choices="options", answer="answer"),
                             ("question", "options", "answer")),
    "pubmedqa": OfficialTask("pubmedqa", "llm", "sahalshajim/medix-eval-sets", "pubmedqa", "test", pubmedqa_item,
                             ("CONTEXTS", "QUESTION", "final_decision", "LONG_ANSWER")),
    "mimic_cxr_report_summarization": OfficialTask("mimic_cxr_report_summarization", "llm",
                                                   "sahalshajim/medix-eval-sets", "mimic_cxr", "test",
                                                   mimic_summary_item, ("report", "summary")),
    "slake_vqa": OfficialTask("slake_vqa", "vlm", "BoKelvin/SLAKE", None, "test", slake_item,
                              ("img_name", "question", "answer", "q_lang")),
    "rad_vqa": OfficialTask("rad_vqa", "vlm", "flaviagiammarino/vqa-rad", None, "test", _OPEN_VQA, _VQA),
    "path_vqa": OfficialTask("path_vqa", "vlm", "flaviagiammarino/path-vqa", None, "test", _OPEN_VQA, _VQA),
    "pmc_vqa": OfficialTask("pmc_vqa", "vlm", "sahalshajim/medix-eval-sets", "pmc_vqa", "test",
                            partial(choice_item, question="question", choices="choices", answer="answer",
                                    image=True), (*_VQA, "choices")),
    "pmc_vqa_hard": OfficialTask("pmc_vqa_hard", "vlm", "sahalshajim/medix-eval-sets", "pmc_vqa_hard", "test",
                                 _OPEN_VQA, _VQA),
    "mimic_cxr_report_generation": OfficialTask("mimic_cxr_report_generation", "vlm", "sahalshajim/medix-eval-sets",
                                                "mimic_cxr", "test", mimic_report_item,
                                                ("image", "report")),
    "mmmu_medical": OfficialTask("mmmu_medical", "mmmu", "MMMU/MMMU", SUBJECTS, "validation", mmmu_item,
                                 COLUMNS, sampling="mmmu", scorer=score_item),
}
assert len(TASKS) == 18
EVAL_PY_TASKS = tuple(n for n, t in TASKS.items() if t.group in ("llm", "vlm"))  # eval.py's 17: the overall


def _norm(text) -> str:
    return re.sub(r"\s+", " ", str(text)).strip().lower()


def pubmedqa_training_keys(path: Path = BUNDLED_PUBMEDQA_TRAIN) -> tuple[set[str], set[str]]:
    """(PubMed ids, normalised questions) of the bundled PubMedQA training records."""
    ids, questions = set(), set()
    for line in path.read_text(encoding="utf-8").split("\n"):  # not splitlines: texts hold U+2028
        if not line.strip():
            continue
        record = json.loads(line)
        ids.add(record["id"].removeprefix("pubmedqa-"))
        questions.add(_norm(record["question"]))
    return ids, questions


def in_training_set(row, keys) -> bool:
    """A PubMedQA eval row that the bundled training set holds (same PubMed id or question)."""
    ids, questions = keys
    pmid = row.get("pubid", row.get("PMID", row.get("id")))
    return (pmid is not None and str(pmid) in ids) or _norm(row.get("QUESTION", "")) in questions


def read_rows(task: OfficialTask, data_files=None):
    """The task's rows: local files in the dataset's schema, else the hub copy tasks.yaml names."""
    import datasets

    if data_files:
        files = [data_files] if isinstance(data_files, str) else list(data_files)
        builder = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}.get(Path(files[0]).suffix)
        if builder is None:
            raise ValueError(f"--data-files {task.name}: expected .jsonl/.json/.csv/.parquet, got {files[0]!r}")
        return datasets.load_dataset(builder, data_files=files, split="train")
    if isinstance(task.config, tuple):  # several configurations (MMMU's subjects), one after another
        return datasets.concatenate_datasets([datasets.load_dataset(task.path, c, split=task.split)
                                              for c in task.config])
    return datasets.load_dataset(task.path, task.config, split=task.split)


def load_task(name: str, *, data_files=None, image_dir=None, limit: int | None = None,
              exclude_training: bool = True) -> tuple[list[dict], dict]:
    """(eval items, notes) of one official task. PubMedQA rows that the bundled training set holds
    are left out (``exclude_training``) and listed in the notes, so no trained-on item is scored."""
    if name not in TASKS:
        raise ValueError(f"unknown official task {name!r}; known: {', '.join(TASKS)}")
    task = TASKS[name]
    keys = pubmedqa_training_keys() if name == "pubmedqa" and exclude_training else None
    config = "+".join(task.config) if isinstance(task.config, tuple) else task.config or "default"
    items, notes = [], {"task": name, "source": f"{task.path}:{config}:{task.split}",
                        "rows": 0, "skipped_rows": 0, "excluded_training_overlap": []}
    rows = read_rows(task, data_files)
    missing = [c for c in task.columns if c not in rows.column_names]
    if missing:
        raise ValueError(f"{name}: the data has no column(s) {missing} of the dataset's schema "
                         f"(columns: {rows.column_names})")
    for index, row in enumerate(rows):
        notes["rows"] += 1
        if keys is not None and in_training_set(row, keys):
            notes["excluded_training_overlap"].append(str(row.get("pubid", row.get("QUESTION", index)))[:80])
            continue
        try:
            item = task.to_item(dict(row), image_dir)
        except (KeyError, TypeError, IndexError) as e:
            raise ValueError(f"{name} row {index}: not in the dataset's schema ({type(e).__name__}: {e}); "
                             f"columns: {sorted(row)}") from None
        if item is None:
            notes["skipped_rows"] += 1
            continue
        items.append({**make_record(id=f"{name}_{len(items)}", benchmark=name, question=item["question"],
                                    problem=item["question"], reference=item["answer"],
                                    images=[im for im in item["images"] if im is not None]),
                      **item.get("extra", {})})
        if limit and len(items) >= limit:
            break
    return items, notes
