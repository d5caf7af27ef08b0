"""Everything a run needs, built once before the first step: :func:`build_run` returns a :class:`Run`.

Order matters: data and tokenizer first (a bad record or a text-only policy given images fails
before any model loads), then the policy (and the reference only when the KL term needs it), the
optimizer, a resumed checkpoint, the rollout engine (synced to the resumed weights), the reward
worker, the metrics log and the signal handlers. :func:`close_run` undoes what needs undoing.
"""
from __future__ import annotations

import logging
import math
import random
import signal
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from medix_r1 import checkpoint as ckpt
from medix_r1.config import TrainConfig, to_dict
from medix_r1.data.prompts import OverlongPrompt, prompt_token_ids
from medix_r1.data.records import DataError, load_records
from medix_r1.data.sampling import BalancedPromptSampler, PromptSampler, make_sampler
from medix_r1.models import resolve_model_dir
from medix_r1.parallel import collectives as dist
from medix_r1.rollout import make_engine
from medix_r1.train.metrics import MetricsLog, plot_history, progress_bar
from medix_r1.train.optim import make_optimizer
from medix_r1.train.output_dir import prepare_output_dir
from medix_r1.train.policy import check_lora_targets, load_model, loss_config
from medix_r1.train.step import check_engine_logprobs, sync_weights
from medix_r1.train.validate import Validation, load_validation_records
from medix_r1.vision.prompts import setup_vision

log = logging.getLogger("medix_r1.train")


@dataclass
class Run:
    """The state of one training run (what the step loop reads and the checkpoints save)."""
    cfg: TrainConfig
    out_dir: Path
    records: list[dict]
    sampler: PromptSampler | BalancedPromptSampler
    tokenizer: object
    pad_id: int
    vision: object              # VisionPrompts for a vision-language policy, else None
    policy: torch.nn.Module
    ref: torch.nn.Module | None
    optimizer: torch.optim.Optimizer
    scheduler: object
    lcfg: object                # the kernels' LossConfig
    counters: dict
    judge_window: deque
    start_step: int = 0
    engine: object = None
    reward_worker: object = None
    own_worker: bool = False
    metrics: MetricsLog | None = None
    bar: object = None
    eval_hook: object = None
    validation: object = None   # train.validate.Validation over data.val, or None
    ref_is_base: bool = False   # LoRA: the reference is the policy with its adapters off
    stop_signal: int | None = None
    prompt_cache: dict = field(default_factory=dict)
    old_handlers: dict = field(default_factory=dict)

    def take_prompts(self, k: int):
        """k record indices and each one's prompt for the engine: token ids, or for a vision-language
        policy an item with its images (bad-image records are skipped and replaced, see vision.prompts)."""
        if self.vision is not None:
            return self.vision.take(self.sampler, k)
        overlong = set(self.counters.setdefault("overlong_records", []))  # data.overlong=filter, checkpointed
        idx = []
        while len(idx) < k:
            if len(overlong) >= len(self.records):
                raise ValueError(f"every one of the {len(self.records)} records has a prompt over "
                                 f"data.max_prompt_tokens ({self.cfg.data.max_prompt_tokens}); raise it")
            for i in self.sampler.take(k - len(idx)):
                if i in overlong:
                    continue
                if i not in self.prompt_cache:
                    try:
                        self.prompt_cache[i] = prompt_token_ids(self.tokenizer, self.records[i], self.cfg.data)
                    except OverlongPrompt as e:
                        overlong.add(i)
                        self.counters.update(overlong_records=sorted(overlong), filtered_overlong=len(overlong))
                        log.info("%s", e)
                        continue
                idx.append(i)
        return idx, [self.prompt_cache[i] for i in idx]

    def save(self, step: int) -> Path:
        """A checkpoint of this step (every rank calls it under torchrun)."""
        state = {"step": step, "data_position": self.sampler.state(), "metrics": self.metrics.history,
                 "counters": self.counters, "judge_window": list(self.judge_window),
                 "reward_cache": getattr(self.cfg.reward, "judge_cache_path", None), "config": to_dict(self.cfg)}
        return ckpt.save_checkpoint(self.out_dir, step, model=self.policy, tokenizer=self.tokenizer,
                                    optimizer=self.optimizer, scheduler=self.scheduler, state=state,
                                    keep_last=self.cfg.train.keep_last,
                                    full_model_max_gb=self.cfg.dist.full_model_max_gb)


def lr_lambda(cfg: TrainConfig):
    """The LR factor per scheduler step: linear warm-up, then constant, linear or cosine decay."""
    o, total = cfg.optim, cfg.train.max_steps

    def factor(step: int) -> float:
        if o.warmup_steps and step < o.warmup_steps:
            return (step + 1) / o.warmup_steps
        if o.schedule == "constant":
            return 1.0
        progress = min(1.0, (step - o.warmup_steps) / max(1, total - o.warmup_steps))
        shape = 1.0 - progress if o.schedule == "linear" else 0.5 * (1.0 + math.cos(math.pi * progress))
        return o.min_lr_ratio + (1.0 - o.min_lr_ratio) * shape
    return factor


