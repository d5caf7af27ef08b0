"""Triton kernels of the fused log-prob / entropy ops (launchers and torch ops: logprob.py).

Per row of logits x (the semantics of csrc/cuda/logprob.cu and the C++ kernels):
    z = x / temperature,  lse = logsumexp(z),  logp = z[id] - lse,  H = lse - sum(softmax(z) * z)
    d logits = (1 / temperature) * (g_lp * (onehot(id) - p) - g_H * p * (z - lse + H)),  p = softmax(z)

Every compile-time switch (configs.py names the combinations) changes the schedule, not the
result. With EXP2 the kernels work in base-2 units u = x * log2(e) / temperature, so
exp(z - c) = exp2(u - c * log2(e)) and the multiply hides in the load's scale; results are
converted back (times ln 2) once per row. Accumulation is fp32 throughout.

Forward: each program owns ROWS rows and walks the vocabulary in BLOCK_V chunks with an online
log-sum-exp (ACC: "chunk", "lane" or "scalar", see configs.py). With HAS_ROW_MASK, rows whose
mask is 0 read no logits and get 0 for logp, lse and entropy (the loss ignores them).

Backward: a 2-D grid over (row, vocabulary segment); each element is read and then written by
the same program, so the gradient may overwrite the logits in place. A row whose upstream
gradients are all zero (a masked token) is written as zeros without reading its logits. With
SCALED, the per-row upstream gradient is g_lp[row] * g_scale[0] * seq_coef[row // L] (the lean
grpo_loss: the loss's own gradient and aggregation weight, applied here instead of in PyTorch).

Grid dimension 0 (rows) may hold up to 2**31 - 1 programs (dimension 1 only 65,535), so any
T = B * L up to 2**31 - 1 works; offsets are int64.
"""
from __future__ import annotations

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)
NEG = tl.constexpr(-3.0e38)  # the lane accumulators' starting maximum: finite, so -inf logits never meet -inf


@triton.jit
def _exp(x, EXP2: tl.constexpr):
    if EXP2:
        y = tl.exp2(x)
    else:
        y = tl.exp(x)
    return y


@triton.jit
def _log(x, EXP2: tl.constexpr):
    if EXP2:
        y = tl.log2(x)
    else:
        y = tl.log(x)
    return y


@triton.jit
def _fwd_step(z, m, s, t, ACC: tl.constexpr, EXP2: tl.constexpr, WITH_ENTROPY: tl.constexpr):
    """Fold one chunk z [ROWS, BLOCK_V] of scaled logits (-inf where masked) into the running
    (max, sum of exp(z - max), sum of exp(z - max) * z)."""
    if ACC == "lane":
        # Per lane, one exp per element: exp(-|z - m|) is exp(m - z) when z is the new max
        # (rescale the old sums, add 1) and exp(z - m) otherwise (add it).
        up = z > m
        e = _exp(-tl.abs(z - m), EXP2)
        s = tl.where(up, s * e + 1.0, s + e)
        if WITH_ENTROPY:
            zc = tl.maximum(z, NEG)  # e * zc is 0 for -inf logits (not 0 * -inf)
            t = tl.where(up, t * e + z, t + e * zc)
        m = tl.maximum(m, z)
    else:
        m_new = tl.maximum(m, tl.max(z, axis=1))
        # While every z seen is -inf, shift by 0 instead (exp(-inf - -inf) would be NaN).
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = _exp(m - m_safe, EXP2)
        e = _exp(z - m_safe[:, None], EXP2)
        # e == 0 for masked lanes and -inf logits: their p * z term is 0, not 0 * -inf.
        if ACC == "chunk":
            s = s * alpha[:, None] + e
            if WITH_ENTROPY:
                t = t * alpha[:, None] + e * tl.where(e > 0.0, z, 0.0)
        else:
            s = s * alpha + tl.sum(e, axis=1)
            if WITH_ENTROPY:
                t = t * alpha + tl.sum(e * tl.where(e > 0.0, z, 0.0), axis=1)
        m = m_new
    return m, s, t


@triton.jit
def _fwd_chunk(row_ptr, v0, cols, V, live, scale, m, s, t, MASK_COLS: tl.constexpr, ACC: tl.constexpr,
               EXP2: tl.constexpr, WITH_ENTROPY: tl.constexpr):
    c = v0 + cols
    if MASK_COLS:
        lmask = live[:, None] & (c < V)[None, :]
    else:
        lmask = live[:, None]
    x = tl.load(row_ptr + c[None, :], mask=lmask, other=float("-inf"))
    return _fwd_step(x.to(tl.float32) * scale, m, s, t, ACC, EXP2, WITH_ENTROPY)


