"""MediX-R1 GRPO trainer: ``python -m medix_r1.train [--recipe NAME|PATH] [--set key=value ...]``.

One step, read top to bottom in :func:`run_training`:

1. sample ``data.prompts_per_step`` prompts, roll out ``rollout.n`` responses each (vLLM in-process,
   or transformers ``generate``), keeping each sampled token's raw log-prob;
2. submit the responses to the reward worker and, while it scores them, compute the reference
   (and old) log-probs the loss needs; then wait for the rewards;
3. group advantages (``medix_kernels.group_advantages``); DAPO drops degenerate groups and refills
   the batch with more prompts (bounded tries);
4. mini-batch updates with ``fused_linear_grpo_loss`` (from the last hidden state and
   ``lm_head.weight``) or ``grpo_loss``; AdamW with grad clipping and an LR schedule;
5. load the new weights into the rollout engine in place; log metrics; checkpoint.

With no arguments it runs the embedded CPU recipe (``recipes/cpu_smollm2.yaml``). Under
``torchrun --nproc-per-node N -m medix_r1.train ...`` each rank rolls out and trains on its share of
the step's prompts with an FSDP2-sharded policy and computes what one process would (the mechanics
are in :mod:`medix_r1.distributed`, one call each here; see DISTRIBUTED.md).
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import logging
import math
import os
import random
import signal
import sys
import time
from collections import deque
from pathlib import Path

# OpenMP threads that busy-wait between parallel regions burn the CPU other threads (vLLM's
# decode loop, the reward worker, other jobs on a shared box) need: on this 2-core machine under
# load, passive waiting made rollouts and log-probs 5-10x faster. libgomp reads this when torch
# loads, so it only takes effect if torch is not imported yet; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from medix_kernels import LossConfig, fused_linear_grpo_loss, fused_linear_selective_log_softmax, grpo_loss
from medix_kernels import group_advantages, group_stats
from medix_r1 import checkpoint as ckpt
from medix_r1 import distributed as dist
from medix_r1.config import DEFAULT_RECIPE, TrainConfig, describe_fields, load_config, to_dict
from medix_r1.data.records import PromptSampler, load_records, prompt_messages
from medix_r1.metrics import MetricsLog, bar_postfix, plot_history, progress_bar
from medix_r1.rollout import HfRollout, RolloutOutOfMemory, Rollouts, RolloutServerError, VllmRollout
from medix_r1.shared_prompt import prompt_groups, response_pass_needed, shared_prompt_hidden, worth_sharing
from medix_r1.vision.inputs import vision_tower
from medix_r1.vision.trainer import setup_vision

log = logging.getLogger("medix_r1.train")

EXTRA_MODEL_INPUTS = ("pixel_values", "image_grid_thw")  # passed through to the policy forward


class TrainingStopped(RuntimeError):
    """The run stopped on purpose (NaN losses, judge failures): the message says why and what to do."""


# ----------------------------------------------------------------------------- set-up

def resolve_model_dir(name: str) -> Path | str:
    if name == "smollm2":
        from medix_r1.models import smollm2_hf_dir
        return Path(smollm2_hf_dir())
    path = Path(name)
    if (path / "config.json").is_file():
        return path
    if not path.exists() and name.count("/") == 1 and not name.startswith((".", "/")):
        return name  # a hub id such as Qwen/Qwen2.5-VL-7B-Instruct (needs network)
    raise FileNotFoundError(f"model.policy/reference: {name!r} is neither 'smollm2', a HF model folder "
                            f"(with config.json) nor a hub id")


def load_model(model_dir: Path, cfg: TrainConfig, trainable: bool):
    from medix_r1.vision.trainer import auto_model_class  # AutoModelForImageTextToText for Qwen-VL

    dtype = torch.float32 if cfg.model.dtype == "float32" else torch.bfloat16
    if dist.enabled():  # fp32 master weights (bf16 compute through FSDP's mixed precision on a GPU)
        dtype = torch.float32 if trainable else dist.mixed_precision(cfg).param_dtype or torch.float32
    model = auto_model_class(model_dir).from_pretrained(str(model_dir), dtype=dtype)
    model.train(trainable)  # no dropout in these models; train() only matters for checkpointing
    if trainable and cfg.model.gradient_checkpointing:
        # non-reentrant checkpointing composes with FSDP's hooks (the recomputation gathers the layer again)
        model.gradient_checkpointing_enable(**({"gradient_checkpointing_kwargs": {"use_reentrant": False}}
                                               if dist.enabled() else {}))
    if not trainable:
        model.requires_grad_(False)
    # Read by policy_hidden. Off with checkpointing (a recomputed layer would append to the shared cache
    # twice) and for vision-language models (their multimodal rotary positions come from the whole sequence).
    model.medix_share_prompts = (cfg.model.share_prompt_forward and getattr(model.config, "vision_config", None) is None
                                 and not (trainable and cfg.model.gradient_checkpointing))
    return dist.shard(model, cfg, trainable)  # FSDP2 under torchrun, else the model as loaded


def lr_lambda(cfg: TrainConfig):
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


def loss_config(cfg: TrainConfig) -> LossConfig:
    """The kernel's LossConfig from the config's loss section (temperature from the rollouts)."""
    l = cfg.loss
    wanted = dict(loss_type=l.loss_type, clip_low=l.clip_low, clip_high=l.clip_high,
                  dual_clip=l.dual_clip if l.dual_clip > 0 else None, kl=l.kl, beta=l.beta,
                  aggregation=l.aggregation, max_len=cfg.rollout.max_tokens, temperature=cfg.rollout.temperature)
    names = {f.name for f in dataclasses.fields(LossConfig)}
    return LossConfig(**{k: v for k, v in wanted.items() if k in names})


def prompt_token_ids(tokenizer, record: dict, cfg: TrainConfig) -> list[int]:
    """Chat-templated prompt ids, cut in the middle when longer than data.max_prompt_tokens."""
    messages = prompt_messages(record, cfg.data.system_prompt, cfg.data.context_chars,
                               (cfg.data.example_question, cfg.data.example_answer))
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys"):
        ids = ids["input_ids"]
    ids, budget = list(ids), cfg.data.max_prompt_tokens
    if len(ids) > budget:
        ids = ids[:budget // 2] + ids[len(ids) - (budget - budget // 2):]
    return ids


# ----------------------------------------------------------------------------- tensors and log-probs

def make_batch(prompts: list[list[int]], responses: list[list[int]], pad_id: int, images=None) -> dict:
    """Right-padded prompt+response sequences plus, per response token, the position whose hidden
    state predicts it (``pred_pos``), the response ids and their mask ([B, R]). ``images`` (one
    entry per row, image inputs or None) is kept as a list; :func:`slice_batch` turns a selection
    of rows into ``pixel_values`` / ``image_grid_thw``."""
    B = len(prompts)
    L = max(len(p) + len(r) for p, r in zip(prompts, responses))
    R = max(1, max(len(r) for r in responses))
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)
    attn = torch.zeros((B, L), dtype=torch.long)
    ids = torch.zeros((B, R), dtype=torch.long)
    mask = torch.zeros((B, R), dtype=torch.float32)
    pred_pos = torch.zeros((B, R), dtype=torch.long)
    for b, (p, r) in enumerate(zip(prompts, responses)):
        seq = p + r
        input_ids[b, :len(seq)] = torch.tensor(seq)
        attn[b, :len(seq)] = 1
        ids[b, :len(r)] = torch.tensor(r, dtype=torch.long)
        mask[b, :len(r)] = 1.0
        pred_pos[b] = torch.clamp(torch.arange(R) + len(p) - 1, max=L - 1)
    batch = {"input_ids": input_ids, "attention_mask": attn, "ids": ids, "mask": mask, "pred_pos": pred_pos,
             "prompt_len": torch.tensor([len(p) for p in prompts], dtype=torch.long),
             "prompt_group": prompt_groups(prompts)}  # for the shared-prompt forward
    if images and any(x is not None for x in images):
        batch["images"] = list(images)
    return batch


def slice_batch(batch: dict, rows) -> dict:
    if "images" in batch:
        from medix_r1.vision.trainer import select_rows
        return select_rows(batch, rows)
    return {k: (v[rows] if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def policy_hidden(model, batch: dict) -> torch.Tensor:
    """Last hidden states at the positions that predict each response token: [B, R, H].

    The one place the policy runs forward: extra model inputs (``pixel_values``,
    ``image_grid_thw``) in the batch are passed through, so image items need no other change.
    Text rows that share a prompt run it once (``model.share_prompt_forward``, see shared_prompt.py)."""
    extra = {k: batch[k] for k in EXTRA_MODEL_INPUTS if k in batch}
    share = not extra and getattr(model, "medix_share_prompts", False) and worth_sharing(batch)
    if dist.enabled():  # FSDP: every rank must run the same forwards (each one gathers the layers)
        share = dist.all_true(share)
    if share:
        return shared_prompt_hidden(model.base_model, batch,
                                    response_pass=dist.any_true(response_pass_needed(batch)))
    out = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           use_cache=False, **extra)
    hidden = out.last_hidden_state
    idx = batch["pred_pos"].unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
    return hidden.gather(1, idx)


def lm_head_params(model):
    head = model.get_output_embeddings()
    return head.weight, getattr(head, "bias", None)


def micro_logp(model, mb: dict, temperature: float) -> torch.Tensor:
    weight, bias = lm_head_params(model)
    return fused_linear_selective_log_softmax(policy_hidden(model, mb), weight, mb["ids"], bias=bias,
                                              temperature=temperature)


@torch.no_grad()
def sequence_logp(model, batch: dict, temperature: float, micro: int) -> torch.Tensor:
    """Per-token log-probs [B, R] of the response ids under ``model`` (no grad), micro-batched."""
    B, parts = batch["ids"].shape[0], []
    # Under torchrun every rank runs as many forwards as the busiest one (FSDP's collectives); the
    # extra ones (on row 0) are discarded.
    for start in range(0, dist.max_int(math.ceil(B / micro)) * micro, micro):
        mb = slice_batch(batch, slice(start, start + micro) if start < B else slice(0, 1))
        logp = dist.run(model, micro_logp, mb, temperature)
        if start < B:
            parts.append(logp)
    return torch.cat(parts) * batch["mask"]


def policy_loss(model, mb: dict, advantages, old_logp, ref_logp, lcfg: LossConfig, impl: str, chunk: int):
    """Loss and stats for one micro-batch; also the raw (temperature 1) log-probs for the mismatch metric."""
    hidden = policy_hidden(model, mb)
    weight, bias = lm_head_params(model)
    if impl == "fused":
        extra = {"lm_head_bias": bias} if bias is not None else {}
        loss, stats = fused_linear_grpo_loss(hidden, weight, mb["ids"], mb["mask"], advantages,
                                             old_logp=old_logp, ref_logp=ref_logp, config=lcfg,
                                             chunk_size=chunk or None, **extra)
    else:
        logits = torch.nn.functional.linear(hidden, weight, bias)
        loss, stats = grpo_loss(logits, mb["ids"], mb["mask"], advantages, old_logp=old_logp, ref_logp=ref_logp,
                                config=lcfg)
    raw = fused_linear_selective_log_softmax(hidden.detach(), weight.detach(), mb["ids"],
                                             bias=None if bias is None else bias.detach(), temperature=1.0)
    if dist.enabled() and "pixel_values" not in mb:
        # FSDP reduces the same gradients on every rank: without an image in this micro-batch the
        # vision tower (part of the root unit, see distributed.shard) gets exact zero gradients.
        visual = vision_tower(model)
        if visual is not None:
            loss = loss + 0.0 * sum(p.sum() for p in visual.parameters() if p.requires_grad)
    return loss, stats, raw


# ----------------------------------------------------------------------------- rollouts + rewards

def score(worker, rollouts: Rollouts, records: list[dict], cfg: TrainConfig):
    """Submit the responses to the reward worker; returns a Future of RewardResults."""
    from medix_r1.data.records import problem_text

    problems = [problem_text(records[g], cfg.data.context_chars) for g in rollouts.group]
    solutions = [records[g]["solution"] for g in rollouts.group]
    return worker.submit(problems, rollouts.texts, solutions)


def keep_groups(rewards: torch.Tensor, n: int, cfg: TrainConfig) -> list[int]:
    """Indices of the groups to train on; DAPO drops degenerate groups and those with mean outside
    (low, high)."""
    groups = rewards.shape[0] // n
    if not cfg.algorithm.dynamic_sampling:
        return list(range(groups))
    stats = group_stats(rewards, n)
    a = cfg.algorithm
    keep = (~stats.degenerate) & (stats.mean > a.dynamic_sampling_low) & (stats.mean < a.dynamic_sampling_high)
    return [g for g in range(groups) if bool(keep[g])]


def take_prompts(sampler, k: int, tokenizer, records, prompt_cache, cfg: TrainConfig, vision=None):
    """k record indices and each one's prompt for the engine: token ids, or for a vision-language
    policy an item with its images (bad-image records are skipped and replaced, see vision.trainer)."""
    if vision is not None:
        return vision.take(sampler, k)
    idx = sampler.take(k)
    for i in idx:
        if i not in prompt_cache:
            prompt_cache[i] = prompt_token_ids(tokenizer, records[i], cfg)
    return idx, [prompt_cache[i] for i in idx]


def rollout(engine, policy, prompts, step: int, cfg: TrainConfig, attempt: int = 0, offset: int = 0) -> Rollouts:
    """``engine.generate`` for this rank's prompts, ``offset`` = their position in the step's global list
    (the sampling seeds use the global index). Under torchrun the ``hf`` engine generates on the whole
    policy, gathered on every rank for the call (every rank enters, even with no prompts)."""
    gather = dist.full_weights(policy) if isinstance(engine, HfRollout) else contextlib.nullcontext()
    with gather:
        return engine.generate(prompts, step, cfg.train.seed, attempt, offset=offset) if prompts else Rollouts()


def sync_weights(engine, policy) -> None:
    """The policy's new weights into the engine; a sharded policy reaches the vLLM engine one gathered
    parameter at a time (the server engine gathers DTensors itself; hf has nothing to do)."""
    engine.sync(dist.gathered(policy) if isinstance(engine, VllmRollout) else policy)


def collect(engine, worker, policy, tokenizer, records, sampler, prompt_cache, cfg: TrainConfig, step: int,
            vision=None):
    """Roll out, score and (for DAPO) filter/refill until prompts_per_step groups are kept or the
    refill budget is spent. Returns (rollouts, reward results, owner rank of each kept group, info).

    Under torchrun every rank draws the same prompts, rolls out and scores its slice, and the kept
    groups are agreed through an all-gather: every rank runs the same rounds, and the kept groups are
    a single process's, in its order (``owners`` lists their ranks in that order)."""
    n, want = cfg.rollout.n, cfg.data.prompts_per_step
    kept_r, kept_res, owners = Rollouts(), [], []
    info = {"rollout": 0.0, "reward": 0.0, "refills": 0, "dropped_groups": 0, "prompts": 0}
    for attempt in range(cfg.algorithm.max_refill_tries + 1):
        need = want - len(owners)
        if need <= 0:
            break
        idx, prompts = take_prompts(sampler, need, tokenizer, records, prompt_cache, cfg, vision)
        lo, hi = dist.shard_range(len(idx))
        recs = [records[i] for i in idx[lo:hi]]
        t = time.perf_counter()
        r = rollout(engine, policy, prompts[lo:hi], step, cfg, attempt, offset=lo)
        info["rollout"] += time.perf_counter() - t
        info["prompts"] += len(idx)
        t = time.perf_counter()
        results = score(worker, r, recs, cfg).result() if len(r) else []
        info["reward"] += time.perf_counter() - t
        totals = torch.tensor([x.total for x in results], dtype=torch.float32)
        mine = keep_groups(totals, n, cfg) if len(results) else []
        keep = [g for part in dist.all_gather([lo + g for g in mine]) for g in part]  # global, ascending
        info["dropped_groups"] += len(idx) - len(keep)
        group_rank = dist.owners(len(idx))
        for g in keep[:need]:
            owners.append(group_rank[g])
            if not lo <= g < hi:
                continue
            rows = range((g - lo) * n, (g - lo + 1) * n)
            for j in rows:
                kept_r.prompt_ids.append(r.prompt_ids[j]); kept_r.response_ids.append(r.response_ids[j])
                kept_r.sample_logp.append(r.sample_logp[j]); kept_r.texts.append(r.texts[j])
                kept_r.truncated.append(r.truncated[j]); kept_r.group.append(len(kept_r.group) // n)
                kept_r.images.append(r.images[j] if r.images else None)
                kept_res.append(results[j])
        if attempt > 0:
            info["refills"] += 1
        if not cfg.algorithm.dynamic_sampling:
            break
    return kept_r, kept_res, owners, info


# ----------------------------------------------------------------------------- one update

def update(model, optimizer, batch: dict, advantages, ref_logp, old_logp, cfg: TrainConfig, lcfg, step: int,
           layout: dist.Layout):
    """Mini-batch updates over the step's samples. Returns (stats, raw log-probs [B, R] or None,
    nan_skipped).

    Mini-batches and loss weights come from the global batch (``layout``, a single process's rows and
    order): each rank runs its own rows of a mini-batch, weighted by their share of the mini-batch's
    global weight, and FSDP sums the ranks' gradients; ranks with fewer rows run zero-weight passes."""
    o = cfg.optim
    B = len(layout.tokens)  # rows of the global batch (every rank's)
    mini = o.mini_batch_size or B
    micro = o.micro_batch_size
    per_token = cfg.loss.aggregation == "token-mean"
    sums = {"loss": 0.0, "kl_mean": 0.0, "clip_frac_low": 0.0, "clip_frac_high": 0.0, "ratio_mean": 0.0,
            "grad_norm": 0.0}
    count, raw_logp, nan_skipped = 0, None, False
    gen = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + step)
    for epoch in range(o.updates_per_step):
        order = torch.randperm(B, generator=gen) if (o.updates_per_step > 1 or mini < B) else torch.arange(B)
        for ms in range(0, B, mini):
            rows = order[ms:ms + mini].tolist()
            weight_total = float(sum(layout.tokens[g] for g in rows)) if per_token else float(len(rows))
            mine = layout.mine(rows)
            optimizer.zero_grad(set_to_none=True)
            acc = {k: 0.0 for k in sums if k != "grad_norm"}
            finite, saw_image = True, False
            for us in range(0, layout.micro_steps(rows, micro) * micro, micro):
                real = us < len(mine)
                r = torch.tensor(mine[us:us + micro] if real else [0], dtype=torch.long)
                mb = slice_batch(batch, r)
                saw_image |= real and "pixel_values" in mb
                w = (float(mb["mask"].sum()) if per_token else float(len(r))) / max(weight_total, 1e-9) if real \
                    else 0.0
                loss, stats, raw = dist.run(
                    model, policy_loss, mb, advantages[r], None if old_logp is None else old_logp[r],
                    None if ref_logp is None else ref_logp[r], lcfg, cfg.loss.impl, cfg.loss.chunk_size)
                if not dist.all_true(not real or bool(torch.isfinite(loss))):
                    finite = False
                    break
                (loss * w).backward()
                if not real:
                    continue
                acc["loss"] += float(loss.detach()) * w
                for k in ("kl_mean", "clip_frac_low", "clip_frac_high", "ratio_mean"):
                    if k in stats:
                        acc[k] += float(stats[k]) * w
                if epoch == 0:
                    if raw_logp is None:
                        raw_logp = torch.zeros_like(batch["mask"])
                    raw_logp[r] = raw * mb["mask"]
            if not finite:
                optimizer.zero_grad(set_to_none=True)
                nan_skipped = True
                log.warning("step %d: non-finite loss, skipping this optimizer step", step)
                continue
            visual = vision_tower(model) if dist.enabled() else None
            if visual is not None and not dist.any_true(saw_image):
                # A mini-batch without any image leaves a single process with no vision gradients (AdamW
                # skips those parameters); the zeros policy_loss gave them under FSDP must go too.
                for p in visual.parameters():
                    p.grad = None
            params = [p for p in model.parameters() if p.grad is not None]
            gnorm = dist.clip_grad_norm(params, o.grad_clip if o.grad_clip > 0 else float("inf"))
            if not torch.isfinite(gnorm):
                optimizer.zero_grad(set_to_none=True)
                nan_skipped = True
                log.warning("step %d: non-finite gradient norm, skipping this optimizer step", step)
                continue
            optimizer.step()
            for k, v in acc.items():
                sums[k] += v
            sums["grad_norm"] += float(gnorm)
            count += 1
    keys = [k for k in sums if k != "grad_norm"]  # weighted shares of each rank: their sum is the global value
    sums.update(zip(keys, dist.sum_floats([sums[k] for k in keys])))
    stats = {k: v / count for k, v in sums.items()} if count else {k: float("nan") for k in sums}
    return stats, raw_logp, nan_skipped


