"""Group-relative advantages (GRPO, Dr. GRPO, RLOO) and the fused composite-reward path.

Kernels: C++ (``csrc/cpu/group_advantages.h``), CUDA (``csrc/cuda/group_advantages.cu``),
Triton (``triton_kernels/group_advantages.py``), each one launch that computes the total reward
of every sample, the group statistics and the advantages. The reference is
``medix_kernels.reference.group_advantages``.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import NamedTuple

import torch

try:
    import numpy as _np
except ImportError:  # numpy is optional: the check then uses torch
    _np = None

from . import torch_backend
from ._backend import resolve_backend
from ._groups import group_offsets, validate_group_args

log = logging.getLogger("medix_kernels")

MODES = {"grpo": 0, "dr_grpo": 1, "rloo": 2}
SCALES = {"group": 0, "batch": 1, "none": 2}
SINGLETONS = {"zero": 0, "verl": 1}
NAN_POLICIES = ("raise", "zero")

#: Keyword presets reproducing the peers exactly: ``group_advantages(r, 8, **ADVANTAGE_PRESETS["trl"])``.
#: TRL: (r - mean) / (std + 1e-4), unbiased std. verl: eps 1e-6, and a group of one gets
#: mean 0 / std 1 (so A = r / (1 + eps)) where the library default gives it 0.
ADVANTAGE_PRESETS = {
    "trl": {"mode": "grpo", "scale": "group", "eps": 1e-4, "singleton": "zero"},
    "trl_batch": {"mode": "grpo", "scale": "batch", "eps": 1e-4, "singleton": "zero"},
    "verl": {"mode": "grpo", "scale": "group", "eps": 1e-6, "singleton": "verl"},
    "dr_grpo": {"mode": "dr_grpo", "scale": "none", "eps": 1e-6, "singleton": "zero"},
    "rloo": {"mode": "rloo", "scale": "none", "eps": 1e-6, "singleton": "zero"},
}


class GroupStats(NamedTuple):
    mean: torch.Tensor        # [G] float32
    std: torch.Tensor         # [G] float32, unbiased (0 for a group of one)
    degenerate: torch.Tensor  # [G] bool: every reward of the group is equal (no learning signal)


def _check_choice(name, value, choices, op):
    if value not in choices:
        raise ValueError(f"{op}: '{name}' must be one of {tuple(choices)}, got {value!r}")


def _check_values(values: torch.Tensor, name: str, dims: int, shape: str, op: str) -> None:
    if not isinstance(values, torch.Tensor):
        raise TypeError(f"{op}: '{name}' must be a torch.Tensor {shape}, got {type(values).__name__}")
    if not values.dtype.is_floating_point:
        raise TypeError(f"{op}: '{name}' must be a floating-point tensor (float32, bfloat16, float16 or "
                        f"float64), got {values.dtype}")
    if values.dim() != dims:
        raise ValueError(f"{op}: '{name}' must be {dims}-D {shape}, got shape {tuple(values.shape)}")


def _report_non_finite(values: torch.Tensor, nan_policy: str, name: str, op: str) -> None:
    """Raise naming the non-finite positions (policy 'raise'), or log them (policy 'zero')."""
    bad = ~torch.isfinite(values)
    if values.dim() == 2:
        bad = bad.any(dim=1)
    pos = bad.nonzero().flatten()
    if pos.numel() == 0:
        return
    shown = pos[:10].tolist()
    more = f" (and {pos.numel() - 10} more)" if pos.numel() > 10 else ""
    if nan_policy == "raise":
        raise ValueError(f"{op}: '{name}' has {pos.numel()} non-finite value(s) (NaN or inf) at positions "
                         f"{shown}{more}; fix the reward, or pass nan_policy='zero' to count them as 0")
    log.warning("%s: %d non-finite value(s) in '%s' at positions %s%s counted as 0 (nan_policy='zero')",
                op, pos.numel(), name, shown, more)


def _run(values, weights, group_size, group_index, mode, scale, eps, singleton, nan_policy, backend, op):
    """Dispatch to a backend. Returns (adv, total, mean, std, degenerate).

    Rewards are data, not a function of the policy: every backend takes them detached, so the
    outputs never require grad (the compiled ops have no autograd formula, and the reference
    would otherwise differentiate through the group statistics)."""
    if values.requires_grad:
        values = values.detach()
    n = values.shape[0]
    validate_group_args(n, group_size, group_index, values.device, op)
    _check_choice("mode", mode, MODES, op)
    _check_choice("scale", scale, SCALES, op)
    _check_choice("singleton", singleton, SINGLETONS, op)
    _check_choice("nan_policy", nan_policy, NAN_POLICIES, op)
    if not (isinstance(eps, (int, float)) and eps >= 0):
        raise ValueError(f"{op}: 'eps' must be a float >= 0, got {eps!r}")
    backend = resolve_backend(backend, values, op)
    if values.dtype == torch.float64 and backend != "torch":
        raise TypeError(f"{op}: backend {backend!r} takes float32, bfloat16 or float16 rewards, got float64 "
                        "(use backend='torch' or convert)")
    name = "components" if values.dim() == 2 else "rewards"
    eager = not torch.compiler.is_compiling()  # data-dependent checks would break a compiled graph
    nan_to_zero = nan_policy == "zero"
    if eager and nan_to_zero and values.numel():
        _report_non_finite(values, nan_policy, name, op)
    offsets = None
    if group_index is not None:
        if eager and backend == "cpu":  # one C++ pass (count, check, fill) instead of four torch ops
            offsets = torch.ops.medix.group_offsets(group_index)
        else:
            offsets = group_offsets(n, None, group_index)

    if backend == "torch":
        out = torch_backend.group_advantages(values, weights, group_size, offsets, mode=mode, scale=scale, eps=eps,
                                             singleton=singleton, nan_to_zero=nan_to_zero,
                                             with_degenerate=op == "group_stats")
    else:
        args = (values, weights, offsets, 0 if group_size is None else group_size, MODES[mode], SCALES[scale],
                SINGLETONS[singleton], float(eps), nan_to_zero)
        if backend == "triton":
            from .triton_kernels.group_advantages import group_advantages_triton
            out = group_advantages_triton(*args)
        else:
            out = torch.ops.medix.group_advantages(*args)
    # A non-finite reward makes its group's mean non-finite: checking the G means instead of the
    # N rewards keeps the common case cheap; the slow path names the positions.
    if eager and not nan_to_zero and out[2].numel() and not math.isfinite(_sum(out[2])):
        _report_non_finite(values, nan_policy, name, op)
    return out


def _sum(t: torch.Tensor) -> float:
    """Sum of a float32 vector as a Python float. On the CPU through numpy: torch would reduce
    100K+ means with the OpenMP team, and on a loaded machine waking it can cost more than the
    kernel (a scheduler slice); numpy's sum stays on this thread."""
    if _np is not None and t.device.type == "cpu":
        return float(_np.add.reduce(t.numpy(), dtype=_np.float64))
    return float(t.sum())


