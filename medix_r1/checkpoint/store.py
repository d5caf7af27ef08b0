"""Atomic, resumable checkpoints: ``step_000042/`` folders written to a temp folder, then renamed.

A checkpoint holds the model (``model/``, safetensors via ``save_pretrained``; a LoRA run's holds its
adapters instead, ``adapter/`` in peft's format, the frozen base being ``model.policy``), the optimizer and
scheduler states, the RNG states (python, numpy, torch), and ``trainer_state.json`` with the step,
the data position, the reward-cache pointer, counters, the config and the metrics so far. A folder
counts only when its ``COMPLETE`` marker exists (it is written last, before the rename), so a run
killed at any moment resumes from the latest complete checkpoint.

The marker is also the manifest: the size and sha256 of every other file of the checkpoint. On
resume (:func:`load_latest`) a checkpoint whose files no longer match (truncated, overwritten,
bit rot) is reported by path in one WARNING line and the previous complete one is used. Every
``.pt`` file holds tensors, numbers, strings and containers only (the RNG states are converted),
so it is read with ``torch.load(weights_only=True)``: a checkpoint folder from someone else
cannot run code when it is loaded.

Under torchrun (a process group) the model and optimizer are sharded (FSDP2) and saved with
``torch.distributed.checkpoint`` instead: ``dcp/`` holds every rank's shards (from
``get_state_dict``), ``sched_rng.pt`` the scheduler and rank 0's RNG states, and ``model/`` a
consolidated Hugging Face folder when the model is small enough (``dist.full_model_max_gb``). DCP
reshards on load, so such a checkpoint resumes at any world size, a single process without a
process group included; a torchrun job also resumes from the single-process format.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from medix_r1.parallel import collectives as dist
from medix_r1.parallel.fsdp import reshard
from medix_r1.utils.lora import (
    ADAPTER_WEIGHTS,
    adapter_state,
    from_peft_name,
    is_lora,
    load_adapter_state,
    save_adapter,
)

PREFIX = "step_"
MARKER = "COMPLETE"
ADAPTER_DIR = "adapter"  # a LoRA run's checkpoint: its adapters (peft's format) instead of model/
HASH_CHUNK = 8 << 20
log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """No usable checkpoint where one was asked for."""


class CheckpointMismatch(CheckpointError):
    """The checkpoint is intact but of another kind of run (LoRA adapters vs full weights)."""


def step_dir(out_dir: Path, step: int) -> Path:
    return Path(out_dir) / f"{PREFIX}{step:06d}"


def rng_state() -> dict:
    """The RNG states in a form ``torch.load(weights_only=True)`` accepts (numpy's key as a tensor)."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    return {"python": random.getstate(), "numpy": [kind, torch.from_numpy(key.astype(np.int64)), pos, has_gauss,
                                                   gauss], "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, key, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])


