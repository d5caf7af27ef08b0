"""The parts of one training step: collect scored rollouts, advantages, the mini-batch update.

The loop (:mod:`medix_r1.train.loop`) calls them in order. Each is written as single-process
code; what torchrun adds is a call into :mod:`medix_r1.parallel` with the rule in its docstring.
"""
from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field

import torch

from medix_kernels import group_advantages, group_stats
from medix_kernels.loss_config import ROLLOUT_STATS
from medix_r1.config import TrainConfig
from medix_r1.data.prompts import problem_text
from medix_r1.parallel import collectives as dist
from medix_r1.parallel import fsdp, layout, lockstep
from medix_r1.rollout import HfRollout, Rollouts, VllmRollout
from medix_r1.train.batch import slice_batch
from medix_r1.train.policy import policy_loss

log = logging.getLogger("medix_r1.train")


# ----------------------------------------------------------------------------- rollouts + rewards

def score(worker, rollouts: Rollouts, records: list[dict], cfg: TrainConfig):
    """Submit the responses to the reward worker; returns a Future of RewardResults."""
    problems = [problem_text(records[g], cfg.data.context_chars) for g in rollouts.group]
    solutions = [records[g]["solution"] for g in rollouts.group]
    if not cfg.reward.functions:
        return worker.submit(problems, rollouts.texts, solutions)
    # plug-in reward functions get every other field of the records, TRL-style (**columns)
    names = sorted({k for g in set(rollouts.group) for k in records[g]} - {"problem"})
    columns = {k: [records[g].get(k) for g in rollouts.group] for k in names}
    return worker.submit(problems, rollouts.texts, solutions, columns=columns)


def keep_groups(rewards: torch.Tensor, n: int, cfg: TrainConfig) -> list[int]:
    """Indices of the groups to train on; DAPO drops degenerate groups and those with mean outside
    (low, high)."""
    groups = rewards.shape[0] // n
    if not cfg.algorithm.dynamic_sampling:
        return list(range(groups))
    stats = group_stats(rewards, n)
    a = cfg.algorithm
    keep = (stats.mean > a.dynamic_sampling_low) & (stats.mean < a.dynamic_sampling_high)
    if a.drop_equal_groups:
        keep &= ~stats.degenerate
    return [g for g in range(groups) if bool(keep[g])]


def rollout(run, prompts, step: int, attempt: int = 0, offset: int = 0) -> Rollouts:
    """``engine.generate`` for this rank's prompts, ``offset`` = their position in the step's global list
    (the sampling seeds use the global index). Under torchrun the ``hf`` engine generates on the whole
    policy, gathered on every rank for the call (every rank enters, even with no prompts)."""
    gather = fsdp.full_weights(run.policy) if isinstance(run.engine, HfRollout) else contextlib.nullcontext()
    with gather:
        return run.engine.generate(prompts, step, run.cfg.train.seed, attempt, offset=offset) if prompts \
            else Rollouts()


def check_engine_logprobs(engine, cfg: TrainConfig) -> None:
    """loss.rollout_correction needs the engine's log-probs of the sampling distribution (after temperature);
    an engine that returns raw ones is a config error, raised once the engine is built, before any step."""
    if cfg.loss.rollout_correction != "none" and not getattr(engine, "sampling_logprobs", False):
        raise ValueError(f"loss.rollout_correction={cfg.loss.rollout_correction} needs the sampling log-probs at "
                         f"rollout.temperature, which this rollout.engine={cfg.rollout.engine} does not return "
                         "(a rollout server started before they were supported, or `vllm serve` without "
                         "--logprobs-mode processed_logprobs): restart it, or set loss.rollout_correction=none")


def with_rollout_logp(batch: dict, r: Rollouts, engine) -> dict:
    """The batch plus ``rollout_logp`` [B, R] (the engine's log-probs of the sampled tokens, 0 past each
    response; a placeholder batch gets zeros) when the engine returns the sampling distribution's: the
    loss's rollout correction and mismatch stats read them."""
    if getattr(engine, "sampling_logprobs", False):
        logp = torch.zeros_like(batch["mask"])
        for b, lp in enumerate(r.sample_logp):
            logp[b, :len(lp)] = torch.tensor(lp, dtype=logp.dtype)
        batch["rollout_logp"] = logp
    return batch


def sync_weights(engine, policy) -> None:
    """The policy's new weights into the engine; a sharded policy reaches the vLLM engine one gathered
    parameter at a time (the server engine gathers DTensors itself; hf has nothing to do)."""
    engine.sync(fsdp.gathered(policy) if isinstance(engine, VllmRollout) else policy)


