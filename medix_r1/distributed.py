"""Multi-process training with torchrun: process group, FSDP2 sharding, collectives, row layout.

``torchrun --nproc-per-node N -m medix_r1.train ...`` runs one trainer per rank (see DISTRIBUTED.md).
A process started without torchrun creates no process group, and then every function here is the
identity or a constant: the single-process trainer is unchanged.

How a step is split (what makes an N-rank run compute what one process computes):

- every rank draws the same global prompt list from the seeded sampler and takes its contiguous
  slice (:func:`shard_range`); sampling seeds use the global prompt index, so the samples are the
  single process's samples;
- :func:`row_layout` gathers every rank's per-row token counts and rewards, so each rank knows the
  whole batch in a single process's row order: advantages, mini-batches and loss weights are the
  single process's; each rank runs its own rows of each mini-batch, weighted by its share of the
  global token count, and FSDP sums the gradients (divide factor 1);
- FSDP2's collectives need the same number of forward/backward passes on every rank: ranks with
  fewer rows run zero-weight passes (:meth:`Layout.micro_steps`, :func:`max_int`), and every
  decision that changes control flow (a NaN loss, a stop signal) is agreed (:func:`all_true`).
"""
from __future__ import annotations

import contextlib
import datetime
import math
import os
import sys
import weakref
from dataclasses import dataclass

import torch
import torch.distributed as tdist

_ROOTS: "weakref.WeakKeyDictionary[torch.nn.Module, torch.nn.Module]" = weakref.WeakKeyDictionary()


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
    if torch.cuda.is_available():
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
    """Where this rank trains: ``cuda:LOCAL_RANK`` under torchrun on a GPU machine, else the CPU (the
    single-process trainer keeps its model where it loads it: the CPU)."""
    if enabled() and torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


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


# ----------------------------------------------------------------------------- data

def shard_range(count: int, r: int | None = None, world: int | None = None) -> tuple[int, int]:
    """Rank ``r``'s contiguous [lo, hi) of ``count`` items (the first ``count % world`` ranks get one more)."""
    r = rank() if r is None else r
    world = world_size() if world is None else world
    base, extra = divmod(count, world)
    lo = r * base + min(r, extra)
    return lo, lo + base + (1 if r < extra else 0)


def owners(count: int) -> list[int]:
    """The rank holding each of ``count`` items split by :func:`shard_range`."""
    out = []
    for r in range(world_size()):
        lo, hi = shard_range(count, r)
        out += [r] * (hi - lo)
    return out


@dataclass
class Layout:
    """The step's global batch, row by row in a single process's order: which rank holds the row, its
    index in that rank's batch, its response tokens and its reward."""
    owner: list[int]
    local: list[int]
    tokens: list[int]
    rewards: list[float]

    def mine(self, rows) -> list[int]:
        """This rank's local indices of the global ``rows``, in the given order."""
        me = rank()
        return [self.local[g] for g in rows if self.owner[g] == me]

    def own_rows(self) -> list[int]:
        """The global indices of this rank's rows, in its local order."""
        me = rank()
        pairs = sorted((j, g) for g, (o, j) in enumerate(zip(self.owner, self.local)) if o == me)
        return [g for _, g in pairs]

    def micro_steps(self, rows, micro: int) -> int:
        """Micro-batches every rank runs for the global ``rows``: the busiest rank's count."""
        counts = [0] * world_size()
        for g in rows:
            counts[self.owner[g]] += 1
        return max(math.ceil(c / micro) for c in counts)


def row_layout(group_owner: list[int], n: int, tokens: list[int], rewards: list[float]) -> Layout:
    """The global :class:`Layout` from each kept group's rank (in global order; ``n`` rows per group)
    and this rank's per-row ``tokens`` and ``rewards`` (one all-gather)."""
    parts = all_gather((list(tokens), [float(x) for x in rewards]))
    taken = [0] * len(parts)
    lay = Layout([], [], [], [])
    for o in group_owner:
        for _ in range(n):
            j = taken[o]
            taken[o] += 1
            lay.owner.append(o)
            lay.local.append(j)
            lay.tokens.append(parts[o][0][j])
            lay.rewards.append(parts[o][1][j])
    return lay