# ----------------------------------------------------------------------------- the loop

def placeholder_batch(pad_id: int) -> dict:
    """One row, one pad token: what a torchrun rank left without rows (DAPO) runs its zero-weight
    forward/backward passes on (the other ranks' FSDP collectives need them)."""
    return make_batch([[pad_id]], [[pad_id]], pad_id)


def train(cfg: TrainConfig, *, resume: bool = False, eval_hook=None, reward_worker=None) -> dict:
    """Run training to ``cfg.train.max_steps``; returns a summary dict (steps, rewards, timings).

    ``eval_hook(step, model, tokenizer) -> dict`` runs every ``train.eval_every`` steps; its metrics
    are logged under ``eval/`` (under torchrun it is called on every rank, with the sharded model).
    ``reward_worker`` defaults to ``RewardWorker(cfg.reward)`` (one per rank under torchrun)."""
    own_group = dist.init(cfg.dist.timeout_min)  # under torchrun: join its process group
    try:
        dist.check_config(cfg, dist.world_size())
        return run_training(cfg, resume=resume, eval_hook=eval_hook, reward_worker=reward_worker)
    finally:
        if own_group:
            dist.close()


def run_training(cfg: TrainConfig, *, resume: bool = False, eval_hook=None, reward_worker=None) -> dict:
    from transformers import AutoTokenizer

    t_start = time.perf_counter()
    out_dir = Path(cfg.train.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    random.seed(cfg.train.seed); np.random.seed(cfg.train.seed); torch.manual_seed(cfg.train.seed)

    records, skipped = load_records(cfg.data.train, split=cfg.data.split, on_malformed=cfg.data.on_malformed,
                                    max_records=cfg.data.max_records)
    sampler = PromptSampler(len(records), cfg.train.seed)
    model_dir = resolve_model_dir(cfg.model.policy)
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    # None for a text-only policy (which refuses records with images, naming the record)
    vision = setup_vision(records, model_dir, tokenizer, cfg, {})
    policy = load_model(model_dir, cfg, trainable=True)
    if vision is not None:
        vision.configure_policy(policy)  # vision.freeze_tower
    # With beta = 0 there is no KL term, so the reference is never loaded (saves memory and a forward).
    ref = load_model(resolve_model_dir(cfg.model.reference or cfg.model.policy), cfg, trainable=False) \
        if cfg.loss.beta > 0 else None
    o = cfg.optim
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=o.lr, betas=(o.beta1, o.beta2),
                                  weight_decay=o.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    lcfg = loss_config(cfg)

    start_step, history, counters = 0, [], {"nan_in_row": 0, "skipped_records": skipped}
    judge_window: deque = deque(maxlen=cfg.train.judge_failure_window)
    latest = ckpt.latest_checkpoint(out_dir) if resume else None
    if resume and latest is None:
        log.warning("--resume: no complete checkpoint in %s, starting from step 0", out_dir)
    if latest is not None:
        state = ckpt.load_checkpoint(latest, model=policy, optimizer=optimizer, scheduler=scheduler)
        start_step, history = state["step"], state["metrics"]
        sampler.load_state(state["data_position"])
        counters.update(state.get("counters", {}))
        judge_window.extend(state.get("judge_window", []))
        log.info("resumed from %s (step %d)", latest, start_step)
    if vision is not None:
        vision.attach(counters)  # bad-image records are counted in the checkpointed counters

    if cfg.rollout.engine == "vllm":
        kwargs = vision.vllm_engine_kwargs() if vision is not None else {}
        if dist.enabled():  # one engine per rank, on the rank's device (vLLM's torchrun mode)
            kwargs["distributed_executor_backend"] = "external_launcher"
        engine = VllmRollout(model_dir, cfg.rollout, cfg.train.seed, engine_kwargs=kwargs)
        if start_step > 0:
            sync_weights(engine, policy)  # the engine loaded the step-0 weights from disk
    elif cfg.rollout.engine == "server":
        from medix_r1.rollout import ServerRollout
        engine = ServerRollout(cfg.rollout, cfg.train.seed, model_dir=model_dir)
        engine.sync(policy)  # a running server may hold another run's weights: start from the policy's
    else:
        engine = HfRollout(policy, tokenizer, cfg.rollout)
    if vision is not None:
        engine.suppress_tokens(vision.suppress_ids())  # no image placeholders inside responses
    if reward_worker is None:
        from medix_r1.rewards import RewardWorker
        reward_worker = RewardWorker(cfg.reward)
        own_worker = True
    else:
        own_worker = False

    stop = {"signal": None}

    def on_signal(signum, frame):  # finish the current step, checkpoint, exit
        stop["signal"] = signum
        log.warning("received signal %d: stopping after this step with a checkpoint", signum)

    old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    # rank 0 alone writes metrics.jsonl, TensorBoard, the plot and the progress bar
    metrics = MetricsLog(out_dir, tensorboard=cfg.train.tensorboard, history=history, write=dist.is_main())
    bar = progress_bar(cfg.train.max_steps, start_step, cfg.train.progress and dist.is_main())
    prompt_cache: dict[int, list[int]] = {}
    step = start_step

    def save(step_no: int) -> Path:
        state = {"step": step_no, "data_position": sampler.state(), "metrics": metrics.history,
                 "counters": counters, "judge_window": list(judge_window),
                 "reward_cache": getattr(cfg.reward, "judge_cache_path", None), "config": to_dict(cfg)}
        return ckpt.save_checkpoint(out_dir, step_no, model=policy, tokenizer=tokenizer, optimizer=optimizer,
                                    scheduler=scheduler, state=state, keep_last=cfg.train.keep_last,
                                    full_model_max_gb=cfg.dist.full_model_max_gb)

    try:
        for step in range(start_step + 1, cfg.train.max_steps + 1):
            t_step = time.perf_counter()
            # 1-2. rollouts and rewards (the reference log-probs overlap the reward wait when not DAPO);
            # under torchrun each rank rolls out its slice of the step's prompts (whole groups)
            if cfg.algorithm.dynamic_sampling:
                r, results, group_owner, info = collect(engine, reward_worker, policy, tokenizer, records, sampler,
                                                        prompt_cache, cfg, step, vision)
                future = None
            else:
                idx, prompts = take_prompts(sampler, cfg.data.prompts_per_step, tokenizer, records, prompt_cache,
                                            cfg, vision)
                lo, hi = dist.shard_range(len(idx))
                t = time.perf_counter()
                r = rollout(engine, policy, prompts[lo:hi], step, cfg, offset=lo)
                info = {"rollout": time.perf_counter() - t, "reward": 0.0, "refills": 0, "dropped_groups": 0,
                        "prompts": len(idx)}
                future = score(reward_worker, r, [records[i] for i in idx[lo:hi]], cfg)
                group_owner = dist.owners(len(idx))  # the rank of each prompt group
            if not group_owner:
                log.warning("step %d: every group was degenerate after %d refills; no update this step",
                            step, cfg.algorithm.max_refill_tries)
                metrics.log(step, {"rollout/groups_kept": 0, "rollout/dropped_groups": info["dropped_groups"]})
                bar.update(1)
                stopping = dist.any_true(stop["signal"] is not None)
                if stopping or step == cfg.train.max_steps or \
                        (cfg.train.save_every and step % cfg.train.save_every == 0):
                    save(step)
                if stopping:
                    break
                continue
            rows_global = len(group_owner) * cfg.rollout.n
            batch = make_batch(r.prompt_ids, r.response_ids, pad_id, r.images) if len(r) else placeholder_batch(pad_id)
            batch = dist.to_device(batch)
            t = time.perf_counter()
            ref_logp = sequence_logp(ref, batch, cfg.rollout.temperature, o.micro_batch_size) if ref is not None \
                else None
            # Off-policy updates need the pre-update log-probs; on-policy (one pass) uses logp.detach().
            old_logp = sequence_logp(policy, batch, cfg.rollout.temperature, o.micro_batch_size) \
                if (o.updates_per_step > 1 or (o.mini_batch_size and o.mini_batch_size < rows_global)) else None
            t_logp = time.perf_counter() - t
            if future is not None:
                t = time.perf_counter()
                results = future.result()
                info["reward"] = time.perf_counter() - t

            # 3. advantages, over the global batch (every rank's rewards, in a single process's order)
            layout = dist.row_layout(group_owner, cfg.rollout.n, [len(x) for x in r.response_ids],
                                     [x.total for x in results])
            rewards = torch.tensor(layout.rewards, dtype=torch.float32)
            adv = group_advantages(rewards, cfg.rollout.n, mode=cfg.algorithm.advantage_mode,
                                   scale=cfg.algorithm.advantage_scale, eps=cfg.algorithm.advantage_eps)
            own = layout.own_rows()
            adv = (adv[own] if own else torch.zeros(1)).to(dist.device())  # this rank's rows

            # 4. update
            engine.sleep()
            t = time.perf_counter()
            stats, raw_logp, nan_skipped = update(policy, optimizer, batch, adv, ref_logp, old_logp, cfg, lcfg, step,
                                                  layout)
            t_update = time.perf_counter() - t
            scheduler.step()
            engine.wake_up()

            # 5. weight sync
            t = time.perf_counter()
            if not nan_skipped:
                sync_weights(engine, policy)
            t_sync = time.perf_counter() - t

            # metrics
            m = step_metrics(r, results, batch, raw_logp, stats, info, nan_skipped)
            m.update({"optim/lr": scheduler.get_last_lr()[0], "time/rollout": info["rollout"],
                      "time/reward_wait": info["reward"], "time/logp": t_logp, "time/update": t_update,
                      "time/sync": t_sync})
            counters["nan_in_row"] = counters["nan_in_row"] + 1 if nan_skipped else 0
            judge_window.append(m["reward/judge_failed_rate"])
            if eval_hook is not None and cfg.train.eval_every and step % cfg.train.eval_every == 0:
                m.update({f"eval/{k}": v for k, v in eval_hook(step, policy, tokenizer).items()})
            m["time/step"] = time.perf_counter() - t_step
            m["perf/tokens_per_s"] = float(sum(layout.tokens)) / m["time/step"]
            if vision is not None:
                m.update(vision.metrics())  # data/skipped_image_records
            metrics.log(step, m)
            bar.set_postfix(bar_postfix(m))
            bar.update(1)
            log.info("step %d: reward %.3f (format %.3f) len %.0f | rollout %.1fs reward %.1fs logp %.1fs "
                     "update %.1fs sync %.2fs", step, m["reward/total"], m["reward/format"],
                     m["rollout/response_len"], info["rollout"], info["reward"], t_logp, t_update, t_sync)

            # faults and checkpoints
            if counters["nan_in_row"] >= cfg.train.max_nan_steps:
                save(step)
                raise TrainingStopped(f"{counters['nan_in_row']} steps in a row had a non-finite loss; stopping "
                                      f"(lower optim.lr or check the data; train.max_nan_steps sets the limit)")
            if len(judge_window) == judge_window.maxlen:
                rate = sum(judge_window) / len(judge_window)
                if rate > cfg.train.judge_failure_threshold:
                    save(step)
                    raise TrainingStopped(
                        f"the judge failed on {rate:.0%} of answers over the last {len(judge_window)} steps "
                        f"(threshold {cfg.train.judge_failure_threshold:.0%}): check reward.judge_url / the judge "
                        f"server, or raise train.judge_failure_threshold")
            if dist.any_true(stop["signal"] is not None):  # a signal on any rank stops every rank
                save(step)
                log.warning("stopped by signal %s after step %d; resume with --resume",
                            stop["signal"] or "(on another rank)", step)
                break
            if step == cfg.train.max_steps or (cfg.train.save_every and step % cfg.train.save_every == 0):
                save(step)
    finally:
        bar.close()
        metrics.close()
        for s, h in old_handlers.items():
            signal.signal(s, h)
        if own_worker:
            reward_worker.close()
        if cfg.train.plot and metrics.history and dist.is_main():
            plot_history(metrics.history, out_dir / "rewards.png")
    return summarize(metrics.history, time.perf_counter() - t_start, step)


def step_metrics(r: Rollouts, results, batch, raw_logp, stats, info, nan_skipped) -> dict:
    """The step's metrics over the whole batch: sums and counts of this rank's samples, added over the
    ranks (a single process's means); ``stats`` and ``info`` are global already."""
    rows = len(results)
    pairs = {f"reward/{k}": (sum(float(getattr(x, k)) for x in results), rows)
             for k in ("total", "format", "modality", "judge", "embedding")}
    pairs["reward/judge_failed_rate"] = (sum(float(bool(x.judge_failed)) for x in results), rows)
    pairs["reward/exact_match_rate"] = (sum(float(bool(x.exact_match)) for x in results), rows)
    pairs["reward/invalid_answer_rate"] = (sum(float(bool(x.invalid_answer)) for x in results), rows)
    pairs["rollout/response_len"] = (sum(len(x) for x in r.response_ids), rows)
    pairs["rollout/truncated_frac"] = (sum(float(x) for x in r.truncated), rows)
    pairs["rollout/groups_kept"] = (len(set(r.group)), 1)
    mismatch = (0.0, 0.0)
    if raw_logp is not None and rows:
        mask = batch["mask"][:rows]
        sample = torch.zeros_like(mask)
        for b, lp in enumerate(r.sample_logp):
            sample[b, :len(lp)] = torch.tensor(lp)
        # verl-style rollout/trainer mismatch: mean |logp_engine - logp_trainer| over response tokens
        mismatch = (float(((sample - raw_logp[:rows]).abs() * mask).sum()), float(mask.sum()))
    pairs["rollout/logp_mismatch"] = mismatch
    totals = dist.sum_floats([v for pair in pairs.values() for v in pair])
    m = {}
    for i, key in enumerate(pairs):
        total, n = totals[2 * i], totals[2 * i + 1]
        if key == "rollout/groups_kept":
            m[key] = int(total)
        elif key != "rollout/logp_mismatch" or n > 0:
            m[key] = total / n if n else float("nan")
    m["rollout/dropped_groups"] = info["dropped_groups"]
    m["rollout/refills"] = info["refills"]
    m["loss/loss"] = stats["loss"]
    m["loss/kl_mean"] = stats["kl_mean"]
    m["loss/clip_frac_low"] = stats["clip_frac_low"]
    m["loss/clip_frac_high"] = stats["clip_frac_high"]
    m["loss/clip_frac"] = stats["clip_frac_low"] + stats["clip_frac_high"]
    m["loss/ratio_mean"] = stats["ratio_mean"]
    m["optim/grad_norm"] = stats["grad_norm"]
    m["nan_skipped"] = int(nan_skipped)
    return m


def summarize(history: list[dict], wall_s: float, last_step: int) -> dict:
    rewards = [h["reward/total"] for h in history if "reward/total" in h]
    k = min(10, len(rewards))
    timing = {key: float(np.mean([h[key] for h in history if key in h]))
              for key in ("time/rollout", "time/reward_wait", "time/logp", "time/update", "time/sync", "time/step")
              if any(key in h for h in history)}
    return {"steps": last_step, "wall_s": wall_s,
            "first10_reward": float(np.mean(rewards[:k])) if k else float("nan"),
            "last10_reward": float(np.mean(rewards[-k:])) if k else float("nan"),
            "mean_timing_s": timing, "history": history}


# ----------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    epilog = "config fields (set with --set section.field=value):\n" + "\n".join(describe_fields())
    p = argparse.ArgumentParser(prog="python -m medix_r1.train", description=__doc__.split("\n\n")[0],
                                epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default=DEFAULT_RECIPE,
                   help="recipe NAME in medix_r1/recipes/ (cpu_smollm2, grpo, dapo, gspo) or a YAML path "
                        f"(default {DEFAULT_RECIPE})")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, dotted (repeatable), e.g. --set loss.beta=0.01")
    p.add_argument("--max-steps", type=int, help="= --set train.max_steps=N")
    p.add_argument("--output-dir", help="= --set train.output_dir=DIR")
    p.add_argument("--rollout", choices=("vllm", "hf", "server"),
                   help="= --set rollout.engine=... (server: rollout.server_url, see medix_r1/ROLLOUT_SERVER.md)")
    p.add_argument("--resume", action="store_true", help="continue from the latest complete checkpoint in the "
                                                         "output dir (a larger --max-steps extends the run)")
    p.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    # under torchrun the ranks other than 0 log warnings only
    logging.basicConfig(level=logging.WARNING if args.quiet or dist.env_rank() > 0 else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    overrides = list(args.overrides)
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    if args.output_dir is not None:
        overrides.append(f"train.output_dir={args.output_dir}")
    if args.rollout is not None:
        overrides.append(f"rollout.engine={args.rollout}")
    try:
        cfg = load_config(args.recipe, overrides)
        dist.check_config(cfg)  # e.g. data.prompts_per_step divisible by torchrun's world size
    except (ValueError, TypeError) as e:
        print(f"config error: {e}", file=sys.stderr)
        return 2
    try:
        summary = train(cfg, resume=args.resume)
    except (TrainingStopped, RolloutOutOfMemory, RolloutServerError) as e:
        print(f"training stopped: {e}", file=sys.stderr)
        return 1
    if dist.env_rank() > 0:
        return 0
    t = summary["mean_timing_s"]
    print(f"done: {summary['steps']} steps in {summary['wall_s']:.0f} s; mean reward first 10 steps "
          f"{summary['first10_reward']:.3f}, last 10 {summary['last10_reward']:.3f}; mean per step: "
          + ", ".join(f"{k.split('/')[1]} {v:.1f}s" for k, v in t.items()))
    print(f"outputs in {cfg.train.output_dir} (metrics.jsonl, tensorboard/, rewards.png, step_*/)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
