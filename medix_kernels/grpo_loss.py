"""The clipped-ratio policy loss with KL (GRPO, DAPO, Dr. GRPO, GSPO / GSPO-token, CISPO) from logits.

Two ways to compute it (``TRITON_PATHS``; the triton backend takes the one
medix_kernels._defaults names, the other backends the composed one):
- "composed": logits -> fused per-token log-probs (selective_log_softmax: one pass forward, one
  backward writing d logits, in place if allowed) -> the per-token objective on [B, L] vectors
  (_policy_math, PyTorch) -> the weighted sum that is the aggregation.
- "lean" (triton): the same maths in Triton kernels (triton_kernels/grpo.py): 3 launches forward,
  1 backward, masked tokens skipped in both passes.
- "single_pass" (triton): forward, loss derivative and backward of each row in one program
  (triton_kernels/single_pass.py): the logits are read once from HBM; GSPO with old log-probs
  takes "lean".
Reference: medix_kernels.reference.grpo_loss.

Host synchronisation: the value checks (ids in [0, V), a 0/1 mask, finite advantages) need the
data on the host, two syncs per call. ``validate=False`` skips them (a training loop whose inputs
come from its own pipeline); the kernels still never read outside a row: an out-of-range id
gives a NaN log-prob, hence a NaN loss, and a non-finite advantage a NaN loss, which a loop
checking its loss (medix_r1 does) sees one step later without any sync here.
"""
from __future__ import annotations

import torch

from ._backend import resolve_backend
from ._defaults import kernel_config
from ._policy_math import (
    gspo_seq_log_ratio,
    per_token_terms,
    rollout_log_ratio,
    rollout_stats,
    rollout_weights,
    token_stats,
    token_weights,
)
from .loss_config import SEQUENCE_RATIO_TYPES, LossConfig
from .selective_log_softmax import check_inplace_logits, check_logits_ids, selective_log_softmax


def check_loss_inputs(shape, device, mask, advantages, old_logp, ref_logp, config, op: str, *,
                      validate: bool = True, rollout_logp=None) -> None:
    """Checks of everything but the logits/hidden states: shapes [B, L], devices, dtypes, config;
    with ``validate`` also the values of mask, advantages and rollout_logp (one host sync)."""
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
    logps = (("old_logp", old_logp), ("ref_logp", ref_logp), ("rollout_logp", rollout_logp))
    for name, t in logps:
        if t is None:
            continue
        if not isinstance(t, torch.Tensor) or not t.dtype.is_floating_point or tuple(t.shape) != (b, l):
            raise ValueError(f"{op}: '{name}' must be a float tensor [B, L] = [{b}, {l}], got "
                             + (f"{tuple(t.shape)} {t.dtype}" if isinstance(t, torch.Tensor) else type(t).__name__))
    for name, t in (("mask", mask), ("advantages", advantages)) + logps:
        if t is not None and t.device != device:
            raise ValueError(f"{op}: '{name}' is on {t.device} but the logits/hidden states are on {device}")
    if config.beta > 0 and ref_logp is None:
        raise ValueError(f"{op}: 'ref_logp' [B, L] is required when config.beta > 0 (beta={config.beta}); "
                         "pass the reference model's log-probs or set beta=0")
    if config.rollout_correction != "none" and rollout_logp is None:
        raise ValueError(f"{op}: 'rollout_logp' [B, L] (the rollout engine's log-probs of the sampled tokens) is "
                         f"required when config.rollout_correction={config.rollout_correction!r}; pass them or set "
                         "rollout_correction='none'")
    if validate and not torch.compiler.is_compiling():  # data-dependent: eager only (a compiled graph skips it)
        check_mask_and_advantage_values(mask, advantages, op, rollout_logp)


