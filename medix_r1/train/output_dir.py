"""The run's output folder: created up front, and never mixed with another run's files.

A folder is *used* when it holds a non-empty ``metrics.jsonl`` or a ``step_*`` checkpoint. A new
run (no ``--resume``) in a used folder is refused, naming it: starting over there would truncate
the old metrics and put the new ``step_000001`` next to the old ``step_000002``, so that a later
``--resume`` would continue the old run. ``--overwrite`` deletes the run's own files first and
nothing else (:data:`RUN_FILES` and the checkpoint folders, finished or torn); other files in the
folder stay.
"""
from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

from medix_r1.parallel import collectives as dist

log = logging.getLogger("medix_r1.train")

RUN_FILES = ("metrics.jsonl", "tensorboard", "rewards.png")
# step_000042, and the temp / replaced folders of a checkpoint write (.tmp_step_000042_<pid>, .old_...)
CHECKPOINT_NAME = re.compile(r"(?:\.tmp_|\.old_)?step_\d+(?:_\d+)?")


class OutputDirError(ValueError):
    """The output folder cannot be used as asked (one line, naming it)."""


def run_files(out_dir: Path) -> list[Path]:
    """The files and folders in ``out_dir`` that a training run writes."""
    if not out_dir.is_dir():
        return []
    return sorted(p for p in out_dir.iterdir() if p.name in RUN_FILES or CHECKPOINT_NAME.fullmatch(p.name))


def is_used(out_dir: Path) -> bool:
    return any((p.name == "metrics.jsonl" and p.is_file() and p.stat().st_size > 0) or p.name.startswith("step_")
               for p in run_files(out_dir))


def prepare_output_dir(out_dir, *, resume: bool, overwrite: bool) -> None:
    """Create ``out_dir`` and check it may be written as asked (before any model loads); with
    ``overwrite``, delete the previous run's files. Rank 0 decides under torchrun, every rank raises."""
    problem = _prepare(Path(out_dir), resume, overwrite) if dist.is_main() else None
    problem = dist.broadcast(problem)
    if problem is not None:
        raise OutputDirError(problem)


def _prepare(out_dir: Path, resume: bool, overwrite: bool) -> str | None:
    if resume and overwrite:
        return "--resume continues the run in the output dir and --overwrite deletes it: pass one of them"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        return f"train.output_dir: cannot create {str(out_dir)!r}: {exc.strerror or exc}"
    if resume or not is_used(out_dir):
        return None
    if not overwrite:
        return (f"train.output_dir {str(out_dir)!r} holds a previous run (metrics.jsonl or step_* checkpoints): "
                f"pass --resume to continue it, --overwrite to delete that run's files, or another --output-dir")
    for p in run_files(out_dir):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    log.warning("--overwrite: deleted the previous run's files in %s", out_dir)
    return None
