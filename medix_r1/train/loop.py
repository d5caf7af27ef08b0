"""The training loop: :func:`train` builds a run and steps it to ``train.max_steps``.

One step, top to bottom in :func:`run_steps`:

1. sample ``data.prompts_per_step`` prompts and roll out ``rollout.n`` responses each, keeping each
   sampled token's raw log-prob; submit them to the reward worker (DAPO: score, drop degenerate
   groups and refill);
2. while the worker scores: the reference (and, off-policy, the old) log-probs the loss needs;
3. group advantages (``medix_kernels.group_advantages``) once the rewards are in;
4. mini-batch updates with ``fused_linear_grpo_loss`` (or ``grpo_loss``); AdamW, grad clip, LR schedule;
5. the new weights into the rollout engine; metrics; faults; checkpoints.

Under ``torchrun`` each rank rolls out and trains on its share of the prompts with an FSDP2-sharded
policy and computes what one process would; what that takes is behind :mod:`medix_r1.parallel`.
"""
from __future__ import annotations

import logging
import time
from contextlib import contextmanager

import torch

from medix_r1.config import TrainConfig
from medix_r1.parallel import collectives as dist
from medix_r1.parallel import layout, lockstep
from medix_r1.rewards.plugins import function_name
from medix_r1.train.batch import make_batch, placeholder_batch
from medix_r1.train.batch_metrics import (
    batch_metrics,
    gpu_peak_flops,
    judge_metrics,
    memory_metrics,
    seen_so_far,
    update_mfu,
)
from medix_r1.train.build import Run, build_run, close_run
from medix_r1.train.metrics import bar_postfix, step_metrics, summarize
from medix_r1.train.output_dir import release_output_dir
from medix_r1.train.policy import reference_logp, sequence_logp
from medix_r1.train.step import (
    TrainingStopped,
    advantages,
    collect,
    overlong_penalties,
    sync_weights,
    update,
    with_rollout_logp,
)
from medix_r1.train.trackers import check_report_to, completions_table
from medix_r1.train.validate import validate

log = logging.getLogger("medix_r1.train")


def train(cfg: TrainConfig, *, resume: bool = False, overwrite: bool = False, eval_hook=None,
          reward_worker=None) -> dict:
    """Run training to ``cfg.train.max_steps``; returns a summary dict (steps, rewards, timings).

    Every ``train.eval_every`` steps the policy is validated on ``data.val`` (train/validate.py,
    logged under ``val/``); ``eval_hook(step, model, tokenizer) -> dict`` runs then too, its metrics
    logged under ``eval/`` (under torchrun it is called on every rank, with the sharded model).
    ``reward_worker`` defaults to ``RewardWorker(cfg.reward)`` (one per rank under torchrun).
    A used output dir needs ``resume`` or ``overwrite`` (see ``medix_r1.train.output_dir``)."""
    own_group = dist.init(cfg.dist.timeout_min)  # under torchrun: join its process group
    try:
        dist.check_config(cfg, dist.world_size())
        check_report_to(cfg.train.report_to, cfg.train.tensorboard)  # a missing tracker library, before any model
        t_start = time.perf_counter()
        run = build_run(cfg, resume=resume, overwrite=overwrite, eval_hook=eval_hook, reward_worker=reward_worker)
        try:
            last = run_steps(run)
        finally:
            close_run(run)
        return summarize(run.metrics.history, time.perf_counter() - t_start, last)
    finally:
        release_output_dir(cfg.train.output_dir)  # the run's lock on its folder (train/output_dir.py)
        if own_group:
            dist.close()


@contextmanager
def timed(times: dict, key: str):
    dist.synchronize()  # GPU work is asynchronous: charge it to the phase that queued it
    t = time.perf_counter()
    yield
    dist.synchronize()
    times[key] = times.get(key, 0.0) + time.perf_counter() - t