def check_mask_and_advantage_values(mask, advantages, op: str, rollout_logp=None) -> None:
    """A mask of 0/1 (a weight of 2 or NaN would silently rescale or poison the aggregation), finite
    advantages (one NaN makes the loss and every gradient NaN) and no NaN rollout log-prob on a response
    token (it would be the weight of that token, or of its whole sequence): one host sync for all."""
    bad_mask = None if mask.dtype == torch.bool else (mask != 0) & (mask != 1)
    bad_adv = ~torch.isfinite(advantages)
    bad_roll = None if rollout_logp is None else torch.isnan(rollout_logp) & (mask != 0)
    checks = [("advantages", bad_adv), ("mask", bad_mask), ("rollout_logp", bad_roll)]
    checks = [(name, bad) for name, bad in checks if bad is not None]
    found = dict(zip([name for name, _ in checks], torch.stack([bad.any() for _, bad in checks]).tolist()))
    if found.get("mask"):
        pos = bad_mask.nonzero()[0].tolist()
        raise ValueError(f"{op}: 'mask' must hold only 0 and 1 (or be bool), got {mask[tuple(pos)].item()} at "
                         f"position {pos}")
    if found["advantages"]:
        pos = bad_adv.nonzero()[0].tolist()
        raise ValueError(f"{op}: 'advantages' must be finite, got {advantages[tuple(pos)].item()} at position {pos} "
                         f"({int(bad_adv.sum())} non-finite value(s))")
    if found.get("rollout_logp"):
        pos = bad_roll.nonzero()[0].tolist()
        raise ValueError(f"{op}: 'rollout_logp' must not be NaN where the mask is 1, got NaN at position {pos} "
                         f"({int(bad_roll.sum())} such token(s))")


def grpo_loss(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor, *,
              old_logp: torch.Tensor | None = None, ref_logp: torch.Tensor | None = None,
              rollout_logp: torch.Tensor | None = None, config: LossConfig = LossConfig(),
              inplace_backward: bool = False, return_entropy: bool = False,
              check_finite: bool = False, validate: bool = True, backend: str = "auto"):
    """Policy loss of a batch of sampled responses.

    Args:
        logits: [B, L, V] policy logits at the response positions (float32/bfloat16/float16).
        ids: [B, L] sampled token ids; mask: [B, L] bool or 0/1 (response tokens; other values
            are a ValueError).
        advantages: [B] (one per sequence) or [B, L], finite (NaN / inf are a ValueError).
        old_logp: [B, L] log-probs of the sampling policy (None: on-policy, ratio 1).
        ref_logp: [B, L] log-probs of the reference policy (needed when config.beta > 0).
        rollout_logp: [B, L] the rollout engine's log-probs of the sampled tokens at config.temperature
            (needed when config.rollout_correction is not "none"; with "none" they only feed the
            mismatch stats). Anything (NaN included) where the mask is 0.
        config: LossConfig (loss type, clip range, dual clip, KL estimator, aggregation, temperature).
        inplace_backward: the backward writes d logits over the logits (no extra [B, L, V] buffer);
            logits whose elements share memory (an expanded view) are refused.
        return_entropy: also report the mean entropy in the stats (reported too when config.entropy_coef > 0).
        check_finite: raise on non-finite logits before computing (debug mode).
        validate: check the values of ids, mask, advantages and rollout_logp (the default; two host
            syncs per call). False is the fast path: shapes, dtypes and devices are still checked,
            values are not (an out-of-range id, a non-finite advantage or a NaN rollout log-prob on a
            response token then shows as a NaN loss, or NaN rollout stats with rollout_correction "none").
        backend: "auto", "torch", "cpu", "triton", "cuda".

    Returns:
        (loss: 0-d tensor, stats: dict of 0-d tensors: clip_frac_low, clip_frac_high, ratio_mean,
        kl_mean, entropy_mean when asked, and with rollout_logp the rollout_* diagnostics of
        loss_config.ROLLOUT_STATS).
        Without ``validate`` no host synchronisation happens.
    """
    op = "grpo_loss"
    backend = resolve_backend(backend, logits, op)
    check_logits_ids(logits, ids, op, backend=backend, check_finite=check_finite, validate=validate)
    if logits.dim() != 3:
        raise ValueError(f"{op}: 'logits' must be [B, L, V], got shape {tuple(logits.shape)}")
    check_loss_inputs(tuple(ids.shape), logits.device, mask, advantages, old_logp, ref_logp, config, op,
                      validate=validate, rollout_logp=rollout_logp)
    if inplace_backward:
        check_inplace_logits(logits, op)
    # the entropy bonus needs the entropy's gradient: the composed path's log-prob kernels have it
    fused = backend == "triton" and ids.numel() and config.entropy_coef == 0
    path = kernel_config("grpo_loss_triton") if fused else "composed"
    return TRITON_PATHS[path](logits, ids, mask, advantages, old_logp, ref_logp, config, inplace_backward,
                              return_entropy, backend, rollout_logp)


