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

The restatement checks (:func:`restatement_mismatch`, part of the decision gate) catch two cheap
attacks a small judge and the embeddings cannot see, on answers built mostly from the reference's
own words (at least :data:`RESTATE_SHARE` of the answer's words are the reference's): the
reference with a word negated or a negation dropped ("X is not associated with Y"; a word that
both texts use is negated in one of them only), and the reference's words shuffled (word salad:
under half of the answer's word pairs, relative to its shared words, are pairs of the reference).
An answer in its own words is left to the judge; so are antonyms ("raised" for "lowered"): the
checks see negation words and word order, not meaning.

The topic gate (:func:`off_topic`, ``reward.judge_min_similarity``; off by default, on in the CPU
recipe) is the second check a small judge needs: an answer with the right decision but another
question's conclusion (wrong, and a small judge's YES as often as the right one) is NO when the
sentence embeddings of its text and the reference's, decisions removed, have a cosine similarity
below the threshold. An answer that is only a decision ("Yes.") has nothing to compare and is left
to the judge. Like the decision gate it only turns a YES into a NO.
"""
from __future__ import annotations

import re
from collections import Counter

_LEADING = re.compile(r"^\W*(?:the answer is\s*:?\s*)?(?:(yes|maybe)\b|(no)\s*(?:[.,:;!\u2014-]|$))",
                      re.IGNORECASE)


def leading_decision(text: str) -> str | None:
    """'yes', 'no' or 'maybe' when ``text`` opens with that decision, else None."""
    m = _LEADING.match(text) if isinstance(text, str) else None
    return (m.group(1) or m.group(2)).lower() if m else None


def without_decision(text: str) -> str:
    """``text`` after its opening decision ("Yes. The data show X" -> "The data show X")."""
    m = _LEADING.match(text)
    return (text[m.end():] if m else text).lstrip(" .,:;!\u2014-")


def off_topic(encode, answers: list[str], references: list[str], min_similarity: float) -> list[bool]:
    """True per pair where the cosine similarity of answer and reference, decisions removed, is below
    ``min_similarity``; ``encode`` maps texts to an [N, D] tensor (``rewards.embedding.Embedder.encode``).
    A pair whose answer has no word left after its decision is never off topic."""
    import torch

    if len(answers) != len(references):
        raise ValueError(f"answers and references must have the same length, got {len(answers)} and {len(references)}")
    bodies = [without_decision(a) for a in answers]
    ask = [i for i, b in enumerate(bodies) if re.search(r"\w", b)]
    flags = [False] * len(answers)
    if ask:
        emb = encode([bodies[i] for i in ask] + [without_decision(references[i]) for i in ask]).float()
        cos = torch.nn.functional.cosine_similarity(emb[: len(ask)], emb[len(ask):], dim=-1)
        for i, c in zip(ask, cos.tolist()):
            flags[i] = not (c >= min_similarity)  # NaN (a broken embedding) counts as off topic
    return flags


RESTATE_SHARE = 0.6  # an answer whose words are at least this share of the reference's restates it
ORDER_SHARE = 0.5    # a restatement keeps at least this share (of its shared words) of the reference's word pairs
NEGATIONS = frozenset({"not", "no", "never", "none", "neither", "nor", "without", "cannot", "nothing"})
_SKIP = frozenset({"a", "an", "the", "be", "been", "to", "only", "always", "all", "any"})  # not what is negated
# a whole sentence negated: "It is not true that ...", "It is false that ..."
_SENTENCE_NEGATION = re.compile(r"\b(?:not|never) (?:true|the case|correct|so) that\b|\b(?:false|untrue|incorrect|"
                                r"wrong) that\b")
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _negated(words: list[str]) -> Counter:
    """How often each word is negated: the first word after a negation ("not", "no", "doesn't", ...)
    that is not an article or the like ("not a predictor" negates "predictor")."""
    out: Counter = Counter()
    for i, w in enumerate(words):
        if w in NEGATIONS or w.endswith("n't"):
            target = next((x for x in words[i + 1:i + 4] if x not in _SKIP), None)
            if target is not None:
                out[target] += 1
    return out


def _shared(a: list, b: list) -> int:
    """Size of the multiset intersection of ``a`` and ``b``."""
    return sum((Counter(a) & Counter(b)).values())


def restatement_mismatch(answer: str, reference: str) -> bool:
    """True when ``answer`` is made of the reference's words (decisions removed) but does not say what
    it says: a word both use is negated in one only, or the words are out of the reference's order."""
    a, r = _words(without_decision(answer)), _words(without_decision(reference))
    if len(a) < 4 or len(r) < 4:
        return False
    share = _shared(a, r) / len(a)
    if share < RESTATE_SHARE:
        return False  # its own words: the judge decides
    na, nr = _negated(a), _negated(r)
    if any(na[w] != nr[w] for w in set(a) & set(r)):  # a word both use, negated in one of them only
        return True
    sentence = [len(_SENTENCE_NEGATION.findall(" ".join(x))) % 2 for x in (a, r)]
    if sentence[0] != sentence[1]:
        return True
    pairs = _shared(list(zip(a, a[1:])), list(zip(r, r[1:]))) / (len(a) - 1)
    return pairs < ORDER_SHARE * share


def decision_mismatch(answer: str, reference: str) -> bool:
    """True when the reference opens with a decision and the answer does not open with the same one."""
    r = leading_decision(reference)
    return r is not None and leading_decision(answer) != r
