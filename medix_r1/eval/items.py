"""The one record format every benchmark is mapped into, and answer normalisation.

An eval record is a plain dict:

- ``id`` (str, unique within its benchmark), ``benchmark`` (registry name),
- ``question`` (the short question the judge sees), ``problem`` (the full text the model sees:
  context, question and, for multiple choice, the lettered options),
- ``reference`` (the free-text reference answer the judge compares against),
- ``exact_answers`` (strings that count as correct without asking the judge: the reference,
  and for multiple choice the option text and its letter),
- ``images`` (a list of image paths, PIL images or raw bytes; empty for text-only items),
- ``modality`` (the MediX tag of the item, ``<OTHER>`` for text only).
"""
from __future__ import annotations

import re

TEXT_TAG = "<OTHER>"
_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL | re.IGNORECASE)


def make_record(*, id, benchmark, question, problem, reference, exact_answers=(), images=(),
                modality=TEXT_TAG) -> dict:
    """Build one eval record, checking the fields every later stage relies on."""
    for name, value in (("id", id), ("benchmark", benchmark), ("question", question),
                        ("problem", problem), ("reference", reference)):
        if not isinstance(value, str):
            raise TypeError(f"record field '{name}' must be a str, got {type(value).__name__}")
    if not str(id).strip():
        raise ValueError("record field 'id' must be a non-empty string")
    if not reference.strip():
        raise ValueError(f"record {benchmark}/{id}: 'reference' must be a non-empty answer")
    exact = [reference] + [a for a in exact_answers if isinstance(a, str) and a.strip()]
    return {
        "id": id,
        "benchmark": benchmark,
        "question": question.strip(),
        "problem": problem.strip(),
        "reference": reference.strip(),
        "exact_answers": list(dict.fromkeys(clean_answer(a) for a in exact)),
        "images": list(images),
        "modality": modality,
    }


def clean_answer(text: str) -> str:
    """Strip whitespace and leading/trailing dots, as the MediX reward does before comparing."""
    return text.strip().strip(".").strip()


def extract_answer(response: str) -> str:
    """The model's final answer: the first ``<answer>...</answer>`` content, else the whole text.

    Same rule as the MediX-R1 reward; kept here (a dozen lines) so evaluation works even when a
    model ignores the format: then the whole response is what the judge sees.
    """
    if not isinstance(response, str):
        raise TypeError(f"response must be a str, got {type(response).__name__}")
    match = _ANSWER_RE.search(response)
    return clean_answer(match.group(1) if match else response)


def exact_match(answer: str, record: dict) -> bool:
    """Case-sensitive exact match of the cleaned answer against the record's exact answers."""
    cleaned = clean_answer(answer)
    return bool(cleaned) and cleaned in record["exact_answers"]
