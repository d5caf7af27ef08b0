"""Run observability: metrics.jsonl, TensorBoard, a tqdm bar and the final reward plot."""
from __future__ import annotations

import json
import math
from pathlib import Path

PLOT_PANELS = (
    ("reward", ("reward/total", "reward/format", "reward/modality", "reward/judge", "reward/embedding")),
    ("KL to reference", ("loss/kl_mean",)),
    ("response length (tokens)", ("rollout/response_len",)),
)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


class MetricsLog:
    """Append-only metrics.jsonl (+ TensorBoard). ``history`` holds every logged record.

    ``write=False`` (the ranks other than 0 of a torchrun job) keeps the history and writes nothing."""

    def __init__(self, out_dir, *, tensorboard: bool, history: list[dict] | None = None, write: bool = True):
        self.out_dir = Path(out_dir)
        self.path = self.out_dir / "metrics.jsonl"
        self.history = list(history or [])
        self.write = write
        self.writer = None
        if not write:
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        # Rewrite from the checkpoint's history: steps a killed run logged after it are dropped.
        with open(self.path, "w") as fh:
            for rec in self.history:
                fh.write(json.dumps(rec) + "\n")
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter
            self.writer = SummaryWriter(str(self.out_dir / "tensorboard"))

    def log(self, step: int, metrics: dict) -> None:
        rec = {"step": step, **metrics}
        self.history.append(rec)
        if not self.write:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(rec) + "\n")
        if self.writer is not None:
            for k, v in metrics.items():
                if _finite(v):
                    self.writer.add_scalar(k, v, step)
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


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
    """Reward components, KL and response length against step, as a PNG (matplotlib Agg)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(PLOT_PANELS), 1, figsize=(8, 9), sharex=True)
    for ax, (title, keys) in zip(axes, PLOT_PANELS):
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