@triton.jit
def logprob_fwd_kernel(logits_ptr, ids_ptr, row_mask_ptr, logp_ptr, lse_ptr, ent_ptr, T, V, stride_row, scale,
                       WITH_ENTROPY: tl.constexpr, HAS_ROW_MASK: tl.constexpr, ROWS: tl.constexpr,
                       BLOCK_V: tl.constexpr, ACC: tl.constexpr, NUM_STAGES: tl.constexpr, EXP2: tl.constexpr,
                       PEEL_TAIL: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * ROWS + tl.arange(0, ROWS)
    row_ok = rows < T
    live = row_ok
    if HAS_ROW_MASK:
        live = row_ok & (tl.load(row_mask_ptr + rows, mask=row_ok, other=0) != 0)
    # A program whose rows are all masked reads no logits at all.
    v_end = tl.where(tl.max(live.to(tl.int32), axis=0) > 0, V, 0)
    row_ptr = logits_ptr + rows[:, None] * stride_row
    cols = tl.arange(0, BLOCK_V)
    if ACC == "lane":
        m = tl.full([ROWS, BLOCK_V], NEG, tl.float32)
        s = tl.zeros([ROWS, BLOCK_V], dtype=tl.float32)
        t = tl.zeros([ROWS, BLOCK_V], dtype=tl.float32)
    elif ACC == "chunk":
        m = tl.full([ROWS], float("-inf"), tl.float32)
        s = tl.zeros([ROWS, BLOCK_V], dtype=tl.float32)
        t = tl.zeros([ROWS, BLOCK_V], dtype=tl.float32)
    else:
        m = tl.full([ROWS], float("-inf"), tl.float32)
        s = tl.zeros([ROWS], dtype=tl.float32)
        t = tl.zeros([ROWS], dtype=tl.float32)
    v_full = 0
    if PEEL_TAIL:
        v_full = v_end - v_end % BLOCK_V  # full chunks: no column mask
        if NUM_STAGES > 0:
            for v0 in tl.range(0, v_full, BLOCK_V, num_stages=NUM_STAGES):
                m, s, t = _fwd_chunk(row_ptr, v0, cols, V, live, scale, m, s, t, False, ACC, EXP2, WITH_ENTROPY)
        else:
            for v0 in range(0, v_full, BLOCK_V):
                m, s, t = _fwd_chunk(row_ptr, v0, cols, V, live, scale, m, s, t, False, ACC, EXP2, WITH_ENTROPY)
        for v0 in range(v_full, v_end, BLOCK_V):  # the partial chunk (at most one)
            m, s, t = _fwd_chunk(row_ptr, v0, cols, V, live, scale, m, s, t, True, ACC, EXP2, WITH_ENTROPY)
    elif NUM_STAGES > 0:
        for v0 in tl.range(0, v_end, BLOCK_V, num_stages=NUM_STAGES):
            m, s, t = _fwd_chunk(row_ptr, v0, cols, V, live, scale, m, s, t, True, ACC, EXP2, WITH_ENTROPY)
    else:
        for v0 in range(0, v_end, BLOCK_V):
            m, s, t = _fwd_chunk(row_ptr, v0, cols, V, live, scale, m, s, t, True, ACC, EXP2, WITH_ENTROPY)
    if ACC == "lane":  # merge the lanes once
        mx = tl.max(m, axis=1)
        w = _exp(m - mx[:, None], EXP2)
        total = tl.sum(s * w, axis=1)
        tsum = tl.sum(t * w, axis=1)
    elif ACC == "chunk":
        mx = m
        total = tl.sum(s, axis=1)
        tsum = tl.sum(t, axis=1)
    else:
        mx = m
        total = s
        tsum = t
    if EXP2:
        unit = LN2
    else:
        unit = 1.0
    lse_u = mx + _log(total, EXP2)
    tok = tl.load(ids_ptr + rows, mask=row_ok, other=0)
    valid = live & (tok >= 0) & (tok < V)  # the callers validate ids; never read outside the row anyway
    z_tok = tl.load(logits_ptr + rows * stride_row + tok, mask=valid, other=float("nan")).to(tl.float32) * scale
    logp = (z_tok - lse_u) * unit
    lse = lse_u * unit
    if HAS_ROW_MASK:
        logp = tl.where(live, logp, 0.0)
        lse = tl.where(live, lse, 0.0)
    tl.store(logp_ptr + rows, logp, mask=row_ok)
    tl.store(lse_ptr + rows, lse, mask=row_ok)
    if WITH_ENTROPY:
        ent = (lse_u - tsum / total) * unit
        if HAS_ROW_MASK:
            ent = tl.where(live, ent, 0.0)
        tl.store(ent_ptr + rows, ent, mask=row_ok)


@triton.jit
def _bwd_chunk(base, out_base, c, c_end, tok, g_lp, lse_u, ent, g_ent, inv_temp, scale, MASK_COLS: tl.constexpr,
               HAS_GRAD_ENTROPY: tl.constexpr, EXP2: tl.constexpr, EVICT: tl.constexpr):
    # Read before write: when out is the logits, this program owns these elements alone.
    cmask = c < c_end
    if MASK_COLS:
        x = tl.load(base + c, mask=cmask, other=0.0, eviction_policy=EVICT)
    else:
        x = tl.load(base + c, eviction_policy=EVICT)
    u = x.to(tl.float32) * scale
    p = _exp(u - lse_u, EXP2)
    g = tl.where(c == tok, g_lp, 0.0) - g_lp * p
    if HAS_GRAD_ENTROPY:
        if EXP2:
            zl = (u - lse_u) * LN2
        else:
            zl = u - lse_u
        # p * log p -> 0 as p -> 0: keep z = -inf logits at 0 instead of 0 * -inf.
        g -= g_ent * p * tl.where(p > 0.0, zl + ent, 0.0)
    g = (g * inv_temp).to(out_base.dtype.element_ty)
    if MASK_COLS:
        tl.store(out_base + c, g, mask=cmask, eviction_policy=EVICT)
    else:
        tl.store(out_base + c, g, eviction_policy=EVICT)


@triton.jit
def logprob_bwd_kernel(logits_ptr, out_ptr, ids_ptr, lse_ptr, glp_ptr, ent_ptr, gent_ptr, gscale_ptr, seqcoef_ptr,
                       V, L, seg_len, stride_row, out_stride_row, inv_temp, scale,
                       HAS_GRAD_ENTROPY: tl.constexpr, SCALED: tl.constexpr, BLOCK_V: tl.constexpr,
                       NUM_STAGES: tl.constexpr, EXP2: tl.constexpr, EVICT: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    c0 = tl.program_id(1).to(tl.int64) * seg_len  # seg_len: a multiple of BLOCK_V
    c1 = tl.minimum(c0 + seg_len, V)
    base = logits_ptr + row * stride_row
    out_base = out_ptr + row * out_stride_row
    lse = tl.load(lse_ptr + row)
    g_lp = tl.load(glp_ptr + row)
    if SCALED:
        g_lp = g_lp * tl.load(gscale_ptr) * tl.load(seqcoef_ptr + row // L)
    tok = tl.load(ids_ptr + row)
    zero_row = g_lp == 0.0
    ent = 0.0
    g_ent = 0.0
    if HAS_GRAD_ENTROPY:
        ent = tl.load(ent_ptr + row)
        g_ent = tl.load(gent_ptr + row)
        zero_row = zero_row & (g_ent == 0.0)
    # [c0, c_read): computed from the logits; [c_read, c1): zeros (the whole segment of a zero row)
    c_read = tl.where(zero_row, c0, c1)
    c_full = c0 + (c_read - c0) // BLOCK_V * BLOCK_V
    if EXP2:
        lse_u = lse * LOG2E
    else:
        lse_u = lse
    cols = tl.arange(0, BLOCK_V)
    if NUM_STAGES > 0:
        for v0 in tl.range(c0, c_full, BLOCK_V, num_stages=NUM_STAGES):
            _bwd_chunk(base, out_base, v0 + cols, c_read, tok, g_lp, lse_u, ent, g_ent, inv_temp, scale, False,
                       HAS_GRAD_ENTROPY, EXP2, EVICT)
    else:
        for v0 in range(c0, c_full, BLOCK_V):
            _bwd_chunk(base, out_base, v0 + cols, c_read, tok, g_lp, lse_u, ent, g_ent, inv_temp, scale, False,
                       HAS_GRAD_ENTROPY, EXP2, EVICT)
    for v0 in range(c_full, c_read, BLOCK_V):  # the partial chunk (at most one)
        _bwd_chunk(base, out_base, v0 + cols, c_read, tok, g_lp, lse_u, ent, g_ent, inv_temp, scale, True,
                   HAS_GRAD_ENTROPY, EXP2, EVICT)
    zeros = tl.zeros([BLOCK_V], dtype=out_ptr.dtype.element_ty)
    for v0 in range(c_read, c1, BLOCK_V):
        c = v0 + cols
        tl.store(out_base + c, zeros, mask=c < c1, eviction_policy=EVICT)


def grid_fwd(t: int, rows: int) -> tuple[int]:
    return (triton.cdiv(t, rows),)
