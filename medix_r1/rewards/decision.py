"""The decision gate: NO without asking the judge when answer and reference state opposite decisions.

A small judge reads "Yes. <conclusion>" and "No. <conclusion>" as nearly the same text and says
YES to both (measured: benchmarks/results/judge_pairs_cpu.md). Yes/no/maybe questions
(PubMedQA-style references such as "No. These data indicate ...") state their decision as the
first word, so the decision is compared first, in code: when both texts open with a decision
word and the words differ, the verdict is NO and the model is not called.

The gate can only turn a YES into a NO, never the reverse, so an answer cannot use it to win a
reward; it can only cost the answer that contradicts the reference's decision. A text opens with
a decision when its first word is yes, no or maybe followed by punctuation ("No.", "Yes,",
"maybe:"), optionally after "The answer is"; "No acute findings." opens with no decision.
"""
from __future__ import annotations

import re

_LEADING = re.compile(r"^\W*(?:the answer is\s+)?(yes|no|maybe)\s*[.,:;!]", re.IGNORECASE)


def leading_decision(text: str) -> str | None:
    """'yes', 'no' or 'maybe' when ``text`` opens with that decision, else None."""
    m = _LEADING.match(text) if isinstance(text, str) else None
    return m.group(1).lower() if m else None


def decisions_differ(answer: str, reference: str) -> bool:
    """True when both texts open with a decision and the decisions differ."""
    a, r = leading_decision(answer), leading_decision(reference)
    return a is not None and r is not None and a != r