@dataclass
class Collected:
    """A step's scored rollouts (this rank's rows) and the owner rank of each kept group, in order."""
    rollouts: Rollouts
    group_owner: list[int]
    results: list | None = None     # reward results, once known
    pending: object = None          # a Future of them while the worker scores (on-policy GRPO)
    times: dict = field(default_factory=lambda: {"rollout": 0.0, "reward": 0.0})
    info: dict = field(default_factory=lambda: {"refills": 0, "dropped_groups": 0, "prompts": 0})

    def wait_rewards(self) -> list:
        if self.results is None:
            t = time.perf_counter()
            self.results = self.pending.result()
            self.times["reward"] += time.perf_counter() - t
        return self.results


def collect(run, step: int) -> Collected:
    """Roll out ``data.prompts_per_step`` prompts (this rank's share) and submit them for scoring.

    Without DAPO the rewards are left pending so the caller can compute log-probs meanwhile. With
    DAPO the groups are scored at once and filtered, and more prompts are drawn (at most
    ``algorithm.max_refill_tries`` times, ``algorithm.refill_chunk`` a round when set) until enough
    groups are kept; the first ``data.prompts_per_step`` kept groups are trained on. Under torchrun every rank draws
    the same prompts, rolls out and scores its slice, and the kept groups are agreed through one
    all-gather, so they are a single process's, in its order."""
    cfg, n, want = run.cfg, run.cfg.rollout.n, run.cfg.data.prompts_per_step
    out = Collected(Rollouts(), [], results=[])
    for attempt in range(cfg.algorithm.max_refill_tries + 1 if cfg.algorithm.dynamic_sampling else 1):
        need = want - len(out.group_owner)
        if need <= 0:
            break
        # DAPO rolls out algorithm.refill_chunk prompts a round when set (the official scripts: 128)
        draw = (cfg.algorithm.refill_chunk or need) if cfg.algorithm.dynamic_sampling else need
        idx, prompts = run.take_prompts(draw)
        lo, hi = layout.shard_range(len(idx))
        t = time.perf_counter()
        r = rollout(run, prompts[lo:hi], step, attempt, offset=lo)
        out.times["rollout"] += time.perf_counter() - t
        out.info["prompts"] += len(idx)
        records = [run.records[i] for i in idx[lo:hi]]
        if not cfg.algorithm.dynamic_sampling:  # every group is kept: the rewards can wait
            return Collected(r, layout.owners(len(idx)), pending=score(run.reward_worker, r, records, cfg),
                             times=out.times, info=out.info)
        t = time.perf_counter()
        results = score(run.reward_worker, r, records, cfg).result() if len(r) else []
        out.times["reward"] += time.perf_counter() - t
        mine = keep_groups(torch.tensor([x.total for x in results], dtype=torch.float32), n, cfg) if results else []
        keep = [g for part in dist.all_gather([lo + g for g in mine]) for g in part]  # global, ascending
        out.info["dropped_groups"] += len(idx) - len(keep)
        out.info["refills"] += int(attempt > 0)
        group_rank = layout.owners(len(idx))
        for g in keep[:need]:
            out.group_owner.append(group_rank[g])
            if lo <= g < hi:
                rows = range((g - lo) * n, (g - lo + 1) * n)
                out.rollouts.extend(r.select(rows), group=len(out.rollouts) // n)
                out.results.extend(results[j] for j in rows)
    return out


# ----------------------------------------------------------------------------- advantages

def advantages(rows: layout.Layout, cfg: TrainConfig) -> torch.Tensor:
    """Group advantages over the global batch (every rank's rewards, in a single process's order);
    returns this rank's rows on its device."""
    a = cfg.algorithm
    rewards = torch.tensor(rows.rewards, dtype=torch.float32)
    adv = group_advantages(rewards, cfg.rollout.n, mode=a.advantage_mode, scale=a.advantage_scale,
                           eps=a.advantage_eps)
    own = rows.own_rows()
    return (adv[own] if own else torch.zeros(1)).to(dist.device())


# ----------------------------------------------------------------------------- one update

def update(model, optimizer, batch: dict, advantages, ref_logp, old_logp, cfg: TrainConfig, lcfg, step: int,
           rows: layout.Layout):
    """Mini-batch updates over the step's samples. Returns (stats, nan_skipped); the stats include the
    rollout correction's diagnostics (``rollout_*``, token-weighted means and the max) when the batch has
    the engine's log-probs.

    Mini-batches and loss weights come from the global batch (``rows``, a single process's rows and
    order): each rank runs its own rows of a mini-batch, weighted by their share of the mini-batch's
    global weight, and FSDP sums the ranks' gradients (see parallel.lockstep for the padded passes)."""
    o = cfg.optim
    B = len(rows.tokens)  # rows of the global batch (every rank's)
    mini = o.mini_batch_size or B
    per_token = lcfg.aggregation == "token-mean"
    sums = {"loss": 0.0, "kl_mean": 0.0, "clip_frac_low": 0.0, "clip_frac_high": 0.0, "ratio_mean": 0.0,
            "grad_norm": 0.0}
    rollout = RolloutStats() if "rollout_logp" in batch else None
    count, nan_skipped = 0, False
    gen = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + step)
    for _ in range(o.updates_per_step):
        order = torch.randperm(B, generator=gen) if (o.updates_per_step > 1 or mini < B) else torch.arange(B)
        for ms in range(0, B, mini):
            mini_rows = order[ms:ms + mini].tolist()
            weight_total = float(sum(rows.tokens[g] for g in mini_rows)) if per_token else float(len(mini_rows))
            optimizer.zero_grad(set_to_none=True)
            acc = {k: 0.0 for k in sums if k != "grad_norm"}
            finite, saw_image = True, False
            for local in lockstep.micro_batches(rows, mini_rows, o.micro_batch_size):
                r = torch.tensor(local if local is not None else [0], dtype=torch.long)
                mb = slice_batch(batch, r)
                saw_image |= local is not None and "pixel_values" in mb
                w = 0.0 if local is None else \
                    (float(mb["mask"].sum()) if per_token else float(len(r))) / max(weight_total, 1e-9)
                loss, stats = fsdp.run(
                    model, policy_loss, mb, advantages[r], None if old_logp is None else old_logp[r],
                    None if ref_logp is None else ref_logp[r], lcfg, cfg.loss.impl, cfg.loss.chunk_size)
                if not lockstep.all_finite(None if local is None else loss):
                    finite = False
                    break
                (loss * w).backward()
                if local is None:
                    continue
                acc["loss"] += float(loss.detach()) * w
                for k in ("kl_mean", "clip_frac_low", "clip_frac_high", "ratio_mean"):
                    if k in stats:
                        acc[k] += float(stats[k]) * w
                if rollout is not None:
                    rollout.add(stats, mb["mask"])
            if finite:
                lockstep.drop_unused_vision_gradients(model, saw_image)
                params = [p for p in model.parameters() if p.grad is not None]
                gnorm = fsdp.clip_grad_norm(params, o.grad_clip if o.grad_clip > 0 else float("inf"))
                finite = bool(torch.isfinite(gnorm))
                if not finite:
                    log.warning("step %d: non-finite gradient norm, skipping this optimizer step", step)
            else:
                log.warning("step %d: non-finite loss, skipping this optimizer step", step)
            if not finite:
                optimizer.zero_grad(set_to_none=True)
                nan_skipped = True
                continue
            optimizer.step()
            for k, v in acc.items():
                sums[k] += v
            sums["grad_norm"] += float(gnorm)
            count += 1
    keys = [k for k in sums if k != "grad_norm"]  # weighted shares of each rank: their sum is the global value
    sums.update(zip(keys, dist.sum_floats([sums[k] for k in keys])))
    stats = {k: v / count for k, v in sums.items()} if count else {k: float("nan") for k in sums}
    if rollout is not None:
        stats.update(rollout.result())
    return stats, nan_skipped


