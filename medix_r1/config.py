"""The trainer's configuration: one dataclass tree, loaded from a YAML recipe plus ``--set`` overrides.

``load_config(recipe, overrides)`` builds a :class:`TrainConfig` from the defaults (the embedded CPU
recipe's values), then the recipe's YAML mapping, then ``key=value`` overrides with dotted keys
(``loss.beta=0.01``). Every value is type-checked against the field's annotation and every section
is range-checked by :func:`validate`; an unknown key is an error that suggests the closest name.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from medix_r1.config_checks import validate
from medix_r1.rewards import RewardConfig
from medix_r1.utils import typed_config
from medix_r1.utils.typed_config import apply_mapping, apply_override

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
class LoraSection:
    """LoRA adapters through peft (docs/lora.md): the base weights stay frozen and only the adapters train."""
    r: int = _f(0, "LoRA rank (0 = off: full fine-tuning); the adapters' update is scaled by alpha / r")
    alpha: float = _f(16.0, "LoRA alpha (peft's lora_alpha)")
    dropout: float = _f(0.0, "dropout on the adapters' input while training (peft's lora_dropout)")
    target_modules: str | list[str] = _f("all-linear", "the linear layers that get adapters: 'all-linear' "
                                         "(every linear layer but the LM head) or a list of module names or "
                                         "name suffixes, e.g. [q_proj, v_proj]")


@dataclass
class ModelSection:
    policy: str = _f("smollm2", "policy model: 'smollm2' (bundled SmolLM2-135M-Instruct) or a HF model folder")
    reference: str = _f("", "frozen reference model for the KL term ('' = same weights as the policy at step 0); "
                        "loaded only when loss.beta > 0")
    dtype: str = _f("float32", "training dtype: float32, or bfloat16: bf16 compute over fp32 master weights and "
                    "fp32 AdamW states (FSDP's mixed precision under torchrun on a GPU, torch.autocast in one "
                    "process); with optim.optimizer=adamw_bf16 the weights and states themselves are bf16")
    autocast: str = _f("", "'bfloat16': the policy's forward and backward (and the LM head in the loss) run "
                       "under torch.autocast in bfloat16, while weights, gradients, optimizer states and the "
                       "loss's sums stay in model.dtype; '' = off. About 2x per matrix product on CPUs with "
                       "AVX512-BF16 or AMX (grep -o 'avx512_bf16\\|amx_bf16' /proc/cpuinfo), many times slower "
                       "on CPUs without them")
    gradient_checkpointing: bool = _f(False, "recompute activations in the backward pass (saves memory)")
    share_prompt_forward: bool = _f(True, "run each distinct prompt of a micro-batch once and its responses on "
                                    "its KV cache (same values, fewer FLOPs when micro_batch_size covers several "
                                    "samples of a prompt; text-only models, off with gradient_checkpointing)")
    attn_implementation: str = _f("sdpa", "attention backend of every model load (policy, reference, local "
                                  "judge): 'sdpa', 'eager' or 'flash_attention_2' (needs the flash-attn "
                                  "package: pip install 'medix[flash]', CUDA GPUs only)")
    lora: LoraSection = field(default_factory=LoraSection, metadata={"help": "LoRA adapters (off by default)"})


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
                               "record is malformed); not applied under reward.parity=official, which keeps "
                               "every solution as it is (the official reward scores an untagged one 0 on "
                               "accuracy and modality)")
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
    overlong_measure: str = _f("tokens", "what data.overlong=filter compares with data.max_prompt_tokens: 'tokens' "
                               "(the prompt's tokens, each image's tokens included: what the model is given) or "
                               "'chars' (the characters of the chat-templated prompt string, one placeholder per "
                               "image slot: the official filter_overlong_prompts measure with the transformers "
                               "versions the official code pins; the medix_r1_* recipes). With 'chars' a prompt "
                               "that passes but whose tokens exceed the budget is skipped too, never cut")
    on_malformed: str = _f("fail", "a malformed record: 'fail' (error naming file:line) or 'skip' (count and go on)")
    context_chars: int = _f(600, "keep the first N characters of a record's context (records with "
                            "'question' and 'contexts' fields); 0 keeps the whole problem")
    max_prompt_tokens: int = _f(384, "prompts longer than this many tokens are cut in the middle")
    prompts_per_step: int = _f(5, "prompts sampled per step (each gets rollout.n responses)")
    max_records: int = _f(0, "use only the first N records (0 = all)")
    balance_by: str = _f("", "draw prompts evenly across the values of this record field, e.g. 'decision' for "
                         "PubMedQA's yes/no/maybe ('' = shuffled epochs over all records, as the official trainer)")
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
    top_k: int = _f(0, "sample among the k most likely tokens only (0 = off)")
    min_p: float = _f(0.0, "drop tokens whose probability is below min_p times the most likely one's (0 = off)")
    repetition_penalty: float = _f(1.0, "divide the logits of tokens already in the prompt or response by this "
                                   "(multiply when negative; 1 = off)")
    kv_cache_gb: float = _f(1.0, "vLLM KV-cache size in GiB")
    max_model_len: int = _f(640, "vLLM max sequence length (prompt + response)")
    gpu_memory_utilization: float = _f(0.5, "vLLM GPU memory share (GPU only; ignored on CPU)")
    hf_batch_size: int = _f(64, "engine=hf: at most this many sequences (prompts x n) generate at once, "
                            "left-padded in one transformers generate call; lower it when rollouts run out of "
                            "memory (the samples do not depend on it)")
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
    vllm_server_logprobs_mode: str = _f("raw_logprobs", "engine=vllm-server: the --logprobs-mode `vllm serve` was "
                                        "started with; 'processed_logprobs' (the sampling distribution's, after "
                                        "temperature) is what loss.rollout_correction and the rollout/* mismatch "
                                        "metrics need (the trainer cannot ask the server which it is)")


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
    aggregation: str = _f("auto", "token-mean, seq-mean-token-mean, seq-mean-token-sum, seq-mean-token-sum-norm, "
                          "or 'auto': the loss type's own (dr_grpo: seq-mean-token-sum-norm; gspo, gspo_token: "
                          "seq-mean-token-mean; the others token-mean)")
    chunk_size: int = _f(0, "fused loss: rows per vocabulary chunk (0 = the kernel's default)")
    mask_truncated: bool = _f(False, "responses cut at rollout.max_tokens (no EOS) get no loss and count in no "
                              "denominator (TRL's mask_truncated_completions)")
    entropy_coef: float = _f(0.0, "entropy bonus: the loss minus entropy_coef times the aggregated per-token "
                             "entropy of softmax(logits / temperature) (0 = off; verl's entropy_coeff)")
    rollout_correction: str = _f("none", "importance sampling for the rollout engine's mismatch, from its sampling "
                                 "log-probs (docs/rollout_correction.md): none, token_truncate / sequence_truncate "
                                 "(TIS: weight min(max(rho, lower), cap)), token_mask / sequence_mask (MIS: weight 0 "
                                 "outside [lower, cap]); a sequence's rho is exp(mean log-ratio)")
    rollout_is_cap: float = _f(2.0, "upper bound of the rollout importance weight (> 1)")
    rollout_is_lower: float = _f(0.0, "lower bound of the rollout importance weight (in [0, 1); 0 = none)")


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
    rgb_conversion: str = _f("project", "how an image becomes 8-bit RGB: 'project' (alpha composited on white, "
                             "palette transparency honoured, 16-bit greyscale stretched to 0..255) or 'official' "
                             "(PIL's convert(\"RGB\") as the official process_image: alpha dropped, 16-bit values "
                             "clipped at 255; the medix_r1_* recipes)")


@dataclass
class DistSection:
    """torchrun / FSDP2 runs (docs/distributed.md); ignored by a single process started without torchrun."""
    timeout_min: float = _f(60.0, "minutes a collective waits for the slowest rank before the run fails (one "
                            "rank's rollouts or judge calls may take long)")
    full_model_max_gb: float = _f(4.0, "sharded checkpoints also write a consolidated HF model/ folder (gathered "
                                  "on rank 0's CPU) when the policy's fp32 size is at most this many GiB "
                                  "(0 = never; the dcp/ folder always holds the weights)")


@dataclass
class TrainRewardSection(RewardConfig):
    """The reward section: the reward worker's settings plus the shaping the trainer adds from token counts."""
    overlong_buffer: int = _f(0, "DAPO's overlong reward shaping: a response longer than rollout.max_tokens - "
                              "overlong_buffer tokens loses overlong_penalty x (excess / overlong_buffer) from its "
                              "total, up to overlong_penalty at rollout.max_tokens (0 = off)")
    overlong_penalty: float = _f(1.0, "the largest overlong penalty (DAPO's penalty factor)")


@dataclass
class TrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    rollout: RolloutSection = field(default_factory=RolloutSection)
    algorithm: AlgorithmSection = field(default_factory=AlgorithmSection)
    loss: LossSection = field(default_factory=LossSection)
    optim: OptimSection = field(default_factory=OptimSection)
    reward: TrainRewardSection = field(default_factory=TrainRewardSection)
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
        apply_override(cfg, text)
    validate(cfg)
    return cfg


def describe_fields(cfg: TrainConfig | None = None) -> list[str]:
    """One entry per field, 'section.name (type) = VALUE: help', with ``cfg``'s values (default: the
    built-in defaults) and the built-in default named where it differs; for --help."""
    return typed_config.describe_fields(cfg or TrainConfig(), defaults=TrainConfig())


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


# ----------------------------------------------------------------------------- validation

# dotted field -> the values it may take (choices) or its bounds: (low, high, low excluded,
# high excluded), None = unbounded. Relations between fields are checked in validate() itself.