def _load_pt(path: Path) -> dict:
    return torch.load(path, weights_only=True, map_location="cpu")


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def manifest(folder: Path) -> dict:
    """{relative path: {"bytes": size, "sha256": digest}} of every file under ``folder`` but the marker
    (hashed in parallel threads: hashlib releases the GIL, so large shards hash at disk speed)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != MARKER)
    with ThreadPoolExecutor(max_workers=min(8, max(1, len(files)))) as pool:
        digests = list(pool.map(file_sha256, files))
    return {p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": d}
            for p, d in zip(files, digests)}


def verify_checkpoint(path) -> str | None:
    """None when every file listed in ``path``'s marker has its recorded size and sha256, else what is
    wrong. A marker without a manifest (checkpoints written before checksums) is not checked."""
    path = Path(path)
    try:
        recorded = json.loads((path / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(recorded, dict) or "files" not in recorded:
        return None
    for rel, want in sorted(recorded["files"].items()):
        f = path / rel
        if not f.is_file():
            return f"{rel} is missing"
        if f.stat().st_size != want["bytes"]:
            return f"{rel} has {f.stat().st_size} bytes, {want['bytes']} were written"
        if file_sha256(f) != want["sha256"]:
            return f"{rel} does not match its recorded sha256"
    return None


def save_checkpoint(out_dir, step: int, *, model, tokenizer, optimizer, scheduler, state: dict,
                    keep_last: int, full_model_max_gb: float = 4.0) -> Path:
    """Write ``step_{step}`` atomically; ``state`` is JSON-serialisable trainer state. Returns the folder.
    Every rank calls it under torchrun (the sharded save is collective)."""
    if dist.enabled():
        return save_sharded(out_dir, step, model=model, tokenizer=tokenizer, optimizer=optimizer,
                            scheduler=scheduler, state=state, keep_last=keep_last,
                            full_model_max_gb=full_model_max_gb)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = step_dir(out_dir, step)
    tmp = out_dir / f".tmp_{final.name}_{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    try:
        if is_lora(model):  # the adapters alone (peft's format); the base is model.policy, unchanged
            folder = save_adapter(tmp / ADAPTER_DIR, adapter_state(model.named_parameters()), model)
        else:
            folder = tmp / "model"
            model.save_pretrained(folder, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(folder)
        torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": rng_state()}, tmp / "optim_rng.pt")
        _finish(tmp, final, step, state, keep_last)
    except Exception as e:  # a full disk shows up as OSError, or as RuntimeError from torch's zip writer
        raise CheckpointError(write_failure(tmp, final, e)) from e
    return final


def write_failure(tmp: Path, final: Path, error: Exception) -> str:
    """Remove the torn temp folder and say what happened, how much space there is, and how to go on."""
    written = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file()) if tmp.exists() else 0
    shutil.rmtree(tmp, ignore_errors=True)
    free = shutil.disk_usage(final.parent).free
    latest = list_checkpoints(final.parent)
    return (f"could not write the checkpoint {final} ({type(error).__name__}: {error}); "
            f"{free / 2**30:.2f} GiB free on its filesystem, {written / 2**30:.2f} GiB were written before the "
            f"failure. The run stopped here; "
            + (f"free some space and rerun with --resume to continue from {latest[-1].name}"
               if latest else "no earlier complete checkpoint exists, so a rerun starts from step 0"))


def _finish(tmp: Path, final: Path, step: int, state: dict, keep_last: int) -> None:
    """trainer_state.json, then the COMPLETE marker, then the rename; prune old checkpoints."""
    (tmp / "trainer_state.json").write_text(json.dumps(state, indent=1))
    (tmp / MARKER).write_text(json.dumps({"step": step, "files": manifest(tmp)}, indent=1))
    if final.exists():  # re-saving the same step (e.g. after a resume): replace it
        old = final.parent / f".old_{final.name}_{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)
    prune(final.parent, keep_last)


def save_sharded(out_dir, step: int, *, model, tokenizer, optimizer, scheduler, state: dict, keep_last: int,
                 full_model_max_gb: float) -> Path:
    """The torchrun checkpoint: every rank writes its shards into rank 0's temp folder (``dcp/``); after
    a barrier rank 0 adds the rest, the marker, and renames. Output dir on a filesystem all ranks share."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict

    out_dir = Path(out_dir)
    final = step_dir(out_dir, step)
    tmp = None
    if dist.is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = out_dir / f".tmp_{final.name}_{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    tmp = Path(dist.broadcast(str(tmp) if tmp else None))
    reshard(model)
    model_sd, optim_sd = get_state_dict(model, optimizer)
    dcp.save({"model": model_sd, "optim": optim_sd}, checkpoint_id=str(tmp / "dcp"))
    full = None
    adapter = None
    if is_lora(model):  # the adapters in peft's format too (gathered: they are small), not a full model/
        adapter = adapter_state(model.named_parameters())  # every rank: each adapter tensor is gathered
    elif full_model_max_gb > 0 and sum(p.numel() for p in model.parameters()) * 4 <= full_model_max_gb * (1 << 30):
        # gathered parameter by parameter; only rank 0 keeps the (CPU) tensors
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.is_main():
        if full is not None:
            save_hf_folder(tmp / "model", model, full, tokenizer)
        if adapter is not None:
            save_adapter(tmp / ADAPTER_DIR, adapter, model)
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp / ADAPTER_DIR)
        torch.save({"scheduler": scheduler.state_dict(), "rng": rng_state(), "world_size": dist.world_size()},
                   tmp / "sched_rng.pt")
    dist.barrier()  # every rank's shards are written
    if dist.is_main():
        _finish(tmp, final, step, state, keep_last)
    dist.barrier()  # the checkpoint exists for every rank
    return final


def save_hf_folder(folder: Path, model, state_dict: dict, tokenizer) -> None:
    """A Hugging Face folder (config, safetensors, tokenizer) from a full state dict: what
    ``from_pretrained`` and vLLM load. (``save_pretrained`` would name the architecture after FSDP's
    wrapper class.)"""
    from safetensors.torch import save_file

    folder.mkdir(parents=True)
    try:  # the checkpoint's own key names, as save_pretrained writes them (e.g. Qwen-VL's "model.embed_tokens")
        from transformers.core_model_loading import revert_weight_conversion
        state_dict = revert_weight_conversion(model, dict(state_dict))
    except ImportError:  # a transformers without weight conversions: the names are the checkpoint's
        pass
    weights = {k: v.contiguous() for k, v in state_dict.items()}
    if getattr(model.config, "tie_word_embeddings", False):
        weights.pop("lm_head.weight", None)  # the input embeddings' tensor
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    model.config.save_pretrained(folder)
    if getattr(model, "generation_config", None) is not None:
        model.generation_config.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


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


