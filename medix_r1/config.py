"""The trainer's configuration: one dataclass tree, loaded from a YAML recipe plus ``--set`` overrides.

``load_config(recipe, overrides)`` builds a :class:`TrainConfig` from the defaults (the embedded CPU
recipe's values), then the recipe's YAML mapping, then ``key=value`` overrides with dotted keys
(``loss.beta=0.01``). Every value is type-checked against the field's annotation and every section
is range-checked by :func:`validate`; an unknown key is an error that suggests the closest name.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from medix_kernels.group_advantages import MODES as ADVANTAGE_MODES
from medix_kernels.group_advantages import SCALES as ADVANTAGE_SCALES
from medix_kernels.loss_config import AGGREGATIONS, KL_ESTIMATORS, LOSS_TYPES
from medix_r1.data.records import FIELDS as RECORD_FIELDS
from medix_r1.data.templates import TEMPLATES as PROMPT_TEMPLATES
from medix_r1.rewards import MODALITY_TAGS, RewardConfig
from medix_r1.rollout import ENGINES as ROLLOUT_ENGINES
from medix_r1.utils import typed_config
from medix_r1.utils.typed_config import apply_mapping, parse_override, set_value

LOSS_IMPLS = ("fused", "plain")

RECIPES_DIR = Path(__file__).parent / "recipes"
DEFAULT_RECIPE = "cpu_smollm2"
# Former recipe names -> the official recipes that replaced them (same backbones).
RECIPE_ALIASES = {"qwen3vl_2b": "medix_r1_2b_dapo", "qwen3vl_8b": "medix_r1_8b_dapo", "qwen25vl_7b": "medix_r1_7b"}

SYSTEM_PROMPT = (
    "You are a medical expert. Answer in exactly this format: first the image modality tag "
    "(for a question without an image the tag is <OTHER>), then your step-by-step reasoning "
    "inside <thinking> </thinking>, then a short final answer inside <answer> </answer>."
)


def _f(default, help: str, **kw):
    """A dataclass field with its --help text."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class ModelSection:
    policy: str = _f("smollm2", "policy model: 'smollm2' (bundled SmolLM2-135M-Instruct) or a HF model folder")
    reference: str = _f("", "frozen reference model for the KL term ('' = same weights as the policy at step 0); "
                        "loaded only when loss.beta > 0")
    dtype: str = _f("float32", "training dtype: float32 or bfloat16 (float32 on CPU)")
    gradient_checkpointing: bool = _f(False, "recompute activations in the backward pass (saves memory)")
    share_prompt_forward: bool = _f(True, "run each distinct prompt of a micro-batch once and its responses on "
                                    "its KV cache (same values, fewer FLOPs when micro_batch_size covers several "
                                    "samples of a prompt; text-only models, off with gradient_checkpointing)")


@dataclass
class DataSection:
    train: str = _f("pubmedqa", "training records: 'pubmedqa' (bundled), a local .json/.jsonl/.parquet file "
                    "or folder, or 'hub:NAME' (needs network)")
    split: str = _f("train", "split name for hub datasets")
    subset: str = _f("", "configuration (subset) name of a hub dataset ('' = its default)")
    columns: dict[str, str] = _f({}, "rename the data's columns to the record's fields, {dataset name: field} "
                                 "with field one of problem, solution, images, id; e.g. {question: problem, "
                                 "answer: solution}")
    default_modality: str = _f("<OTHER>", "modality tag put before a solution that has none ('' = such a "
                               "record is malformed)")
    val: str = _f("", "validation records (same forms as data.train, e.g. hub:MBZUAI/medix-rl-data); needed by "
                  "train.eval_every / train.eval_before_train ('' = no validation)")
    val_split: str = _f("test", "split name of data.val for hub datasets")
    val_max_records: int = _f(0, "validate on the first N records of data.val (0 = all)")
    image_column: str = _f("", "the records' image column ('' = 'images', else 'image' as in MBZUAI/medix-rl-data)")
    prompt_template: str = _f("project", "the user turn: 'project' (data.system_prompt + the problem) or "
                              "'official' (MediX-R1's medical_format.jinja, no system turn; see data/templates.py)")
    overlong: str = _f("cut", "a prompt over data.max_prompt_tokens: 'cut' (text prompts lose their middle) or "
                       "'filter' (the record is skipped and counted in data/filtered_overlong, as the official "
                       "filter_overlong_prompts)")
    on_malformed: str = _f("fail", "a malformed record: 'fail' (error naming file:line) or 'skip' (count and go on)")
    context_chars: int = _f(600, "keep the first N characters of a record's context (records with "
                            "'question' and 'contexts' fields); 0 keeps the whole problem")
    max_prompt_tokens: int = _f(384, "prompts longer than this many tokens are cut in the middle")
    prompts_per_step: int = _f(5, "prompts sampled per step (each gets rollout.n responses)")
    max_records: int = _f(0, "use only the first N records (0 = all)")
    system_prompt: str = _f(SYSTEM_PROMPT, "system prompt asking for the MediX-R1 response format")
    example_question: str = _f("", "a demonstration question shown (with example_answer) as one user/assistant "
                               "exchange before each record ('' = none; the CPU recipe sets one)")
    example_answer: str = _f("", "the demonstration answer, written in the MediX-R1 response format")