class RolloutStats:
    """The loss's rollout_* stats over every micro-batch the step ran (all ranks): means weighted by the
    micro-batch's response tokens (its sequences for the perplexity ratio), the largest weight. Summed on
    the device and read once per step (no host sync per micro-batch)."""

    MEANS = tuple(k for k in ROLLOUT_STATS if k != "rollout_weight_max")

    def __init__(self):
        self.acc = None      # [the weighted sums of MEANS..., tokens, sequences]
        self.largest = None

    def add(self, stats: dict, mask: torch.Tensor) -> None:
        m = mask.float()
        tokens, seqs = m.sum(), (m.sum(-1) > 0).float().sum()
        parts = [stats[k].float() * (seqs if k == "rollout_ppl_ratio" else tokens) for k in self.MEANS]
        row = torch.stack(parts + [tokens, seqs])
        self.acc = row if self.acc is None else self.acc + row
        top = stats["rollout_weight_max"].float()
        self.largest = top if self.largest is None else torch.maximum(self.largest, top)

    def result(self) -> dict:
        local = [0.0] * (len(self.MEANS) + 2) if self.acc is None else self.acc.tolist()
        total = dist.sum_floats(local)  # the same length on every rank, whether it ran rows or not
        tokens, seqs = total[-2], total[-1]
        out = {k: v / (seqs if k == "rollout_ppl_ratio" else tokens) for k, v in zip(self.MEANS, total)
               if (seqs if k == "rollout_ppl_ratio" else tokens) > 0}
        out["rollout_weight_max"] = max(dist.all_gather(0.0 if self.largest is None else float(self.largest)))
        return out
