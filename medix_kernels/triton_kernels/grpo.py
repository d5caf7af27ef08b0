"""The lean grpo_loss on the Triton backend: 3 launches forward, 1 backward, no [B, L] PyTorch graph.

Forward: the log-prob kernel over the [B, L, V] logits with the mask as row mask (masked tokens
read no logits), ``policy_seq_kernel`` (per-token loss, its derivative, per-sequence sums) and
``policy_finalize_kernel`` (the aggregation: loss, stats, per-sequence weights c_b). Backward:
the log-prob backward kernel with SCALED, whose per-row upstream gradient is
g_loss * c_b * m_t * dl_t/dlogp_t; masked tokens have a zero gradient, so their rows are written
as zeros without reading the logits. Nothing here synchronises with the host.

Ops: ``medix::grpo_fwd_triton`` -> (out [6] = loss and the stats, lse [T], dlt [T], coef [B]),
``medix::grpo_bwd_triton`` and the in-place ``medix::grpo_bwd_triton_`` (d logits over the logits).
"""
from __future__ import annotations

import torch

from . import policy
from .logprob import _define, _rows, _wrap, bwd_config, fwd_config, launch_bwd, launch_fwd

STAT_NAMES = ("clip_frac_low", "clip_frac_high", "ratio_mean", "kl_mean", "entropy_mean")  # out[1:]


def policy_fwd(logits, ids, mask, advantages, old_logp, ref_logp, temperature: float, loss_type: str,
               clip_low: float, clip_high: float, dual_clip: float | None, kl: str, beta: float, aggregation: str,
               max_len: int | None, with_entropy: bool, fwd_cfg=None):
    """Validated [B, L, V] logits etc. -> (out [6] fp32, lse [T], dlt [T] = m * dl/dlogp, coef [B])."""
    b, l, v = logits.shape
    t = b * l
    x, _ = _rows(logits, v)
    dev = logits.device
    f32 = dict(dtype=torch.float32, device=dev)
    m = mask.reshape(t).contiguous()
    logp, lse = torch.empty(t, **f32), torch.empty(t, **f32)
    ent = torch.empty(t if with_entropy else 0, **f32)
    launch_fwd(x, ids.reshape(t).to(torch.int64).contiguous(), logp, lse, ent, temperature, with_entropy,
               fwd_config(fwd_cfg), row_mask=m)
    ratio = loss_type if loss_type in ("gspo", "gspo_token") else "token"
    out, dlt, coef = loss_and_stats(logp, ent if with_entropy else None, m, advantages, old_logp, ref_logp, b, l,
                                    ratio, loss_type, clip_low, clip_high, dual_clip, kl if beta > 0 else "", beta,
                                    aggregation, max_len)
    return out, lse, dlt, coef


def loss_and_stats(logp, ent, m, advantages, old_logp, ref_logp, b: int, l: int, ratio: str, loss_type: str,
                   clip_low: float, clip_high: float, dual_clip: float | None, kl_name: str, beta: float,
                   aggregation: str, max_len: int | None):
    """The policy kernels over per-token log-probs [T]: (out [6], dlt [T] = m * dl/dlogp, coef [B])."""
    f32 = dict(dtype=torch.float32, device=logp.device)
    dlt, coef = torch.empty(b * l, **f32), torch.empty(b, **f32)
    part = torch.empty(b, policy.N_PARTS, **f32)
    out = torch.empty(6, **f32)
    old = logp if old_logp is None else old_logp.contiguous()
    ref = ref_logp.contiguous() if kl_name else logp
    adv_b, adv_l = (advantages.stride(0), 0) if advantages.dim() == 1 else advantages.stride()
    _wrap(policy.policy_seq_kernel)[(b,)](
        logp, old, ref, advantages, m, logp if ent is None else ent, dlt, part, l, adv_b, adv_l, float(clip_low),
        float(clip_high), 0.0 if dual_clip is None else float(dual_clip), float(beta), HAS_OLD=old_logp is not None,
        WITH_ENTROPY=ent is not None, RATIO=ratio, CISPO=loss_type == "cispo", DUAL_CLIP=dual_clip is not None,
        KL=kl_name, BLOCK_L=policy.block(l), num_warps=4)
    norm = float(max_len if max_len is not None else l)
    _wrap(policy.policy_finalize_kernel)[(1,)](part, coef, out, b, norm, AGG=aggregation,
                                                BLOCK_B=policy.block(b, 256), num_warps=4)
    return out, dlt, coef


