"""The decision gate: NO without asking the judge when the answer misses the reference's decision.

A small judge reads "Yes. <conclusion>" and "No. <conclusion>" as nearly the same text and cannot
be trusted to compare them (benchmarks/results/judge_pairs_cpu.md). Yes/no/maybe questions
(PubMedQA-style references such as "No. These data indicate ...") state their decision first, so
the decision is compared first, in code: when the reference opens with a decision and the answer
does not open with the same one (another decision, or none), the verdict is NO and the model is
not called. Requiring the decision, not only forbidding the opposite one, matters under RL: a
policy could otherwise learn to leave the decision out and let the lenient model say YES.

The gate can only turn a YES into a NO, never the reverse, so no answer wins a reward through it.
A text opens with a decision when its first word (optionally after "The answer is") is "yes" or
"maybe", or "no" followed by punctuation or nothing ("No.", "No,", "No" alone: the answer parser
drops a final period): "No acute findings." opens with none.
"""
from __future__ import annotations

import re

_LEADING = re.compile(r"^\W*(?:the answer is\s*:?\s*)?(?:(yes|maybe)\b|(no)\s*(?:[.,:;!\u2014-]|$))",
                      re.IGNORECASE)


def leading_decision(text: str) -> str | None:
    """'yes', 'no' or 'maybe' when ``text`` opens with that decision, else None."""
    m = _LEADING.match(text) if isinstance(text, str) else None
    return (m.group(1) or m.group(2)).lower() if m else None


def decision_mismatch(answer: str, reference: str) -> bool:
    """True when the reference opens with a decision and the answer does not open with the same one."""
    r = leading_decision(reference)
    return r is not None and leading_decision(answer) != r