def group_advantages(rewards: torch.Tensor, group_size: int | None = None, *, group_index: torch.Tensor | None = None,
                     mode: str = "grpo", scale: str = "group", eps: float = 1e-6, nan_policy: str = "raise",
                     singleton: str = "zero", backend: str = "auto") -> torch.Tensor:
    """Group-relative advantages of N rewards laid out group by group.

    Args:
        rewards: [N] float tensor (float32, bfloat16, float16; float64 on the torch backend).
        group_size: fixed group size (N divisible by it). Or:
        group_index: [N] integer tensor of non-decreasing group ids (ragged groups).
        mode: "grpo" ((r - mean) / (std + eps), unbiased std), "dr_grpo" (r - mean),
            "rloo" (r minus the mean of the other members).
        scale: for "grpo": "group" (the group's std), "batch" (std of all N rewards), "none".
        eps: added to the std. 1e-6 is verl's; TRL uses 1e-4 (see ADVANTAGE_PRESETS).
        nan_policy: "raise" (ValueError naming the positions of NaN/inf rewards) or "zero"
            (count them as 0 and log how many).
        singleton: what a group of one gets: "zero", or "verl" (mean 0, std 1).
        backend: "auto", "torch", "cpu", "triton" or "cuda".

    Returns:
        [N] advantages in the rewards' dtype (computed in float32; a group whose float32 sums
        would overflow, rewards near 3e38, is redone in float64). Groups whose rewards are all
        equal get exactly 0. Detached: rewards that require grad are accepted, and the result
        carries no gradient on every backend.
    """
    _check_values(rewards, "rewards", 1, "[N]", "group_advantages")
    return _run(rewards, None, group_size, group_index, mode, scale, eps, singleton, nan_policy, backend,
                "group_advantages")[0]


