"""Triton kernel for group advantages (plain and composite rewards) in one launch.

Each program owns BLOCK_G consecutive groups and walks their members in BLOCK_L-wide chunks:
pass 1 sums and takes min/max of the total rewards, pass 2 sums the squared deviations, pass 3
writes the advantages. Totals (sum_k w_k * values[:, k]) are recomputed in each pass rather than
stored and re-read: K is small, and it needs no barrier between passes. The formulas mirror
csrc/common/reward_math.h. The group sums, squared deviations and the affine map run in float64
(rewards near 3e38 overflow fp32 sums; the C++ kernels redo such groups in double, and the
reference is float64): the op is memory-bound, so the wider arithmetic costs little.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _total(values_ptr, weights_ptr, rows, mask, stride_n, stride_k, K,
           HAS_WEIGHTS: tl.constexpr, NAN_TO_ZERO: tl.constexpr):
    acc = tl.zeros(rows.shape, dtype=tl.float32)
    for k in range(0, K):
        v = tl.load(values_ptr + rows * stride_n + k * stride_k, mask=mask, other=0.0).to(tl.float32)
        if NAN_TO_ZERO:
            v = tl.where((v == v) & (tl.abs(v) != float("inf")), v, 0.0)
        if HAS_WEIGHTS:
            v = v * tl.load(weights_ptr + k)
        acc += v
    return acc


@triton.jit
def _group_advantages_kernel(
    values_ptr, weights_ptr, offsets_ptr, batch_std_ptr,
    total_ptr, adv_ptr, mean_ptr, std_ptr, degenerate_ptr,
    stride_n, stride_k, K, G, group_size, max_len, eps,
    MODE: tl.constexpr, SCALE: tl.constexpr, SINGLETON_VERL: tl.constexpr, NAN_TO_ZERO: tl.constexpr,
    HAS_WEIGHTS: tl.constexpr, HAS_OFFSETS: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_L: tl.constexpr,
):
    g = tl.program_id(0).to(tl.int64) * BLOCK_G + tl.arange(0, BLOCK_G)
    gmask = g < G
    if HAS_OFFSETS:
        start = tl.load(offsets_ptr + g, mask=gmask, other=0)
        end = tl.load(offsets_ptr + g + 1, mask=gmask, other=0)
    else:
        start = g * group_size
        end = tl.where(gmask, start + group_size, start)
    count = end - start
    cols0 = tl.arange(0, BLOCK_L)

    s = tl.zeros((BLOCK_G,), dtype=tl.float64)
    lo = tl.full((BLOCK_G,), float("inf"), tl.float32)
    hi = tl.full((BLOCK_G,), -float("inf"), tl.float32)
    for l0 in range(0, max_len, BLOCK_L):
        cols = l0 + cols0
        m = cols[None, :] < count[:, None]
        r = _total(values_ptr, weights_ptr, start[:, None] + cols[None, :], m, stride_n, stride_k, K,
                   HAS_WEIGHTS, NAN_TO_ZERO)
        s += tl.sum(tl.where(m, r, 0.0).to(tl.float64), axis=1)
        lo = tl.minimum(lo, tl.min(tl.where(m, r, float("inf")), axis=1))
        hi = tl.maximum(hi, tl.max(tl.where(m, r, -float("inf")), axis=1))
    cnt = count.to(tl.float64)
    mean = tl.where(count > 0, s / tl.maximum(cnt, 1.0), 0.0)

    ss = tl.zeros((BLOCK_G,), dtype=tl.float64)
    for l0 in range(0, max_len, BLOCK_L):
        cols = l0 + cols0
        m = cols[None, :] < count[:, None]
        r = _total(values_ptr, weights_ptr, start[:, None] + cols[None, :], m, stride_n, stride_k, K,
                   HAS_WEIGHTS, NAN_TO_ZERO)
        d = tl.where(m, r.to(tl.float64) - mean[:, None], 0.0)
        ss += tl.sum(d * d, axis=1)
    std = tl.where(count > 1, tl.sqrt(ss / tl.maximum(cnt - 1.0, 1.0)), 0.0)
    degenerate = (count > 0) & (lo == hi)
    tl.store(mean_ptr + g, mean.to(tl.float32), mask=gmask)
    tl.store(std_ptr + g, std.to(tl.float32), mask=gmask)
    tl.store(degenerate_ptr + g, degenerate.to(tl.int1), mask=gmask)

    batch_std = tl.load(batch_std_ptr)  # float64 (so are std and the sums added to eps below)
    for l0 in range(0, max_len, BLOCK_L):
        cols = l0 + cols0
        m = cols[None, :] < count[:, None]
        rows = start[:, None] + cols[None, :]
        r = _total(values_ptr, weights_ptr, rows, m, stride_n, stride_k, K, HAS_WEIGHTS, NAN_TO_ZERO)
        r64 = r.to(tl.float64)
        centred = r64 - mean[:, None]
        if MODE == 2:  # rloo
            a = centred * cnt[:, None] / tl.maximum(cnt[:, None] - 1.0, 1.0)
        elif MODE == 1 or SCALE == 2:  # dr_grpo, or grpo without scaling
            a = centred
        elif SCALE == 1:  # batch std
            a = centred / (batch_std + eps)
        else:
            a = centred / (std[:, None] + eps)
        a = tl.where(degenerate[:, None], 0.0, a)
        if SINGLETON_VERL and MODE != 2:
            if MODE == 0 and SCALE == 0:
                single = r64 / (1.0 + eps)
            elif MODE == 0 and SCALE == 1:
                single = r64 / (batch_std + eps)
            else:
                single = r64
        else:
            single = tl.zeros_like(r64)
        a = tl.where((count == 1)[:, None], single, a)
        tl.store(total_ptr + rows, r, mask=m)
        tl.store(adv_ptr + rows, a.to(tl.float32).to(adv_ptr.dtype.element_ty), mask=m)  # via fp32, as the C++


def group_advantages_triton(values, weights, offsets, group_size, mode, scale, singleton, eps, nan_to_zero):
    """Launcher with the signature of torch.ops.medix.group_advantages (inputs validated by the
    caller). Returns (adv, total, mean, std, degenerate)."""
    n = values.shape[0]
    k = values.shape[1] if values.dim() == 2 else 1
    stride_n = values.stride(0)
    stride_k = values.stride(1) if values.dim() == 2 else 1
    if offsets is not None:
        g = offsets.numel() - 1
        max_len = int(offsets.diff().max()) if g > 0 else 0
    else:
        g = n // group_size if group_size else 0
        max_len = group_size
    dev = values.device
    adv = torch.empty(n, dtype=values.dtype, device=dev)
    total = torch.empty(n, dtype=torch.float32, device=dev)
    mean = torch.empty(g, dtype=torch.float32, device=dev)
    std = torch.empty(g, dtype=torch.float32, device=dev)
    degenerate = torch.empty(g, dtype=torch.bool, device=dev)
    if scale == 1 and n > 1:
        # The batch std needs every total first: one extra reduction, only for scale="batch".
        # float64: the totals' squares overflow fp32 for rewards above ~1e19
        vals = torch.nan_to_num(values.float(), nan=0.0, posinf=0.0, neginf=0.0) if nan_to_zero else values.float()
        t = vals @ weights if weights is not None else (vals if vals.dim() == 1 else vals[:, 0])
        batch_std = t.double().std().reshape(1)
    else:
        batch_std = torch.zeros(1, dtype=torch.float64, device=dev)
    if g == 0:
        return adv, total, mean, std, degenerate
    block_l = min(triton.next_power_of_2(max(max_len, 1)), 1024)
    block_g = max(1, min(1024 // block_l, triton.next_power_of_2(g)))
    grid = (triton.cdiv(g, block_g),)
    dummy = total  # any tensor for unused pointer arguments
    _group_advantages_kernel[grid](
        values, weights if weights is not None else dummy, offsets if offsets is not None else dummy, batch_std,
        total, adv, mean, std, degenerate,
        stride_n, stride_k, k, g, group_size, max_len, eps,
        MODE=mode, SCALE=scale, SINGLETON_VERL=bool(singleton == 1), NAN_TO_ZERO=bool(nan_to_zero),
        HAS_WEIGHTS=weights is not None, HAS_OFFSETS=offsets is not None, BLOCK_G=block_g, BLOCK_L=block_l,
    )
    return adv, total, mean, std, degenerate
