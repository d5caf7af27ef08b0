"""The parts of one training step: collect scored rollouts, advantages, the mini-batch update.

The loop (:mod:`medix_r1.train.loop`) calls them in order. Each is written as single-process
code; what torchrun adds is a call into :mod:`medix_r1.parallel` with the rule in its docstring.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import math
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
from medix_r1.train.batch import index_tensor, slice_batch
from medix_r1.train.policy import policy_loss
from medix_r1.utils.lora import MergedWeights, is_lora

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
    parameter at a time (the server engine gathers DTensors itself; hf has nothing to do). A LoRA
    policy's engines get the merged weights under the base model's names (utils.lora.MergedWeights)."""
    if isinstance(engine, HfRollout):
        engine.sync(policy)  # generates on the policy itself, adapters included
    elif is_lora(policy):
        fsdp.reshard(policy)
        engine.sync(MergedWeights(policy))
    else:
        engine.sync(fsdp.gathered(policy) if isinstance(engine, VllmRollout) else policy)


# How much longer than the reward batch deadline the trainer waits for the worker's results. The
# worker's Future is done by the deadline plus a few seconds whatever its event loop does
# (RewardWorker._bounded); this bounds the trainer's wait even if that safeguard itself failed.
REWARD_WAIT_MARGIN_S = 60.0


class TrainingStopped(RuntimeError):
    """The run stopped on purpose (NaN losses, judge failures): the message says why and what to do."""


def reward_results(future, cfg: TrainConfig) -> list:
    """The reward worker's results for a batch, waited for at most reward.deadline_s plus a margin."""
    limit = cfg.reward.deadline_s + REWARD_WAIT_MARGIN_S
    try:
        return future.result(timeout=limit)
    except concurrent.futures.TimeoutError:
        raise TrainingStopped(f"the reward worker returned no results within {limit:.0f} s (reward.deadline_s "
                              f"{cfg.reward.deadline_s:g} s + {REWARD_WAIT_MARGIN_S:g} s): it is stuck; the last "
                              "checkpoint is intact, restart with --resume") from None


@dataclass
class Collected:
    """A step's scored rollouts (this rank's rows) and the owner rank of each kept group, in order."""
    rollouts: Rollouts
    group_owner: list[int]
    results: list | None = None     # reward results, once known
    pending: object = None          # a Future of them while the worker scores (on-policy GRPO)
    times: dict = field(default_factory=lambda: {"rollout": 0.0, "reward": 0.0})
    info: dict = field(default_factory=lambda: {"refills": 0, "dropped_groups": 0, "prompts": 0})

    def wait_rewards(self, cfg: TrainConfig) -> list:
        """The rewards, with DAPO's overlong shaping applied (:func:`shape_overlong`)."""
        if self.results is None:
            t = time.perf_counter()
            self.results = reward_results(self.pending, cfg)
            self.times["reward"] += time.perf_counter() - t
            shape_overlong(self.results, self.rollouts.response_ids, cfg)
        return self.results


def overlong_penalty(length: int, max_tokens: int, buffer: int, penalty: float) -> float:
    """DAPO's soft overlong punishment: 0 up to ``max_tokens - buffer`` tokens, then falling linearly
    to ``-penalty`` at ``max_tokens`` (0 when ``buffer`` is 0)."""
    if buffer <= 0:
        return 0.0
    return min(0.0, -(length - (max_tokens - buffer)) / buffer * penalty)


def overlong_penalties(r: Rollouts, cfg: TrainConfig) -> list[float] | None:
    """Each sample's overlong penalty, or None when reward.overlong_buffer is off."""
    rw = cfg.reward
    if rw.overlong_buffer <= 0:
        return None
    return [overlong_penalty(len(ids), cfg.rollout.max_tokens, rw.overlong_buffer, rw.overlong_penalty)
            for ids in r.response_ids]


def shape_overlong(results: list, response_ids: list, cfg: TrainConfig) -> None:
    """Add each response's overlong penalty to its reward total, in place (``reward.overlong_buffer``;
    off: nothing changes)."""
    rw = cfg.reward
    if rw.overlong_buffer <= 0:
        return
    for x, ids in zip(results, response_ids):
        x.total = x.total + overlong_penalty(len(ids), cfg.rollout.max_tokens, rw.overlong_buffer,
                                             rw.overlong_penalty)


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
        results = reward_results(score(run.reward_worker, r, records, cfg), cfg) if len(r) else []
        out.times["reward"] += time.perf_counter() - t
        shape_overlong(results, r.response_ids, cfg)  # before the filter: DAPO filters the shaped rewards
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

