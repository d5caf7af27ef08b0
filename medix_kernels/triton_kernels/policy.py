"""Triton kernels of grpo_loss's per-token objective (the lean path, launched by grpo.py).

``token_terms`` is the one place the per-token formula lives in Triton (the PyTorch version:
medix_kernels/_policy_math.py; the reference: medix_kernels/reference/policy_loss.py). It returns
the token's loss l, its derivative dl/dlogp (everything else detached, exactly as autograd
differentiates the reference: a clamp passes the gradient inside its bounds, bounds included;
a tie of torch.maximum / torch.minimum splits it in halves), the ratio and the KL.

``policy_seq_kernel``: one program per sequence. For the GSPO ratios it first takes the
sequence's mean log-ratio; then per token: l, dl/dlogp (stored, times the mask), and the
sequence's sums (loss, length, clip counts, ratio, KL, entropy). ``policy_finalize_kernel``: one
program; the aggregation (every aggregation is sum_t c_b * m_t * l_t with a per-sequence c_b that
depends only on the mask) gives the loss, c_b (stored for the backward) and the stats.
"""
from __future__ import annotations

import triton
import triton.language as tl

N_PARTS = 8  # per-sequence sums: loss, length, clip low, clip high, ratio, KL, entropy, (unused)
PARTS = tl.constexpr(N_PARTS)