def policy_bwd(logits, ids, lse, dlt, coef, grad_out, temperature: float, out=None, bwd_cfg=None):
    """d logits of the lean loss (grad_out: the gradient of the forward's ``out``; its element 0 is the loss's)."""
    b, l, v = logits.shape
    x, _ = _rows(logits, v)
    inplace = out is logits
    y = x if inplace else torch.empty(x.shape, dtype=logits.dtype, device=logits.device)
    launch_bwd(x, y, ids.reshape(b * l).to(torch.int64).contiguous(), lse, dlt, None, None, temperature,
               bwd_config(bwd_cfg), scaled=(grad_out.float().contiguous(), coef, l))
    return logits if inplace else y.view(logits.shape)


# --- torch custom ops -------------------------------------------------------------------------

def _fwd_op(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor,
            old_logp: torch.Tensor | None, ref_logp: torch.Tensor | None, temperature: float, loss_type: str,
            clip_low: float, clip_high: float, dual_clip: float | None, kl: str, beta: float, aggregation: str,
            max_len: int | None, with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return policy_fwd(logits, ids, mask, advantages, old_logp, ref_logp, temperature, loss_type, clip_low, clip_high,
                      dual_clip, kl, beta, aggregation, max_len, with_entropy)


def _fwd_fake(logits, ids, mask, advantages, old_logp, ref_logp, temperature, loss_type, clip_low, clip_high,
              dual_clip, kl, beta, aggregation, max_len, with_entropy):
    b, l, _ = logits.shape
    f32 = dict(dtype=torch.float32, device=logits.device)
    return torch.empty(6, **f32), torch.empty(b * l, **f32), torch.empty(b * l, **f32), torch.empty(b, **f32)


def _bwd_op(logits: torch.Tensor, ids: torch.Tensor, lse: torch.Tensor, dlt: torch.Tensor, coef: torch.Tensor,
            grad_out: torch.Tensor, temperature: float) -> torch.Tensor:
    return policy_bwd(logits, ids, lse, dlt, coef, grad_out, temperature)


def _bwd_fake(logits, ids, lse, dlt, coef, grad_out, temperature):
    return torch.empty_like(logits, memory_format=torch.contiguous_format)


def _bwd_inplace_op(logits: torch.Tensor, ids: torch.Tensor, lse: torch.Tensor, dlt: torch.Tensor,
                    coef: torch.Tensor, grad_out: torch.Tensor, temperature: float) -> None:
    policy_bwd(logits, ids, lse, dlt, coef, grad_out, temperature, out=logits)


def _bwd_inplace_fake(logits, ids, lse, dlt, coef, grad_out, temperature):
    return None


grpo_fwd_op = _define("medix::grpo_fwd_triton", (), _fwd_op, _fwd_fake)
grpo_bwd_op = _define("medix::grpo_bwd_triton", (), _bwd_op, _bwd_fake)
grpo_bwd_inplace_op = _define("medix::grpo_bwd_triton_", ("logits",), _bwd_inplace_op, _bwd_inplace_fake)


class _LeanGrpoLoss(torch.autograd.Function):
    @staticmethod
    def forward(logits, ids, mask, advantages, old_logp, ref_logp, config, with_entropy, inplace):
        c = config
        return torch.ops.medix.grpo_fwd_triton(
            logits, ids, mask, advantages, old_logp, ref_logp, float(c.temperature), c.loss_type, float(c.clip_low),
            float(c.clip_high), None if c.dual_clip is None else float(c.dual_clip), c.kl, float(c.beta),
            c.aggregation, c.max_len, bool(with_entropy))

    @staticmethod
    def setup_context(ctx, inputs, output):
        logits, ids, _, _, _, _, config, _, inplace = inputs
        _, lse, dlt, coef = output
        ctx.save_for_backward(logits, ids, lse, dlt, coef)
        ctx.mark_non_differentiable(lse, dlt, coef)
        ctx.temperature, ctx.inplace = float(config.temperature), inplace

    @staticmethod
    def backward(ctx, grad_out, *unused):
        logits, ids, lse, dlt, coef = ctx.saved_tensors
        if ctx.inplace:  # the caller allowed it: d logits over the logits, no second [T, V] buffer
            torch.ops.medix.grpo_bwd_triton_(logits, ids, lse, dlt, coef, grad_out, ctx.temperature)
            grad = logits
        else:
            grad = torch.ops.medix.grpo_bwd_triton(logits, ids, lse, dlt, coef, grad_out, ctx.temperature)
        return grad, None, None, None, None, None, None, None, None


def lean_grpo_loss(logits, ids, mask, advantages, old_logp, ref_logp, config, inplace: bool, return_entropy: bool):
    """(loss, stats) like grpo_loss, for validated inputs on the triton backend."""
    out = _LeanGrpoLoss.apply(logits, ids, mask, advantages, old_logp, ref_logp, config, return_entropy,
                              inplace)[0]
    stats = {name: out[i + 1].detach() for i, name in enumerate(STAT_NAMES)}
    if not return_entropy:
        del stats["entropy_mean"]
    return out[0], stats