STATS = ("loss", "kl_mean", "clip_frac_low", "clip_frac_high", "ratio_mean", "entropy_mean",
         "approx_kl_old")  # loss-weighted means (approx_kl_old: off-policy only, else 0)


def mini_batch_plan(B: int, mini: int, epochs: int, gen: torch.Generator) -> list[list[int]]:
    """The global rows of every mini-batch of the update, epoch by epoch: shuffled (``gen``) when
    there is more than one mini-batch or epoch, else the rows in order. Host memory only."""
    plan = []
    for _ in range(epochs):
        order = torch.randperm(B, generator=gen).tolist() if (epochs > 1 or mini < B) else list(range(B))
        plan += [order[ms:ms + mini] for ms in range(0, B, mini)]
    return plan


def backward_mini_batch(model, batch: dict, mini_rows: list[int], advantages, old_logp, ref_logp, cfg: TrainConfig,
                        lcfg, rows: layout.Layout, rollout_stats=None):
    """Forward + backward over this rank's micro-batches of one mini-batch (gradients accumulate).

    Returns (the stats' weighted sums [len(STATS)] float64, whether every loss was finite, whether a
    micro-batch had an image), the first two on the device: nothing here waits for it. The loss
    weights come from the layout's token counts, on the host. ``rollout_stats`` (a RolloutStats), when
    given, takes each micro-batch's rollout_* stats (on the device too)."""
    per_token = lcfg.aggregation == "token-mean"  # the loss type's own when loss.aggregation is auto
    own_tokens = [rows.tokens[g] for g in rows.own_rows()]       # this rank's rows, in local order
    # sequence aggregations count the rows with tokens (loss.mask_truncated leaves some with none)
    weight_total = float(sum(rows.tokens[g] for g in mini_rows)) if per_token else \
        float(sum(rows.tokens[g] > 0 for g in mini_rows))
    dev = advantages.device
    sums = torch.zeros(len(STATS), dtype=torch.float64, device=dev)
    finite = torch.ones((), dtype=torch.bool, device=dev)
    saw_image = False
    for local in lockstep.micro_batches(rows, mini_rows, cfg.optim.micro_batch_size):
        picked = local if local is not None else [0]
        r = index_tensor(picked, dev)
        mb = slice_batch(batch, picked)
        saw_image |= local is not None and "pixel_values" in mb
        w = 0.0 if local is None else \
            (float(sum(own_tokens[j] for j in local)) if per_token else float(sum(own_tokens[j] > 0 for j in local))) \
            / max(weight_total, 1e-9)
        loss, stats = fsdp.run(
            model, policy_loss, mb, advantages[r], None if old_logp is None else old_logp[r],
            None if ref_logp is None else ref_logp[r], lcfg, cfg.loss.impl, cfg.loss.chunk_size)
        (loss * w).backward()  # a non-finite loss poisons the gradients too: the step is skipped below
        if local is None:
            continue
        loss = loss.detach()
        finite &= torch.isfinite(loss)
        terms = [loss] + [stats[k] if k in stats else loss.new_zeros(()) for k in STATS[1:]]
        sums += torch.stack([t.detach().double() for t in terms]) * w
        if rollout_stats is not None:
            rollout_stats.add(stats, mb["mask"])
    return sums, finite, saw_image