def load_latest(out_dir, *, model, optimizer, scheduler) -> tuple[Path, dict] | None:
    """Load the newest complete checkpoint whose files match their checksums (and, in a single process,
    that loads at all) and return (its path, the trainer state); None when there is no checkpoint.

    Each checkpoint skipped is reported in one WARNING line naming it; when every one is unusable,
    :class:`CheckpointError`. A failed load may have changed some tensors before failing: the
    fallback's load overwrites all of them (model, optimizer, scheduler, RNG)."""
    found = list_checkpoints(out_dir)
    for path in reversed(found):
        # rank 0 reads the files once and every rank takes its verdict: the same on all ranks
        problem = dist.broadcast(verify_checkpoint(path) if dist.is_main() else None)
        if problem is None:
            try:
                return path, load_checkpoint(path, model=model, optimizer=optimizer, scheduler=scheduler)
            except CheckpointMismatch:  # another kind of run (LoRA / full): no older checkpoint fits either
                raise
            except Exception as exc:  # any unreadable file: fall back, reported below
                if dist.enabled():  # a collective load that failed on some rank: no agreed way back
                    raise
                problem = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        log.warning("checkpoint %s is corrupt (%s); falling back to the previous complete checkpoint",
                    path, problem)
    if found:
        raise CheckpointError(f"no usable checkpoint in {out_dir}: all {len(found)} complete ones are corrupt "
                              f"(see the warnings above)")
    return None


def load_checkpoint(path, *, model, optimizer, scheduler) -> dict:
    """Restore model, optimizer, scheduler and RNG states from ``path``; return the trainer state.
    Either format, at any world size: a sharded (``dcp/``) or a single-process checkpoint."""
    from safetensors.torch import load_file

    path = Path(path)
    if not (path / MARKER).is_file():
        raise ValueError(f"{path} is not a complete checkpoint (no {MARKER} marker)")
    check_adapter_matches(path, model)
    if (path / "dcp").is_dir():
        return load_sharded(path, model=model, optimizer=optimizer, scheduler=scheduler)
    if dist.enabled():
        return load_full_into_sharded(path, model=model, optimizer=optimizer, scheduler=scheduler)
    if is_lora(model):
        load_adapter_state(model, path / ADAPTER_DIR)
        return _load_rest(path, optimizer, scheduler)
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
    return _load_rest(path, optimizer, scheduler)


def _load_rest(path: Path, optimizer, scheduler) -> dict:
    """Optimizer, scheduler and RNG states of a single-process checkpoint; the trainer state."""
    blob = _load_pt(path / "optim_rng.pt")
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    set_rng_state(blob["rng"])
    return json.loads((path / "trainer_state.json").read_text())


def check_adapter_matches(path: Path, model) -> None:
    """A LoRA checkpoint resumes only a LoRA run, a full one only a full run (else CheckpointMismatch)."""
    has_adapter, lora = (path / ADAPTER_DIR).is_dir(), is_lora(model)
    if has_adapter and not lora:
        raise CheckpointMismatch(f"{path} holds LoRA adapters ({ADAPTER_DIR}/) but this run trains the full "
                                 "model (model.lora.r is 0): resume with the run's model.lora settings")
    if lora and not has_adapter:
        raise CheckpointMismatch(f"{path} holds full weights but this run trains LoRA adapters (model.lora.r > 0): "
                                 "resume without model.lora, or start the LoRA run from an exported model "
                                 "(model.policy)")


def load_sharded(path: Path, *, model, optimizer, scheduler) -> dict:
    """A ``dcp/`` checkpoint into this run's model and optimizer, sharded or not: DCP reshards to the
    current world size, and loads without a process group in a single process."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    reshard(model)
    model_sd, optim_sd = get_state_dict(model, optimizer)  # the targets, in this run's sharding
    state = {"model": model_sd, "optim": optim_sd}
    dcp.load(state, checkpoint_id=str(path / "dcp"), no_dist=not dist.enabled())
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    blob = _load_pt(path / "sched_rng.pt")
    scheduler.load_state_dict(blob["scheduler"])
    set_rng_state(blob["rng"])
    return json.loads((path / "trainer_state.json").read_text())


def load_full_into_sharded(path: Path, *, model, optimizer, scheduler) -> dict:
    """A single-process checkpoint (``model/`` safetensors + ``optim_rng.pt``) into a sharded run: every
    rank reads the full tensors and keeps its shards (``set_state_dict(full_state_dict=True)``)."""
    from safetensors.torch import load_file
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

    weights = {}
    if is_lora(model):  # the adapters; the frozen base is already the model.policy it was loaded from
        weights = {from_peft_name(k): v for k, v in load_file(path / ADAPTER_DIR / ADAPTER_WEIGHTS).items()}
    for f in sorted((path / "model").glob("*.safetensors")):
        weights.update(load_file(f))
    if getattr(model.config, "tie_word_embeddings", False) and "lm_head.weight" not in weights and weights \
            and not is_lora(model):
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"]
    blob = _load_pt(path / "optim_rng.pt")
    # torch's optimizer state is keyed by parameter position; the trainer built its AdamW from the
    # trainable parameters in named_parameters() order, so position i is that list's i-th name.
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    plain = blob["optimizer"]
    optim_sd = {"state": {names[i]: v for i, v in plain["state"].items()},
                "param_groups": [{**g, "params": [names[i] for i in g["params"]]} for g in plain["param_groups"]]}
    reshard(model)
    set_state_dict(model, optimizer, model_state_dict=weights, optim_state_dict=optim_sd,
                   options=StateDictOptions(full_state_dict=True, strict=not is_lora(model)))
    scheduler.load_state_dict(blob["scheduler"])
    set_rng_state(blob["rng"])
    return json.loads((path / "trainer_state.json").read_text())
