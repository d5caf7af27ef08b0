"""Pure-PyTorch references of the policy-loss ops. They materialise the full log-softmax and
write each formula out as in the papers and peer trainers (MediX-R1's: docs/official_loss_semantics.md);
the kernels must agree."""
from __future__ import annotations

import torch

from ..loss_config import LossConfig


def selective_log_softmax(logits, ids, *, temperature=1.0, return_entropy=False):
    """log softmax(logits / T) gathered at ids (and the entropy of that distribution).

    Entropy H = -sum_v p_v log p_v with 0 log 0 = 0: a -inf logit (a masked-out word) has p = 0
    and contributes nothing (not 0 * -inf = NaN), in the value and in the gradient. Computed in
    float32, or in float64 for float64 logits (the tests' oracle at large V, where float32
    reductions lose ~1e-5)."""
    x = logits if logits.dtype == torch.float64 else logits.float()
    logprobs = torch.log_softmax(x / temperature, dim=-1)
    logp = logprobs.gather(-1, ids.long().unsqueeze(-1)).squeeze(-1)
    if not return_entropy:
        return logp
    probs = logprobs.exp()
    entropy = -(probs * torch.where(probs > 0, logprobs, 0.0)).sum(-1)
    return logp, entropy


def kl_penalty(logp, ref_logp, kl):
    """KL estimators with x = ref_logp - logp (verl's clamps for k3)."""
    x = ref_logp - logp
    if kl == "k1":
        return -x
    if kl == "k2":
        return 0.5 * x * x
    x = x.clamp(-20.0, 20.0)
    return (x.exp() - x - 1.0).clamp(-10.0, 10.0)


def aggregate(per_token, mask, aggregation, max_len=None):
    """Masked aggregation of a [B, L] per-token loss; sequences with no token are ignored."""
    mask = mask.float()
    lengths = mask.sum(-1)
    valid = lengths > 0
    n_seq = valid.sum().clamp_min(1)
    if aggregation == "token-mean":
        return (per_token * mask).sum() / mask.sum().clamp_min(1)
    if aggregation == "seq-mean-token-mean":
        return ((per_token * mask).sum(-1) / lengths.clamp_min(1))[valid].sum() / n_seq
    if aggregation == "seq-mean-token-sum":
        return (per_token * mask).sum(-1)[valid].sum() / n_seq
    norm = max_len if max_len is not None else per_token.shape[-1]
    return (per_token * mask).sum() / (n_seq * norm)  # Dr. GRPO's constant, over non-empty sequences


def rollout_log_ratio(train_logp, rollout_logp, mask):
    """log rho_t = log pi_train(y_t) - log pi_rollout(y_t) on response tokens, bounded to [-20, 20] (verl's
    bound: exp stays finite, a token the engine gave probability 0 cannot make a sequence's ratio NaN);
    0 elsewhere, whatever rollout_logp holds there."""
    return torch.where(mask.bool(), (train_logp - rollout_logp).clamp(-20.0, 20.0), 0.0)


def rollout_weights(log_rho, mask, config):
    """The rollout correction's (weight, keep, inside) [B, L] from the token log-ratios.

    rho: exp(log rho_t) per token, or per sequence exp(mean_t log rho_t) ("geometric") / exp(sum_t
    log rho_t) ("product"), broadcast to its tokens. inside: lower <= rho <= cap.
    truncate: weight = clamp(rho, lower, cap) (TIS). mask: weight = rho inside, 0 outside (MIS), or with
    rollout_mask="reject" weight 1 and keep = inside (the token leaves the batch)."""
    c, m = config, mask.bool()
    if c.rollout_correction.startswith("sequence"):
        log_s = log_rho.sum(-1, keepdim=True)
        if c.rollout_is_sequence == "geometric":
            log_s = log_s / m.sum(-1, keepdim=True).clamp_min(1)
        rho = log_s.clamp(-20.0, 20.0).exp().expand_as(log_rho)
    else:
        rho = log_rho.exp()
    inside = (rho >= c.rollout_is_lower) & (rho <= c.rollout_is_cap)
    one = torch.ones_like(rho)
    if c.rollout_correction.endswith("truncate"):
        return rho.clamp(c.rollout_is_lower, c.rollout_is_cap), one, inside
    if c.rollout_correction.endswith("mask") and c.rollout_mask == "weight":
        return torch.where(inside, rho, 0.0), one, inside
    if c.rollout_correction.endswith("mask"):
        return one, inside.to(rho.dtype), inside
    return one, one, inside


def rollout_stats(log_rho, weight, keep, inside, mask) -> dict:
    """The mismatch diagnostics, means over response tokens (rho per token): the weight applied (mean,
    max), the share of ratios outside the bounds, KL(rollout || train) by k3 = E[rho - log rho - 1],
    chi^2 = E[rho^2] - 1, the perplexity ratio PPL_train / PPL_rollout = mean over sequences of
    exp(-mean_t log rho_t), and the mean and max |log pi_train - log pi_rollout|."""
    m = mask.to(log_rho.dtype)
    n = m.sum().clamp_min(1)
    rho = log_rho.exp()
    applied = weight * keep * m
    lengths = m.sum(-1)
    seq = lengths > 0
    ppl_ratio = (-(log_rho * m).sum(-1)[seq] / lengths[seq]).exp()
    return {"rollout_weight_mean": applied.sum() / n,
            "rollout_weight_max": applied.max() if applied.numel() else log_rho.new_zeros(()),
            "rollout_flagged_frac": ((~inside).to(m.dtype) * m).sum() / n,
            "rollout_kl_k3": ((torch.expm1(log_rho) - log_rho) * m).sum() / n,  # rho - 1 - log rho, >= 0
            "rollout_chi2": ((rho * rho - 1.0) * m).sum() / n,
            "rollout_ppl_ratio": ppl_ratio.sum() / seq.sum().clamp_min(1),
            "rollout_logp_mismatch": (log_rho.abs() * m).sum() / n,
            "rollout_logp_mismatch_max": (log_rho.abs() * m).max() if m.numel() else log_rho.new_zeros(())}