def to_device(batch: dict) -> dict:
    """The batch's tensors on this rank's device (no copy on the CPU)."""
    dev = device()
    return {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


# ----------------------------------------------------------------------------- FSDP2

class _Root(torch.nn.Module):
    """The FSDP root: runs ``fn(model, ...)`` inside its forward, so FSDP gathers the parameters outside
    the decoder layers (embeddings, final norm, the LM head that the fused loss reads directly)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, fn, *args, **kwargs):
        return fn(self.model, *args, **kwargs)


def mixed_precision(cfg):
    """bf16 compute with fp32 master weights and fp32 gradient reduction on a GPU with
    model.dtype=bfloat16; fp32 everywhere else."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    if device().type == "cuda" and cfg.model.dtype == "bfloat16":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def shard(model: torch.nn.Module, cfg, trainable: bool) -> torch.nn.Module:
    """FSDP2 in place: ``fully_shard`` on every decoder layer (the model's ``_no_split_modules``), then
    on a root holding the rest; call its forward through :func:`run`. Identity without a process group."""
    if not enabled():
        return model
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    from medix_r1.vision.inputs import vision_tower

    mp = mixed_precision(cfg)
    names = set(getattr(model, "_no_split_modules", None) or ())
    # A vision tower stays in the root unit: a rank whose micro-batch holds no image never runs it,
    # so its blocks cannot be FSDP units of their own (their gathers would not match the other
    # ranks'); on such a rank the trainer gives its parameters zero gradients (train.policy_loss).
    visual = vision_tower(model)
    in_tower = set(visual.modules()) if visual is not None else set()
    layers = [m for m in model.modules() if type(m).__name__ in names and m not in in_tower]
    if not layers:
        raise ValueError(f"cannot shard {type(model).__name__}: no decoder layers found (its _no_split_modules "
                         f"is {sorted(names)})")
    for layer in layers:
        fully_shard(layer, mp_policy=mp, reshard_after_forward=True)
    root = _Root(model)
    # The root's arguments hold fp32 advantages / log-probs: never cast them to the compute dtype.
    root_mp = MixedPrecisionPolicy(param_dtype=mp.param_dtype, reduce_dtype=mp.reduce_dtype,
                                   cast_forward_inputs=False)
    # A trained root keeps its parameters gathered from forward to backward; a frozen one never backwards.
    fully_shard(root, mp_policy=root_mp, reshard_after_forward=not trainable)
    for m in root.modules():
        if isinstance(m, FSDPModule):
            # The loss weights are shares of the global token count: sum the ranks' gradients, don't average.
            m.set_gradient_divide_factor(1.0)
            m.set_force_sum_reduction_for_comms(True)
    root(lambda _: None)  # FSDP takes the first module to run forward as its root: make it this one
    _ROOTS[model] = root
    reshard(model)  # that forward left the root's parameters gathered: the optimizer must get the shards
    return model


def run(model: torch.nn.Module, fn, *args, **kwargs):
    """``fn(model, *args, **kwargs)``; for a sharded model inside its FSDP root's forward."""
    root = _ROOTS.get(model)
    return fn(model, *args, **kwargs) if root is None else root(fn, *args, **kwargs)


def _units(model) -> list:
    from torch.distributed.fsdp import FSDPModule

    root = _ROOTS.get(model)
    return [] if root is None else [m for m in root.modules() if isinstance(m, FSDPModule)]


def reshard(model: torch.nn.Module) -> None:
    """Free any gathered parameters (before checkpoints and weight syncs); no communication."""
    for unit in _units(model):
        unit.reshard()


@contextlib.contextmanager
def full_weights(model: torch.nn.Module):
    """The whole model gathered on every rank for the duration (``hf`` rollouts generate on the policy:
    ranks generate different numbers of tokens, so no per-layer collective may run inside)."""
    units = _units(model)
    if not units:
        yield
        return
    root = _ROOTS[model]
    for unit in units:
        unit.unshard()
    root.set_reshard_after_forward(False)
    # transformers' generate() runs every rank's decode loop in lockstep (synced_gpus, an all-reduce per
    # token) when the model is FSDP-managed, which deadlocks ranks with different prompt counts; with
    # the weights gathered nothing needs syncing.
    managed = model.__dict__.get("_is_fsdp_managed_module")
    model._is_fsdp_managed_module = False
    try:
        yield
    finally:
        model._is_fsdp_managed_module = managed
        root.set_reshard_after_forward(True)               # the layers, as created in shard()
        root.set_reshard_after_forward(False, recurse=False)
        for unit in units:
            unit.reshard()


class _Gathered:
    """``named_parameters()`` of a sharded model as full tensors, gathered one parameter at a time (an
    all-gather each, on every rank): what the vLLM engine's ``reload_weights`` iterates over."""

    def __init__(self, model):
        self.model = model

    def named_parameters(self):
        from torch.distributed.tensor import DTensor

        for name, p in self.model.named_parameters():
            yield name, (p.full_tensor() if isinstance(p, DTensor) else p)


def gathered(model: torch.nn.Module):
    """``model`` for an engine's ``sync``: itself alone, else a view gathering one parameter at a time."""
    if not _units(model):
        return model
    reshard(model)
    return _Gathered(model)


def clip_grad_norm(params, max_norm: float) -> torch.Tensor:
    """``clip_grad_norm_`` over the (possibly DTensor) gradients; the global norm as a plain tensor."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    full = getattr(norm, "full_tensor", None)
    return full() if callable(full) else norm
