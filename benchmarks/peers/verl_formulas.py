"""verl's formulas, written here from their documented semantics -- verl is NOT installed and this
is NOT verl's code. The semantics are those of verl's ``verl/trainer/ppo/core_algos.py``
(``compute_grpo_outcome_advantage``, ``compute_policy_loss``, ``kl_penalty``) and
``verl/utils/torch_functional.py`` (``logprobs_from_logits``), https://github.com/volcengine/verl.

Where verl's semantics differ from the other peers, the difference is what is benchmarked:
- GRPO advantages: (r - mean) / (std + 1e-6), unbiased std; a group of one gets mean 0, std 1.
- policy loss: the log-ratio is clamped to [-20, 20] before exp; PPO clip; dual clip: for A < 0
  the token loss is also capped at -A * c, c = 3.
- "low_var_kl": k3 with x = ref_logp - logp clamped to [-20, 20] and k3 clamped to [-10, 10].
- token-mean aggregation; the KL term is added as beta * mean over the masked tokens.
Per-token log-probs: log_softmax of the fp32 logits gathered at the ids (the plain formula).
Vectorised eager PyTorch; how fast verl's own implementation is was not measured (not installed).
"""
from __future__ import annotations

import torch

LABEL = "verl-formula (written from verl's semantics, verl/trainer/ppo/core_algos.py; verl not installed)"


def grpo_advantages(scores: torch.Tensor, group_size: int, eps: float = 1e-6) -> torch.Tensor:
    grouped = scores.float().view(-1, group_size)
    if group_size == 1:
        mean, std = torch.zeros_like(grouped), torch.ones_like(grouped)
    else:
        mean = grouped.mean(dim=1, keepdim=True)
        std = grouped.std(dim=1, keepdim=True)
    return ((grouped - mean) / (std + eps)).view(-1)


def logprobs_from_logits(logits: torch.Tensor, ids: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    logprobs = torch.log_softmax(logits.float() / temperature, dim=-1)
    return logprobs.gather(-1, ids.unsqueeze(-1)).squeeze(-1)


def low_var_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    x = (ref_logp - logp).clamp(-20.0, 20.0)
    return (x.exp() - x - 1.0).clamp(-10.0, 10.0)


def policy_loss(logp, old_logp, advantages, mask, clip_low=0.2, clip_high=0.2, dual_clip=3.0):
    adv = advantages[:, None] if advantages.dim() == 1 else advantages
    ratio = (logp - old_logp).clamp(-20.0, 20.0).exp()
    pg = torch.maximum(-adv * ratio, -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high))
    pg = torch.where(adv < 0, torch.minimum(pg, -adv * dual_clip), pg)
    mask = mask.float()
    return (pg * mask).sum() / mask.sum().clamp_min(1)


def grpo_loss(logits, ids, mask, advantages, old_logp, ref_logp, beta=1e-2, clip_low=0.2, clip_high=0.2,
              dual_clip=3.0):
    logp = logprobs_from_logits(logits, ids)
    loss = policy_loss(logp, old_logp, advantages, mask, clip_low, clip_high, dual_clip)
    if beta > 0:
        m = mask.float()
        loss = loss + beta * (low_var_kl(logp, ref_logp) * m).sum() / m.sum().clamp_min(1)
    return loss
