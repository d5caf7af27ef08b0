"""Scoring one batch: the checks of a submitted batch and every reward component of its samples.

The steps of :func:`score_samples`, in order:

1. :func:`rule_rewards`: format and modality for every sample; the accuracy of an invalid answer
   (0) or an exact match (1) is known here, the rest is *pending* (the judge and the embedding);
2. at once, each bounded by the batch deadline: the plug-in functions (:mod:`.plugins`, on threads
   of their own), :func:`judge_pass` (the topic gate, then the judge on what it lets through) and
   :func:`embedding_pass` (cosine of the answer and reference embeddings);
3. :func:`add_totals`: the weighted MediX-R1 total, then the plug-in values and their weights.

What is not done by the deadline counts as failed (judge reward 0 and ``judge_failed``;
embedding 0 and ``embedding_failed``); an unexpected error inside a component fails that component
for the affected samples, never the batch. :class:`~.worker.RewardWorker` runs this on its loop.
"""
from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from dataclasses import dataclass

from .config import RewardConfig, RewardResult
from .decision import off_topic
from .judge import JudgeBase
from .parsing import format_reward, is_invalid_answer, modality_reward, parse_response, parse_solution
from .plugins import add_functions, report_failures, score_function

log = logging.getLogger("medix_r1.rewards.worker")  # the reward worker's one log, whichever module writes
GUARD_S = 0.2  # grace after the deadline before the whole judge call is abandoned
_SURROGATES = re.compile(r"[\ud800-\udfff]")


@dataclass
class Sample:
    problem: str
    response: str
    reference_tag: str
    reference: str | None         # None: reward.parity=official and a solution without a tag (accuracy 0)
    truncated: bool


def clean_text(value, name: str, index: int, limit: int | None = None) -> tuple[str, bool]:
    """A str from a str or UTF-8 bytes; invalid bytes and lone surrogates become U+FFFD."""
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", errors="replace")
    if not isinstance(value, str):
        raise TypeError(f"{name}[{index}] must be a str (or UTF-8 bytes), got {type(value).__name__}")
    value = _SURROGATES.sub("\ufffd", value)
    if limit is not None and len(value) > limit:
        return value[:limit], True
    return value, False


def check_columns(columns, n: int) -> dict:
    """The extra per-sample columns handed to plug-in reward functions: a mapping of lists of length n."""
    if columns is None:
        return {}
    if not isinstance(columns, dict):
        raise TypeError(f"columns must be a dict of lists, got {type(columns).__name__}")
    for k, v in columns.items():
        if isinstance(v, (str, bytes)) or not hasattr(v, "__len__") or len(v) != n:
            raise ValueError(f"columns[{k!r}] must be a list of {n} values (one per response)")
    return {k: list(v) for k, v in columns.items()}


def prepare(problems, responses, solutions, cfg: RewardConfig) -> list[Sample]:
    """Check a batch and turn it into Samples; raises ValueError/TypeError on caller mistakes."""
    for name, seq in (("problems", problems), ("responses", responses), ("solutions", solutions)):
        if isinstance(seq, (str, bytes)) or not hasattr(seq, "__len__"):
            raise TypeError(f"{name} must be a list, got {type(seq).__name__}")
    if not (len(problems) == len(responses) == len(solutions)):
        raise ValueError(f"problems, responses and solutions must have the same length, got "
                         f"{len(problems)}, {len(responses)} and {len(solutions)}")
    samples = []
    for i, (problem, response, solution) in enumerate(zip(problems, responses, solutions)):
        problem, _ = clean_text(problem, "problems", i)
        response, truncated = clean_text(response, "responses", i, cfg.max_response_chars)
        solution, _ = clean_text(solution, "solutions", i)
        try:
            tag, reference = parse_solution(solution, cfg.parity)
        except ValueError as e:
            raise ValueError(f"solutions[{i}]: {e}") from None
        samples.append(Sample(problem, response, tag, reference, truncated))
    return samples


async def score_samples(samples: list[Sample], cfg: RewardConfig, judge, embedder_fn, deadline: float,
                        functions=(), columns: dict | None = None) -> list[RewardResult]:
    """All reward components of a batch. ``judge``: a judge backend or None (judge='none');
    ``embedder_fn``: a zero-argument function returning the Embedder, or None (embedding off);
    ``functions``: (import path, callable, weight) of the plug-in rewards, given ``columns``."""
    results, pending = rule_rewards(samples, cfg)
    prompts, completions = [s.problem for s in samples], [s.response for s in samples]
    if columns is None:  # the record's solution again: its tag (already in <...>) and the reference text
        columns = {"solution": [" ".join(p for p in (s.reference_tag, s.reference) if p) for s in samples]}
    plugin_runs = [score_function(spec, fn, prompts, completions, columns, deadline) for spec, fn, _ in functions]
    *scores, _, _ = await asyncio.gather(*plugin_runs,
                                         judge_pass(samples, results, pending, cfg, judge, embedder_fn, deadline),
                                         embedding_pass(samples, results, pending, cfg, embedder_fn, deadline))
    add_totals(results, cfg, functions, scores, columns.get("id", []))
    return results


