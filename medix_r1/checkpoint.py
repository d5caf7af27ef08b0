"""Atomic, resumable checkpoints: ``step_000042/`` folders written to a temp folder, then renamed.

A checkpoint holds the model (``model/``, safetensors via ``save_pretrained``), the optimizer and
scheduler states, the RNG states (python, numpy, torch), and ``trainer_state.json`` with the step,
the data position, the reward-cache pointer, counters, the config and the metrics so far. A folder
counts only when its ``COMPLETE`` marker exists (it is written last, before the rename), so a run
killed at any moment resumes from the latest complete checkpoint.
"""
from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch

PREFIX = "step_"
MARKER = "COMPLETE"


def step_dir(out_dir: Path, step: int) -> Path:
    return Path(out_dir) / f"{PREFIX}{step:06d}"


def rng_state() -> dict:
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_checkpoint(out_dir, step: int, *, model, tokenizer, optimizer, scheduler, state: dict,
                    keep_last: int) -> Path:
    """Write ``step_{step}`` atomically; ``state`` is JSON-serialisable trainer state. Returns the folder."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = step_dir(out_dir, step)
    tmp = out_dir / f".tmp_{final.name}_{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    model.save_pretrained(tmp / "model", safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(tmp / "model")
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "rng": rng_state()}, tmp / "optim_rng.pt")
    (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
    (tmp / MARKER).write_text(str(step))
    if final.exists():  # re-saving the same step (e.g. after a resume): replace it
        old = out_dir / f".old_{final.name}_{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    prune(out_dir, keep_last)
    return final


def list_checkpoints(out_dir) -> list[Path]:
    """Complete checkpoints, oldest first."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    found = [p for p in out_dir.glob(f"{PREFIX}*") if p.is_dir() and (p / MARKER).is_file()
             and p.name[len(PREFIX):].isdigit()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest_checkpoint(out_dir) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1] if found else None


def prune(out_dir, keep_last: int) -> None:
    for p in list_checkpoints(out_dir)[:-keep_last]:
        shutil.rmtree(p, ignore_errors=True)
    for p in Path(out_dir).glob(".tmp_*"):  # torn writes of killed runs
        if not p.name.endswith(f"_{os.getpid()}"):
            shutil.rmtree(p, ignore_errors=True)


def load_checkpoint(path, *, model, optimizer, scheduler) -> dict:
    """Restore model, optimizer, scheduler and RNG states from ``path``; return the trainer state."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / MARKER).is_file():
        raise ValueError(f"{path} is not a complete checkpoint (no {MARKER} marker)")
    weights = {}
    for f in sorted((path / "model").glob("*.safetensors")):
        weights.update(load_file(f))
    missing, unexpected = model.load_state_dict(weights, strict=False)
    tied = {"lm_head.weight"} if getattr(model.config, "tie_word_embeddings", False) else set()
    if (set(missing) - tied or unexpected) and hasattr(model, "from_pretrained"):
        # transformers 5 saves some models (Qwen2/2.5-VL) under their original checkpoint names
        # ("visual.*", "model.layers.*"), not the module names; its own loader maps them back.
        fresh = type(model).from_pretrained(str(path / "model"), dtype=next(model.parameters()).dtype)
        missing, unexpected = model.load_state_dict(fresh.state_dict(), strict=False)
        del fresh
    if set(missing) - tied or unexpected:
        raise ValueError(f"{path}: checkpoint does not match the model (missing {sorted(set(missing) - tied)}, "
                         f"unexpected {sorted(unexpected)})")
    blob = torch.load(path / "optim_rng.pt", weights_only=False)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    set_rng_state(blob["rng"])
    return json.loads((path / "trainer_state.json").read_text())
