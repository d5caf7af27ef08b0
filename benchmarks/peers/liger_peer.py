"""Liger-Kernel (installed as a peer): its GRPO losses, imported, never copied.

- ``LigerFusedLinearGRPOLoss`` (chunked over the batch, logits never materialised; the loss math
  torch.compile'd by default): plain PyTorch underneath, so it also runs on the CPU;
- ``_selective_logprob_forward`` (a private helper of ``liger_kernel.chunked_loss``: the
  sequence x vocabulary chunked log-prob of the fused-linear losses, no gradient) for
  fused-linear log-probs; private, so it may move between Liger versions (then: skipped);
- ``triton_grpo_loss`` and ``fused_selective_log_softmax``: Triton kernels over materialised
  logits, GPU only (on the CPU they run only under ``TRITON_INTERPRET=1``, the dry run). Both
  take logits ``[B, L + 1, V]`` (they drop the last position), so the suite hands them such a
  tensor, built before timing.
"""
from __future__ import annotations

import os

from ..ops.base import Unavailable


def _need_triton_device(device: str, what: str) -> None:
    if device != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
        raise Unavailable(f"Liger's {what} is a Triton kernel: needs a CUDA GPU (or TRITON_INTERPRET=1, "
                          "the dry run)")


def fused_linear_grpo_loss_cls():
    try:
        from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss
    except Exception as exc:
        raise Unavailable(f"liger_kernel.chunked_loss is not importable ({type(exc).__name__}: {exc})") from exc
    return LigerFusedLinearGRPOLoss


def chunked_logprob_forward():
    try:
        from liger_kernel.chunked_loss.fused_linear_ppo import _selective_logprob_forward
    except Exception as exc:
        raise Unavailable(f"liger's chunked log-prob helper is not importable ({type(exc).__name__}: {exc})") from exc
    return _selective_logprob_forward


def triton_grpo_loss(device: str):
    _need_triton_device(device, "triton_grpo_loss")
    try:
        from liger_kernel.transformers.grpo_loss import triton_grpo_loss as fn
    except Exception as exc:
        raise Unavailable(f"liger_kernel.transformers.grpo_loss is not importable ({type(exc).__name__}: {exc})") \
            from exc
    return fn


def fused_selective_log_softmax(device: str):
    _need_triton_device(device, "fused_selective_log_softmax")
    try:
        from liger_kernel.ops.grpo_loss import fused_selective_log_softmax as fn
    except Exception as exc:
        raise Unavailable(f"liger_kernel.ops.grpo_loss is not importable ({type(exc).__name__}: {exc})") from exc
    return fn