def build_run(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False, eval_hook=None,
              reward_worker=None) -> Run:
    from transformers import AutoTokenizer

    out_dir = Path(cfg.train.output_dir)
    prepare_output_dir(out_dir, resume=resume, overwrite=overwrite)  # a used folder is refused here
    random.seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)

    d = cfg.data
    try:
        records, skipped = load_records(d.train, split=d.split, on_malformed=d.on_malformed, max_records=d.max_records,
                                        columns=d.columns, subset=d.subset, default_modality=d.default_modality,
                                        image_column=d.image_column, any_solution=cfg.reward.parity == "official")
        sampler = make_sampler(records, d.balance_by, cfg.train.seed)  # a record without the field fails here
        val_records = load_validation_records(cfg) if d.val else None
    except (ValueError, OSError) as e:  # missing, empty, unreadable, malformed: one line for the CLI
        raise DataError(str(e)) from e
    model_dir = resolve_model_dir(cfg.model.policy, "model.policy")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # None for a text-only policy (which refuses records with images, naming the record)
    vision = setup_vision(records, model_dir, tokenizer, cfg, {})
    validation = None if val_records is None else \
        Validation(val_records, setup_vision(val_records, model_dir, tokenizer, cfg, {}, source=cfg.data.val))
    lora = cfg.model.lora.r > 0
    if lora:
        check_lora_targets(model_dir, cfg)  # a target the model does not have: one error, before any weight loads
    policy = load_model(model_dir, cfg, trainable=True)
    if vision is not None:
        vision.configure_policy(policy)  # vision.freeze_tower
    # With beta = 0 there is no KL term, so the reference is never loaded (saves memory and a forward);
    # with LoRA and no other reference named, the reference is the policy with its adapters off.
    ref_is_base = lora and cfg.loss.beta > 0 and not cfg.model.reference
    ref = load_model(resolve_model_dir(cfg.model.reference or cfg.model.policy, "model.reference"), cfg,
                     trainable=False) if cfg.loss.beta > 0 and not ref_is_base else None
    optimizer = make_optimizer((p for p in policy.parameters() if p.requires_grad), cfg.optim)
    run = Run(cfg=cfg, out_dir=out_dir, records=records, sampler=sampler,
              tokenizer=tokenizer, pad_id=pad_id, vision=vision, policy=policy, ref=ref, optimizer=optimizer,
              scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg)), lcfg=loss_config(cfg),
              counters={"nan_in_row": 0, "skipped_records": skipped},
              judge_window=deque(maxlen=cfg.train.judge_failure_window), eval_hook=eval_hook,
              validation=validation, ref_is_base=ref_is_base)
    history = resume_from_checkpoint(run) if resume else []
    if vision is not None:
        vision.attach(run.counters)  # bad-image records are counted in the checkpointed counters

    extra = vision.vllm_engine_kwargs() if vision is not None else {}
    if dist.enabled() and cfg.rollout.engine == "vllm":  # one engine per rank, on the rank's device
        extra["distributed_executor_backend"] = "external_launcher"
    run.engine = make_engine(cfg.rollout, model_dir=model_dir, policy=policy, tokenizer=tokenizer,
                             seed=cfg.train.seed, extra_engine_kwargs=extra)
    check_engine_logprobs(run.engine, cfg)
    # the vLLM engine loaded the step-0 weights from disk; a running server may hold another run's
    if (cfg.rollout.engine == "vllm" and run.start_step > 0) or cfg.rollout.engine in ("server", "vllm-server"):
        sync_weights(run.engine, policy)
    if vision is not None:
        run.engine.suppress_tokens(vision.suppress_ids())  # no image placeholders inside responses
    if reward_worker is None:
        from medix_r1.rewards import RewardWorker
        reward_worker = RewardWorker(cfg.reward, attn_implementation=cfg.model.attn_implementation)
        run.own_worker = True
    run.reward_worker = reward_worker

    def on_signal(signum, frame):  # finish the current step, checkpoint, exit
        run.stop_signal = signum
        log.warning("received signal %d: stopping after this step with a checkpoint", signum)

    run.old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    # rank 0 alone writes metrics.jsonl, TensorBoard, the plot and the progress bar
    run.metrics = MetricsLog(out_dir, tensorboard=cfg.train.tensorboard, history=history, write=dist.is_main(),
                             report_to=cfg.train.report_to, config=to_dict(cfg))
    run.bar = progress_bar(cfg.train.max_steps, run.start_step, cfg.train.progress and dist.is_main())
    return run


def resume_from_checkpoint(run: Run) -> list[dict]:
    """Load the latest complete, intact checkpoint into ``run`` (model, optimizer, scheduler, RNG, data
    position, counters; a corrupt one is reported and skipped, see ``checkpoint.load_latest``); returns
    the metrics history so far ([] when there is none)."""
    loaded = ckpt.load_latest(run.out_dir, model=run.policy, optimizer=run.optimizer, scheduler=run.scheduler)
    if loaded is None:
        log.warning("--resume: no complete checkpoint in %s, starting from step 0", run.out_dir)
        return []
    latest, state = loaded
    run.start_step = state["step"]
    run.sampler.load_state(state["data_position"])
    run.counters.update(state.get("counters", {}))
    run.judge_window.extend(state.get("judge_window", []))
    log.info("resumed from %s (step %d)", latest, run.start_step)
    return state["metrics"]


def close_run(run: Run) -> None:
    """Close the bar and logs, restore the signal handlers, stop an own reward worker, draw the plot."""
    if run.bar is not None:
        run.bar.close()
    if run.metrics is not None:
        run.metrics.close()
    for s, h in run.old_handlers.items():
        signal.signal(s, h)
    if run.own_worker:
        run.reward_worker.close()
    if run.cfg.train.plot and run.metrics is not None and run.metrics.history and dist.is_main():
        plot_history(run.metrics.history, run.out_dir / "rewards.png")
