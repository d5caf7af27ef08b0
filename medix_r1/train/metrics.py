"""Run observability: the step's metrics, metrics.jsonl, the trackers (TensorBoard, wandb, mlflow, trackio:
:mod:`medix_r1.train.trackers`), a tqdm bar and the final reward plot."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from medix_r1.parallel import collectives as dist
from medix_r1.train.trackers import make_trackers

PLOT_PANELS = (
    ("reward", ("reward/total", "reward/format", "reward/modality", "reward/judge", "reward/embedding")),
    ("entropy (nats per token)", ("loss/entropy",)),
    ("groups with zero reward std (no advantage)", ("reward/zero_std_frac",)),
    ("response length (tokens)", ("rollout/response_len", "rollout/terminated_len")),
)
KL_PANEL = ("KL to reference", ("loss/kl_mean",))  # drawn only when some step has a KL (loss.beta > 0)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class MetricsLog:
    """Append-only metrics.jsonl and the trackers of ``report_to`` (``tensorboard=False`` drops
    TensorBoard); they get ``config`` once. ``history`` holds every logged record.

    ``write=False`` (the ranks other than 0 of a torchrun job) keeps the history and writes nothing."""

    def __init__(self, out_dir, *, tensorboard: bool, history: list[dict] | None = None, write: bool = True,
                 report_to="tensorboard", config: dict | None = None):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / "metrics.jsonl"
        self.history = list(history or [])
        self.write = write
        self.trackers = []
        if not write:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # Rewrite from the checkpoint's history: steps a killed run logged after it are dropped.
        with open(self.path, "w") as fh:
            for rec in self.history:
                fh.write(json.dumps(rec) + "\n")
        self.trackers = make_trackers(report_to, tensorboard, self.out_dir, self.out_dir.resolve().name)
        for t in self.trackers:
            t.start(config or {})

    def log(self, step: int, metrics: dict) -> None:
        rec = {"step": step, **metrics}
        self.history.append(rec)
        if not self.write:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        scalars = {k: float(v) for k, v in metrics.items() if _finite(v)}
        for t in self.trackers:
            t.log(step, scalars)

    def log_table(self, step: int, columns: list[str], rows: list[list]) -> None:
        """A table (prompts, completions, reward components) to every tracker."""
        for t in self.trackers:
            t.log_table(step, columns, rows)

    def close(self) -> None:
        for t in self.trackers:
            t.close()


def progress_bar(total: int, initial: int, enabled: bool):
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, disable=not enabled, desc="train", unit="step",
                dynamic_ncols=True)


def bar_postfix(m: dict) -> dict:
    return {"reward": f"{m.get('reward/total', float('nan')):.3f}",
            "kl": f"{m.get('loss/kl_mean', 0.0):.4f}",
            "clip": f"{m.get('loss/clip_frac', 0.0):.3f}",
            "tok/s": f"{m.get('perf/tokens_per_s', 0.0):.0f}"}


def plot_history(history: list[dict], path) -> Path:
    """Reward components, entropy, the zero-std share of groups, response lengths (and the KL when there
    is one) against step, as a PNG (matplotlib Agg)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = PLOT_PANELS + ((KL_PANEL,) if any(_finite(r.get("loss/kl_mean")) and r["loss/kl_mean"] != 0
                                               for r in history) else ())
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 2.4 * len(panels) + 1), sharex=True)
    for ax, (title, keys) in zip(axes, panels):
        for key in keys:
            pts = [(r["step"], r[key]) for r in history if _finite(r.get(key))]
            if pts:
                xs, ys = zip(*pts)
                ax.plot(xs, ys, marker=".", label=key.split("/")[-1])
        ax.set_title(title)
        ax.grid(alpha=0.3)
        if len(keys) > 1 and ax.lines:  # a run without any finite value of these keys has no legend
            ax.legend(fontsize=8, loc="best")
    axes[-1].set_xlabel("step")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


#: the loss's rollout stats (step.RolloutStats) -> the metric names (docs/rollout_correction.md)
ROLLOUT_METRICS = {"rollout_logp_mismatch": "rollout/logp_mismatch", "rollout_weight_mean": "rollout/is_weight_mean",
                   "rollout_weight_max": "rollout/is_weight_max", "rollout_flagged_frac": "rollout/is_flagged_frac",
                   "rollout_kl_k3": "rollout/kl_k3", "rollout_chi2": "rollout/chi2",
                   "rollout_ppl_ratio": "rollout/ppl_ratio", "rollout_logp_mismatch_max": "rollout/logp_mismatch_max"}


def step_metrics(r, results, batch, stats, info, nan_skipped, function_names=(), overlong=None) -> dict:
    """The step's metrics over the whole batch: sums and counts of this rank's samples, added over the
    ranks (a single process's means); ``stats`` and ``info`` are global already. ``function_names``:
    the plug-in reward functions (``reward/fn/NAME``); ``overlong``: each sample's overlong penalty
    (already in its total) when reward.overlong_buffer is on."""
    rows = len(results)
    pairs = {f"reward/{k}": (sum(float(getattr(x, k)) for x in results), rows)
             for k in ("total", "format", "modality", "judge", "embedding")}
    pairs["reward/judge_failed_rate"] = (sum(float(bool(x.judge_failed)) for x in results), rows)
    pairs["reward/exact_match_rate"] = (sum(float(bool(x.exact_match)) for x in results), rows)
    pairs["reward/invalid_answer_rate"] = (sum(float(bool(x.invalid_answer)) for x in results), rows)
    for name in function_names:  # reward.functions (the same names on every rank)
        pairs[f"reward/fn/{name}"] = (sum(float(getattr(x, "functions", {}).get(name, 0.0)) for x in results), rows)
    if function_names:
        pairs["reward/function_failed_rate"] = (sum(float(getattr(x, "function_failed", False)) for x in results),
                                                rows)
    if overlong is not None:
        pairs["reward/overlong_penalty"] = (float(sum(overlong)), rows)
    pairs["rollout/response_len"] = (sum(len(x) for x in r.response_ids), rows)
    pairs["rollout/truncated_frac"] = (sum(float(x) for x in r.truncated), rows)
    pairs["rollout/groups_kept"] = (len(set(r.group)), 1)
    totals = dist.sum_floats([v for pair in pairs.values() for v in pair])
    m = {}
    for i, key in enumerate(pairs):
        total, n = totals[2 * i], totals[2 * i + 1]
        if key == "rollout/groups_kept":
            m[key] = int(total)
        else:
            m[key] = total / n if n else float("nan")
    # the engine/trainer mismatch and the rollout correction, from the loss (engines with sampling log-probs)
    m.update({name: stats[k] for k, name in ROLLOUT_METRICS.items() if k in stats})
    m["rollout/dropped_groups"] = info["dropped_groups"]
    m["rollout/refills"] = info["refills"]
    m["loss/loss"] = stats["loss"]
    m["loss/kl_mean"] = stats["kl_mean"]
    m["loss/clip_frac_low"] = stats["clip_frac_low"]
    m["loss/clip_frac_high"] = stats["clip_frac_high"]
    m["loss/clip_frac"] = stats["clip_frac_low"] + stats["clip_frac_high"]
    m["loss/ratio_mean"] = stats["ratio_mean"]
    m["loss/entropy"] = stats["entropy_mean"]  # mean per-token entropy of softmax(logits / temperature)
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