def run_steps(run: Run) -> int:
    """The step loop; returns the last step run."""
    cfg, o, step = run.cfg, run.cfg.optim, run.start_step
    every = cfg.train.eval_every
    if cfg.train.eval_before_train and run.start_step == 0:
        run.metrics.log(0, validate(run, 0))
    for step in range(run.start_step + 1, cfg.train.max_steps + 1):
        t_step = time.perf_counter()
        # 1. rollouts, submitted for scoring (this rank's share of the prompts; DAPO filters and refills)
        got = collect(run, step)
        times = got.times
        if not got.group_owner:
            log.warning("step %d: every group was degenerate after %d refills; no update this step",
                        step, cfg.algorithm.max_refill_tries)
            run.metrics.log(step, {"rollout/groups_kept": 0, "rollout/dropped_groups": got.info["dropped_groups"]})
            run.bar.update(1)
            if end_of_step(run, step):
                break
            continue
        r = got.rollouts
        batch = make_batch(r.prompt_ids, r.response_ids, run.pad_id, r.images) if len(r) \
            else placeholder_batch(run.pad_id)
        trained = [not (cfg.loss.mask_truncated and t) for t in r.truncated]  # loss.mask_truncated: no loss
        if not all(trained):
            batch["mask"] *= torch.tensor(trained, dtype=batch["mask"].dtype)[:, None]
        batch = layout.to_device(with_rollout_logp(batch, r, run.engine))
        # 2. log-probs the loss needs, while the worker scores (off-policy updates need the old ones)
        with timed(times, "logp"):
            ref_logp = reference_logp(run.ref, run.policy, batch, cfg.rollout.temperature, o.micro_batch_size,
                                      run.ref_is_base)
            rows_global = len(got.group_owner) * cfg.rollout.n
            old_logp = sequence_logp(run.policy, batch, cfg.rollout.temperature, o.micro_batch_size) \
                if (o.updates_per_step > 1 or (o.mini_batch_size and o.mini_batch_size < rows_global)) else None
        # 3. advantages over the global batch, once the rewards are in
        results = got.wait_rewards(cfg)
        rows = layout.row_layout(got.group_owner, cfg.rollout.n,
                                 [len(x) if keep else 0 for x, keep in zip(r.response_ids, trained)],
                                 [x.total for x in results])
        adv = advantages(rows, cfg)
        # 4. update
        peak_before_update = dist.peak_memory_gb(reset=True)
        run.engine.sleep()
        with timed(times, "update"):
            stats, nan_skipped = update(run.policy, run.optimizer, batch, adv, ref_logp, old_logp, cfg,
                                                  run.lcfg, step, rows)
        peak_update = dist.peak_memory_gb(reset=True)
        run.scheduler.step()
        run.engine.wake_up()
        # 5. weight sync, metrics, faults, checkpoint
        with timed(times, "sync"):
            if not nan_skipped:
                sync_weights(run.engine, run.policy)
        m = step_metrics(r, results, batch, stats, got.info, nan_skipped,
                         [function_name(f) for f in cfg.reward.functions], overlong_penalties(r, cfg))
        m.update({"optim/lr": run.scheduler.get_last_lr()[0], **{f"time/{k}": v for k, v in times.items()}})
        m["time/reward_wait"] = m.pop("time/reward")
        m.update(first_read_metrics(run, r, results, adv, rows, stats, old_logp is not None, times["update"]))
        if peak_update is not None:  # GiB allocated by PyTorch on this rank's GPU
            m.update({"memory/update_peak_gb": peak_update, "memory/rollout_logp_peak_gb": peak_before_update})
        run.counters["nan_in_row"] = run.counters["nan_in_row"] + 1 if nan_skipped else 0
        run.judge_window.append(m["reward/judge_failed_rate"])
        if every and step % every == 0:
            m.update(validate(run, step))
            if run.eval_hook is not None:
                m.update({f"eval/{k}": v for k, v in run.eval_hook(step, run.policy, run.tokenizer).items()})
        m["data/filtered_overlong"] = run.counters.get("filtered_overlong", 0)
        m["time/step"] = time.perf_counter() - t_step
        m["perf/tokens_per_s"] = float(sum(rows.tokens)) / m["time/step"]
        if run.vision is not None:
            m.update(run.vision.metrics())  # data/skipped_image_records
        log_step(run, step, m)
        if cfg.train.log_completions_every and step % cfg.train.log_completions_every == 0:
            log_completions(run, step, r, results)
        stop_on_faults(run, step)
        if end_of_step(run, step):
            break
    if every and step % every and step > run.start_step:  # the official trainer validates the final weights too
        run.metrics.log(step, validate(run, step))
    return step


