"""Reward configuration and the per-sample result."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional

from .parsing import PARITIES

JUDGE_KINDS = ("local", "http", "none")
EMBEDDING_MODES = ("threshold", "continuous")


@dataclass
class RewardWeights:
    """Total = content * (judge*J + embedding*E + modality*M) + format*F (MediX-R1 defaults)."""
    content: float = 0.9
    judge: float = 0.575
    embedding: float = 0.375
    modality: float = 0.05
    format: float = 0.1

    def validate(self) -> None:
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                    or value < 0:
                raise ValueError(f"reward.weights.{name} must be a finite number >= 0, got {value!r}")

    def total(self, *, judge: float, embedding: float, modality: float, format: float) -> float:
        return self.content * (self.judge * judge + self.embedding * embedding + self.modality * modality) \
            + self.format * format


@dataclass
class RewardConfig:
    """Everything the composite reward and its judge need (the trainer's ``reward`` section)."""
    weights: RewardWeights = field(default_factory=RewardWeights)
    parity: str = "strict"                 # "strict" or "official" (see medix_r1.rewards)
    embedding_model: Optional[str] = None  # sentence-transformers folder/name; None = bundled MiniLM; "none" = off
    embedding_mode: str = "threshold"      # "threshold" (cos >= threshold -> 1) or "continuous" (cos clamped to [0, 1])
    embedding_threshold: float = 0.8
    embedding_batch_size: int = 64
    judge: str = "local"                   # "local" (in-process causal LM), "http" (OpenAI-compatible) or "none"
    judge_url: Optional[str] = None        # e.g. http://127.0.0.1:8000/v1 (judge="http")
    judge_model: Optional[str] = None      # served model name (http) or model folder (local; None = SmolLM2)
    judge_api_key_env: str = "MEDIX_JUDGE_API_KEY"
    judge_concurrency: int = 16
    judge_timeout_s: float = 30.0
    judge_max_retries: int = 3
    judge_cache_path: Optional[str] = None  # JSONL cache of judge replies (None = in memory only)
    deadline_s: float = 300.0              # a batch always returns within this many seconds
    max_response_chars: int = 20000        # longer responses are truncated before scoring

    def __post_init__(self) -> None:
        if isinstance(self.weights, dict):
            self.weights = RewardWeights(**self.weights)
        self.validate()

    def validate(self) -> None:
        if not isinstance(self.weights, RewardWeights):
            raise TypeError(f"reward.weights must be RewardWeights, got {type(self.weights).__name__}")
        self.weights.validate()
        _choice("reward.parity", self.parity, PARITIES)
        _choice("reward.embedding_mode", self.embedding_mode, EMBEDDING_MODES)
        _choice("reward.judge", self.judge, JUDGE_KINDS)
        _number("reward.embedding_threshold", self.embedding_threshold, -1.0, 1.0)
        _number("reward.judge_timeout_s", self.judge_timeout_s, 1e-3)
        _number("reward.deadline_s", self.deadline_s, 1e-3)
        for name in ("embedding_batch_size", "judge_concurrency", "max_response_chars"):
            _integer(f"reward.{name}", getattr(self, name), 1)
        _integer("reward.judge_max_retries", self.judge_max_retries, 0)
        if self.judge == "http" and not (self.judge_url and self.judge_model):
            raise ValueError("reward.judge='http' needs reward.judge_url (e.g. http://127.0.0.1:8000/v1) "
                             "and reward.judge_model (the served model name)")


def _choice(name, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def _number(name, value, low, high=math.inf) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (low <= value <= high):
        raise ValueError(f"{name} must be a number in [{low}, {high}], got {value!r}")


def _integer(name, value, low) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


@dataclass
class RewardResult:
    """Every reward component of one sample, the weighted total and the flags."""
    total: float = 0.0
    format: float = 0.0
    modality: float = 0.0
    judge: float = 0.0
    embedding: float = 0.0
    judge_failed: bool = False       # the judge gave no usable verdict (judge reward 0)
    embedding_failed: bool = False   # the embedding was non-finite or missed the deadline (reward 0)
    exact_match: bool = False        # answer == reference (case-sensitive): judge/embedding 1, no call
    invalid_answer: bool = False     # empty / 1 char / '__' / ':' / '?': judge/embedding 0, no call
    truncated: bool = False          # the response was longer than max_response_chars
    judge_reply: Optional[str] = None
    judge_error: Optional[str] = None
    answer: str = ""

    def to_dict(self) -> dict:
        return asdict(self)
