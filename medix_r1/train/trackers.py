"""Experiment trackers (``train.report_to``) through the tracking libraries themselves.

Each tracker receives the resolved config once (:meth:`start`), every step's metrics (:meth:`log`)
and, every ``train.log_completions_every`` steps, a table of prompts, completions and reward
components (:meth:`log_table`). Registered by name in :data:`TRACKERS`; a tracker whose library is
missing is a config error naming the package to install (:func:`check_report_to`), before any model
loads. Offline use: wandb honours ``WANDB_MODE=offline``; mlflow writes a local file store in
``OUTPUT_DIR/mlruns`` unless ``MLFLOW_TRACKING_URI`` names a server or database; trackio stores its
runs locally by default.

A tracker never stops or stalls the run (:class:`GuardedTracker`): each runs on a daemon thread of
its own and every call, start-up included, is waited for at most :data:`TRACKER_TIMEOUT_S`; a call
that raises or takes longer logs one warning and disables that tracker, and the run goes on
(``metrics.jsonl`` and the checkpoints do not depend on any tracker).
"""
from __future__ import annotations

import concurrent.futures
import importlib.util
import json
import logging
import os
import queue
import threading
from pathlib import Path

log = logging.getLogger("medix_r1.train")
TRACKER_TIMEOUT_S = 60.0  # the longest one tracker call (its start-up included) may take before it is disabled

TABLE_COLUMNS = ("step", "prompt", "completion", "total", "format", "modality", "judge", "embedding")


def _flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict) and v:
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class TensorBoardTracker:
    module = "tensorboard"

    def __init__(self, out_dir: Path, run_name: str):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(Path(out_dir) / "tensorboard"))

    def start(self, config: dict) -> None:
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=1) + "\n```", 0)

    def log(self, step: int, metrics: dict) -> None:
        for k, v in metrics.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def log_table(self, step: int, columns: list[str], rows: list[list]) -> None:
        lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        lines += ["| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |" for row in rows]
        self.writer.add_text("completions", "\n".join(lines), step)

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    module = "wandb"

    def __init__(self, out_dir: Path, run_name: str):
        import wandb
        self.wandb = wandb
        self.out_dir, self.run_name, self.run = Path(out_dir), run_name, None

    def start(self, config: dict) -> None:  # mode from WANDB_MODE (online, offline, disabled)
        self.run = self.wandb.init(project=os.environ.get("WANDB_PROJECT", "medix"), name=self.run_name,
                                   dir=str(self.out_dir), config=config, resume="allow")

    def log(self, step: int, metrics: dict) -> None:
        self.run.log(metrics, step=step)

    def log_table(self, step: int, columns: list[str], rows: list[list]) -> None:
        self.run.log({"completions": self.wandb.Table(columns=list(columns), data=rows)}, step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    module = "mlflow"

    def __init__(self, out_dir: Path, run_name: str):
        import mlflow
        self.mlflow = mlflow
        if not os.environ.get("MLFLOW_TRACKING_URI"):
            # a local file store beside the run's other outputs: needs no database (mlflow-skinny has no
            # SQLAlchemy); mlflow 3 asks for an explicit opt-in to the file store, given here for ours only
            mlflow.set_tracking_uri((Path(out_dir).resolve() / "mlruns").as_uri())
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.run_name = run_name

    def start(self, config: dict) -> None:
        self.mlflow.start_run(run_name=self.run_name)
        self.mlflow.log_dict(config, "config.json")
        # params are capped at 500 characters (mlflow's limit; the whole config is in config.json)
        self.mlflow.log_params({k: str(v)[:500] for k, v in _flatten(config).items()})

    def log(self, step: int, metrics: dict) -> None:
        self.mlflow.log_metrics(metrics, step=step)

    def log_table(self, step: int, columns: list[str], rows: list[list]) -> None:
        data = {c: [row[i] for row in rows] for i, c in enumerate(columns)}
        self.mlflow.log_dict(data, f"completions/step_{step:06d}.json")

    def close(self) -> None:
        self.mlflow.end_run()


class TrackioTracker:
    module = "trackio"

    def __init__(self, out_dir: Path, run_name: str):
        import trackio
        self.trackio, self.run_name = trackio, run_name

    def start(self, config: dict) -> None:
        self.trackio.init(project=os.environ.get("TRACKIO_PROJECT", "medix"), name=self.run_name, config=config)

    def log(self, step: int, metrics: dict) -> None:
        self.trackio.log(metrics, step=step)

    def log_table(self, step: int, columns: list[str], rows: list[list]) -> None:
        self.trackio.log({"completions": self.trackio.Table(columns=list(columns), data=rows)}, step=step)

    def close(self) -> None:
        self.trackio.finish()


# name -> tracker class (with .module, the library it needs); add a tracker here
TRACKERS = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker, "mlflow": MlflowTracker,
            "trackio": TrackioTracker}
