"""The config's value checks, table-driven: every choice field against its list (taken from the
modules that implement the choices), every number against its range, NaN / inf nowhere, and the
few rules that tie fields together. :func:`validate` raises ValueError naming the field;
``medix_r1.config.load_config`` calls it before anything loads."""
from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math

from medix_kernels.group_advantages import MODES as ADVANTAGE_MODES
from medix_kernels.group_advantages import SCALES as ADVANTAGE_SCALES
from medix_kernels.loss_config import (
    AGGREGATIONS,
    KL_ESTIMATORS,
    LOSS_TYPE_AGGREGATION,
    LOSS_TYPES,
    ROLLOUT_CORRECTIONS,
)
from medix_r1.data.records import FIELDS as RECORD_FIELDS
from medix_r1.data.templates import TEMPLATES as PROMPT_TEMPLATES
from medix_r1.rewards import MODALITY_TAGS
from medix_r1.rollout import ENGINES as ROLLOUT_ENGINES
from medix_r1.rollout import SAMPLING_KNOBS
from medix_r1.vision.images import RGB_CONVERSIONS

LOSS_IMPLS = ("fused", "plain")
OPTIMIZERS = ("adamw", "adamw_bf16")

CHOICES = {
    "model.dtype": ("float32", "bfloat16"),
    "model.autocast": ("", "bfloat16"),
    "model.attn_implementation": ("sdpa", "eager", "flash_attention_2"),
    "data.on_malformed": ("fail", "skip"),
    "rollout.engine": tuple(ROLLOUT_ENGINES),
    "rollout.server_sync_backend": ("auto", "gloo", "nccl"),
    "rollout.vllm_server_logprobs_mode": ("raw_logprobs", "processed_logprobs"),
    "algorithm.advantage_mode": tuple(ADVANTAGE_MODES),
    "algorithm.advantage_scale": tuple(ADVANTAGE_SCALES),
    "loss.impl": LOSS_IMPLS,
    "loss.loss_type": LOSS_TYPES,
    "loss.kl": KL_ESTIMATORS,
    "loss.aggregation": ("auto",) + AGGREGATIONS,
    "loss.rollout_correction": ROLLOUT_CORRECTIONS,
    "optim.schedule": ("constant", "linear", "cosine"),
    "optim.optimizer": OPTIMIZERS,
    "data.prompt_template": tuple(PROMPT_TEMPLATES),
    "data.overlong": ("cut", "filter"),
    "data.overlong_measure": ("tokens", "chars"),
    "vision.on_bad_image": ("skip", "fail"),
    "vision.processor": ("auto", "transformers", "project"),
    "vision.rgb_conversion": tuple(RGB_CONVERSIONS),
}
RANGES = {
    "data.context_chars": (0, None),
    "data.max_prompt_tokens": (8, None),
    "data.prompts_per_step": (1, None),
    "data.max_records": (0, None),
    "data.val_max_records": (0, None),
    "rollout.val_n": (1, None),
    "rollout.val_temperature": (0.0, None, True),
    "rollout.val_top_p": (0.0, 1.0, True),
    "algorithm.refill_chunk": (0, None),
    "rollout.server_timeout_s": (0.0, None, True),
    "rollout.server_sync_port": (0, 65535),
    "rollout.server_sync_bucket_mb": (0.0, None),
    "rollout.n": (2, None),
    "rollout.max_tokens": (1, None),
    "rollout.temperature": (0.0, None, True),
    "rollout.top_p": (0.0, 1.0, True),
    "rollout.top_k": (0, None),
    "rollout.min_p": (0.0, 1.0),
    "rollout.repetition_penalty": (0.0, None, True),
    "model.lora.r": (0, None),
    "model.lora.alpha": (0.0, None, True),
    "model.lora.dropout": (0.0, 1.0, False, True),
    "loss.entropy_coef": (0.0, None),
    "reward.overlong_buffer": (0, None),
    "reward.overlong_penalty": (0.0, None),
    "rollout.kv_cache_gb": (0.0, None, True),
    "rollout.hf_batch_size": (1, None),
    "algorithm.advantage_eps": (0.0, None),
    "algorithm.dynamic_sampling_low": (0.0, 1.0),
    "algorithm.dynamic_sampling_high": (0.0, 1.0),
    "algorithm.max_refill_tries": (0, None),
    "loss.clip_low": (0.0, 1.0, False, True),
    "loss.clip_high": (0.0, None),
    "loss.beta": (0.0, None),
    "loss.chunk_size": (0, None),
    "loss.rollout_is_cap": (1.0, None, True),
    "loss.rollout_is_lower": (0.0, 1.0, False, True),
    "optim.lr": (0.0, 1.0, True),
    "optim.weight_decay": (0.0, None),
    "optim.beta1": (0.0, 1.0),
    "optim.beta2": (0.0, 1.0),
    "optim.grad_clip": (0.0, None),
    "optim.warmup_steps": (0, None),
    "optim.min_lr_ratio": (0.0, 1.0),
    "optim.updates_per_step": (1, None),
    "optim.mini_batch_size": (0, None),
    "optim.micro_batch_size": (1, None),
    "train.max_steps": (1, None),
    "train.save_every": (0, None),
    "train.keep_last": (1, None),
    "train.eval_every": (0, None),
    "train.log_completions_every": (0, None),
    "train.max_nan_steps": (1, None),
    "train.judge_failure_threshold": (0.0, 1.0),
    "train.judge_failure_window": (1, None),
    "vision.min_pixels": (0, None),
    "vision.max_pixels": (0, None),
    "vision.max_decode_pixels": (1, None),
    "dist.timeout_min": (0.0, None, True),
    "dist.full_model_max_gb": (0.0, None),
}
# why a bound is what it is, where the number alone would puzzle
REASONS = {
    "rollout.n": "the samples of a prompt form its group, and with one sample every group advantage is 0",
    "loss.clip_low": "the ratio is clipped below at 1 - clip_low, which must stay positive",
    "loss.rollout_is_cap": "a weight capped at or below 1 could only shrink every token's update",
    "loss.rollout_is_lower": "a lower bound of 1 or more would leave no ratio below it",
    "model.lora.r": "the rank of the adapters; 0 turns LoRA off",
}
# a field whose value needs a package that is not installed: (field, value) -> (package, extra)
NEEDS_PACKAGE = {("model.attn_implementation", "flash_attention_2"): ("flash_attn", "flash")}