@triton.jit
def _clamp(x, lo, hi):
    """torch.clamp: NaN stays NaN (Triton's min / max would drop it and hide a NaN log-prob)."""
    return tl.minimum(tl.maximum(x, lo, propagate_nan=tl.PropagateNan.ALL), hi, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _tie(a, b):
    """Share of the gradient torch.maximum(a, b) gives a: 1 if a > b, 1/2 on a tie, else 0."""
    return tl.where(a > b, 1.0, tl.where(a == b, 0.5, 0.0))


@triton.jit
def token_terms(logp, old, ref, adv, log_s, clip_low, clip_high, dual_clip, beta, RATIO: tl.constexpr,
                CISPO: tl.constexpr, DUAL_CLIP: tl.constexpr, KL: tl.constexpr):
    """(loss, dloss/dlogp, ratio, kl) per token. RATIO: "token" exp(clamp(logp - old, -20, 20));
    "gspo" exp(min(log_s, 10)); "gspo_token" exp(clamp(log_s, -20, 20)) (log_s: the sequence's
    mean log-ratio, whose per-token derivative is 1 through logp - sg(logp)). KL: "", "k1", "k2", "k3"."""
    if RATIO == "token":
        lr = logp - old
        r = tl.exp(_clamp(lr, -20.0, 20.0))
        dr = tl.where((lr >= -20.0) & (lr <= 20.0), r, 0.0)
    elif RATIO == "gspo":
        lr = tl.zeros_like(logp) + log_s
        r = tl.exp(tl.minimum(lr, 10.0, propagate_nan=tl.PropagateNan.ALL))
        dr = tl.where(lr <= 10.0, r, 0.0)
    else:
        lr = tl.zeros_like(logp) + log_s
        r = tl.exp(_clamp(lr, -20.0, 20.0))
        dr = tl.where((lr >= -20.0) & (lr <= 20.0), r, 0.0)
    hi = 1.0 + clip_high
    if CISPO:
        w = tl.minimum(r, hi, propagate_nan=tl.PropagateNan.ALL)  # detached
        loss = -w * adv * logp
        dl = -w * adv
    else:
        lo = 1.0 - clip_low
        lu = -adv * r
        lc = -adv * _clamp(r, lo, hi)
        loss = tl.maximum(lu, lc, propagate_nan=tl.PropagateNan.ALL)
        wu = _tie(lu, lc)
        d_r = -adv * (wu + (1.0 - wu) * tl.where((r >= lo) & (r <= hi), 1.0, 0.0))
        if DUAL_CLIP:
            cap = -adv * dual_clip
            neg = adv < 0.0
            d_r = tl.where(neg, d_r * _tie(cap, loss), d_r)
            loss = tl.where(neg, tl.minimum(loss, cap, propagate_nan=tl.PropagateNan.ALL), loss)
        dl = d_r * dr
    kl = tl.zeros_like(logp)
    if KL == "k1":
        kl = logp - ref
        dl += beta
        loss += beta * kl
    elif KL == "k2":
        x = ref - logp
        kl = 0.5 * x * x
        dl += beta * -x
        loss += beta * kl
    elif KL == "k3":
        x = ref - logp
        xc = _clamp(x, -20.0, 20.0)
        ex = tl.exp(xc)
        raw = ex - xc - 1.0
        kl = _clamp(raw, -10.0, 10.0)
        pass_x = (x >= -20.0) & (x <= 20.0) & (raw >= -10.0) & (raw <= 10.0)
        dl += beta * -tl.where(pass_x, ex - 1.0, 0.0)
        loss += beta * kl
    return loss, dl, r, kl


@triton.jit
def policy_seq_kernel(logp_ptr, old_ptr, ref_ptr, adv_ptr, mask_ptr, ent_ptr, dlt_ptr, part_ptr, L, adv_stride_b,
                      adv_stride_l, clip_low, clip_high, dual_clip, beta, HAS_OLD: tl.constexpr,
                      WITH_ENTROPY: tl.constexpr, RATIO: tl.constexpr, CISPO: tl.constexpr,
                      DUAL_CLIP: tl.constexpr, KL: tl.constexpr, BLOCK_L: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_L)
    base = b * L
    log_s = 0.0
    if RATIO != "token":  # noqa: SIM102 (two compile-time switches, kept apart for Triton)
        if HAS_OLD:  # GSPO: the sequence's mean log-ratio over its tokens (detached)
            acc = tl.zeros([BLOCK_L], dtype=tl.float32)
            cnt = tl.zeros([BLOCK_L], dtype=tl.float32)
            for l0 in range(0, L, BLOCK_L):
                c = l0 + offs
                ok = c < L
                m = tl.load(mask_ptr + base + c, mask=ok, other=0).to(tl.float32)
                lp = tl.load(logp_ptr + base + c, mask=ok, other=0.0)
                od = tl.load(old_ptr + base + c, mask=ok, other=0.0).to(tl.float32)
                acc += tl.where(m != 0.0, m * (lp - od), 0.0)
                cnt += m
            log_s = tl.sum(acc, axis=0) / tl.maximum(tl.sum(cnt, axis=0), 1.0)
    lo = 1.0 - clip_low
    hi = 1.0 + clip_high
    s_loss = tl.zeros([BLOCK_L], dtype=tl.float32)
    s_len = tl.zeros([BLOCK_L], dtype=tl.float32)
    s_low = tl.zeros([BLOCK_L], dtype=tl.float32)
    s_high = tl.zeros([BLOCK_L], dtype=tl.float32)
    s_ratio = tl.zeros([BLOCK_L], dtype=tl.float32)
    s_kl = tl.zeros([BLOCK_L], dtype=tl.float32)
    s_ent = tl.zeros([BLOCK_L], dtype=tl.float32)
    for l0 in range(0, L, BLOCK_L):
        c = l0 + offs
        ok = c < L
        m = tl.load(mask_ptr + base + c, mask=ok, other=0).to(tl.float32)
        keep = m != 0.0  # masked tokens: their log-prob was not computed (0) and weighs nothing
        lp = tl.load(logp_ptr + base + c, mask=ok, other=0.0)
        if HAS_OLD:
            od = tl.load(old_ptr + base + c, mask=ok, other=0.0).to(tl.float32)
        else:
            od = lp  # on-policy: ratio 1, gradient through logp - sg(logp)
        if KL != "":
            rf = tl.load(ref_ptr + base + c, mask=ok, other=0.0).to(tl.float32)
        else:
            rf = lp
        a = tl.load(adv_ptr + b * adv_stride_b + c * adv_stride_l, mask=ok, other=0.0).to(tl.float32)
        loss, dl, r, kl = token_terms(lp, od, rf, a, log_s, clip_low, clip_high, dual_clip, beta, RATIO, CISPO,
                                      DUAL_CLIP, KL)
        tl.store(dlt_ptr + base + c, tl.where(keep, m * dl, 0.0), mask=ok)
        s_loss += tl.where(keep, m * loss, 0.0)
        s_len += m
        s_low += tl.where(keep & (r < lo) & (a < 0.0), m, 0.0)
        s_high += tl.where(keep & (r > hi) & (a > 0.0), m, 0.0)
        s_ratio += tl.where(keep, m * r, 0.0)
        s_kl += tl.where(keep, m * kl, 0.0)
        if WITH_ENTROPY:
            s_ent += tl.where(keep, m * tl.load(ent_ptr + base + c, mask=ok, other=0.0), 0.0)
    out = part_ptr + b * PARTS
    tl.store(out + 0, tl.sum(s_loss, axis=0))
    tl.store(out + 1, tl.sum(s_len, axis=0))
    tl.store(out + 2, tl.sum(s_low, axis=0))
    tl.store(out + 3, tl.sum(s_high, axis=0))
    tl.store(out + 4, tl.sum(s_ratio, axis=0))
    tl.store(out + 5, tl.sum(s_kl, axis=0))
    tl.store(out + 6, tl.sum(s_ent, axis=0))


@triton.jit
def _part(part_ptr, rb, ok, k: tl.constexpr):
    return tl.load(part_ptr + rb * PARTS + k, mask=ok, other=0.0)


@triton.jit
def policy_finalize_kernel(part_ptr, coef_ptr, out_ptr, B, norm, AGG: tl.constexpr, BLOCK_B: tl.constexpr):
    """out = [loss, clip_frac_low, clip_frac_high, ratio_mean, kl_mean, entropy_mean]; coef[b] = c_b."""
    offs = tl.arange(0, BLOCK_B)
    n_tok = tl.zeros([BLOCK_B], dtype=tl.float32)
    n_seq = tl.zeros([BLOCK_B], dtype=tl.float32)
    stats = tl.zeros([BLOCK_B, PARTS], dtype=tl.float32)
    kcol = tl.arange(0, PARTS)
    for b0 in range(0, B, BLOCK_B):
        rb = b0 + offs
        ok = rb < B
        ln = _part(part_ptr, rb, ok, 1)
        n_tok += ln
        n_seq += tl.where(ln > 0.0, 1.0, 0.0)
        stats += tl.load(part_ptr + rb[:, None] * PARTS + kcol[None, :], mask=ok[:, None], other=0.0)
    n_tok_all = tl.maximum(tl.sum(n_tok, axis=0), 1.0)
    n_seq_all = tl.maximum(tl.sum(n_seq, axis=0), 1.0)
    loss = tl.zeros([BLOCK_B], dtype=tl.float32)
    for b0 in range(0, B, BLOCK_B):
        rb = b0 + offs
        ok = rb < B
        ln = _part(part_ptr, rb, ok, 1)
        if AGG == "token-mean":
            c = tl.zeros_like(ln) + 1.0 / n_tok_all
        elif AGG == "seq-mean-token-mean":
            c = 1.0 / (tl.maximum(ln, 1.0) * n_seq_all)
        elif AGG == "seq-mean-token-sum":
            c = tl.zeros_like(ln) + 1.0 / n_seq_all
        else:  # seq-mean-token-sum-norm (Dr. GRPO's constant)
            c = tl.zeros_like(ln) + 1.0 / (n_seq_all * norm)
        tl.store(coef_ptr + rb, c, mask=ok)
        loss += c * _part(part_ptr, rb, ok, 0)
    sums = tl.sum(stats, axis=0)  # [PARTS]
    tl.store(out_ptr, tl.sum(loss, axis=0))
    # out[1..5] = clip low, clip high, ratio, KL, entropy (parts 2..6), each over the token count
    tl.store(out_ptr + kcol - 1, sums / n_tok_all, mask=(kcol >= 2) & (kcol <= 6))


def block(n: int, cap: int = 1024) -> int:
    return min(cap, triton.next_power_of_2(max(n, 1)))
