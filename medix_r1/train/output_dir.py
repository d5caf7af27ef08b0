"""The run's output folder: created up front, and never mixed with another run's files.

A folder is *used* when it holds a non-empty ``metrics.jsonl`` or a ``step_*`` checkpoint. A new
run (no ``--resume``) in a used folder is refused, naming it: starting over there would truncate
the old metrics and put the new ``step_000001`` next to the old ``step_000002``, so that a later
``--resume`` would continue the old run. ``--overwrite`` deletes the run's own files first and
nothing else (:data:`RUN_FILES` and the checkpoint folders, finished or torn); other files in the
folder stay.

One run at a time: a run holds an exclusive lock on :data:`LOCK_NAME` in the folder (``flock``, the
file holding the holder's pid, host and start time) from before it deletes, prunes or writes
anything until it ends (:func:`release_output_dir`; the kernel drops a ``flock`` when its process
dies, so a crash cannot leave the folder locked). A second run is refused naming the holder. A
lock file left by a run that died is taken over with a warning naming it; one whose holder is
alive on this host while its ``flock`` is free (a file system that ignores ``flock``) is refused.
"""
from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import logging
import os
import re
import shutil
import socket
from pathlib import Path

from medix_r1.parallel import collectives as dist

log = logging.getLogger("medix_r1.train")

RUN_FILES = ("metrics.jsonl", "tensorboard", "rewards.png")
LOCK_NAME = ".medix-train.lock"
_HELD: dict[str, int] = {}  # resolved output dir -> the open, flock-ed lock file of this process
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
    problem = lock_output_dir(out_dir)  # before anything in the folder is read, deleted or written
    if problem is not None or resume or not is_used(out_dir):
        return problem
    if not overwrite:
        release_output_dir(out_dir)
        return (f"train.output_dir {str(out_dir)!r} holds a previous run (metrics.jsonl or step_* checkpoints): "
                f"pass --resume to continue it, --overwrite to delete that run's files, or another --output-dir")
    for p in run_files(out_dir):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
    log.warning("--overwrite: deleted the previous run's files in %s", out_dir)
    return None


# ----------------------------------------------------------------------------- one run per folder
def _holder(text: str) -> dict:
    try:
        info = json.loads(text)
    except ValueError:
        return {}
    return info if isinstance(info, dict) else {}


def _describe(info: dict) -> str:
    if not info:
        return "a process that wrote no pid"
    return f"pid {info.get('pid')} on host {info.get('host')!r} (started {info.get('started')})"


def _alive_here(info: dict) -> bool:
    """True when the lock's holder is a running process of this host (other than this one)."""
    pid = info.get("pid")
    if info.get("host") != socket.gethostname() or not isinstance(pid, int) or pid == os.getpid() or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        return True
    return True


def lock_output_dir(out_dir) -> str | None:
    """Take this process's exclusive lock on ``out_dir``; None when taken (or already held here), else
    the one-line reason naming the holder. Race-free with :func:`release_output_dir`, which deletes
    the lock file: a lock taken on a file that was deleted meanwhile is dropped and taken again."""
    out_dir = Path(out_dir)
    key = str(out_dir.resolve())
    if key in _HELD:
        return None
    path = out_dir / LOCK_NAME
    for _ in range(10):
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            return f"train.output_dir: cannot create the lock file {str(path)!r}: {exc.strerror or exc}"
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            info = _holder(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
            os.close(fd)
            return (f"train.output_dir {str(out_dir)!r} is in use by another run: {_describe(info)} holds "
                    f"{LOCK_NAME}; wait for it to end, stop it, or pick another --output-dir")
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # its holder deleted the file as we opened it: lock the new one
            os.close(fd)
            continue
        previous = _holder(os.pread(fd, 4096, 0).decode("utf-8", "replace"))
        if _alive_here(previous):
            os.close(fd)
            return (f"train.output_dir {str(out_dir)!r}: {LOCK_NAME} names a running process, "
                    f"{_describe(previous)}, but its lock is free (does this file system ignore flock?); "
                    f"stop that run or pick another --output-dir")
        if previous:
            log.warning("train.output_dir %s: taking over the lock left by %s, which is no longer running "
                        "(it crashed or was killed)", out_dir, _describe(previous))
        me = {"pid": os.getpid(), "host": socket.gethostname(),
              "started": datetime.datetime.now().isoformat(timespec="seconds")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        _HELD[key] = fd
        return None
    return f"train.output_dir {str(out_dir)!r}: could not take {LOCK_NAME} (another run keeps replacing it)"


def release_output_dir(out_dir) -> None:
    """Give the output dir's lock up (the end of a run): the lock file is deleted, then unlocked."""
    fd = _HELD.pop(str(Path(out_dir).resolve()), None)
    if fd is None:
        return
    with contextlib.suppress(OSError):  # deleted before unlocking: see lock_output_dir
        os.unlink(Path(out_dir) / LOCK_NAME)
    os.close(fd)
