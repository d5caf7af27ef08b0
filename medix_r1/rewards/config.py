"""Reward configuration and the per-sample result."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from .parsing import PARITIES
from .plugins import check_functions

JUDGE_KINDS = ("local", "http", "none")
EMBEDDING_MODES = ("threshold", "continuous")


def _f(default, help: str):
    """A dataclass field with its --help text (printed by the trainer's --help)."""
    return field(default=default, metadata={"help": help})


@dataclass
class RewardWeights:
    """Total = content * (judge*J + embedding*E + modality*M) + format*F (MediX-R1 defaults)."""
    content: float = _f(0.9, "weight of the content part (judge, embedding and modality rewards) in the total")
    judge: float = _f(0.575, "weight of the LLM-judge reward J inside the content part")
    embedding: float = _f(0.375, "weight of the embedding (semantic similarity) reward E inside the content part")
    modality: float = _f(0.05, "weight of the modality-tag reward M inside the content part")
    format: float = _f(0.1, "weight of the format reward F (<thinking>...</thinking> <answer>...</answer>) "
                            "in the total")

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
    weights: RewardWeights = field(default_factory=RewardWeights, metadata={
        "help": "weights of the total: content * (judge*J + embedding*E + modality*M) + format*F"})
    parity: str = _f("strict", "'strict' (tag-only whitespace removal, YES/NO replies only, anything else is a "
                               "failed judgement) or 'official' (the MediX-R1 code's rules: whitespace removed "
                               "around every '<', '>', '/'; any reply containing YES is correct)")
    embedding_model: str | None = _f(None, "sentence-transformers folder or name for the embedding reward; "
                                              "None = the bundled all-MiniLM-L6-v2; 'none' = embedding reward off")
    embedding_mode: str = _f("threshold", "'threshold' (1 when cosine >= embedding_threshold, else 0) or "
                                          "'continuous' (cosine clamped to [0, 1])")
    embedding_threshold: float = _f(0.8, "cosine similarity at or above which the embedding reward is 1 "
                                         "(threshold mode)")
    embedding_batch_size: int = _f(64, "sentences per batch when encoding answers and references")
    judge: str = _f("local", "judge backend: 'local' (causal LM in this process, SmolLM2 by default), 'http' "
                             "(an OpenAI-compatible server, e.g. vLLM) or 'none' (judge reward 0 except exact "
                             "matches)")
    judge_url: str | None = _f(None, "base URL of the OpenAI-compatible judge server, e.g. "
                                        "http://127.0.0.1:8000/v1 (judge='http')")
    judge_model: str | None = _f(None, "served model name (judge='http') or model folder (judge='local'; "
                                          "None = SmolLM2-135M-Instruct)")
    judge_threshold: float = _f(-1.22, "local judge only: the reply is YES when log P(YES) - log P(NO) of its "
                                       "first token is above this margin (-1.22: fitted for the bundled SmolLM2 "
                                       "with the decision gate, benchmarks/results/judge_pairs_cpu.md)")
    judge_decision_gate: bool = _f(True, "strict parity only: NO without asking the judge when answer and reference "
                                          "both open with a yes/no/maybe decision and the decisions differ, or when "
                                          "the answer is the reference's words negated or shuffled (rewards.decision)")
    judge_min_similarity: float = _f(0.0, "strict parity only, needs the embedding reward: NO without asking the "
                                          "judge when the cosine similarity of answer and reference (embedding "
                                          "model, decisions removed) is below this; 0 = off (the topic gate, "
                                          "medix_r1/rewards/decision.py)")
    judge_api_key_env: str = _f("MEDIX_JUDGE_API_KEY", "environment variable holding the judge server's API key "
                                                       "(unset: 'EMPTY', which a local vLLM server accepts)")
    judge_concurrency: int = _f(16, "judge requests in flight at once (judge='http')")
    judge_timeout_s: float = _f(30.0, "seconds one judge request may take before it is retried")
    judge_max_retries: int = _f(3, "retries per judge request after a timeout, a 5xx, a 429 or a dropped "
                                   "connection (4xx and malformed replies are not retried)")
    judge_cache_path: str | None = _f(None, "JSONL file caching judge replies across runs (None = in memory "
                                               "only)")
    deadline_s: float = _f(300.0, "a batch always returns within this many seconds; judgements not done by then "
                                  "score 0 and are flagged judge_failed")
    max_response_chars: int = _f(20000, "responses longer than this many characters are truncated before "
                                         "scoring (flag 'truncated')")
    functions: list[str] = field(default_factory=list, metadata={
        "help": "plug-in reward functions, import paths 'pkg.module:fn' or 'path/to/file.py:fn' with TRL's "
                "signature fn(prompts, completions, **columns) -> one float or None per completion (sync or "
                "async); added to the total with function_weights"})
    function_weights: list[float] = field(default_factory=list, metadata={
        "help": "one weight per reward.functions entry ([] = 1.0 each)"})
    medix: bool = _f(True, "true: total = the MediX composite + the weighted functions; false: the weighted "
                           "functions only (no judge or embedding model is loaded)")

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
        _number("reward.judge_threshold", self.judge_threshold, -math.inf)
        _number("reward.judge_timeout_s", self.judge_timeout_s, 1e-3)
        _number("reward.deadline_s", self.deadline_s, 1e-3)
        if not isinstance(self.judge_decision_gate, bool):
            raise ValueError(f"reward.judge_decision_gate must be true or false, got {self.judge_decision_gate!r}")
        _number("reward.judge_min_similarity", self.judge_min_similarity, 0.0, 1.0)
        if self.judge_min_similarity > 0 and self.parity != "strict":
            raise ValueError("reward.judge_min_similarity (the topic gate) works with reward.parity='strict' only; "
                             f"set it to 0 with parity {self.parity!r}")
        if self.judge_min_similarity > 0 and self.medix and self.judge != "none" \
                and isinstance(self.embedding_model, str) and self.embedding_model.strip().lower() == "none":
            raise ValueError("reward.judge_min_similarity (the topic gate) needs the embedding model; "
                             "reward.embedding_model is 'none' (also set reward.judge_min_similarity=0, or name an "
                             "embedding model)")
        for name in ("embedding_batch_size", "judge_concurrency", "max_response_chars"):
            _integer(f"reward.{name}", getattr(self, name), 1)
        _integer("reward.judge_max_retries", self.judge_max_retries, 0)
        if self.judge_url and not (isinstance(self.judge_url, str) and self.judge_url.startswith(("http://", "https://"))):
            raise ValueError(f"reward.judge_url must be an http(s) URL such as http://127.0.0.1:8000/v1, "
                             f"got {self.judge_url!r}")
        check_functions(self.functions, self.function_weights, self.medix)
        if self.judge == "http" and not (self.judge_url and self.judge_model):
            raise ValueError("reward.judge='http' needs reward.judge_url (e.g. http://127.0.0.1:8000/v1) "
                             "and reward.judge_model (the served model name)")


def _choice(name, value, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def _number(name, value, low, high=math.inf) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not (low <= value <= high):
        raise ValueError(f"{name} must be a finite number in [{low}, {high}], got {value!r}")


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
    judge_reply: str | None = None
    judge_error: str | None = None
    judge_answer_cut: int = 0        # characters of the answer's end the judge did not see (its prompt budget)
    answer: str = ""
    functions: dict = field(default_factory=dict)  # reward.functions: name -> value (0 where it failed)
    function_failed: bool = False    # a plug-in function failed on this sample (also counted in judge_failed)

    def to_dict(self) -> dict:
        return asdict(self)
