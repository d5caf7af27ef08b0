"""Per-token log-probabilities (and entropy) of sampled ids, fused: one pass over the vocabulary
forward, one backward pass that writes d logits (in place if allowed), never a [T, V] log-softmax.

Kernels: C++ (csrc/cpu/logprob.h), CUDA (csrc/cuda/logprob.cu), Triton
(triton_kernels/logprob.py); reference: medix_kernels.reference.selective_log_softmax.
"""
from __future__ import annotations

import torch

from . import torch_backend
from ._backend import resolve_backend


def _ops(backend: str):
    """(forward, backward, in-place backward) torch ops of a compiled backend; for "torch", the
    forward and in-place backward in torch ops that the fused-linear loss runs on its chunks."""
    if backend == "torch":
        return torch_backend.logprob_fwd, None, torch_backend.logprob_bwd_
    if backend == "triton":
        from .triton_kernels import logprob  # noqa: F401  (registers the medix::*_triton ops)
        return (torch.ops.medix.logprob_fwd_triton, torch.ops.medix.logprob_bwd_triton,
                torch.ops.medix.logprob_bwd_triton_)
    return torch.ops.medix.logprob_fwd, torch.ops.medix.logprob_bwd, torch.ops.medix.logprob_bwd_


class _FusedLogprob(torch.autograd.Function):
    @staticmethod
    def forward(logits, ids, temperature, with_entropy, backend, inplace):
        fwd, _, _ = _ops(backend)
        return fwd(logits, ids, temperature, with_entropy)

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, ids, temperature, with_entropy, backend, inplace = inputs
        _, lse, entropy = output
        ctx.save_for_backward(logits, ids, lse, entropy)
        ctx.mark_non_differentiable(lse)
        ctx.temperature, ctx.with_entropy, ctx.backend, ctx.inplace = temperature, with_entropy, backend, inplace

    @staticmethod
    def backward(ctx, grad_logp, grad_lse, grad_entropy):
        logits, ids, lse, entropy = ctx.saved_tensors
        _, bwd, bwd_inplace = _ops(ctx.backend)
        if grad_logp is None:
            grad_logp = torch.zeros_like(lse)
        if not ctx.with_entropy or grad_entropy is None:
            entropy, grad_entropy = None, None
        if ctx.inplace:
            # The caller allowed it: the logits' storage receives their gradient, so forward plus
            # backward need no second [T, V] buffer.
            bwd_inplace(logits, ids, lse, grad_logp, entropy, grad_entropy, ctx.temperature)
            return logits, None, None, None, None, None
        return bwd(logits, ids, lse, grad_logp, entropy, grad_entropy, ctx.temperature), None, None, None, None, None


def check_logits_ids(logits, ids, op: str, *, backend: str, check_finite: bool = False, validate: bool = True) -> None:
    """Types, shapes and devices; with ``validate`` also that ids lie in [0, V) (a host sync, except
    on the cpu backend, whose kernels check the range themselves)."""
    if not isinstance(logits, torch.Tensor) or not logits.dtype.is_floating_point:
        raise TypeError(f"{op}: 'logits' must be a float tensor [B, L, V] or [T, V], got "
                        f"{getattr(logits, 'dtype', type(logits).__name__)}")
    if logits.dim() not in (2, 3) or logits.shape[-1] == 0:
        raise ValueError(f"{op}: 'logits' must be [B, L, V] or [T, V] with V >= 1, got shape {tuple(logits.shape)}")
    if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int64, torch.int32):
        got = getattr(ids, "dtype", type(ids).__name__)
        raise TypeError(f"{op}: 'ids' must be an int64 or int32 tensor, got {got}")
    if tuple(ids.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"{op}: 'ids' must have shape {tuple(logits.shape[:-1])} (logits without the vocabulary "
                         f"dimension), got {tuple(ids.shape)}")
    if ids.device != logits.device:
        raise ValueError(f"{op}: 'ids' is on {ids.device} but 'logits' is on {logits.device}")
    if torch.compiler.is_compiling():
        return
    if validate and backend != "cpu" and ids.numel():  # the C++ CPU kernels check the range themselves, sync-free
        v = logits.shape[-1]
        bad = (ids < 0) | (ids >= v)
        if bool(bad.any()):
            pos = bad.nonzero()[0].tolist()
            raise ValueError(f"{op}: 'ids' must be in [0, V={v}), got {int(ids[tuple(pos)])} at position {pos}")
    if check_finite and not bool(torch.isfinite(logits).all()):
        pos = (~torch.isfinite(logits)).nonzero()[0].tolist()
        raise ValueError(f"{op}: 'logits' has a non-finite value at position {pos} (check_finite=True)")