def first_read_metrics(run: Run, r, results, adv, rows, stats: dict, off_policy: bool, update_s: float) -> dict:
    """What a GRPO user reads first besides the means (train/batch_metrics.py): the spread of rewards,
    advantages and lengths, tokens and samples so far, the judge's counters, memory; the old-vs-new
    KL when the update is off-policy; on a GPU the update's FLOP/s and MFU."""
    cfg = run.cfg
    m = batch_metrics(r, results, adv, rows, cfg.rollout.n, [function_name(f) for f in cfg.reward.functions])
    m.update(seen_so_far(run.counters, r))
    m.update(judge_metrics(run.reward_worker))
    m.update(memory_metrics())
    if off_policy:
        m["loss/approx_kl_old"] = stats["approx_kl_old"]
    if dist.device().type == "cuda":
        tokens = dist.sum_floats([float(sum(len(p) + len(x) for p, x in zip(r.prompt_ids, r.response_ids)))])[0]
        m.update(update_mfu(sum(p.numel() for p in run.policy.parameters()), int(tokens), cfg.optim.updates_per_step,
                            update_s, gpu_peak_flops(torch.cuda.get_device_name()), dist.world_size()))
    return m


def log_step(run: Run, step: int, m: dict) -> None:
    run.metrics.log(step, m)
    run.bar.set_postfix(bar_postfix(m))
    run.bar.update(1)
    log.info("step %d: reward %.3f (format %.3f) len %.0f | rollout %.1fs reward %.1fs logp %.1fs "
             "update %.1fs sync %.2fs", step, m["reward/total"], m["reward/format"], m["rollout/response_len"],
             m["time/rollout"], m["time/reward_wait"], m["time/logp"], m["time/update"], m["time/sync"])


def log_completions(run: Run, step: int, r, results) -> None:
    """This rank's samples as a table for the trackers: the prompt as the model saw it (its last 1,000
    characters), the completion and every reward component."""
    prompts = [run.tokenizer.decode(ids, skip_special_tokens=True)[-1000:] for ids in r.prompt_ids]
    columns, rows = completions_table(step, prompts, r.texts, results,
                                      [function_name(f) for f in run.cfg.reward.functions])
    run.metrics.log_table(step, columns, rows)


def stop_on_faults(run: Run, step: int) -> None:
    """Checkpoint and stop after ``train.max_nan_steps`` non-finite steps in a row, or when the judge
    failed on more than ``train.judge_failure_threshold`` of the answers over the window."""
    t = run.cfg.train
    if run.counters["nan_in_row"] >= t.max_nan_steps:
        run.save(step)
        raise TrainingStopped(f"{run.counters['nan_in_row']} steps in a row had a non-finite loss; stopping "
                              f"(lower optim.lr or check the data; train.max_nan_steps sets the limit)")
    window = run.judge_window
    if len(window) == window.maxlen and sum(window) / len(window) > t.judge_failure_threshold:
        run.save(step)
        raise TrainingStopped(
            f"the judge failed on {sum(window) / len(window):.0%} of answers over the last {len(window)} steps "
            f"(threshold {t.judge_failure_threshold:.0%}): check reward.judge_url / the judge server, or raise "
            f"train.judge_failure_threshold")


def end_of_step(run: Run, step: int) -> bool:
    """Checkpoint when due (every ``train.save_every`` steps, the last step, a stop signal on any rank);
    True when the run must stop now."""
    stopping = lockstep.stop_requested(run.stop_signal is not None)
    t = run.cfg.train
    if stopping or step == t.max_steps or (t.save_every and step % t.save_every == 0):
        run.save(step)
    if stopping:
        log.warning("stopped by signal %s after step %d; resume with --resume", run.stop_signal or "(on another rank)",
                    step)
    return stopping
