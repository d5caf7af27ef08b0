"""The clipped-ratio policy loss with KL (GRPO, DAPO, Dr. GRPO, GSPO / GSPO-token, CISPO) from logits.

logits -> fused per-token log-probs (selective_log_softmax: one pass forward, one backward
writing d logits, in place if allowed) -> the per-token objective on [B, L] vectors
(_policy_math) -> the weighted sum that is the aggregation. Reference:
medix_kernels.reference.grpo_loss.
"""
from __future__ import annotations

import torch

from ._backend import resolve_backend
from ._policy_math import gspo_seq_log_ratio, per_token_terms, token_stats, token_weights
from .loss_config import SEQUENCE_RATIO_TYPES, LossConfig
from .selective_log_softmax import check_logits_ids, selective_log_softmax


def check_loss_inputs(shape, device, mask, advantages, old_logp, ref_logp, config, op: str) -> None:
    """Checks of everything but the logits/hidden states: shapes [B, L], devices, dtypes, config."""
    if not isinstance(config, LossConfig):
        raise TypeError(f"{op}: 'config' must be a medix_kernels.LossConfig, got {type(config).__name__}")
    b, l = shape
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != (b, l):
        raise ValueError(f"{op}: 'mask' must be a [B, L] = [{b}, {l}] tensor (bool or 0/1), got "
                         f"{tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__}")
    if not isinstance(advantages, torch.Tensor) or not advantages.dtype.is_floating_point:
        raise TypeError(f"{op}: 'advantages' must be a float tensor [B] or [B, L]")
    if tuple(advantages.shape) not in ((b,), (b, l)):
        raise ValueError(f"{op}: 'advantages' must be [B] = [{b}] or [B, L] = [{b}, {l}], "
                         f"got {tuple(advantages.shape)}")
    for name, t in (("old_logp", old_logp), ("ref_logp", ref_logp)):
        if t is None:
            continue
        if not isinstance(t, torch.Tensor) or not t.dtype.is_floating_point or tuple(t.shape) != (b, l):
            raise ValueError(f"{op}: '{name}' must be a float tensor [B, L] = [{b}, {l}], got "
                             f"{tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__}")
    for name, t in (("mask", mask), ("advantages", advantages), ("old_logp", old_logp), ("ref_logp", ref_logp)):
        if t is not None and t.device != device:
            raise ValueError(f"{op}: '{name}' is on {t.device} but the logits/hidden states are on {device}")
    if config.beta > 0 and ref_logp is None:
        raise ValueError(f"{op}: 'ref_logp' [B, L] is required when config.beta > 0 (beta={config.beta}); "
                         "pass the reference model's log-probs or set beta=0")
    if not torch.compiler.is_compiling():  # data-dependent: eager only (a compiled graph skips it)
        check_mask_and_advantage_values(mask, advantages, op)


def check_mask_and_advantage_values(mask, advantages, op: str) -> None:
    """A mask of 0/1 (a weight of 2 or NaN would silently rescale or poison the aggregation) and
    finite advantages (one NaN makes the loss and every gradient NaN): one host sync for both."""
    bad_mask = None if mask.dtype == torch.bool else (mask != 0) & (mask != 1)
    bad_adv = ~torch.isfinite(advantages)
    flags = [bad_adv.any()] if bad_mask is None else [bad_adv.any(), bad_mask.any()]
    found = torch.stack(flags).tolist()
    if len(found) > 1 and found[1]:
        pos = bad_mask.nonzero()[0].tolist()
        raise ValueError(f"{op}: 'mask' must hold only 0 and 1 (or be bool), got {mask[tuple(pos)].item()} at "
                         f"position {pos}")
    if found[0]:
        pos = bad_adv.nonzero()[0].tolist()
        raise ValueError(f"{op}: 'advantages' must be finite, got {advantages[tuple(pos)].item()} at position {pos} "
                         f"({int(bad_adv.sum())} non-finite value(s))")


def grpo_loss(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor, *,
              old_logp: torch.Tensor | None = None, ref_logp: torch.Tensor | None = None,
              config: LossConfig = LossConfig(), inplace_backward: bool = False, return_entropy: bool = False,
              check_finite: bool = False, backend: str = "auto"):
    """Policy loss of a batch of sampled responses.

    Args:
        logits: [B, L, V] policy logits at the response positions (float32/bfloat16/float16).
        ids: [B, L] sampled token ids; mask: [B, L] bool or 0/1 (response tokens; other values
            are a ValueError).
        advantages: [B] (one per sequence) or [B, L], finite (NaN / inf are a ValueError).
        old_logp: [B, L] log-probs of the sampling policy (None: on-policy, ratio 1).
        ref_logp: [B, L] log-probs of the reference policy (needed when config.beta > 0).
        config: LossConfig (loss type, clip range, dual clip, KL estimator, aggregation, temperature).
        inplace_backward: the backward writes d logits over the logits (no extra [B, L, V] buffer);
            logits whose elements share memory (an expanded view) are refused.
        return_entropy: also report the mean entropy in the stats.
        check_finite: raise on non-finite logits before computing (debug mode).
        backend: "auto", "torch", "cpu", "triton", "cuda".

    Returns:
        (loss: 0-d tensor, stats: dict of 0-d tensors: clip_frac_low, clip_frac_high, ratio_mean,
        kl_mean and entropy_mean when asked). No host synchronisation happens inside.
    """
    op = "grpo_loss"
    backend = resolve_backend(backend, logits, op)
    check_logits_ids(logits, ids, op, backend=backend, check_finite=check_finite)
    if logits.dim() != 3:
        raise ValueError(f"{op}: 'logits' must be [B, L, V], got shape {tuple(logits.shape)}")
    check_loss_inputs(tuple(ids.shape), logits.device, mask, advantages, old_logp, ref_logp, config, op)
    out = selective_log_softmax(logits, ids, temperature=config.temperature, return_entropy=return_entropy,
                                inplace_backward=inplace_backward, backend=backend)
    logp, entropy = out if return_entropy else (out, None)
    return policy_loss_from_logp(logp, mask, advantages, old_logp, ref_logp, config, entropy)


def policy_loss_from_logp(logp, mask, advantages, old_logp, ref_logp, config, entropy=None):
    """(loss, stats) from per-token log-probs [B, L] (differentiable)."""
    adv = advantages.float()
    adv = adv[:, None].expand_as(logp) if adv.dim() == 1 else adv
    old = None if old_logp is None else old_logp.float()
    sequence_ratio = config.loss_type in SEQUENCE_RATIO_TYPES and old is not None
    seq = gspo_seq_log_ratio(logp, old, mask) if sequence_ratio else None
    per_token, ratio, kl = per_token_terms(logp, old, None if ref_logp is None else ref_logp.float(), adv, config, seq)
    loss = (per_token * token_weights(mask, config)).sum()
    return loss, token_stats(ratio, kl, adv, mask, config, entropy)
