"""MediX-R1's composite reward and the asynchronous LLM-judge reward worker.

Total = content * (judge * J + embedding * E + modality * M) + format * F, by default
0.9 * (0.575 J + 0.375 E + 0.05 M) + 0.1 F (MediX-R1). Components:

- F (format) and M (modality): :mod:`medix_r1.rewards.parsing` (official rules, two parities);
- J (judge): an LLM says YES/NO on whether the answer matches the reference;
  :class:`JudgeClient` (any OpenAI-compatible server) or :class:`LocalJudge` (in process);
- E (embedding): cosine of sentence embeddings, thresholded at 0.8 or continuous.

Invalid answers (empty, one character, containing '__', ':' or '?') score J = E = 0 without a
judge call; an exact, case-sensitive match scores J = E = 1 without one. ``parity="official"``
reproduces the official code (loose YES parsing, whitespace removal around every '<', '>', '/');
the default ``"strict"`` needs a YES or NO reply and flags anything else as a failed judgement.

Usage::

    with RewardWorker(RewardConfig(judge="http", judge_url=URL, judge_model=NAME)) as worker:
        future = worker.submit(problems, responses, solutions)   # returns at once
        ...                                                       # overlap other work
        results = future.result()                                 # list[RewardResult]
"""
from .config import RewardConfig, RewardResult, RewardWeights
from .judge import JUDGE_PROMPT, PROMPT_VERSION, ChatReply, JudgeClient, JudgeVerdict, judge_messages, parse_verdict
from .parsing import MODALITY_TAGS, ParsedResponse, is_invalid_answer, parse_response, parse_solution, validate_solution
from .worker import RewardWorker, compute_rewards


def __getattr__(name):
    # LocalJudge imports transformers: only when asked for.
    if name == "LocalJudge":
        from .local_judge import LocalJudge
        return LocalJudge
    raise AttributeError(f"module 'medix_r1.rewards' has no attribute {name!r}")


__all__ = ["MODALITY_TAGS", "parse_response", "parse_solution", "validate_solution", "is_invalid_answer",
           "ParsedResponse", "RewardConfig", "RewardWeights", "RewardResult", "JudgeClient", "LocalJudge",
           "JudgeVerdict", "ChatReply", "RewardWorker", "compute_rewards", "judge_messages", "parse_verdict",
           "JUDGE_PROMPT", "PROMPT_VERSION"]