def _composed(logits, ids, mask, advantages, old_logp, ref_logp, config, inplace, return_entropy, backend,
              rollout_logp=None):
    with_entropy = return_entropy or config.entropy_coef > 0  # the bonus needs it, with its gradient
    out = selective_log_softmax(logits, ids, temperature=config.temperature, return_entropy=with_entropy,
                                inplace_backward=inplace, validate=False, backend=backend)
    logp, entropy = out if with_entropy else (out, None)
    return policy_loss_from_logp(logp, mask, advantages, old_logp, ref_logp, config, entropy, rollout_logp)


def _lean(logits, ids, mask, advantages, old_logp, ref_logp, config, inplace, return_entropy, backend,
          rollout_logp=None):
    from .triton_kernels.grpo import lean_grpo_loss
    return lean_grpo_loss(logits, ids, mask, advantages, old_logp, ref_logp, config, inplace, return_entropy,
                          rollout_logp)


def single_pass_takes(config: LossConfig, old_logp) -> bool:
    """Whether the single-pass kernel computes this loss: every token's loss derivative must follow from its
    own row, so not GSPO's sequence ratio with old log-probs, a sequence-level rollout correction or one that
    rejects tokens (the aggregation weights would depend on other rows); those take the lean path."""
    return not ((config.loss_type in SEQUENCE_RATIO_TYPES and old_logp is not None)
                or config.rollout_correction.startswith("sequence")
                or (config.rollout_correction.endswith("mask") and config.rollout_mask == "reject"))


def _single_pass(logits, ids, mask, advantages, old_logp, ref_logp, config, inplace, return_entropy, backend,
                 rollout_logp=None):
    if not single_pass_takes(config, old_logp):
        return _lean(logits, ids, mask, advantages, old_logp, ref_logp, config, inplace, return_entropy, backend,
                     rollout_logp)
    from .triton_kernels.single_pass import single_pass_grpo_loss
    return single_pass_grpo_loss(logits, ids, mask, advantages, old_logp, ref_logp, config, inplace, return_entropy,
                                 rollout_logp)


#: How grpo_loss computes on the triton backend, by name (the defaults table picks one; the GPU sweep times all).
TRITON_PATHS = {"composed": _composed, "lean": _lean, "single_pass": _single_pass}


def policy_loss_from_logp(logp, mask, advantages, old_logp, ref_logp, config, entropy=None, rollout_logp=None):
    """(loss, stats) from per-token log-probs [B, L] (differentiable)."""
    adv = advantages.float()
    adv = adv[:, None].expand_as(logp) if adv.dim() == 1 else adv
    old = None if old_logp is None else old_logp.float()
    sequence_ratio = config.loss_type in SEQUENCE_RATIO_TYPES and old is not None
    seq = gspo_seq_log_ratio(logp, old, mask) if sequence_ratio else None
    is_weight = keep = None
    if rollout_logp is not None:
        log_rho = rollout_log_ratio(logp if old is None else old, rollout_logp, mask)
        is_weight, keep, inside = rollout_weights(log_rho, mask, config)
    per_token, ratio, kl = per_token_terms(logp, old, None if ref_logp is None else ref_logp.float(), adv, config, seq,
                                           is_weight)
    if config.entropy_coef > 0:  # the entropy bonus (its gradient: selective_log_softmax's entropy backward)
        per_token = per_token - config.entropy_coef * entropy
    loss = (per_token * token_weights(mask if keep is None else mask * keep, config)).sum()
    stats = token_stats(ratio, kl, adv, mask, config, entropy)
    if rollout_logp is not None:
        stats.update(rollout_stats(log_rho, is_weight, keep, inside, mask))
    return loss, stats