def policy_loss(logp, mask, advantages, old_logp=None, ref_logp=None, config=LossConfig(), entropy=None,
                rollout_logp=None):
    """Loss and stats from per-token log-probs [B, L] (differentiable), in logp's precision."""
    mask = mask.to(logp.dtype)
    adv = advantages.to(logp.dtype)
    adv = adv[:, None].expand_as(logp) if adv.dim() == 1 else adv
    old_logp = logp.detach() if old_logp is None else old_logp.to(logp.dtype)
    c = config
    if c.loss_type in ("gspo", "gspo_token"):
        lengths = mask.sum(-1).clamp_min(1)
        seq_log_ratio = ((logp - old_logp) * mask).sum(-1) / lengths          # log s_i
        log_ratio = seq_log_ratio.detach()[:, None] + logp - logp.detach()     # sg(s) * exp(logp - sg(logp))
        if c.loss_type == "gspo":
            ratio = log_ratio.clamp(max=10.0).exp()                           # verl's GSPO cap
        else:
            ratio = log_ratio.clamp(-20.0, 20.0).exp()                        # MediX-R1's gspo_token
    else:
        ratio = (logp - old_logp).clamp(-20.0, 20.0).exp()
    if c.loss_type == "cispo":
        weight = ratio.clamp(max=1.0 + c.clip_high).detach()
        per_token = -weight * adv * logp
    else:
        unclipped = -adv * ratio
        clipped = -adv * ratio.clamp(1.0 - c.clip_low, 1.0 + c.clip_high)
        per_token = torch.maximum(unclipped, clipped)
        if c.dual_clip is not None:
            per_token = torch.where(adv < 0, torch.minimum(per_token, -adv * c.dual_clip), per_token)
    if rollout_logp is not None:  # importance weights for the engine's mismatch (no gradient)
        log_rho = rollout_log_ratio(old_logp.detach(), rollout_logp.to(logp.dtype), mask)
        is_weight, keep, inside = rollout_weights(log_rho, mask, c)
        per_token = is_weight * per_token
    kl = None
    if c.beta > 0:
        kl = kl_penalty(logp, ref_logp.to(logp.dtype), c.kl)
        per_token = per_token + c.beta * kl
    if c.entropy_coef > 0:  # the entropy bonus: higher entropy lowers the loss
        per_token = per_token - c.entropy_coef * entropy.to(logp.dtype)
    loss = aggregate(per_token, mask if rollout_logp is None else mask * keep, c.aggregation, c.max_len)
    n_tok = mask.sum().clamp_min(1)
    low = (ratio < 1.0 - c.clip_low) & (adv < 0)
    high = (ratio > 1.0 + c.clip_high) & (adv > 0)
    stats = {
        "clip_frac_low": (low.float() * mask).sum() / n_tok,
        "clip_frac_high": (high.float() * mask).sum() / n_tok,
        "ratio_mean": (ratio.detach() * mask).sum() / n_tok,
        "kl_mean": (kl.detach() * mask).sum() / n_tok if kl is not None else logp.new_zeros(()),
    }
    if entropy is not None:
        stats["entropy_mean"] = (entropy.detach() * mask).sum() / n_tok
    if rollout_logp is not None:
        stats.update(rollout_stats(log_rho, is_weight, keep, inside, mask))
    return loss, stats


def grpo_loss(logits, ids, mask, advantages, *, old_logp=None, ref_logp=None, rollout_logp=None, config=LossConfig(),
              return_entropy=False):
    """The clipped-ratio policy loss with KL (and the entropy bonus) from [B, L, V] logits: (loss, stats)."""
    if return_entropy or config.entropy_coef > 0:
        logp, entropy = selective_log_softmax(logits, ids, temperature=config.temperature, return_entropy=True)
    else:
        logp, entropy = selective_log_softmax(logits, ids, temperature=config.temperature), None
    return policy_loss(logp, mask, advantages, old_logp, ref_logp, config, entropy, rollout_logp)


def fused_linear_grpo_loss(hidden, weight, ids, mask, advantages, *, bias=None, old_logp=None, ref_logp=None,
                           rollout_logp=None, config=LossConfig(), return_entropy=False):
    """The same loss from hidden states [B, L, H] and the LM head [V, H] (full logits here)."""
    logits = hidden.float() @ weight.float().t()
    if bias is not None:
        logits = logits + bias.float()
    return grpo_loss(logits, ids, mask, advantages, old_logp=old_logp, ref_logp=ref_logp, rollout_logp=rollout_logp,
                     config=config, return_entropy=return_entropy)
