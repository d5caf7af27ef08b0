"""Parsing MediX-R1 responses and reference solutions.

A response looks like ``<TAG> <thinking>...</thinking> <answer>...</answer>``; a reference
solution is stored as ``"<TAG> answer text"``.

Official rules (MediX-R1 reward code, see docs/medix_r1.md), reproduced with ``parity="official"``:

- whitespace around every ``<``, ``>`` and ``/`` is removed before anything else (this also turns
  ``a / b`` inside an answer into ``a/b``);
- format: 1 when the text from the first ``<thinking>`` on (stripped) is exactly
  ``<thinking>...</thinking>`` + optional whitespace + ``<answer>...</answer>``; text before
  ``<thinking>`` is not checked, trailing text fails;
- modality: 1 when the text before the first ``<thinking>`` (stripped) equals the reference tag,
  case-insensitively; 0 without ``<thinking>``;
- answer: the first ``<answer>...</answer>`` content (the whole response without one), stripped
  and with leading/trailing dots removed;
- invalid answer: empty, a single character, or containing ``__``, ``:`` or ``?``.

``parity="strict"`` (the default) differs in one place only: whitespace is removed around the
*tags* (``< thinking >``, ``</ answer>``...), not around every ``<``, ``>`` and ``/``, so an answer
such as ``1 / 2`` or ``PSA < 4`` keeps its text; the answer is also stripped once more after
the dots are removed (``". Yes"`` gives ``"Yes"``, not ``" Yes"``).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

MODALITY_TAGS = (
    "<X_RAY>", "<MICROSCOPY>", "<CLINICAL_PHOTOGRAPHY>", "<CT_SCAN>", "<GRAPHICS>", "<ANGIOGRAPHY>",
    "<PET_SCAN>", "<ULTRASOUND>", "<MRI_SCAN>", "<FUNDUS_PHOTOGRAPHY>", "<OCT_SCAN>", "<ENDOSCOPY>",
    "<MAMMOGRAPHY>", "<FLUOROSCOPY>", "<OTHER>", "<SPECT>",
)
PARITIES = ("strict", "official")

# Everything here runs in linear time on any input: a policy can emit 20,000 characters of
# whitespace or thousands of unclosed tags, and a pattern such as r"\s*<" scanned over a long
# whitespace run backtracks quadratically (seconds per response).
# Official: the whitespace before or after any '<', '>' or '/' goes (the same result as
# re.sub(r"\s*([</>])\s*", r"\1", text)); a run is only matched from its start ((?<!\s)).
_OFFICIAL_BEFORE = re.compile(r"(?<!\s)\s+(?=[</>])")
_OFFICIAL_AFTER = re.compile(r"(?<=[</>])\s+")
# Strict: a tag is '<', an optional '/', a word and '>', with any whitespace in between; the
# whitespace around each tag goes (the same result as re.sub(r"\s*<\s*(/?)\s*(WORD)\s*>\s*", ...)).
_TAG = re.compile(r"<\s*(?:(/)\s*)?([A-Za-z_][A-Za-z0-9_]*)\s*>")
# The official format rule is a full match of "<thinking>.*?</thinking>\s*<answer>.*?</answer>" (dot
# matches newlines); it holds iff the text starts with <thinking>, ends with </answer> and a
# "</thinking>\s*<answer>" lies between them, checked by one search (see format_ok()).
_THINK_TO_ANSWER = re.compile(r"</thinking>\s*<answer>")


@dataclass(frozen=True)
class ParsedResponse:
    """What the reward needs from one response (after whitespace normalisation)."""
    normalized: str       # the response after whitespace removal around tags
    modality_tag: str     # text before the first <thinking>, stripped ('' without <thinking>)
    thinking: str | None  # first <thinking> content, stripped; None without a closed block
    answer: str           # the extracted answer (see module docstring)
    format_ok: bool       # the official format rule


def _check_parity(parity: str) -> None:
    if parity not in PARITIES:
        raise ValueError(f"parity must be one of {PARITIES}, got {parity!r}")


def normalize_response(response: str, parity: str = "strict") -> str:
    """Remove whitespace around tag delimiters (official: around every '<', '>' and '/')."""
    _check_parity(parity)
    if parity == "official":
        return _OFFICIAL_AFTER.sub("", _OFFICIAL_BEFORE.sub("", response))
    out, pos, after_tag = [], 0, False
    for m in _TAG.finditer(response):
        between = response[pos:m.start()]
        out.append(between.strip() if after_tag else between.rstrip())
        out.append(f"<{m.group(1) or ''}{m.group(2)}>")
        pos, after_tag = m.end(), True
    rest = response[pos:]
    out.append(rest.lstrip() if after_tag else rest)
    return "".join(out)


def _block(text: str, open_tag: str, close_tag: str) -> str | None:
    """The content of the first ``open_tag ... close_tag`` block (like a lazy regex search), or None."""
    start = text.find(open_tag)
    if start < 0:
        return None
    start += len(open_tag)
    end = text.find(close_tag, start)
    # no close after the first open means none after any later open either
    return None if end < 0 else text[start:end]


def format_ok(text: str) -> bool:
    """Whether ``text`` fully matches ``<thinking>.*?</thinking>\\s*<answer>.*?</answer>`` (DOTALL)."""
    head, tail = "<thinking>", "</answer>"
    if not (text.startswith(head) and text.endswith(tail)):
        return False
    # the earliest "</thinking>\s*<answer>" after the opening tag ends earliest; it must end before
    # the final </answer> begins
    found = _THINK_TO_ANSWER.search(text, len(head))
    return found is not None and found.end() <= len(text) - len(tail)


def clean_answer(text: str, parity: str = "strict") -> str:
    """Strip, then remove leading/trailing dots (strict: and strip again)."""
    text = text.strip().strip(".")
    return text if parity == "official" else text.strip()


def parse_response(response: str, parity: str = "strict") -> ParsedResponse:
    """Split a response into modality tag, thinking, answer and format validity."""
    if not isinstance(response, str):
        raise TypeError(f"response must be a str, got {type(response).__name__}")
    text = normalize_response(response, parity)
    start = text.find("<thinking>")
    if start < 0:
        modality, fmt = "", False
    else:
        modality = text[:start].strip()
        fmt = format_ok(text[start:].strip())
    thinking = _block(text, "<thinking>", "</thinking>")
    answer = _block(text, "<answer>", "</answer>")
    return ParsedResponse(
        normalized=text, modality_tag=modality,
        thinking=thinking.strip() if thinking is not None else None,
        answer=clean_answer(answer if answer is not None else text, parity),
        format_ok=fmt)


def parse_solution(solution: str, parity: str = "strict") -> tuple[str, str | None]:
    """``"<TAG> answer"`` -> (tag, cleaned answer). The tag keeps its brackets, e.g. ``"<OTHER>"``.

    Strict parity raises ValueError when the solution has no leading tag or an unknown one.
    ``parity="official"`` takes any string as the official reward does: the tag is the text up to
    the first ``>`` (unstripped), the answer what follows it; a solution without ``>`` gives the
    answer ``None`` (the official accuracy functions fail on it and score 0) and the tag
    ``solution + ">"``, which the official modality rule compares against.
    """
    if not isinstance(solution, str):
        raise TypeError(f"solution must be a str, got {type(solution).__name__}")
    if parity == "official":
        tag, sep, answer = solution.partition(">")
        return tag + ">", clean_answer(answer, parity) if sep else None
    text = solution.strip()
    end = text.find(">")
    if not text.startswith("<") or end < 0:
        raise ValueError(f"solution must start with a modality tag such as <OTHER>, got {solution[:80]!r}")
    tag = text[: end + 1]
    if tag.upper() not in MODALITY_TAGS:
        raise ValueError(f"solution has unknown modality tag {tag!r}; expected one of {', '.join(MODALITY_TAGS)}")
    return tag, clean_answer(text[end + 1:], parity)


def validate_solution(solution, sample_id) -> tuple[str, str]:
    """Check a reference solution at data-loading time; the error names the sample id."""
    try:
        return parse_solution(solution)
    except (TypeError, ValueError) as e:
        raise type(e)(f"sample {sample_id!r}: {e}") from None


def is_invalid_answer(answer: str) -> bool:
    """Official rule: empty, a single character, or containing '__', ':' or '?'."""
    return len(answer) <= 1 or "__" in answer or ":" in answer or "?" in answer


def format_reward(parsed: ParsedResponse) -> float:
    return 1.0 if parsed.format_ok else 0.0


def modality_reward(parsed: ParsedResponse, reference_tag: str) -> float:
    """1 when the response's tag equals the reference tag, case-insensitively."""
    if not parsed.modality_tag:
        return 0.0
    return 1.0 if parsed.modality_tag.lower() == reference_tag.lower() else 0.0