def _get(cfg, key: str):
    for name in key.split("."):
        cfg = getattr(cfg, name)
    return cfg


def _choice(value, choices, key):
    if value not in choices:
        close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        raise ValueError(f"{key} must be one of {list(choices)}, got {value!r}{hint}")


def _range(value, key, lo=None, hi=None, lo_open=False, hi_open=False):
    bad_lo = lo is not None and (value < lo or (lo_open and value == lo))
    bad_hi = hi is not None and (value > hi or (hi_open and value == hi))
    if bad_lo or bad_hi:
        lo_txt = "" if lo is None else f"{'>' if lo_open else '>='} {lo}"
        hi_txt = "" if hi is None else f"{'<' if hi_open else '<='} {hi}"
        why = f" ({REASONS[key]})" if key in REASONS else ""
        raise ValueError(f"{key} must be {' and '.join(t for t in (lo_txt, hi_txt) if t)}, got {value!r}{why}")


def _finite_floats(obj, prefix: str) -> None:
    """Every float field of the tree is a finite number: NaN passes every comparison, so a range
    check alone would accept it (and ``lr = nan`` would only fail after the models load)."""
    for f in dataclasses.fields(obj):
        value, key = getattr(obj, f.name), f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            _finite_floats(value, key + ".")
        elif isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{key} must be a finite number, got {value!r}")