@dataclass
class RolloutSection:
    engine: str = _f("vllm", "rollout engine: 'vllm' (in-process, in-place weight sync), 'hf' (transformers "
                     "generate), 'server' (a separate `python -m medix_r1.rollout.server`, see "
                     "docs/rollout_server.md) or 'vllm-server' (`vllm serve` with vLLM's weight-transfer API, "
                     "NCCL on GPUs; untested on a real GPU)")
    n: int = _f(4, "responses per prompt (the group size)")
    max_tokens: int = _f(112, "max new tokens per response")
    temperature: float = _f(1.0, "sampling temperature (also used by the loss' log-probs)")
    top_p: float = _f(1.0, "nucleus sampling top-p")
    kv_cache_gb: float = _f(1.0, "vLLM KV-cache size in GiB")
    max_model_len: int = _f(640, "vLLM max sequence length (prompt + response)")
    gpu_memory_utilization: float = _f(0.5, "vLLM GPU memory share (GPU only; ignored on CPU)")
    val_n: int = _f(1, "validation: responses per prompt")
    val_temperature: float = _f(0.6, "validation: sampling temperature")
    val_top_p: float = _f(0.95, "validation: nucleus sampling top-p")
    server_url: str = _f("", "engine=server: the rollout server's base URL, e.g. http://127.0.0.1:8100")
    server_timeout_s: float = _f(600.0, "engine=server: HTTP timeout of one generate / weight update, and the "
                                 "weight-sync group's timeout")
    server_sync_backend: str = _f("auto", "engine=server: weight-sync backend: auto (nccl for CUDA weights, else "
                                  "gloo), gloo or nccl")
    server_sync_host: str = _f("", "engine=server: the trainer's address as the server reaches it ('' = this "
                               "machine's address on the route to the server)")
    server_sync_port: int = _f(0, "engine=server: port of the trainer's weight-sync store (0 = a free one)")
    server_sync_bucket_mb: float = _f(0.0, "engine=server: pack same-dtype tensors into broadcasts of up to this "
                                      "many MiB (0 = one broadcast per parameter)")


@dataclass
class AlgorithmSection:
    advantage_mode: str = _f("grpo", "group advantage: grpo, dr_grpo or rloo")
    advantage_scale: str = _f("group", "grpo scaling: group, batch or none")
    advantage_eps: float = _f(1e-6, "added to the group std")
    dynamic_sampling: bool = _f(False, "DAPO: drop groups with mean reward <= low or >= high (or all equal) "
                                "and refill the batch with more prompts")
    dynamic_sampling_low: float = _f(0.01, "DAPO: groups with mean <= this are dropped")
    dynamic_sampling_high: float = _f(0.99, "DAPO: groups with mean >= this are dropped")
    max_refill_tries: int = _f(3, "DAPO: extra rollout rounds to refill the batch before training on what is kept")
    refill_chunk: int = _f(0, "DAPO: prompts rolled out per round (0 = as many as are still missing); the official "
                           "scripts roll out 128 at a time and keep the first prompts_per_step kept groups")
    drop_equal_groups: bool = _f(True, "DAPO: also drop groups whose rewards are all equal (false: only the mean "
                                 "decides, as the official online filtering)")


@dataclass
class LossSection:
    impl: str = _f("fused", "'fused' (fused_linear_grpo_loss from the last hidden state and lm_head) or "
                   "'plain' (grpo_loss on full logits)")
    loss_type: str = _f("grpo", "grpo, dapo, dr_grpo, gspo or cispo")
    clip_low: float = _f(0.2, "lower clip range of the ratio")
    clip_high: float = _f(0.2, "upper clip range of the ratio")
    dual_clip: float = _f(3.0, "dual-clip constant c for negative advantages (0 = off)")
    kl: str = _f("k3", "KL estimator: k1, k2 or k3")
    beta: float = _f(0.0, "KL coefficient (0 = no KL, the reference model is not loaded)")
    aggregation: str = _f("token-mean", "token-mean, seq-mean-token-mean, seq-mean-token-sum or "
                          "seq-mean-token-sum-norm")
    chunk_size: int = _f(0, "fused loss: rows per vocabulary chunk (0 = the kernel's default)")


OPTIMIZERS = ("adamw", "adamw_bf16")


