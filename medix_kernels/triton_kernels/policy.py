"""Triton kernels of grpo_loss's per-token objective (the lean path, launched by grpo.py).

``token_terms`` is the one place the per-token formula lives in Triton (the PyTorch version:
medix_kernels/_policy_math.py; the reference: medix_kernels/reference/policy_loss.py). It returns
the token's loss l, its derivative dl/dlogp (everything else detached, exactly as autograd
differentiates the reference: a clamp passes the gradient inside its bounds, bounds included;
a tie of torch.maximum / torch.minimum splits it in halves), the ratio and the KL.

``rollout_weight`` is the rollout correction's weight in Triton (the PyTorch version:
_policy_math.rollout_weights): token_terms multiplies the policy term and its derivative by it.

``policy_seq_kernel``: one program per sequence. For the GSPO ratios and the sequence-level
rollout corrections it first takes the sequence's mean (or summed) log-ratios; then per token: l,
dl/dlogp (stored, times the mask), and the sequence's sums (loss, length, clip counts, ratio, KL,
entropy, the rollout diagnostics). ``policy_finalize_kernel``: one program; the aggregation (every
aggregation is sum_t c_b * m_t * l_t with a per-sequence c_b that depends only on the mask, the
rejected tokens taken out of it) gives the loss, c_b (stored for the backward) and the stats.
"""
from __future__ import annotations

import triton
import triton.language as tl

# per-sequence sums: loss, length, clip low, clip high, ratio, KL, entropy, kept length (the aggregation's),
# then the rollout diagnostics: weight, max weight, flagged, k3, chi^2 sum, |log rho|, log rho, max |log rho|
N_PARTS = 16
PARTS = tl.constexpr(N_PARTS)
N_OUT = 14  # loss, the 5 loss stats, the 8 rollout stats (loss_config.ROLLOUT_STATS order)