def group_stats(rewards: torch.Tensor, group_size: int | None = None, *, group_index: torch.Tensor | None = None,
                nan_policy: str = "raise", backend: str = "auto") -> GroupStats:
    """Per-group mean, unbiased std and the mask of degenerate groups (all rewards equal), which
    DAPO's dynamic sampling drops. Same arguments as group_advantages."""
    _check_values(rewards, "rewards", 1, "[N]", "group_stats")
    _, _, mean, std, degenerate = _run(rewards, None, group_size, group_index, "grpo", "group", 1e-6, "zero",
                                       nan_policy, backend, "group_stats")
    return GroupStats(mean.float(), std.float(), degenerate)  # the torch backend's are float64


def composite_advantages(components: torch.Tensor, weights: torch.Tensor | Sequence[float],
                         group_size: int | None = None, *, group_index: torch.Tensor | None = None,
                         mode: str = "grpo", scale: str = "group", eps: float = 1e-6, nan_policy: str = "raise",
                         singleton: str = "zero", backend: str = "auto") -> tuple[torch.Tensor, torch.Tensor]:
    """Weighted total reward and its group advantages in one kernel launch.

    Args:
        components: [N, K] reward components (e.g. judge, embedding, modality, format).
        weights: [K] finite weights (a float tensor on the components' device, or a sequence of
            floats); NaN or inf is a ValueError.
        Other arguments as group_advantages.

    Returns:
        (total [N] float32, advantages [N] in the components' dtype).
    """
    op = "composite_advantages"
    _check_values(components, "components", 2, "[N, K]", op)
    if components.shape[1] == 0:
        raise ValueError(f"{op}: 'components' must have at least one column (K >= 1), got shape "
                         f"{tuple(components.shape)}")
    if not isinstance(weights, torch.Tensor):
        weights = torch.tensor(list(weights), dtype=torch.float32, device=components.device)
    if weights.dim() != 1 or weights.numel() != components.shape[1]:
        raise ValueError(f"{op}: 'weights' must be 1-D [K={components.shape[1]}], got shape {tuple(weights.shape)}")
    if weights.device != components.device:
        raise ValueError(f"{op}: 'weights' is on {weights.device} but 'components' is on {components.device}")
    # every backend reads the K weights as one dense vector: a strided or expanded view is copied
    if weights.requires_grad:
        weights = weights.detach()
    if weights.dtype != torch.float32 or not weights.is_contiguous():
        weights = weights.float().contiguous()
    # K weights: one small host sync in eager mode (a NaN weight would silently make every total NaN)
    if not torch.compiler.is_compiling():
        # on the CPU the K values are read directly (a tensor reduction costs more than the kernel at small N)
        finite = (all(map(math.isfinite, weights.tolist())) if weights.device.type == "cpu"
                  else bool(torch.isfinite(weights).all()))
        if not finite:
            bad = (~torch.isfinite(weights)).nonzero().flatten().tolist()
            raise ValueError(f"{op}: 'weights' must be finite, got {weights.tolist()} (non-finite at positions {bad})")
    adv, total, *_ = _run(components, weights, group_size, group_index, mode, scale, eps, singleton, nan_policy,
                          backend, op)
    return total, adv
