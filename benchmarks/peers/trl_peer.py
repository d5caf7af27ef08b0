"""TRL (installed as a peer): its own functions, imported, never copied.

- ``trl.trainer.utils.selective_log_softmax`` (on CUDA it dispatches to TRL's Triton kernel; on
  the CPU it loops log-sum-exp over rows for fp32 and log_softmax per row for bf16),
  ``selective_log_softmax_and_entropy`` and ``entropy_from_logits``;
- ``trl.trainer.utils.nanstd`` for the group advantages. TRL computes advantages inline in
  ``GRPOTrainer._generate_and_score_completions`` (no standalone function): nan-mean per group,
  ``nanstd`` per group, ``(r - mean) / (std + 1e-4)``; composite rewards are
  ``(rewards_per_func * weights).nansum(1)`` first ("sum_then_normalize"). The few lines doing
  that are written here around TRL's ``nanstd``.
- the GRPO loss is also inline (``GRPOTrainer._compute_loss``): exp(logp - old) unclamped,
  ``-min(coef_1 * A, clamp(coef_1) * A)``, unclamped k3 to the reference, ``bnpo``
  aggregation (token mean over the batch), written here on top of TRL's
  ``selective_log_softmax`` (the [T, V] part, which is where the time goes).
"""
from __future__ import annotations

import torch

from ..ops.base import Unavailable


def utils():
    try:
        from trl.trainer import utils as trl_utils
    except Exception as exc:  # ImportError, or a broken install
        raise Unavailable(f"trl is not importable ({type(exc).__name__}: {exc})") from exc
    return trl_utils


def group_advantages(r: torch.Tensor, g: int, nanstd) -> torch.Tensor:
    mean = torch.nanmean(r.view(-1, g), dim=1).repeat_interleave(g, dim=0)
    std = nanstd(r.view(-1, g), dim=1).repeat_interleave(g, dim=0)
    return torch.nan_to_num((r - mean) / (std + 1e-4), nan=0.0)


def composite_advantages(c: torch.Tensor, w: torch.Tensor, g: int, nanstd):
    total = (c * w.unsqueeze(0)).nansum(dim=1)
    return total, group_advantages(total, g, nanstd)


def grpo_token_loss(logp, old_logp, ref_logp, advantages, mask, beta=1e-2, eps_low=0.2, eps_high=0.2):
    adv = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
    coef_1 = torch.exp(logp - old_logp)
    coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
    per_token = -torch.min(coef_1 * adv, coef_2 * adv)
    if beta != 0.0:
        x = ref_logp - logp
        per_token = per_token + beta * (torch.exp(x) - x - 1)
    mask = mask.float()
    return (per_token * mask).sum() / mask.sum().clamp(min=1.0)