@dataclass
class OptimSection:
    optimizer: str = _f("adamw", "'adamw' (torch AdamW, states in the parameters' dtype) or 'adamw_bf16' "
                        "(medix_r1.train.optim.BF16AdamW: moments in bfloat16 and Kahan-compensated bf16 "
                        "updates, the official 'adamw_bf16' strategy for bf16 weights)")
    lr: float = _f(2e-5, "AdamW learning rate")
    weight_decay: float = _f(0.01, "AdamW weight decay")
    beta1: float = _f(0.9, "AdamW beta1")
    beta2: float = _f(0.999, "AdamW beta2")
    grad_clip: float = _f(1.0, "max global grad norm (0 = off)")
    schedule: str = _f("constant", "LR schedule: constant, linear or cosine (after warm-up)")
    warmup_steps: int = _f(0, "linear warm-up steps")
    min_lr_ratio: float = _f(0.1, "linear/cosine: final LR as a fraction of lr")
    updates_per_step: int = _f(1, "optimizer epochs over each step's rollouts (1 = on-policy)")
    mini_batch_size: int = _f(0, "sequences per optimizer step (0 = the whole step's batch)")
    micro_batch_size: int = _f(4, "sequences per forward/backward (gradient accumulation)")


@dataclass
class TrainSection:
    max_steps: int = _f(30, "training steps (a step = one batch of rollouts)")
    seed: int = _f(0, "seed of the data order, sampling and initialisation")
    output_dir: str = _f("runs/medix_cpu", "checkpoints, metrics.jsonl, TensorBoard logs and the plot go here")
    save_every: int = _f(10, "checkpoint every N steps (0 = only at the end)")
    keep_last: int = _f(2, "keep the last K checkpoints")
    eval_every: int = _f(0, "validate on data.val every N steps (rewards logged under val/; 0 = off)")
    eval_before_train: bool = _f(False, "validate on data.val once before the first step (logged as step 0)")
    max_nan_steps: int = _f(3, "stop after this many consecutive steps with a NaN/inf loss")
    judge_failure_threshold: float = _f(0.5, "stop when the judge failure rate over the window exceeds this")
    judge_failure_window: int = _f(5, "steps in the judge failure-rate window")
    tensorboard: bool = _f(True, "write TensorBoard event files (false drops 'tensorboard' from report_to)")
    report_to: str | list[str] = _f("tensorboard", "trackers: tensorboard, wandb, mlflow, trackio, a list of them "
                                    "or 'none'; each gets the resolved config, every step's metrics and the "
                                    "completions tables")
    log_completions_every: int = _f(10, "every N steps, a table of prompts, completions and reward components "
                                    "to the trackers (0 = never)")
    plot: bool = _f(True, "write rewards.png at the end")
    progress: bool = _f(True, "show the tqdm progress bar")


@dataclass
class VisionSection:
    """Vision-language policies (Qwen2.5-VL / Qwen3-VL); ignored for a text-only policy."""
    freeze_tower: bool = _f(False, "keep the vision tower (and its merger) frozen; false trains it with the "
                            "language model (verl's default)")
    on_bad_image: str = _f("skip", "a record whose image is missing, corrupt or unusable: 'skip' (count it, "
                           "sample another record) or 'fail' (stop with an error naming the record)")
    check_files_at_start: bool = _f(True, "stat every image path before training (decoding errors are "
                                    "still found when a record is first sampled)")
    processor: str = _f("auto", "image preprocessing: 'auto' (transformers' image processor of the model "
                        "folder when it loads, else the project's), 'transformers' or 'project'")
    min_pixels: int = _f(0, "min pixels of an image after resizing to the patch grid (0 = model default)")
    max_pixels: int = _f(0, "max pixels of an image after resizing (0 = model default, 1280 merged tokens)")
    max_decode_pixels: int = _f(4096 * 4096, "larger images are downscaled right after decoding")


@dataclass
class DistSection:
    """torchrun / FSDP2 runs (docs/distributed.md); ignored by a single process started without torchrun."""
    timeout_min: float = _f(60.0, "minutes a collective waits for the slowest rank before the run fails (one "
                            "rank's rollouts or judge calls may take long)")
    full_model_max_gb: float = _f(4.0, "sharded checkpoints also write a consolidated HF model/ folder (gathered "
                                  "on rank 0's CPU) when the policy's fp32 size is at most this many GiB "
                                  "(0 = never; the dcp/ folder always holds the weights)")


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    rollout: RolloutSection = field(default_factory=RolloutSection)
    algorithm: AlgorithmSection = field(default_factory=AlgorithmSection)
    loss: LossSection = field(default_factory=LossSection)
    optim: OptimSection = field(default_factory=OptimSection)
    reward: RewardConfig = field(default_factory=RewardConfig)
    train: TrainSection = field(default_factory=TrainSection)
    vision: VisionSection = field(default_factory=VisionSection)
    dist: DistSection = field(default_factory=DistSection)