def check_inplace_logits(logits, op: str) -> None:
    """Logits the in-place backward can write its gradient over, checked at call time (strides
    only: no sync, traceable). Refused: elements sharing memory (an expanded / stride-0 view: every
    row's gradient would land in the same memory; torch refuses its own in-place ops on them by
    the same rule, at::has_internal_overlap's certain overlap), and layouts the kernels cannot
    walk as [T, V] rows with unit column stride (they would only fail in the backward)."""
    v = logits.shape[-1]
    if any(st == 0 and n > 1 for st, n in zip(logits.stride(), logits.shape)):
        raise ValueError(f"{op}: inplace_backward=True needs logits whose elements do not share memory, got "
                         f"shape {tuple(logits.shape)} with strides {logits.stride()} (an expanded view); pass "
                         "inplace_backward=False or a contiguous copy")
    try:
        rows = logits.view(-1, v)
    except RuntimeError:
        rows = None
    if rows is None or (v > 1 and rows.stride(1) != 1):
        raise ValueError(f"{op}: inplace_backward=True needs logits viewable as [T, V] rows with unit column "
                         f"stride, got shape {tuple(logits.shape)} with strides {logits.stride()}; pass "
                         "inplace_backward=False or a contiguous copy")


def selective_log_softmax(logits: torch.Tensor, ids: torch.Tensor, *, temperature: float = 1.0,
                          return_entropy: bool = False, inplace_backward: bool = False, check_finite: bool = False,
                          validate: bool = True, backend: str = "auto"):
    """log softmax(logits / temperature) at ``ids``, without materialising the log-softmax.

    Args:
        logits: [B, L, V] or [T, V], float32 / bfloat16 / float16, any V.
        ids: [B, L] or [T] int64/int32 in [0, V).
        temperature: > 0.
        return_entropy: also return the entropy of softmax(logits / temperature).
        inplace_backward: the backward overwrites ``logits`` with their gradient (no extra
            [T, V] buffer); only when nothing else needs the logits afterwards. Logits whose
            elements share memory (an expanded view), or that are not viewable as [T, V] rows,
            are a ValueError.
        check_finite: raise on NaN/inf logits (a debugging aid: one extra pass).
        validate: check that ids lie in [0, V) (the default: a host sync on GPU backends). False
            skips it; the kernels still never read outside a row (an out-of-range id gives NaN).
        backend: "auto", "torch", "cpu", "triton", "cuda".

    Returns:
        logp [B, L] float32 (and entropy [B, L] float32), differentiable (float64 for float64
        logits, which the torch reference computes).
    """
    op = "selective_log_softmax"
    backend = resolve_backend(backend, logits, op)
    check_logits_ids(logits, ids, op, backend=backend, check_finite=check_finite, validate=validate)
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"{op}: 'temperature' must be a float > 0, got {temperature!r}")
    if inplace_backward:
        check_inplace_logits(logits, op)
    if backend == "torch" or logits.dtype == torch.float64:
        return torch_backend.selective_log_softmax(logits, ids, temperature=temperature,
                                                   return_entropy=return_entropy)
    logp, _, entropy = _FusedLogprob.apply(logits, ids, float(temperature), bool(return_entropy), backend,
                                           bool(inplace_backward))
    return (logp, entropy) if return_entropy else logp