def validate(cfg) -> None:
    """Range and choice checks across the tree; ValueError naming the field."""
    _finite_floats(cfg, "")
    for key, choices in CHOICES.items():
        _choice(_get(cfg, key), choices, key)
    for key, bounds in RANGES.items():
        _range(_get(cfg, key), key, *bounds)
    d, r, a, l, v = cfg.data, cfg.rollout, cfg.algorithm, cfg.loss, cfg.vision
    if bool(d.example_question) != bool(d.example_answer):
        raise ValueError("data.example_question and data.example_answer go together: set both or neither")
    for src, dst in d.columns.items():
        _choice(dst, RECORD_FIELDS, f"data.columns.{src}")
    doubled = sorted({v for v in d.columns.values() if list(d.columns.values()).count(v) > 1})
    if doubled:
        raise ValueError(f"data.columns maps several columns to {doubled}")
    if d.default_modality:
        _choice(d.default_modality, MODALITY_TAGS, "data.default_modality")
    if r.engine in ("server", "vllm-server") and not r.server_url.startswith(("http://", "https://")):
        server = "`vllm serve MODEL --weight-transfer-config ...`" if r.engine == "vllm-server" else \
            "the rollout server, `python -m medix_r1.rollout.server --model DIR --port PORT`"
        raise ValueError(f"rollout.engine={r.engine} needs rollout.server_url=http://HOST:PORT ({server}), "
                         f"got {r.server_url!r}")
    if (cfg.train.eval_every or cfg.train.eval_before_train) and not d.val:
        raise ValueError("train.eval_every / train.eval_before_train validate on data.val, which is not set: "
                         "--set data.val=hub:NAME (or a local file), or turn validation off")
    if d.overlong_measure == "chars" and d.overlong != "filter":
        raise ValueError("data.overlong_measure=chars is the official filter's measure: set data.overlong=filter "
                         "(a prompt is never cut by characters)")
    if cfg.optim.optimizer == "adamw_bf16" and cfg.model.dtype != "bfloat16":
        raise ValueError("optim.optimizer=adamw_bf16 trains bfloat16 weights: set model.dtype=bfloat16")
    if r.max_model_len < d.max_prompt_tokens + r.max_tokens:
        raise ValueError(f"rollout.max_model_len ({r.max_model_len}) must be >= data.max_prompt_tokens "
                         f"({d.max_prompt_tokens}) + rollout.max_tokens ({r.max_tokens})")
    if a.dynamic_sampling_low >= a.dynamic_sampling_high:
        raise ValueError("algorithm.dynamic_sampling_low must be < algorithm.dynamic_sampling_high")
    if l.loss_type == "dr_grpo" and l.aggregation not in ("auto", LOSS_TYPE_AGGREGATION["dr_grpo"]):
        raise ValueError(f"loss.aggregation={l.aggregation} with loss.loss_type=dr_grpo: Dr. GRPO is defined by its "
                         "constant normaliser (seq-mean-token-sum-norm; 'auto' selects it); for that aggregation "
                         "with GRPO's name use loss.loss_type=grpo")
    if l.rollout_correction != "none" and r.engine == "vllm-server" and \
            r.vllm_server_logprobs_mode != "processed_logprobs":
        raise ValueError(f"loss.rollout_correction={l.rollout_correction} needs the engine's log-probs of the sampling "
                         "distribution (after temperature), which rollout.engine=vllm-server returns only when `vllm "
                         "serve` runs with --logprobs-mode processed_logprobs: start it so and set "
                         "rollout.vllm_server_logprobs_mode=processed_logprobs, or set loss.rollout_correction=none")
    if l.dual_clip != 0 and l.dual_clip <= 1:
        raise ValueError(f"loss.dual_clip must be 0 (off) or > 1, got {l.dual_clip}")
    if v.min_pixels and v.max_pixels and v.min_pixels > v.max_pixels:
        raise ValueError(f"vision.min_pixels ({v.min_pixels}) must be <= vision.max_pixels ({v.max_pixels})")
    if not cfg.train.output_dir:
        raise ValueError("train.output_dir must not be empty")
    _check_packages(cfg)
    _check_lora(cfg.model.lora)
    _check_sampling(r)
    if cfg.reward.overlong_buffer > r.max_tokens:
        raise ValueError(f"reward.overlong_buffer ({cfg.reward.overlong_buffer}) must be <= rollout.max_tokens "
                         f"({r.max_tokens}): the penalty ramps up over the last overlong_buffer tokens")
    # The reward section validates itself where it can (its own __post_init__ / validate()).
    check = getattr(cfg.reward, "validate", None)
    if callable(check):
        check()
    elif hasattr(cfg.reward, "__post_init__"):
        cfg.reward.__post_init__()


def _check_packages(cfg) -> None:
    for (key, value), (package, extra) in NEEDS_PACKAGE.items():
        if _get(cfg, key) == value and importlib.util.find_spec(package) is None:
            raise ValueError(f"{key}={value} needs the {package.replace('_', '-')} package, which is not "
                             f"installed: pip install 'medix[{extra}]' (or pip install "
                             f"{package.replace('_', '-')}), or use sdpa")


def _check_lora(lora) -> None:
    """LoRA is on when model.lora.r >= 1; its other fields set while r is 0 are a mistake, not 'off'."""
    targets = lora.target_modules
    if isinstance(targets, str):
        if not targets.strip():
            raise ValueError("model.lora.target_modules must be 'all-linear', a module-name pattern or a list of "
                             "module names, got ''")
    elif not targets or not all(isinstance(t, str) and t.strip() for t in targets):
        raise ValueError(f"model.lora.target_modules must be a non-empty list of module names, got {targets!r}")
    if lora.r > 0 and importlib.util.find_spec("peft") is None:
        raise ValueError("model.lora.r > 0 trains LoRA adapters through the peft package, which is not installed: "
                         "pip install 'medix[lora]' (or pip install peft)")
    if lora.r == 0:
        default = type(lora)()
        changed = [f.name for f in dataclasses.fields(lora) if getattr(lora, f.name) != getattr(default, f.name)]
        if changed:
            raise ValueError(f"model.lora.r must be >= 1 to train LoRA adapters (model.lora.{changed[0]} is set "
                             f"but model.lora.r is 0, which means full fine-tuning); e.g. --set model.lora.r=16")


def _check_sampling(r) -> None:
    """A sampling knob away from its neutral value must be one the engine honours."""
    neutral = type(r)()
    for knob in ("top_k", "min_p", "repetition_penalty"):
        if getattr(r, knob) != getattr(neutral, knob) and knob not in SAMPLING_KNOBS[r.engine]:
            raise ValueError(f"rollout.{knob}={getattr(r, knob)}: rollout.engine={r.engine} cannot sample with it; "
                             f"leave rollout.{knob} at {getattr(neutral, knob)} or use an engine of "
                             f"{sorted(e for e, k in SAMPLING_KNOBS.items() if knob in k)}")
