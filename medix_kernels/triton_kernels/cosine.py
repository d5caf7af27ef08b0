"""Triton kernel for row-wise cosine-similarity rewards: each program owns BLOCK_B rows and
walks D in BLOCK_D chunks, accumulating <x, y>, |x|^2, |y|^2 in fp32 (formula as
csrc/common/reward_math.h). Rows whose fp32 sums overflow (entries near 1e19 and above) are
redone with each vector divided by its largest magnitude (tracked in the first pass), as the C++
and CUDA kernels do; a block without such rows skips that second pass."""
from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _cosine_kernel(x_ptr, y_ptr, out_ptr, B, D, x_stride, y_stride, eps, threshold,
                   HAS_THRESHOLD: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    dot = tl.zeros((BLOCK_B,), dtype=tl.float32)
    xx = tl.zeros((BLOCK_B,), dtype=tl.float32)
    yy = tl.zeros((BLOCK_B,), dtype=tl.float32)
    mx = tl.zeros((BLOCK_B,), dtype=tl.float32)
    my = tl.zeros((BLOCK_B,), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        cols = d0 + tl.arange(0, BLOCK_D)
        m = rmask[:, None] & (cols[None, :] < D)
        x = tl.load(x_ptr + rows[:, None] * x_stride + cols[None, :], mask=m, other=0.0).to(tl.float32)
        y = tl.load(y_ptr + rows[:, None] * y_stride + cols[None, :], mask=m, other=0.0).to(tl.float32)
        dot += tl.sum(x * y, axis=1)
        xx += tl.sum(x * x, axis=1)
        yy += tl.sum(y * y, axis=1)
        mx = tl.maximum(mx, tl.max(tl.abs(x), axis=1))
        my = tl.maximum(my, tl.max(tl.abs(y), axis=1))
    # not finite <=> s - s != 0 (inf - inf and NaN are NaN)
    over = ((dot - dot) != 0.0) | ((xx - xx) != 0.0) | ((yy - yy) != 0.0)
    sx = tl.where(over & (mx > 0.0) & (mx < float("inf")), mx, 1.0)
    sy = tl.where(over & (my > 0.0) & (my < float("inf")), my, 1.0)
    if tl.max(over.to(tl.int32), axis=0) > 0:
        dot2 = tl.zeros((BLOCK_B,), dtype=tl.float32)
        xx2 = tl.zeros((BLOCK_B,), dtype=tl.float32)
        yy2 = tl.zeros((BLOCK_B,), dtype=tl.float32)
        for d0 in range(0, D, BLOCK_D):
            cols = d0 + tl.arange(0, BLOCK_D)
            m = rmask[:, None] & (cols[None, :] < D)
            x = tl.load(x_ptr + rows[:, None] * x_stride + cols[None, :], mask=m, other=0.0).to(tl.float32)
            y = tl.load(y_ptr + rows[:, None] * y_stride + cols[None, :], mask=m, other=0.0).to(tl.float32)
            x = x / sx[:, None]
            y = y / sy[:, None]
            dot2 += tl.sum(x * y, axis=1)
            xx2 += tl.sum(x * x, axis=1)
            yy2 += tl.sum(y * y, axis=1)
        dot = tl.where(over, dot2, dot)
        xx = tl.where(over, xx2, xx)
        yy = tl.where(over, yy2, yy)
    c = dot / (tl.maximum(tl.sqrt(xx), eps / sx) * tl.maximum(tl.sqrt(yy), eps / sy))
    if HAS_THRESHOLD:
        c = tl.where(c >= threshold, 1.0, 0.0)
    tl.store(out_ptr + rows, c, mask=rmask)


def cosine_rewards_triton(pred, ref, eps, threshold):
    """Launcher with the signature of torch.ops.medix.cosine_rewards (validated by the caller)."""
    b, d = pred.shape
    out = torch.empty(b, dtype=torch.float32, device=pred.device)
    if b == 0:
        return out
    block_d = min(triton.next_power_of_2(d), 1024)
    block_b = max(1, min(4096 // block_d, triton.next_power_of_2(b)))
    _cosine_kernel[(triton.cdiv(b, block_b),)](
        pred, ref, out, b, d, pred.stride(0), ref.stride(0), eps, 0.0 if threshold is None else threshold,
        HAS_THRESHOLD=threshold is not None, BLOCK_B=block_b, BLOCK_D=block_d)
    return out
