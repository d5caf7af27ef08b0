"""MMMU's medical subsets as the official leaderboard runs them: MedEvalKit's ``MMMU-Medical-val``.

What MediX-R1 runs (``eval/eval_mmmu_med.sh`` at 94fd018, with the Qwen3-VL adapter in
``eval/MedEvalKit_ModelFile``; MedEvalKit at https://github.com/alibaba-damo-academy/MedEvalKit,
``utils/MMMU``): the validation split of ``MMMU/MMMU`` for the five subjects of "Health and
Medicine", greedy decoding with up to 8,192 new tokens (:data:`sampling.MMMU_REQUEST`), no system
prompt, one user turn of the row's first image (``image_1``; none when more than one option holds an
image) and the prompt below (``REASONING=False``). Scored by rules, no judge:

- the reply is cut after its last ``</think>`` (else ``</thinking>``); the text inside its
  ``<answer>`` tags replaces it when there are any, then the content of its last ``\\boxed{...}``;
- multiple choice: a letter is read from that text (:func:`choose_letter`); it scores 1 when it is
  the row's answer;
- open questions: MedEvalKit's validation path hands the reply *string* to its open-answer check,
  which iterates over it, so every prediction is one character and no normalised answer (at least
  two characters, or a number) is found in one: an open question never scores.
  :func:`open_answer_correct` follows that check, and :func:`score_item` feeds it as MedEvalKit does.

The task's score is the share of items right over the five subjects together (MedEvalKit's
``total.acc``). It is reported beside, not inside, the overall mean of eval.py's tasks.
"""
from __future__ import annotations

import ast
import random
import re

from .judge import after_thinking

SUBJECTS = ("Basic_Medical_Science", "Clinical_Medicine", "Diagnostics_and_Laboratory_Medicine", "Pharmacy",
            "Public_Health")
COLUMNS = ("id", "question", "options", "answer", "question_type", "image_1")
MC_INSTRUCTION = "Answer with the option's letter from the given choices directly."
OPEN_INSTRUCTION = "Answer the question using a single word or phrase."
_OPTION_IMAGE = re.compile(r"<img='(.*?)'>")
_PUNCTUATION = (",", ".", "!", "?", ";", ":", "'")


def options_of(row) -> list:
    """The row's options: MMMU stores the list's Python repr as a string."""
    value = row["options"]
    if not isinstance(value, str):
        return list(value)
    try:
        return list(ast.literal_eval(value))
    except (ValueError, SyntaxError):
        raise TypeError(f"options {value[:80]!r} is not a list's repr") from None


def mmmu_item(row, image_dir=None):
    """One MMMU row as the prompt MedEvalKit builds (``construct_prompt``, no reasoning): a blank line,
    the question, the options as "(A) text" lines, then the instruction after eight spaces."""
    options = options_of(row)
    letters = [chr(ord("A") + i) for i in range(len(options))]
    if row["question_type"] == "multiple-choice":
        listing = "".join(f"({letter}) {option}\n" for letter, option in zip(letters, options))
        text = f"\n{row['question']}\n\n{listing}\n\n        {MC_INSTRUCTION}"
    else:
        text = f"\n{row['question']}\n\n        {OPEN_INSTRUCTION}"
    option_images = sum(len(_OPTION_IMAGE.findall(str(o))) for o in options)
    image = None if option_images > 1 else row.get("image_1")
    # the record keeps the prompt unstripped and the decoded image (MedEvalKit hands vLLM the PIL image)
    extra = {"problem": text, "image_encoding": "png",
             "mmmu": {"question_type": row["question_type"], "letters": letters, "options": [str(o) for o in options],
                      "source_id": str(row["id"]), "option_images": option_images}}
    return {"question": text, "answer": str(row["answer"]), "images": [image] if image is not None else [],
            "extra": extra}


def _answer_tags(text: str) -> str:
    """Every closed <answer>...</answer> content, joined by spaces (the whole text when there is none)."""
    parts, start = [], text.find("<answer>")
    while start != -1:
        end = text.find("</answer>", start + len("<answer>"))
        if end == -1:
            break
        parts.append(text[start + len("<answer>"):end])
        start = text.find("<answer>", end + len("</answer>"))
    return " ".join(parts).strip() or text


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (braces balanced), stripped; None without one."""
    start = text.rfind("\\boxed{")
    if start == -1:
        return None
    depth, body = 0, text[start + len("\\boxed{"):]
    for i, char in enumerate(body):
        depth += {"{": 1, "}": -1}.get(char, 0)
        if depth == -1:
            return body[:i].strip()
    return None


def answer_text(response: str) -> str:
    """What MedEvalKit scores: the reply after its thinking, its <answer> content, its last boxed content."""
    text = after_thinking(response)
    if "<answer>" in text:
        text = _answer_tags(text)
    boxed = last_boxed(text)
    return boxed if boxed not in (None, "None") else text


def choose_letter(text: str, letters: list[str], options: list[str], rng: random.Random) -> str:
    """The option a reply names: "(B)" forms first, else a letter standing alone, else (replies over
    five words) an option's text; the latest mention wins; none at all: a random letter."""
    if "<answer>" in text:
        text = _answer_tags(text)
    elif "\\boxed" in text:
        text = str(last_boxed(text))  # MedEvalKit keeps the string "None" when the braces never close
    text = text.strip()
    for char in _PUNCTUATION:
        text = text.strip(char)
    text = f" {text} "
    bracketed = [x for x in letters if f"({x})" in text]
    if bracketed:
        return max(bracketed, key=lambda x: text.rfind(f"({x})"))
    alone = [x for x in letters if f" {x} " in text]
    if alone:
        return max(alone, key=lambda x: text.rfind(f" {x} "))
    if len(text.split()) > 5:
        named = [x for x, option in zip(letters, options) if option.lower() in text.lower()]
        if named:
            return max(named, key=lambda x: text.lower().rfind(options[letters.index(x)].lower()))
    return rng.choice(letters)


def _normalise(value) -> list:
    """An answer as MedEvalKit compares it: a number (commas dropped, 2 decimals), else lower-case
    text, a single character padded with a space on either side."""
    text = str(value).strip()
    try:
        return [round(float(text.replace(",", "")), 2)]
    except ValueError:
        text = text.lower()
        return [" " + text, text + " "] if len(text) == 1 else [text]


def open_answer_correct(answer, predictions) -> bool:
    """MedEvalKit's open-answer check: a text prediction is right when it contains a normalised
    answer, a number when it equals one; ``predictions`` is iterated as given."""
    answers = [a for part in (answer if isinstance(answer, list) else [answer]) for a in _normalise(part)]
    for prediction in predictions:
        if isinstance(prediction, str):
            if any(isinstance(a, str) and a in prediction for a in answers):
                return True
        elif prediction in answers:
            return True
    return False


def score_item(record: dict, response: str, seed: int = 42) -> dict:
    """``{"score", "parsed"}`` of one MMMU item (module docstring). The random letter for a reply that
    names none is drawn from a generator seeded by ``seed`` and the item (MedEvalKit draws from
    Python's global generator after seeding it with 42, so its draws depend on the order of items)."""
    info, text = record["mmmu"], answer_text(response)
    if info["question_type"] == "multiple-choice":
        parsed = choose_letter(text, info["letters"], info["options"], random.Random(f"{seed}:{record['id']}"))
        return {"score": float(parsed == record["reference"]), "parsed": parsed}
    return {"score": float(open_answer_correct(record["reference"], text)), "parsed": text}
