"""FSDP2 for the policy (and a frozen reference) under torchrun; the identity without it.

:func:`shard` wraps every decoder layer and a root holding the rest; the trainer calls the model's
forward through :func:`run` (inside the root's forward, so FSDP gathers the embeddings, final norm
and the LM head the fused loss reads directly). :func:`gathered` / :func:`full_weights` give the
rollout engines whole weights; :func:`clip_grad_norm` the global gradient norm.
"""
from __future__ import annotations

import contextlib
import weakref

import torch

from medix_r1.parallel.collectives import device, enabled
from medix_r1.vision.model import vision_tower

_ROOTS: weakref.WeakKeyDictionary[torch.nn.Module, torch.nn.Module] = weakref.WeakKeyDictionary()


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

    mp = mixed_precision(cfg)
    names = set(getattr(model, "_no_split_modules", None) or ())
    # A vision tower stays in the root unit: a rank whose micro-batch holds no image never runs it,
    # so its blocks cannot be FSDP units of their own (their gathers would not match the other
    # ranks'); on such a rank the trainer gives its parameters zero gradients (lockstep.vision_gradient_term).
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
