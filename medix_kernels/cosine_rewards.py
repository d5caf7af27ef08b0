"""Batched cosine-similarity rewards (MediX-R1's semantic reward: cos(answer, reference) >= 0.8).

Kernels: C++ (``csrc/cpu/cosine.h``), CUDA (``csrc/cuda/cosine.cu``), Triton
(``triton_kernels/cosine.py``); reference ``medix_kernels.reference.cosine_rewards``.
"""
from __future__ import annotations

import torch

from . import torch_backend
from ._backend import resolve_backend


def cosine_rewards(pred: torch.Tensor, ref: torch.Tensor, *, threshold: float | None = None, eps: float = 1e-8,
                   backend: str = "auto") -> torch.Tensor:
    """Row-wise cosine similarity of two [B, D] embedding batches, as a float32 [B] tensor.

    Same eps semantics as ``torch.nn.functional.cosine_similarity`` (each norm clamped to eps, so
    a zero vector gives 0, not NaN); fp32 accumulation for float32/bfloat16/float16 inputs, and
    a row whose fp32 sums would overflow (entries near 1e20 and above) is redone scaled by its
    largest magnitude, so huge embeddings give the same cosine as the float64 reference. With
    ``threshold``, returns 1.0 where cos >= threshold and 0.0 elsewhere. A reward carries no
    gradient: the result is detached on every backend.
    """
    op = "cosine_rewards"
    for name, t in (("pred", pred), ("ref", ref)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: '{name}' must be a torch.Tensor [B, D], got {type(t).__name__}")
        if not t.dtype.is_floating_point:
            raise TypeError(f"{op}: '{name}' must be a floating-point tensor, got {t.dtype}")
        if t.dim() != 2:
            raise ValueError(f"{op}: '{name}' must be 2-D [B, D], got shape {tuple(t.shape)}")
    if pred.shape != ref.shape:
        raise ValueError(f"{op}: 'pred' and 'ref' must have the same shape [B, D], got {tuple(pred.shape)} "
                         f"and {tuple(ref.shape)}")
    if pred.device != ref.device:
        raise ValueError(f"{op}: 'ref' is on {ref.device} but 'pred' is on {pred.device}")
    if pred.shape[1] == 0:
        raise ValueError(f"{op}: embeddings must have D >= 1 columns, got shape {tuple(pred.shape)}")
    if not (isinstance(eps, (int, float)) and eps > 0):
        raise ValueError(f"{op}: 'eps' must be a float > 0, got {eps!r}")
    if threshold is not None and not isinstance(threshold, (int, float)):
        raise TypeError(f"{op}: 'threshold' must be a float or None, got {type(threshold).__name__}")
    backend = resolve_backend(backend, pred, op)
    if pred.requires_grad or ref.requires_grad:
        pred, ref = pred.detach(), ref.detach()
    if backend != "torch" and (pred.dtype != ref.dtype or pred.dtype == torch.float64):
        if pred.dtype != ref.dtype:
            raise TypeError(f"{op}: 'pred' and 'ref' must have the same dtype, got {pred.dtype} and {ref.dtype}")
        raise TypeError(f"{op}: backend {backend!r} takes float32, bfloat16 or float16, got float64")
    if backend == "torch":
        return torch_backend.cosine_rewards(pred, ref, threshold=threshold, eps=eps)
    pred, ref = _unit_columns(pred), _unit_columns(ref)
    thr = None if threshold is None else float(threshold)
    if backend == "triton":
        from .triton_kernels.cosine import cosine_rewards_triton
        return cosine_rewards_triton(pred, ref, float(eps), thr)
    return torch.ops.medix.cosine_rewards(pred, ref, float(eps), thr)


def _unit_columns(t: torch.Tensor) -> torch.Tensor:
    """``t`` with column stride 1, which the kernels need (a copy when its columns are strided). With
    D = 1 the column stride is never used but torch calls such a tensor contiguous whatever it is, so
    ``.contiguous()`` would hand it over unchanged: only the stride is relabelled."""
    if t.stride(-1) == 1:
        return t
    if t.shape[-1] == 1:
        return t.as_strided(t.shape, (t.stride(0), 1))
    return t.contiguous()