def rule_rewards(samples: list[Sample], cfg: RewardConfig) -> tuple[list[RewardResult], list[int]]:
    """Format and modality of every sample, and the accuracy the rules settle without a model (an
    invalid answer: 0; an exact match: judge = embedding = 1). Returns the results and the indices of
    the samples still pending the judge and the embedding."""
    results, pending = [], []
    for i, s in enumerate(samples):
        parsed = parse_response(s.response, cfg.parity)
        r = RewardResult(format=format_reward(parsed), modality=modality_reward(parsed, s.reference_tag),
                         answer=parsed.answer, truncated=s.truncated)
        if s.reference is None:  # the official reward's accuracy raises on an untagged solution and scores 0
            pass
        elif is_invalid_answer(parsed.answer):
            r.invalid_answer = True
        elif parsed.answer == s.reference:
            r.exact_match, r.judge, r.embedding = True, 1.0, 1.0
        else:
            pending.append(i)
        results.append(r)
    return results, pending


async def judge_pass(samples, results, pending: list[int], cfg: RewardConfig, judge, embedder_fn,
                     deadline: float) -> None:
    """The judge's verdicts on the pending samples (those the topic gate answers NO for it first), or each
    judgement failed with the reason (the batch deadline, a backend error)."""
    if judge is None or not pending:
        return
    gated = await topic_gate(samples, results, pending, cfg, judge, embedder_fn, deadline) \
        if cfg.judge_min_similarity > 0 and embedder_fn is not None else set()
    for i in gated:
        apply_verdict(results[i], JudgeBase.gate_verdict())
    asked = [i for i in pending if i not in gated]
    if not asked:
        return
    items = [(samples[i].problem, samples[i].reference, results[i].answer) for i in asked]
    try:
        # the backends stop each item at the deadline themselves; this is the last-resort guard
        verdicts = list(await asyncio.wait_for(judge.judge_many(items, deadline=deadline),
                                               timeout=max(0.0, deadline - time.monotonic()) + GUARD_S))
        if len(verdicts) != len(items):  # a backend bug: never pair verdicts with the wrong samples
            raise RuntimeError(f"the judge returned {len(verdicts)} verdicts for {len(items)} items")
    except Exception as exc:  # the deadline or a bug in the backend: fail these judgements
        error = "batch deadline reached" if isinstance(exc, asyncio.TimeoutError) else \
            f"{type(exc).__name__}: {exc}"
        for i in asked:
            results[i].judge_failed, results[i].judge_error = True, error
        return
    for i, v in zip(asked, verdicts):
        apply_verdict(results[i], v)


def apply_verdict(r: RewardResult, v) -> None:
    r.judge = 1.0 if v.correct else 0.0
    r.judge_failed, r.judge_reply, r.judge_error = v.failed, v.reply, v.error
    r.judge_answer_cut = getattr(v, "answer_cut", 0)


async def topic_gate(samples, results, rows: list[int], cfg: RewardConfig, judge, embedder_fn,
                     deadline: float) -> set[int]:
    """The rows the topic gate answers NO (rewards.decision.off_topic), counted with the judge's gated
    verdicts. When the embedding model fails, none: every row goes to the judge (the gate only says NO)."""
    def compute():
        return off_topic(embedder_fn().encode, [results[i].answer for i in rows],
                         [samples[i].reference for i in rows], cfg.judge_min_similarity)
    try:
        flags = await asyncio.wait_for(asyncio.to_thread(compute), timeout=max(0.0, deadline - time.monotonic()))
    except Exception as exc:
        log.warning("topic gate skipped for %d samples (the embedding model failed): %s", len(rows), exc)
        return set()
    gated = {i for i, off in zip(rows, flags) if off}
    if isinstance(judge, JudgeBase):  # test doubles that are not judges keep no counters
        judge.count_gated(len(gated))
    return gated


async def embedding_pass(samples, results, pending: list[int], cfg: RewardConfig, embedder_fn,
                         deadline: float) -> None:
    """The embedding reward of the pending samples; a value that is not finite, or any failure of the
    model, scores 0 and flags ``embedding_failed``."""
    if embedder_fn is None or not pending:
        return

    def compute():
        return embedder_fn().rewards([results[i].answer for i in pending],
                                     [samples[i].reference for i in pending],
                                     mode=cfg.embedding_mode, threshold=cfg.embedding_threshold)
    try:
        values, bad = await asyncio.wait_for(asyncio.to_thread(compute),
                                             timeout=max(0.0, deadline - time.monotonic()))
        values, bad = list(values), list(bad)
        if not (len(values) == len(bad) == len(pending)):
            raise RuntimeError(f"the embedder returned {len(values)} values for {len(pending)} pairs")
    except Exception as exc:
        log.warning("embedding reward failed for %d samples: %s", len(pending), exc)
        for i in pending:
            results[i].embedding_failed = True
        return
    for i, v, b in zip(pending, values, bad):
        v = float(v)
        ok = math.isfinite(v) and not b
        results[i].embedding, results[i].embedding_failed = (v if ok else 0.0), not ok


def add_totals(results: list[RewardResult], cfg: RewardConfig, functions, scores, ids: list) -> None:
    """The MediX-R1 total (0 with reward.medix off), then each plug-in's value with its weight; a plug-in
    that failed on a sample flags it like a failed judgement (reward/judge_failed_rate, the stop rule)."""
    for r in results:
        r.total = cfg.weights.total(judge=r.judge, embedding=r.embedding, modality=r.modality, format=r.format) \
            if cfg.medix else 0.0
    for got in scores:
        report_failures(got, ids)
        for r, value, error in zip(results, got.values, got.errors):
            r.functions[got.name] = value
            if error is not None:  # counted like a failed judgement (reward/judge_failed_rate, the stop rule)
                r.function_failed, r.judge_failed = True, True
                r.judge_error = f"reward function {got.name}: {error}"
    for r in results:
        add_functions(r, [(got.name, weight) for (_, _, weight), got in zip(functions, scores)])