INSTALL = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow-skinny", "trackio": "trackio"}


def tracker_names(report_to, tensorboard: bool = True) -> list[str]:
    """``train.report_to`` (a name, a list, or 'none') as a list; ``train.tensorboard=false`` drops TensorBoard."""
    names = [report_to] if isinstance(report_to, str) else list(report_to)
    names = [n for n in names if n not in ("none", "")]
    return [n for n in dict.fromkeys(names) if n != "tensorboard" or tensorboard]


def check_report_to(report_to, tensorboard: bool = True) -> None:
    """Config-time check: known names, and each tracker's library importable (else which package to install)."""
    for name in tracker_names(report_to, tensorboard):
        if name not in TRACKERS:
            raise ValueError(f"train.report_to: unknown tracker {name!r}; known: {sorted(TRACKERS)} or 'none'")
        if importlib.util.find_spec(TRACKERS[name].module) is None:
            raise ValueError(f"train.report_to={name!r} needs the {INSTALL[name]} package: "
                             f"pip install {INSTALL[name]} (or the 'trackers' extra: pip install 'medix[trackers]')")


def make_trackers(report_to, tensorboard: bool, out_dir, run_name: str) -> list:
    """The trackers of ``report_to``, each behind a :class:`GuardedTracker` (built by its ``start``)."""
    def maker(name):
        return lambda: TRACKERS[name](Path(out_dir), run_name)
    return [GuardedTracker(n, maker(n)) for n in tracker_names(report_to, tensorboard)]


class GuardedTracker:
    """One tracker, built and called in order on a daemon thread of its own; each call is waited for at
    most ``timeout_s`` (default :data:`TRACKER_TIMEOUT_S`). A call that raises or times out logs one
    warning and disables the tracker: later calls do nothing, and the thread is left to finish (or
    hang) without holding the run or the process's exit."""

    def __init__(self, name: str, make, timeout_s: float | None = None):
        self.name, self.make, self.tracker, self.disabled = name, make, None, False
        self.timeout_s = TRACKER_TIMEOUT_S if timeout_s is None else timeout_s
        self._calls: queue.Queue = queue.Queue()
        threading.Thread(target=self._serve, name=f"tracker-{name}", daemon=True).start()

    def _serve(self) -> None:
        while True:
            fn, fut = self._calls.get()
            if fn is None:
                return
            try:
                fut.set_result(fn())
            except BaseException as e:  # SystemExit from a library is this tracker's failure, not the run's end
                fut.set_exception(e if isinstance(e, Exception) else RuntimeError(f"{type(e).__name__}{e.args}"))

    def _call(self, what: str, fn) -> None:
        if self.disabled:
            return
        fut: concurrent.futures.Future = concurrent.futures.Future()
        self._calls.put((fn, fut))
        try:
            fut.result(timeout=self.timeout_s)
        except concurrent.futures.TimeoutError:
            self._disable(f"{what} did not finish within {self.timeout_s:g} s")
        except Exception as e:
            self._disable(f"{what} failed: {type(e).__name__}: {str(e)[:300]}")

    def _disable(self, why: str) -> None:
        self.disabled = True
        self._calls.put((None, None))  # the thread ends after the call in hand
        log.warning("tracker %s: %s; it is disabled and the run goes on without it (metrics.jsonl and the "
                    "checkpoints are unaffected)", self.name, why)

    def _start(self, config: dict) -> None:
        self.tracker = self.make()
        self.tracker.start(config)

    def start(self, config: dict) -> None:
        self._call("start-up", lambda: self._start(config))

    def log(self, step: int, metrics: dict) -> None:
        self._call(f"logging step {step}", lambda: self.tracker.log(step, metrics))

    def log_table(self, step: int, columns: list[str], rows: list[list]) -> None:
        self._call(f"the completions table of step {step}", lambda: self.tracker.log_table(step, columns, rows))

    def close(self) -> None:
        self._call("closing", lambda: self.tracker.close())
        if not self.disabled:
            self.disabled = True
            self._calls.put((None, None))


def completions_table(step: int, prompts: list[str], completions: list[str], results: list,
                      function_names=()) -> tuple[list[str], list[list]]:
    """The table's columns and rows: one row per completion with its reward components."""
    columns = [*TABLE_COLUMNS, *(f"fn/{n}" for n in function_names)]
    rows = []
    for prompt, completion, r in zip(prompts, completions, results):
        fns = getattr(r, "functions", {}) or {}
        rows.append([step, prompt, completion, *(float(getattr(r, k, 0.0)) for k in TABLE_COLUMNS[3:]),
                     *(float(fns.get(n, 0.0)) for n in function_names)])
    return columns, rows
