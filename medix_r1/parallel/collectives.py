"""torchrun's process group and the few collectives the trainer needs.

``torchrun --nproc-per-node N -m medix_r1.train ...`` runs one trainer per rank (docs/distributed.md).
A process started without torchrun creates no process group, and then every function here is the
identity or a constant: the single-process trainer is unchanged. The rules that make N ranks
compute what one process computes are in :mod:`medix_r1.parallel.layout` (who holds which rows)
and :mod:`medix_r1.parallel.lockstep` (the passes every rank must run together).
"""
from __future__ import annotations

import datetime
import os
import sys

import torch
import torch.distributed as tdist

# ----------------------------------------------------------------------------- process group

def launched_by_torchrun() -> bool:
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"))


def env_world_size() -> int:
    """World size from torchrun's environment (1 without torchrun); usable before :func:`init`."""
    return int(os.environ.get("WORLD_SIZE", "1")) if launched_by_torchrun() else 1


def env_rank() -> int:
    return int(os.environ.get("RANK", "0")) if launched_by_torchrun() else 0


def init(timeout_min: float = 60.0) -> bool:
    """Join torchrun's process group: gloo on CPU, nccl (+ gloo for CPU tensors) on GPU, each rank on
    ``cuda:LOCAL_RANK``. Returns True when this call created the group (the caller closes it);
    without torchrun (or when a group exists already) it does nothing and returns False."""
    if tdist.is_initialized() or not launched_by_torchrun():
        return False
    timeout = datetime.timedelta(minutes=timeout_min)
    if torch.cuda.is_available() and os.environ.get("MEDIX_DEVICE", "").lower() != "cpu":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
        tdist.init_process_group("cpu:gloo,cuda:nccl", timeout=timeout)
    else:
        tdist.init_process_group("gloo", timeout=timeout)
    return True


def close() -> None:
    if not enabled():
        return
    vllm_state = sys.modules.get("vllm.distributed.parallel_state")
    if vllm_state is not None and vllm_state.model_parallel_is_initialized():
        return  # an in-process vLLM engine made subgroups of this group: its shutdown destroys them all
    tdist.destroy_process_group()


def enabled() -> bool:
    """True inside torchrun's process group: sharded model, DCP checkpoints, collectives.

    A process group alone is not enough: an in-process vLLM engine in a plain single process
    creates a world-size-1 group of its own, and that run must stay unsharded."""
    return launched_by_torchrun() and tdist.is_available() and tdist.is_initialized()


def rank() -> int:
    return tdist.get_rank() if enabled() else 0


def world_size() -> int:
    return tdist.get_world_size() if enabled() else 1


def is_main() -> bool:
    return rank() == 0


def device() -> torch.device:
    """Where this rank trains: its GPU (``cuda:LOCAL_RANK`` under torchrun, the current GPU in a single
    process) when PyTorch sees one, else the CPU. ``MEDIX_DEVICE=cpu`` keeps a GPU machine's run on the CPU."""
    if torch.cuda.is_available() and os.environ.get("MEDIX_DEVICE", "").lower() != "cpu":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def synchronize() -> None:
    """Wait for this rank's GPU work (phase timers read host clocks); nothing on the CPU."""
    if device().type == "cuda":
        torch.cuda.synchronize()


def peak_memory_gb(reset: bool = False) -> float | None:
    """This rank's peak GPU memory allocated by PyTorch since the last reset, in GiB (None on the CPU);
    ``reset`` starts a new window after reading."""
    if device().type != "cuda":
        return None
    peak = torch.cuda.max_memory_allocated() / 2**30
    if reset:
        torch.cuda.reset_peak_memory_stats()
    return peak


def check_config(cfg, world: int | None = None) -> None:
    """Settings a world size constrains; ValueError naming the field."""
    world = env_world_size() if world is None else world
    if world > 1 and cfg.data.prompts_per_step % world:
        raise ValueError(f"data.prompts_per_step ({cfg.data.prompts_per_step}) must be divisible by the number of "
                         f"ranks ({world}): each rank rolls out an equal share of whole prompt groups; use e.g. "
                         f"--set data.prompts_per_step={world * max(1, round(cfg.data.prompts_per_step / world))}")


# ----------------------------------------------------------------------------- collectives (identity alone)

def barrier() -> None:
    if enabled():
        tdist.barrier()


def all_true(flag: bool) -> bool:
    """True when ``flag`` holds on every rank."""
    if not enabled():
        return bool(flag)
    t = torch.tensor([int(bool(flag))], dtype=torch.int64)
    tdist.all_reduce(t, op=tdist.ReduceOp.MIN)
    return bool(t.item())


def any_true(flag: bool) -> bool:
    return not all_true(not flag)


def max_int(x: int) -> int:
    if not enabled():
        return int(x)
    t = torch.tensor([int(x)], dtype=torch.int64)
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    return int(t.item())


def sum_floats(values: list[float]) -> list[float]:
    """Element-wise sum over ranks (float64)."""
    if not enabled():
        return [float(v) for v in values]
    t = torch.tensor([float(v) for v in values], dtype=torch.float64)
    tdist.all_reduce(t)
    return t.tolist()


def all_gather(obj) -> list:
    """Every rank's ``obj`` (picklable), in rank order."""
    if not enabled():
        return [obj]
    out = [None] * world_size()
    tdist.all_gather_object(out, obj)
    return out


def broadcast(obj):
    """Rank 0's ``obj`` on every rank."""
    if not enabled():
        return obj
    box = [obj]
    tdist.broadcast_object_list(box, src=0)
    return box[0]