def update(model, optimizer, batch: dict, advantages, ref_logp, old_logp, cfg: TrainConfig, lcfg, step: int,
           rows: layout.Layout):
    """Mini-batch updates over the step's samples. Returns (stats, nan_skipped); the stats include the
    rollout correction's diagnostics (``rollout_*``: RolloutStats) when the batch has the engine's log-probs.

    Mini-batches and loss weights come from the global batch (``rows``, a single process's rows and
    order): each rank runs its own rows of a mini-batch, weighted by their share of the mini-batch's
    global weight, and FSDP sums the ranks' gradients (see parallel.lockstep for the padded passes).
    The host reads the device once per optimizer step (whether to step, and the statistics), so a GPU's
    queue runs the micro-batches without waiting."""
    o = cfg.optim
    B = len(rows.tokens)  # rows of the global batch (every rank's)
    mini = o.mini_batch_size or B
    totals = dict.fromkeys(STATS + ("grad_norm",), 0.0)
    count, nan_skipped = 0, False
    rollout = RolloutStats() if "rollout_logp" in batch else None
    rollout_local = None  # its sums as read from the device, with the first epoch's last optimizer step
    gen = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + step)
    plan = mini_batch_plan(B, mini, o.updates_per_step, gen)
    first_epoch = math.ceil(B / mini)
    for k, mini_rows in enumerate(plan):
        optimizer.zero_grad(set_to_none=True)
        sums, finite, saw_image = backward_mini_batch(model, batch, mini_rows, advantages, old_logp, ref_logp, cfg,
                                                      lcfg, rows, rollout if k < first_epoch else None)
        lockstep.drop_unused_vision_gradients(model, saw_image)
        params = [p for p in model.parameters() if p.grad is not None]
        gnorm = fsdp.clip_grad_norm(params, o.grad_clip if o.grad_clip > 0 else float("inf"))
        gnorm = gnorm.detach().to(sums.device, torch.float64).view(1)
        parts = [finite.double().view(1), gnorm, sums]
        if rollout is not None and k == first_epoch - 1:  # the rollout stats are complete: read them with the rest
            parts.append(rollout.device_sums(sums.device))
        read = torch.cat(parts).tolist()  # the step's one read of the device
        read, rollout_read = read[:2 + len(STATS)], read[2 + len(STATS):]
        if rollout_read:
            rollout_local = rollout_read
        if not lockstep.all_finite(bool(read[0])):
            log.warning("step %d: non-finite loss, skipping this optimizer step", step)
        elif not math.isfinite(read[1]):
            log.warning("step %d: non-finite gradient norm, skipping this optimizer step", step)
        else:
            optimizer.step()
            for key, v in zip(STATS + ("grad_norm",), read[2:] + read[1:2]):
                totals[key] += v
            count += 1
            continue
        optimizer.zero_grad(set_to_none=True)
        nan_skipped = True
    # weighted shares of each rank: their sum is the global value (the gradient norm is global already)
    totals.update(zip(STATS, dist.sum_floats([totals[k] for k in STATS])))
    stats = {k: v / count for k, v in totals.items()} if count else {k: float("nan") for k in totals}
    if rollout is not None:
        stats.update(rollout.result(rollout_local))
    return stats, nan_skipped


class RolloutStats:
    """The loss's rollout_* stats over the first epoch's micro-batches (all ranks): means weighted by the
    micro-batch's response tokens (its sequences for the perplexity ratio), and the maxima. Summed on the
    device and read with the optimizer step that ends the first epoch (no read of their own)."""

    MAXES = ("rollout_weight_max", "rollout_logp_mismatch_max")
    MEANS = tuple(k for k in ROLLOUT_STATS if k not in ("rollout_weight_max", "rollout_logp_mismatch_max"))

    def __init__(self):
        self.acc = None  # [the weighted sums of MEANS..., tokens, sequences, the MAXES...]

    def add(self, stats: dict, mask: torch.Tensor) -> None:
        m = mask.float()
        tokens, seqs = m.sum(), (m.sum(-1) > 0).float().sum()
        parts = [stats[k].float() * (seqs if k == "rollout_ppl_ratio" else tokens) for k in self.MEANS]
        row = torch.stack(parts + [tokens, seqs] + [stats[k].float() for k in self.MAXES])
        if self.acc is None:
            self.acc = row
        else:
            n = len(self.MAXES)
            self.acc = torch.cat([self.acc[:-n] + row[:-n], torch.maximum(self.acc[-n:], row[-n:])])

    def device_sums(self, device) -> torch.Tensor:
        """This rank's sums and maxima as one float64 vector (zeros where it ran no rows), for the
        optimizer step's one read of the device."""
        if self.acc is None:
            return torch.zeros(len(self.MEANS) + 2 + len(self.MAXES), dtype=torch.float64, device=device)
        return self.acc.to(device, torch.float64)

    def result(self, local: list[float]) -> dict:
        """The step's rollout_* stats over every rank, from ``local``: device_sums() as read on the host."""
        n = len(self.MAXES)
        total = dist.sum_floats(local[:-n])  # the same length on every rank, whether it ran rows or not
        tokens, seqs = total[-2], total[-1]
        out = {k: v / (seqs if k == "rollout_ppl_ratio" else tokens) for k, v in zip(self.MEANS, total)
               if (seqs if k == "rollout_ppl_ratio" else tokens) > 0}
        maxima = zip(*dist.all_gather(local[-n:]))
        out.update({k: max(v) for k, v in zip(self.MAXES, maxima)})
        return out