@triton.jit
def _clamp(x, lo, hi):
    """torch.clamp: NaN stays NaN (Triton's min / max would drop it and hide a NaN log-prob)."""
    return tl.minimum(tl.maximum(x, lo, propagate_nan=tl.PropagateNan.ALL), hi, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _tie(a, b):
    """Share of the gradient torch.maximum(a, b) gives a: 1 if a > b, 1/2 on a tie, else 0."""
    return tl.where(a > b, 1.0, tl.where(a == b, 0.5, 0.0))


@triton.jit
def rollout_weight(log_rho, log_rho_seq, lower, cap, ROLLOUT: tl.constexpr, REJECT: tl.constexpr):
    """(weight, keep, inside) of a token: rho = exp(log_rho) ("token_*", log_rho already in [-20, 20]) or
    exp(clamp(log_rho_seq, -20, 20)) ("sequence_*"); inside = lower <= rho <= cap; truncate: clamp(rho,
    lower, cap); mask: rho inside else 0, or with REJECT weight 1 and keep = inside. ROLLOUT "": weight 1."""
    if ROLLOUT == "sequence_truncate" or ROLLOUT == "sequence_mask":
        rho = tl.exp(_clamp(log_rho * 0.0 + log_rho_seq, -20.0, 20.0))
    else:
        rho = tl.exp(log_rho)
    inside = (rho >= lower) & (rho <= cap)
    one = rho * 0.0 + 1.0
    if ROLLOUT == "token_truncate" or ROLLOUT == "sequence_truncate":
        return _clamp(rho, lower, cap), one, inside
    elif ROLLOUT == "token_mask" or ROLLOUT == "sequence_mask":
        if REJECT:
            return one, tl.where(inside, 1.0, 0.0), inside
        else:
            return tl.where(inside, rho, 0.0), one, inside
    else:
        return one, one, inside


@triton.jit
def token_terms(logp, old, ref, adv, log_s, clip_low, clip_high, dual_clip, beta, RATIO: tl.constexpr,
                CISPO: tl.constexpr, DUAL_CLIP: tl.constexpr, KL: tl.constexpr, weight):
    """(loss, dloss/dlogp, ratio, kl) per token. RATIO: "token" exp(clamp(logp - old, -20, 20));
    "gspo" exp(min(log_s, 10)); "gspo_token" exp(clamp(log_s, -20, 20)) (log_s: the sequence's
    mean log-ratio, whose per-token derivative is 1 through logp - sg(logp)). KL: "", "k1", "k2", "k3".
    weight: the rollout correction's (detached) weight of the policy term."""
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
    loss = weight * loss
    dl = weight * dl
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
def _log_rho(lp, od, rl, keep, HAS_OLD: tl.constexpr):
    """log pi_train - log pi_rollout of a token in [-20, 20] (pi_train: the old log-prob when given, else
    the log-prob); 0 off the response, whatever the rollout log-prob holds there."""
    if HAS_OLD:
        train = od
    else:
        train = lp
    return tl.where(keep, _clamp(train - rl, -20.0, 20.0), 0.0)


@triton.jit
def _k3(lr, rho):
    """rho - 1 - log rho (rho = exp(lr)) without the cancellation of exp(lr) - 1 near lr = 0 (where the
    engine and the trainer agree): its series there, lr^2/2 + lr^3/6 + lr^4/24 (the next term < 1e-12)."""
    small = lr * lr * (0.5 + lr * (1.0 / 6.0 + lr * (1.0 / 24.0)))
    return tl.where(tl.abs(lr) < 1e-2, small, rho - 1.0 - lr)


@triton.jit
def _rollout_sums(lr, w, kp, inside, m, keep):
    """One chunk's share of the rollout diagnostics: the weight applied (sum, max), the tokens outside the
    bounds, k3, chi^2, |log rho| (sum, max) and log rho (sums over the response tokens)."""
    rho = tl.exp(lr)
    return (tl.sum(tl.where(keep, m * kp * w, 0.0), axis=0), tl.max(tl.where(keep, kp * w, 0.0), axis=0),
            tl.sum(tl.where(keep & (inside == 0), m, 0.0), axis=0),
            tl.sum(tl.where(keep, m * _k3(lr, rho), 0.0), axis=0),
            tl.sum(tl.where(keep, m * (rho * rho - 1.0), 0.0), axis=0),
            tl.sum(tl.where(keep, m * tl.abs(lr), 0.0), axis=0), tl.sum(tl.where(keep, m * lr, 0.0), axis=0),
            tl.max(tl.where(keep, tl.abs(lr), 0.0), axis=0))


@triton.jit
def _sequence_log_ratios(logp_ptr, old_ptr, roll_ptr, mask_ptr, base, L, offs, GSPO: tl.constexpr,
                         SEQ_ROLLOUT: tl.constexpr, GEOMETRIC: tl.constexpr, HAS_OLD: tl.constexpr,
                         BLOCK_L: tl.constexpr):
    """(GSPO's mean log-ratio log s, the rollout correction's sequence log-ratio) of one sequence, detached."""
    acc = tl.zeros([BLOCK_L], dtype=tl.float32)
    acc_r = tl.zeros([BLOCK_L], dtype=tl.float32)
    cnt = tl.zeros([BLOCK_L], dtype=tl.float32)
    for l0 in range(0, L, BLOCK_L):
        c = l0 + offs
        ok = c < L
        m = tl.load(mask_ptr + base + c, mask=ok, other=0).to(tl.float32)
        lp = tl.load(logp_ptr + base + c, mask=ok, other=0.0)
        od = lp
        if HAS_OLD:
            od = tl.load(old_ptr + base + c, mask=ok, other=0.0).to(tl.float32)
        if GSPO:
            acc += tl.where(m != 0.0, m * (lp - od), 0.0)
        if SEQ_ROLLOUT:
            rl = tl.load(roll_ptr + base + c, mask=ok, other=0.0).to(tl.float32)
            acc_r += m * _log_rho(lp, od, rl, m != 0.0, HAS_OLD)
        cnt += m
    n = tl.maximum(tl.sum(cnt, axis=0), 1.0)
    log_rho_seq = tl.sum(acc_r, axis=0)
    if GEOMETRIC:
        log_rho_seq = log_rho_seq / n
    return tl.sum(acc, axis=0) / n, log_rho_seq


@triton.jit
def policy_seq_kernel(logp_ptr, old_ptr, ref_ptr, roll_ptr, adv_ptr, mask_ptr, ent_ptr, dlt_ptr, part_ptr, L,
                      adv_stride_b, adv_stride_l, clip_low, clip_high, dual_clip, beta, r_lower, r_cap,
                      HAS_OLD: tl.constexpr, WITH_ENTROPY: tl.constexpr, RATIO: tl.constexpr, CISPO: tl.constexpr,
                      DUAL_CLIP: tl.constexpr, KL: tl.constexpr, HAS_ROLLOUT: tl.constexpr, ROLLOUT: tl.constexpr,
                      GEOMETRIC: tl.constexpr, REJECT: tl.constexpr, BLOCK_L: tl.constexpr):
    b = tl.program_id(0).to(tl.int64)
    offs = tl.arange(0, BLOCK_L)
    base = b * L
    log_s = 0.0
    log_rho_seq = 0.0
    gspo = RATIO != "token" and HAS_OLD  # GSPO's ratio with old log-probs: the sequence's mean log-ratio first
    seq_rollout = ROLLOUT == "sequence_truncate" or ROLLOUT == "sequence_mask"
    if gspo or seq_rollout:
        log_s, log_rho_seq = _sequence_log_ratios(logp_ptr, old_ptr, roll_ptr, mask_ptr, base, L, offs, gspo,
                                                  seq_rollout, GEOMETRIC, HAS_OLD, BLOCK_L)
    lo = 1.0 - clip_low
    hi = 1.0 + clip_high
    s_loss = tl.zeros([BLOCK_L], dtype=tl.float32)
    s_len = tl.zeros([BLOCK_L], dtype=tl.float32)
    s_low = tl.zeros([BLOCK_L], dtype=tl.float32)
    s_high = tl.zeros([BLOCK_L], dtype=tl.float32)
    s_ratio = tl.zeros([BLOCK_L], dtype=tl.float32)
    s_kl = tl.zeros([BLOCK_L], dtype=tl.float32)
    s_ent = tl.zeros([BLOCK_L], dtype=tl.float32)
    # the aggregation's length and the rollout diagnostics: scalars (a reduction per chunk, few registers)
    kept, r_w, r_max, r_flag, r_k3, r_chi2, r_abs, r_sum, r_amax = 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
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
        w = m * 0.0 + 1.0
        me = m  # the mask the aggregation sees (the rejected tokens taken out)
        if HAS_ROLLOUT:
            rl = tl.load(roll_ptr + base + c, mask=ok, other=0.0).to(tl.float32)
            lr = _log_rho(lp, od, rl, keep, HAS_OLD)
            w, kp, inside = rollout_weight(lr, log_rho_seq, r_lower, r_cap, ROLLOUT, REJECT)
            me = m * kp
            d_w, d_max, d_flag, d_k3, d_chi2, d_abs, d_sum, d_amax = _rollout_sums(lr, w, kp, inside, m, keep)
            r_w, r_max, r_flag, r_k3 = r_w + d_w, tl.maximum(r_max, d_max), r_flag + d_flag, r_k3 + d_k3
            r_chi2, r_abs, r_sum, r_amax = r_chi2 + d_chi2, r_abs + d_abs, r_sum + d_sum, tl.maximum(r_amax, d_amax)
        a = tl.load(adv_ptr + b * adv_stride_b + c * adv_stride_l, mask=ok, other=0.0).to(tl.float32)
        loss, dl, r, kl = token_terms(lp, od, rf, a, log_s, clip_low, clip_high, dual_clip, beta, RATIO, CISPO,
                                      DUAL_CLIP, KL, w)
        tl.store(dlt_ptr + base + c, tl.where(keep, me * dl, 0.0), mask=ok)
        s_loss += tl.where(keep, me * loss, 0.0)
        s_len += m
        kept += tl.sum(me, axis=0)
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
    tl.store(out + 7, kept)
    tl.store(out + 8, r_w)
    tl.store(out + 9, r_max)
    tl.store(out + 10, r_flag)
    tl.store(out + 11, r_k3)
    tl.store(out + 12, r_chi2)
    tl.store(out + 13, r_abs)
    tl.store(out + 14, r_sum)
    tl.store(out + 15, r_amax)


@triton.jit
def _part(part_ptr, rb, ok, k: tl.constexpr):
    return tl.load(part_ptr + rb * PARTS + k, mask=ok, other=0.0)


@triton.jit
def _pick(sums, kcol, k: tl.constexpr):
    """Element k of a [PARTS] vector, as a scalar."""
    return tl.sum(tl.where(kcol == k, sums, 0.0), axis=0)


@triton.jit
def policy_finalize_kernel(part_ptr, coef_ptr, out_ptr, B, norm, AGG: tl.constexpr, BLOCK_B: tl.constexpr):
    """out = [loss, clip_frac_low, clip_frac_high, ratio_mean, kl_mean, entropy_mean, then the rollout stats
    (loss_config.ROLLOUT_STATS)]; coef[b] = c_b, from the kept lengths (part 7); the stats are over every
    response token (part 1)."""
    offs = tl.arange(0, BLOCK_B)
    n_tok = tl.zeros([BLOCK_B], dtype=tl.float32)
    n_kept = tl.zeros([BLOCK_B], dtype=tl.float32)
    n_seq = tl.zeros([BLOCK_B], dtype=tl.float32)
    n_seq_kept = tl.zeros([BLOCK_B], dtype=tl.float32)
    ppl = tl.zeros([BLOCK_B], dtype=tl.float32)
    w_max = tl.zeros([BLOCK_B], dtype=tl.float32)
    lr_max = tl.zeros([BLOCK_B], dtype=tl.float32)
    stats = tl.zeros([BLOCK_B, PARTS], dtype=tl.float32)
    kcol = tl.arange(0, PARTS)
    for b0 in range(0, B, BLOCK_B):
        rb = b0 + offs
        ok = rb < B
        ln = _part(part_ptr, rb, ok, 1)
        lk = _part(part_ptr, rb, ok, 7)
        n_tok += ln
        n_kept += lk
        n_seq += tl.where(ln > 0.0, 1.0, 0.0)
        n_seq_kept += tl.where(lk > 0.0, 1.0, 0.0)
        # PPL_train / PPL_rollout of the sequence: exp(-mean log rho)
        ppl += tl.where(ln > 0.0, tl.exp(-_part(part_ptr, rb, ok, 14) / tl.maximum(ln, 1.0)), 0.0)
        w_max = tl.maximum(w_max, _part(part_ptr, rb, ok, 9))
        lr_max = tl.maximum(lr_max, _part(part_ptr, rb, ok, 15))
        stats += tl.load(part_ptr + rb[:, None] * PARTS + kcol[None, :], mask=ok[:, None], other=0.0)
    n_tok_all = tl.maximum(tl.sum(n_tok, axis=0), 1.0)
    n_kept_all = tl.maximum(tl.sum(n_kept, axis=0), 1.0)
    n_seq_kept_all = tl.maximum(tl.sum(n_seq_kept, axis=0), 1.0)
    loss = tl.zeros([BLOCK_B], dtype=tl.float32)
    for b0 in range(0, B, BLOCK_B):
        rb = b0 + offs
        ok = rb < B
        ln = _part(part_ptr, rb, ok, 7)
        if AGG == "token-mean":
            c = tl.zeros_like(ln) + 1.0 / n_kept_all
        elif AGG == "seq-mean-token-mean":
            c = 1.0 / (tl.maximum(ln, 1.0) * n_seq_kept_all)
        elif AGG == "seq-mean-token-sum":
            c = tl.zeros_like(ln) + 1.0 / n_seq_kept_all
        else:  # seq-mean-token-sum-norm (Dr. GRPO's constant)
            c = tl.zeros_like(ln) + 1.0 / (n_seq_kept_all * norm)
        tl.store(coef_ptr + rb, c, mask=ok)
        loss += c * _part(part_ptr, rb, ok, 0)
    sums = tl.sum(stats, axis=0)  # [PARTS]
    tl.store(out_ptr, tl.sum(loss, axis=0))
    # out[1..5] = clip low, clip high, ratio, KL, entropy (parts 2..6), each over the token count
    tl.store(out_ptr + kcol - 1, sums / n_tok_all, mask=(kcol >= 2) & (kcol <= 6))
    tl.store(out_ptr + 6, _pick(sums, kcol, 8) / n_tok_all)  # mean weight
    tl.store(out_ptr + 7, tl.max(w_max, axis=0))
    tl.store(out_ptr + 8, _pick(sums, kcol, 10) / n_tok_all)  # flagged
    tl.store(out_ptr + 9, _pick(sums, kcol, 11) / n_tok_all)  # k3
    tl.store(out_ptr + 10, _pick(sums, kcol, 12) / n_tok_all)  # chi^2
    tl.store(out_ptr + 11, tl.sum(ppl, axis=0) / tl.maximum(tl.sum(n_seq, axis=0), 1.0))
    tl.store(out_ptr + 12, _pick(sums, kcol, 13) / n_tok_all)  # mean |log rho|
    tl.store(out_ptr + 13, tl.max(lr_max, axis=0))


def block(n: int, cap: int = 1024) -> int:
    return min(cap, triton.next_power_of_2(max(n, 1)))
