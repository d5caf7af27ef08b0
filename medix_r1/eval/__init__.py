"""Unified reference-based LLM-as-judge evaluation (``python -m medix_r1.eval``).

Modules: ``benchmarks`` (registry of the 17 MediX-R1 benchmarks + the bundled PubMedQA test
split, loaders into one record format), ``generation`` (vLLM / transformers / OpenAI endpoint),
``judging`` (prompt, strict JSON parsing, majority vote), ``store`` (append-only JSON lines with
resume), ``runner`` (one run), ``summary`` (bootstrap CIs, Markdown/CSV), ``charts`` (PNG),
``compare`` (runs side by side), ``cli``; ``studies``: the studies of a training run
(``python -m medix_r1.eval.studies``).
"""
from .benchmarks import PAPER_BENCHMARKS, REGISTRY, load_benchmark
from .judging import majority_vote, parse_judge_reply
from .runner import run_eval

__all__ = ["PAPER_BENCHMARKS", "REGISTRY", "load_benchmark", "majority_vote",
           "parse_judge_reply", "run_eval"]
