"""The per-token policy objective of grpo_loss (torch-reference-free backends: cpu, cuda, the
triton "composed" path) and fused_linear_grpo_loss.

Here only the [T, V] part (log-softmax and its gradient) is a kernel; what follows acts on
per-token vectors and is plain differentiable PyTorch. Its Triton twin, used by the lean
grpo_loss on the triton backend, is triton_kernels/policy.py:token_terms (the same formulas with
their derivative written out): a change to the objective goes into both, and the tests compare
both with medix_kernels.reference. Every aggregation is a weighted sum of per-token
losses with weights that depend only on the mask, so a loss computed chunk by chunk (the fused
linear path) is exactly the sum of its chunks:
    loss = sum_t w_t * l_t
    token-mean:              w = m / (number of tokens)
    seq-mean-token-mean:     w = m / (len_b * number of non-empty sequences)
    seq-mean-token-sum:      w = m / (number of non-empty sequences)
    seq-mean-token-sum-norm: w = m / (number of non-empty sequences * max_len)
The formulas of l_t are written out in medix_kernels.reference.policy_loss; MediX-R1's own
trainer: docs/official_loss_semantics.md.

The rollout correction (LossConfig.rollout_correction) multiplies each token's policy term by a
detached importance weight w_t from the token log-ratio log pi_train - log pi_rollout; with
rollout_mask="reject" it also removes tokens from the mask the aggregation weights come from.
"""
from __future__ import annotations

import torch

from .loss_config import SEQUENCE_RATIO_TYPES, LossConfig


def token_weights(mask: torch.Tensor, config: LossConfig) -> torch.Tensor:
    """[B, L] float32 aggregation weights (no gradient); zero on masked tokens and empty rows."""
    m = mask.float()
    lengths = m.sum(-1, keepdim=True)
    n_seq = (lengths > 0).sum().clamp_min(1)
    if config.aggregation == "token-mean":
        return m / m.sum().clamp_min(1)
    if config.aggregation == "seq-mean-token-mean":
        return m / (lengths.clamp_min(1) * n_seq)
    if config.aggregation == "seq-mean-token-sum":
        return m / n_seq
    return m / (n_seq * (config.max_len if config.max_len is not None else m.shape[-1]))


def per_token_terms(logp, old_logp, ref_logp, adv, config: LossConfig, seq_log_ratio=None, is_weight=None):
    """Per-token loss (differentiable in logp), ratio and KL (detached). All arguments share a shape,
    except seq_log_ratio (GSPO's log s, detached, broadcastable to logp; gspo and gspo_token).
    is_weight: the rollout correction's weight of each token's policy term (detached), or None."""
    c = config
    old = logp.detach() if old_logp is None else old_logp
    if c.loss_type in SEQUENCE_RATIO_TYPES:
        log_s = seq_log_ratio if seq_log_ratio is not None else torch.zeros_like(logp)
        log_ratio = log_s + logp - logp.detach()
        # gspo: capped at 10 (verl); gspo_token: clamped to [-20, 20] (MediX-R1's trainer)
        ratio = (log_ratio.clamp(max=10.0) if c.loss_type == "gspo" else log_ratio.clamp(-20.0, 20.0)).exp()
    else:
        ratio = (logp - old).clamp(-20.0, 20.0).exp()
    if c.loss_type == "cispo":
        loss = -ratio.clamp(max=1.0 + c.clip_high).detach() * adv * logp
    else:
        loss = torch.maximum(-adv * ratio, -adv * ratio.clamp(1.0 - c.clip_low, 1.0 + c.clip_high))
        if c.dual_clip is not None:
            loss = torch.where(adv < 0, torch.minimum(loss, -adv * c.dual_clip), loss)
    if is_weight is not None:
        loss = is_weight * loss
    kl = None
    if c.beta > 0:
        x = ref_logp - logp
        if c.kl == "k1":
            kl = -x
        elif c.kl == "k2":
            kl = 0.5 * x * x
        else:
            x = x.clamp(-20.0, 20.0)
            kl = (x.exp() - x - 1.0).clamp(-10.0, 10.0)
        loss = loss + c.beta * kl
    return loss, ratio.detach(), None if kl is None else kl.detach()


