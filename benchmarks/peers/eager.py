"""Plain PyTorch, written the way a trainer writes these ops (the "eager" peer; ``torch.compile``
of the same functions is the "compile" peer). The policy-loss peers use
``medix_kernels.reference`` (the library's own eager reference: materialised log-softmax, the
formulas as in the papers), which is what plain PyTorch does for them."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def group_advantages(r: torch.Tensor, g: int, eps: float = 1e-6) -> torch.Tensor:
    grouped = r.view(-1, g)
    mean = grouped.mean(dim=1).repeat_interleave(g)
    std = grouped.std(dim=1).repeat_interleave(g)
    return (r - mean) / (std + eps)


def composite_advantages(c: torch.Tensor, w: torch.Tensor, g: int) -> tuple[torch.Tensor, torch.Tensor]:
    total = c @ w
    return total, group_advantages(total, g)


def cosine_rewards(x: torch.Tensor, y: torch.Tensor, threshold: float = 0.8) -> torch.Tensor:
    return (F.cosine_similarity(x.float(), y.float(), dim=1) >= threshold).float()


def selective_log_softmax(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    return logprobs.gather(-1, ids.unsqueeze(-1)).squeeze(-1)


def selective_log_softmax_entropy(logits: torch.Tensor, ids: torch.Tensor):
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    logp = logprobs.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    return logp, -(logprobs.exp() * logprobs).sum(-1)
