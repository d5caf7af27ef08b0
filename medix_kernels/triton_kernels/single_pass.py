"""grpo_loss in one pass over the logits: each row's forward, loss derivative and backward in the same
program, so the second read of the row comes from L2 instead of HBM (the two-pass floor reads the
logits twice).

Launches, forward: ``policy_weights_kernel`` (the aggregation weight c_b of every sequence, from
the mask alone), ``grpo_row_kernel`` (per row: log-sum-exp, log-prob, the token's loss derivative
dl/dlogp through ``policy.token_terms``, then d logits = c_b * m * dl * d logp / d logits written,
in place over the logits when allowed), and the lean path's ``policy_seq_kernel`` +
``policy_finalize_kernel`` for the loss and the stats. The gradient is computed for an upstream
gradient of 1 (``loss.backward()``); the backward multiplies it by the actual upstream gradient
in ``scale_unless_one_kernel``, whose programs read that scalar and touch the gradient only when it
is not 1, so the usual backward moves no [T, V] bytes.

Limits: GSPO's sequence ratio needs the whole sequence's log-probs before any token's loss, so
"gspo" / "gspo_token" with old log-probs take the lean two-pass path. In place, the logits hold
their gradient from the forward on (not from the backward on): only for logits nothing else reads.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import policy
from .logprob import _LOG2E, _define, _rows, _warps, _wrap, fwd_config
from .logprob_kernels import LN2, NEG, _bwd_chunk, _exp, _fwd_chunk, _log


@triton.jit
def policy_weights_kernel(mask_ptr, coef_ptr, B, L, norm, AGG: tl.constexpr, BLOCK_B: tl.constexpr,
                          BLOCK_L: tl.constexpr):
    """coef[b] = the aggregation weight of sequence b (what policy_finalize_kernel computes from its sums)."""
    rb0 = tl.arange(0, BLOCK_B)
    cl = tl.arange(0, BLOCK_L)
    n_tok = tl.zeros([BLOCK_B], dtype=tl.float32)
    n_seq = tl.zeros([BLOCK_B], dtype=tl.float32)
    for b0 in range(0, B, BLOCK_B):
        rb = (b0 + rb0).to(tl.int64)
        ln = tl.zeros([BLOCK_B], dtype=tl.float32)
        for l0 in range(0, L, BLOCK_L):
            c = l0 + cl
            ok = (rb < B)[:, None] & (c < L)[None, :]
            ln += tl.sum(tl.load(mask_ptr + rb[:, None] * L + c[None, :], mask=ok, other=0).to(tl.float32), axis=1)
        tl.store(coef_ptr + rb, ln, mask=rb < B)  # the lengths, for the second loop
        n_tok += ln
        n_seq += tl.where(ln > 0.0, 1.0, 0.0)
    n_tok_all = tl.maximum(tl.sum(n_tok, axis=0), 1.0)
    n_seq_all = tl.maximum(tl.sum(n_seq, axis=0), 1.0)
    tl.debug_barrier()  # the lengths stored above are read back by other threads
    for b0 in range(0, B, BLOCK_B):
        rb = b0 + rb0
        ln = tl.load(coef_ptr + rb, mask=rb < B, other=0.0)
        if AGG == "token-mean":
            c = tl.zeros_like(ln) + 1.0 / n_tok_all
        elif AGG == "seq-mean-token-mean":
            c = 1.0 / (tl.maximum(ln, 1.0) * n_seq_all)
        elif AGG == "seq-mean-token-sum":
            c = tl.zeros_like(ln) + 1.0 / n_seq_all
        else:
            c = tl.zeros_like(ln) + 1.0 / (n_seq_all * norm)
        tl.debug_barrier()
        tl.store(coef_ptr + rb, c, mask=rb < B)


@triton.jit
def grpo_row_kernel(logits_ptr, out_ptr, ids_ptr, mask_ptr, adv_ptr, old_ptr, ref_ptr, coef_ptr, logp_ptr, ent_ptr,
                    V, L, stride_row, out_stride_row, adv_stride_b, adv_stride_l, inv_temp, scale, clip_low,
                    clip_high, dual_clip, beta, WITH_ENTROPY: tl.constexpr, HAS_OLD: tl.constexpr,
                    CISPO: tl.constexpr, DUAL_CLIP: tl.constexpr, KL: tl.constexpr, BLOCK_V: tl.constexpr,
                    ACC: tl.constexpr, NUM_STAGES: tl.constexpr, EXP2: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    b = row // L
    rows = row + tl.arange(0, 1)
    m = tl.load(mask_ptr + row).to(tl.float32)
    live = (tl.zeros([1], dtype=tl.int32) + (m != 0.0).to(tl.int32)) != 0
    v_end = tl.where(m != 0.0, V, 0)  # a masked row: nothing read, zeros written
    row_ptr = logits_ptr + rows[:, None] * stride_row
    cols = tl.arange(0, BLOCK_V)
    if ACC == "lane":
        mx = tl.full([1, BLOCK_V], NEG, tl.float32)
        s = tl.zeros([1, BLOCK_V], dtype=tl.float32)
        t = tl.zeros([1, BLOCK_V], dtype=tl.float32)
    elif ACC == "chunk":
        mx = tl.full([1], float("-inf"), tl.float32)
        s = tl.zeros([1, BLOCK_V], dtype=tl.float32)
        t = tl.zeros([1, BLOCK_V], dtype=tl.float32)
    else:
        mx = tl.full([1], float("-inf"), tl.float32)
        s = tl.zeros([1], dtype=tl.float32)
        t = tl.zeros([1], dtype=tl.float32)
    if NUM_STAGES > 0:
        for v0 in tl.range(0, v_end, BLOCK_V, num_stages=NUM_STAGES):
            mx, s, t = _fwd_chunk(row_ptr, v0, cols, V, live, scale, mx, s, t, True, ACC, EXP2, WITH_ENTROPY)
    else:
        for v0 in range(0, v_end, BLOCK_V):
            mx, s, t = _fwd_chunk(row_ptr, v0, cols, V, live, scale, mx, s, t, True, ACC, EXP2, WITH_ENTROPY)
    if ACC == "lane":
        top = tl.max(mx, axis=1)
        w = _exp(mx - top[:, None], EXP2)
        total = tl.sum(tl.sum(s * w, axis=1), axis=0)
        tsum = tl.sum(tl.sum(t * w, axis=1), axis=0)
        top = tl.sum(top, axis=0)
    elif ACC == "chunk":
        total = tl.sum(tl.sum(s, axis=1), axis=0)
        tsum = tl.sum(tl.sum(t, axis=1), axis=0)
        top = tl.sum(mx, axis=0)
    else:
        total = tl.sum(s, axis=0)
        tsum = tl.sum(t, axis=0)
        top = tl.sum(mx, axis=0)
    if EXP2:
        unit = LN2
    else:
        unit = 1.0
    lse_u = top + _log(total, EXP2)
    tok = tl.load(ids_ptr + row)
    valid = (m != 0.0) & (tok >= 0) & (tok < V)
    z_tok = tl.load(logits_ptr + row * stride_row + tok, mask=valid, other=float("nan")).to(tl.float32) * scale
    logp = tl.where(m != 0.0, (z_tok - lse_u) * unit, 0.0)
    tl.store(logp_ptr + row, logp)
    if WITH_ENTROPY:
        tl.store(ent_ptr + row, tl.where(m != 0.0, (lse_u - tsum / total) * unit, 0.0))
    # the token's loss derivative (GSPO's sequence ratio never comes here: log_s = 0 is unused)
    if HAS_OLD:
        od = tl.load(old_ptr + row).to(tl.float32)
    else:
        od = logp
    if KL != "":
        rf = tl.load(ref_ptr + row).to(tl.float32)
    else:
        rf = logp
    a = tl.load(adv_ptr + b * adv_stride_b + (row - b * L) * adv_stride_l).to(tl.float32)
    _, dl, _, _ = policy.token_terms(logp, od, rf, a, 0.0, clip_low, clip_high, dual_clip, beta, "token", CISPO,
                                     DUAL_CLIP, KL)
    g_lp = tl.where(m != 0.0, m * dl * tl.load(coef_ptr + b), 0.0)
    # d logits of this row (read again: from L2 when the row is still there), zeros for a zero gradient
    out_base = out_ptr + row * out_stride_row
    base = logits_ptr + row * stride_row
    c_read = tl.where(g_lp == 0.0, 0, V)
    c_full = c_read // BLOCK_V * BLOCK_V
    for v0 in range(0, c_full, BLOCK_V):
        _bwd_chunk(base, out_base, v0 + cols, c_read, tok, g_lp, lse_u, 0.0, 0.0, inv_temp, scale, False, False,
                   EXP2, "")
    for v0 in range(c_full, c_read, BLOCK_V):
        _bwd_chunk(base, out_base, v0 + cols, c_read, tok, g_lp, lse_u, 0.0, 0.0, inv_temp, scale, True, False,
                   EXP2, "")
    zeros = tl.zeros([BLOCK_V], dtype=out_ptr.dtype.element_ty)
    for v0 in range(c_read, V, BLOCK_V):
        c = v0 + cols
        tl.store(out_base + c, zeros, mask=c < V)


@triton.jit
def scale_unless_one_kernel(x_ptr, g_ptr, n_cols, stride_row, BLOCK: tl.constexpr):
    """x[row] *= g[0], reading and writing nothing when g[0] == 1 (the usual loss.backward())."""
    row = tl.program_id(0).to(tl.int64)
    g = tl.load(g_ptr).to(tl.float32)
    n = tl.where(g == 1.0, 0, n_cols)
    base = x_ptr + row * stride_row
    for v0 in range(0, n, BLOCK):
        c = v0 + tl.arange(0, BLOCK)
        x = tl.load(base + c, mask=c < n_cols, other=0.0)
        tl.store(base + c, (x.to(tl.float32) * g).to(x_ptr.dtype.element_ty), mask=c < n_cols)


# --- launchers, torch ops, autograd ------------------------------------------------------------

def single_pass_fwd(logits, ids, mask, advantages, old_logp, ref_logp, temperature: float, loss_type: str,
                    clip_low: float, clip_high: float, dual_clip: float | None, kl: str, beta: float, aggregation: str,
                    max_len: int | None, with_entropy: bool, out=None, fwd_cfg=None):
    """Validated [B, L, V] inputs (no GSPO ratio with old log-probs) -> (stats [6], d logits for an upstream
    gradient of 1, in ``out``: a new tensor, or the logits themselves when ``out is logits``)."""
    from .grpo import loss_and_stats
    b, l, v = logits.shape
    t = b * l
    x, _ = _rows(logits, v)
    y = x if out is logits else torch.empty(x.shape, dtype=logits.dtype, device=logits.device)
    f32 = dict(dtype=torch.float32, device=logits.device)
    m = mask.reshape(t).contiguous()
    coef = torch.empty(b, **f32)
    norm = float(max_len if max_len is not None else l)
    _wrap(policy_weights_kernel)[(1,)](m, coef, b, l, norm, AGG=aggregation, BLOCK_B=policy.block(b, 16),
                                       BLOCK_L=policy.block(l, 256), num_warps=4)
    logp = torch.empty(t, **f32)
    ent = torch.empty(t if with_entropy else 0, **f32)
    cfg = fwd_config(fwd_cfg)
    block = min(cfg.block_v, triton.next_power_of_2(max(v, 1)))
    kl_name = kl if beta > 0 else ""
    old = old_logp.contiguous() if old_logp is not None else logp
    ref = ref_logp.contiguous() if kl_name else logp
    adv_b, adv_l = (advantages.stride(0), 0) if advantages.dim() == 1 else advantages.stride()
    inv_temp = 1.0 / float(temperature)
    _wrap(grpo_row_kernel)[(t,)](
        x, y, ids.reshape(t).to(torch.int64).contiguous(), m, advantages, old, ref, coef, logp,
        ent if with_entropy else logp, v, l, x.stride(0), y.stride(0), adv_b, adv_l, inv_temp,
        inv_temp * _LOG2E if cfg.exp2 else inv_temp, float(clip_low), float(clip_high),
        0.0 if dual_clip is None else float(dual_clip), float(beta), WITH_ENTROPY=bool(with_entropy),
        HAS_OLD=old_logp is not None, CISPO=loss_type == "cispo", DUAL_CLIP=dual_clip is not None, KL=kl_name,
        BLOCK_V=block, ACC=cfg.acc, NUM_STAGES=cfg.num_stages, EXP2=cfg.exp2, num_warps=_warps(cfg.num_warps, block))
    stats, _, _ = loss_and_stats(logp, ent if with_entropy else None, m, advantages, old_logp, ref_logp, b, l,
                                 "token", loss_type, clip_low, clip_high, dual_clip, kl_name, beta, aggregation,
                                 max_len)
    return stats, y.view(logits.shape)


def scale_unless_one(grad, g) -> None:
    """grad *= g[0] in place, with no [T, V] traffic when g[0] == 1."""
    v = grad.shape[-1]
    x, _ = _rows(grad, v)
    block = min(4096, triton.next_power_of_2(max(v, 1)))
    _wrap(scale_unless_one_kernel)[(x.shape[0],)](x, g, v, x.stride(0), BLOCK=block, num_warps=_warps(8, block))


def _fwd_op(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor,
            old_logp: torch.Tensor | None, ref_logp: torch.Tensor | None, temperature: float, loss_type: str,
            clip_low: float, clip_high: float, dual_clip: float | None, kl: str, beta: float, aggregation: str,
            max_len: int | None, with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return single_pass_fwd(logits, ids, mask, advantages, old_logp, ref_logp, temperature, loss_type, clip_low,
                           clip_high, dual_clip, kl, beta, aggregation, max_len, with_entropy)


def _fwd_fake(logits, *args):
    return torch.empty(6, dtype=torch.float32, device=logits.device), torch.empty_like(logits)


def _fwd_inplace_op(logits: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor,
                    old_logp: torch.Tensor | None, ref_logp: torch.Tensor | None, temperature: float, loss_type: str,
                    clip_low: float, clip_high: float, dual_clip: float | None, kl: str, beta: float,
                    aggregation: str, max_len: int | None, with_entropy: bool) -> torch.Tensor:
    return single_pass_fwd(logits, ids, mask, advantages, old_logp, ref_logp, temperature, loss_type, clip_low,
                           clip_high, dual_clip, kl, beta, aggregation, max_len, with_entropy, out=logits)[0]


def _fwd_inplace_fake(logits, *args):
    return torch.empty(6, dtype=torch.float32, device=logits.device)


def _scale_op(grad: torch.Tensor, g: torch.Tensor) -> None:
    scale_unless_one(grad, g)


single_fwd_op = _define("medix::grpo_single_triton", (), _fwd_op, _fwd_fake)
single_fwd_inplace_op = _define("medix::grpo_single_triton_", ("logits",), _fwd_inplace_op, _fwd_inplace_fake)
scale_op = _define("medix::scale_unless_one_triton_", ("grad",), _scale_op, lambda grad, g: None)


class _SinglePassGrpoLoss(torch.autograd.Function):
    @staticmethod
    def forward(logits, ids, mask, advantages, old_logp, ref_logp, config, with_entropy, inplace):
        c = config
        args = (logits, ids, mask, advantages, old_logp, ref_logp, float(c.temperature), c.loss_type,
                float(c.clip_low), float(c.clip_high), None if c.dual_clip is None else float(c.dual_clip), c.kl,
                float(c.beta), c.aggregation, c.max_len, bool(with_entropy))
        if inplace:  # the logits receive their gradient now; saved as such below
            return torch.ops.medix.grpo_single_triton_(*args), None
        return torch.ops.medix.grpo_single_triton(*args)

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, grad = output
        ctx.save_for_backward(inputs[0] if grad is None else grad)
        if grad is not None:
            ctx.mark_non_differentiable(grad)

    @staticmethod
    def backward(ctx, grad_out, *unused):
        (grad,) = ctx.saved_tensors
        torch.ops.medix.scale_unless_one_triton_(grad, grad_out.float().contiguous())
        return grad, None, None, None, None, None, None, None, None


def single_pass_grpo_loss(logits, ids, mask, advantages, old_logp, ref_logp, config, inplace: bool,
                          return_entropy: bool):
    """(loss, stats) like grpo_loss, for validated inputs on the triton backend (no GSPO ratio with old log-probs)."""
    from .grpo import STAT_NAMES
    out = _SinglePassGrpoLoss.apply(logits, ids, mask, advantages, old_logp, ref_logp, config, return_entropy,
                                    inplace)[0]
    stats = {name: out[i + 1].detach() for i, name in enumerate(STAT_NAMES)}
    if not return_entropy:
        del stats["entropy_mean"]
    return out[0], stats
