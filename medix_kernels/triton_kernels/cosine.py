"""Triton kernel for row-wise cosine-similarity rewards: each program owns BLOCK_B rows and
walks D in BLOCK_D chunks, accumulating <x, y>, |x|^2, |y|^2 in fp32 (formula as
csrc/common/reward_math.h). Rows whose fp32 sums overflow (entries near 1e19 and above) are
redone with each vector divided by its largest magnitude, as the C++ and CUDA kernels do; a block
without such rows skips that second pass. With TRACK_MAX the magnitudes are tracked in the first
pass (two more reductions per chunk); without, only a block that overflows re-reads its rows for them.

Launch shape: a named configuration (configs.COSINE_CONFIGS; None: the default entry). With one
16-byte vector per lane and as many rows as warps (``lane_vectors``), each row is one warp's and
its reductions stay inside that warp.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .._defaults import kernel_config
from . import configs


@triton.jit
def _row_sums(x_ptr, y_ptr, rows, rmask, D, x_stride, y_stride, sx, sy, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr,
              TRACK_MAX: tl.constexpr, SCALED: tl.constexpr):
    """Per row: <x/sx, y/sy>, |x/sx|^2, |y/sy|^2 (sx = sy = 1 without SCALED) and, with TRACK_MAX,
    the largest |x| and |y|."""
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
        if TRACK_MAX:
            mx = tl.maximum(mx, tl.max(tl.abs(x), axis=1))
            my = tl.maximum(my, tl.max(tl.abs(y), axis=1))
        if SCALED:
            x = x / sx[:, None]
            y = y / sy[:, None]
        dot += tl.sum(x * y, axis=1)
        xx += tl.sum(x * x, axis=1)
        yy += tl.sum(y * y, axis=1)
    return dot, xx, yy, mx, my


@triton.jit
def _cosine_kernel(x_ptr, y_ptr, out_ptr, B, D, x_stride, y_stride, eps, threshold,
                   HAS_THRESHOLD: tl.constexpr, BLOCK_B: tl.constexpr, BLOCK_D: tl.constexpr, TRACK_MAX: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_B + tl.arange(0, BLOCK_B)
    rmask = rows < B
    one = tl.full((BLOCK_B,), 1.0, tl.float32)
    dot, xx, yy, mx, my = _row_sums(x_ptr, y_ptr, rows, rmask, D, x_stride, y_stride, one, one, BLOCK_B, BLOCK_D,
                                    TRACK_MAX, False)
    # not finite <=> s - s != 0 (inf - inf and NaN are NaN)
    over = ((dot - dot) != 0.0) | ((xx - xx) != 0.0) | ((yy - yy) != 0.0)
    sx = one
    sy = one
    if tl.max(over.to(tl.int32), axis=0) > 0:
        if not TRACK_MAX:  # the magnitudes, for this rare block only
            mx = tl.zeros((BLOCK_B,), dtype=tl.float32)
            my = tl.zeros((BLOCK_B,), dtype=tl.float32)
            for d0 in range(0, D, BLOCK_D):
                cols = d0 + tl.arange(0, BLOCK_D)
                m = rmask[:, None] & (cols[None, :] < D)
                x = tl.load(x_ptr + rows[:, None] * x_stride + cols[None, :], mask=m, other=0.0).to(tl.float32)
                y = tl.load(y_ptr + rows[:, None] * y_stride + cols[None, :], mask=m, other=0.0).to(tl.float32)
                mx = tl.maximum(mx, tl.max(tl.abs(x), axis=1))
                my = tl.maximum(my, tl.max(tl.abs(y), axis=1))
        sx = tl.where(over & (mx > 0.0) & (mx < float("inf")), mx, 1.0)
        sy = tl.where(over & (my > 0.0) & (my < float("inf")), my, 1.0)
        dot2, xx2, yy2, _, _ = _row_sums(x_ptr, y_ptr, rows, rmask, D, x_stride, y_stride, sx, sy, BLOCK_B, BLOCK_D,
                                         False, True)
        dot = tl.where(over, dot2, dot)
        xx = tl.where(over, xx2, xx)
        yy = tl.where(over, yy2, yy)
    c = dot / (tl.maximum(tl.sqrt(xx), eps / sx) * tl.maximum(tl.sqrt(yy), eps / sy))
    if HAS_THRESHOLD:
        c = tl.where(c >= threshold, 1.0, 0.0)
    tl.store(out_ptr + rows, c, mask=rmask)


def launch_shape(cfg: configs.CosineConfig, b: int, d: int, itemsize: int) -> tuple[int, int, int]:
    """(rows per program, chunk width, warps) of a config at [b, d]."""
    if cfg.lane_vectors:
        block_d = min(32 * cfg.lane_vectors * 16 // itemsize, triton.next_power_of_2(d))
    else:
        block_d = min(triton.next_power_of_2(d), 1024)
    rows = cfg.rows or max(1, 4096 // block_d)
    return max(1, min(rows, triton.next_power_of_2(b))), block_d, cfg.num_warps


def cosine_rewards_triton(pred, ref, eps, threshold, config=None):
    """Launcher with the signature of torch.ops.medix.cosine_rewards (validated by the caller);
    ``config``: a configs.COSINE_CONFIGS name or a CosineConfig (None: the default entry)."""
    out = torch.empty(pred.shape[0], dtype=torch.float32, device=pred.device)
    launch(pred, ref, out, eps, threshold, config)
    return out


def launch(pred, ref, out, eps, threshold, config=None):
    """The kernel into ``out``; returns Triton's compiled-kernel handle when launched eagerly on a GPU."""
    b, d = pred.shape
    if b == 0:
        return None
    cfg = config if config is not None else kernel_config("cosine")
    cfg = configs.lookup("cosine", cfg) if isinstance(cfg, str) else cfg
    block_b, block_d, warps = launch_shape(cfg, b, d, pred.element_size())
    return _cosine_kernel[(triton.cdiv(b, block_b),)](
        pred, ref, out, b, d, pred.stride(0), ref.stride(0), eps, 0.0 if threshold is None else threshold,
        HAS_THRESHOLD=threshold is not None, BLOCK_B=block_b, BLOCK_D=block_d, TRACK_MAX=cfg.track_max,
        num_warps=warps)