def resolve_recipe(recipe: str) -> Path:
    """A recipe NAME in medix_r1/recipes/ (or a former name in RECIPE_ALIASES) or a path to a YAML file."""
    path = Path(recipe)
    if path.suffix in (".yaml", ".yml") and path.is_file():
        return path
    named = RECIPES_DIR / f"{RECIPE_ALIASES.get(recipe, recipe)}.yaml"
    if named.is_file():
        return named
    names = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))
    close = difflib.get_close_matches(recipe, names, n=1)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    raise ValueError(f"recipe {recipe!r} is neither a YAML file nor one of {names}{hint}")


def load_config(recipe: str | None = DEFAULT_RECIPE, overrides: list[str] | tuple = ()) -> TrainConfig:
    """Defaults, then the recipe's YAML, then ``key=value`` overrides; validated."""
    cfg = TrainConfig()
    if recipe:
        path = resolve_recipe(recipe)
        try:
            mapping = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ValueError(f"recipe {path}: invalid YAML: {e}") from None
        try:
            apply_mapping(cfg, mapping)
        except (TypeError, ValueError) as e:
            raise type(e)(f"recipe {path}: {e}") from None
    for text in overrides:
        key, value = parse_override(text)
        set_value(cfg, key, value)
    validate(cfg)
    return cfg


def describe_fields() -> list[str]:
    """One line per field of the trainer's config, 'section.name (type, default X): help', for --help."""
    return typed_config.describe_fields(TrainConfig())


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


# ----------------------------------------------------------------------------- validation

# dotted field -> the values it may take (choices) or its bounds: (low, high, low excluded,
# high excluded), None = unbounded. Relations between fields are checked in validate() itself.
CHOICES = {
    "model.dtype": ("float32", "bfloat16"),
    "data.on_malformed": ("fail", "skip"),
    "rollout.engine": tuple(ROLLOUT_ENGINES),
    "rollout.server_sync_backend": ("auto", "gloo", "nccl"),
    "algorithm.advantage_mode": tuple(ADVANTAGE_MODES),
    "algorithm.advantage_scale": tuple(ADVANTAGE_SCALES),
    "loss.impl": LOSS_IMPLS,
    "loss.loss_type": LOSS_TYPES,
    "loss.kl": KL_ESTIMATORS,
    "loss.aggregation": AGGREGATIONS,
    "optim.schedule": ("constant", "linear", "cosine"),
    "optim.optimizer": OPTIMIZERS,
    "data.prompt_template": tuple(PROMPT_TEMPLATES),
    "data.overlong": ("cut", "filter"),
    "vision.on_bad_image": ("skip", "fail"),
    "vision.processor": ("auto", "transformers", "project"),
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
    "rollout.kv_cache_gb": (0.0, None, True),
    "algorithm.advantage_eps": (0.0, None),
    "algorithm.dynamic_sampling_low": (0.0, 1.0),
    "algorithm.dynamic_sampling_high": (0.0, 1.0),
    "algorithm.max_refill_tries": (0, None),
    "loss.clip_low": (0.0, 1.0, False, True),
    "loss.clip_high": (0.0, None),
    "loss.beta": (0.0, None),
    "loss.chunk_size": (0, None),
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
}


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


def validate(cfg: TrainConfig) -> None:
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
    if cfg.optim.optimizer == "adamw_bf16" and cfg.model.dtype != "bfloat16":
        raise ValueError("optim.optimizer=adamw_bf16 trains bfloat16 weights: set model.dtype=bfloat16")
    if r.max_model_len < d.max_prompt_tokens + r.max_tokens:
        raise ValueError(f"rollout.max_model_len ({r.max_model_len}) must be >= data.max_prompt_tokens "
                         f"({d.max_prompt_tokens}) + rollout.max_tokens ({r.max_tokens})")
    if a.dynamic_sampling_low >= a.dynamic_sampling_high:
        raise ValueError("algorithm.dynamic_sampling_low must be < algorithm.dynamic_sampling_high")
    if l.dual_clip != 0 and l.dual_clip <= 1:
        raise ValueError(f"loss.dual_clip must be 0 (off) or > 1, got {l.dual_clip}")
    if v.min_pixels and v.max_pixels and v.min_pixels > v.max_pixels:
        raise ValueError(f"vision.min_pixels ({v.min_pixels}) must be <= vision.max_pixels ({v.max_pixels})")
    if not cfg.train.output_dir:
        raise ValueError("train.output_dir must not be empty")
    # The reward section validates itself where it can (its own __post_init__ / validate()).
    check = getattr(cfg.reward, "validate", None)
    if callable(check):
        check()
    elif hasattr(cfg.reward, "__post_init__"):
        cfg.reward.__post_init__()
