"""Convert the PubMedQA expert set (../shared/data/pubmedqa, MIT) into MediX-R1 records.

Run once by the maintainers; its outputs, ``train.jsonl`` and ``test.jsonl`` beside this file,
are shipped with the package together with the dataset's LICENSE and attribution.

Record format (MediX-R1): ``id``, ``images`` (empty: PubMedQA is text only), ``source``,
``problem`` (abstract context + question), ``solution`` (``"<OTHER> Decision. long answer"``:
the tag a text-only item carries, the yes/no/maybe decision and the abstract's conclusion as
the free-text reference). The raw fields are kept too (``question``, ``contexts``,
``decision``, ``long_answer``) so prompts can shorten the context without re-parsing.
The split follows the official ``test_ground_truth.json`` (500 test ids; the other 500 train).

    python -m medix_r1.data.convert_pubmedqa [SOURCE_DIR]
"""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent / "pubmedqa"
DEFAULT_SOURCE = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "pubmedqa"


def to_record(pmid: str, item: dict) -> dict:
    contexts = [c.strip() for c in item["CONTEXTS"]]
    question = item["QUESTION"].strip()
    decision = item["final_decision"].strip().lower()
    long_answer = item["LONG_ANSWER"].strip()
    problem = "Context: " + " ".join(contexts) + "\n\nQuestion: " + question
    return {
        "id": f"pubmedqa-{pmid}",
        "images": [],
        "source": "pubmedqa",
        "problem": problem,
        "solution": f"<OTHER> {decision.capitalize()}. {long_answer}",
        "question": question,
        "contexts": contexts,
        "decision": decision,
        "long_answer": long_answer,
    }


def convert(source: Path, out: Path = HERE) -> dict[str, int]:
    items = json.loads((source / "ori_pqal.json").read_text())
    test_ids = json.loads((source / "test_ground_truth.json").read_text())
    out.mkdir(parents=True, exist_ok=True)
    counts = {}
    for split, keep in (("train", lambda k: k not in test_ids), ("test", lambda k: k in test_ids)):
        rows = [to_record(k, v) for k, v in items.items() if keep(k)]
        with open(out / f"{split}.jsonl", "w") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        counts[split] = len(rows)
    for name in ("LICENSE", "SOURCE.md"):
        shutil.copyfile(source / name, out / name)
    return counts


if __name__ == "__main__":
    src = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULT_SOURCE
    print(convert(src.resolve()))