def gspo_seq_log_ratio(logp, old_logp, mask):
    """log s_b = mean over the sequence's tokens of (logp - old_logp), detached; [B, 1]."""
    m = mask.float()
    return (((logp.detach() - old_logp) * m).sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp_min(1))


def rollout_log_ratio(train_logp, rollout_logp, mask):
    """log pi_train - log pi_rollout on response tokens, bounded to [-20, 20]; 0 elsewhere (any shape)."""
    return torch.where(mask.bool(), (train_logp.detach().float() - rollout_logp.float()).clamp(-20.0, 20.0), 0.0)


def rollout_weights(log_rho, mask, config: LossConfig):
    """(weight, keep, inside) of the rollout correction from the token log-ratios (any shape for the token
    modes, [B, L] for the sequence ones): the ratio rho per token or per sequence (mean or sum of the
    log-ratios), inside = lower <= rho <= cap; truncate: clamp(rho, lower, cap); mask: rho inside, else
    0, or ("reject") weight 1 and keep = inside."""
    c = config
    if c.rollout_correction.startswith("sequence"):
        log_s = log_rho.sum(-1, keepdim=True)
        if c.rollout_is_sequence == "geometric":
            log_s = log_s / mask.float().sum(-1, keepdim=True).clamp_min(1)
        rho = log_s.clamp(-20.0, 20.0).exp().expand_as(log_rho)
    else:
        rho = log_rho.exp()
    inside = (rho >= c.rollout_is_lower) & (rho <= c.rollout_is_cap)
    if c.rollout_correction.endswith("truncate"):
        return rho.clamp(c.rollout_is_lower, c.rollout_is_cap), None, inside
    if c.rollout_correction.endswith("mask"):
        if c.rollout_mask == "reject":
            return None, inside.float(), inside
        return torch.where(inside, rho, 0.0), None, inside
    return None, None, inside


def rollout_stats(log_rho, weight, keep, inside, mask) -> dict:
    """The mismatch diagnostics over response tokens ([B, L]; weight / keep None mean 1), 0-d tensors:
    reference.policy_loss.rollout_stats has each formula."""
    m = mask.float()
    n = m.sum().clamp_min(1)
    rho = log_rho.exp()
    applied = m if weight is None else weight * m
    applied = applied if keep is None else applied * keep
    lengths = m.sum(-1)
    seq = (lengths > 0).float()
    ppl = torch.exp(-(log_rho * m).sum(-1) / lengths.clamp_min(1)) * seq
    return {"rollout_weight_mean": applied.sum() / n,
            "rollout_weight_max": applied.amax() if applied.numel() else n.new_zeros(()),
            "rollout_flagged_frac": (m * ~inside).sum() / n,
            "rollout_kl_k3": ((torch.expm1(log_rho) - log_rho) * m).sum() / n,  # rho - 1 - log rho
            "rollout_chi2": ((rho * rho - 1.0) * m).sum() / n,
            "rollout_ppl_ratio": ppl.sum() / seq.sum().clamp_min(1),
            "rollout_logp_mismatch": (log_rho.abs() * m).sum() / n,
            "rollout_logp_mismatch_max": (log_rho.abs() * m).amax() if m.numel() else n.new_zeros(())}


def token_stats(ratio, kl, adv, mask, config: LossConfig, entropy=None) -> dict:
    """Masked means as 0-d tensors (no host sync)."""
    m = mask.float()
    n = m.sum().clamp_min(1)
    stats = {
        "clip_frac_low": (((ratio < 1.0 - config.clip_low) & (adv < 0)).float() * m).sum() / n,
        "clip_frac_high": (((ratio > 1.0 + config.clip_high) & (adv > 0)).float() * m).sum() / n,
        "ratio_mean": (ratio * m).sum() / n,
        "kl_mean": (kl * m).sum() / n if kl is not None else ratio.new_zeros(()),
    }
    if entropy is not None:
        stats["entropy_mean"] = (entropy.detach() * m).sum() / n
    return stats
