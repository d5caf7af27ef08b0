"""Named launch configurations of the Triton kernels: one registry per kernel, looked up by name.

The public ops use the entry that ``medix_kernels._defaults.KERNEL_CONFIGS`` names; the GPU sweep
(``benchmarks/gpu/sweep.py``) times every entry side by side. A config changes only how a kernel
is launched or which code path it compiles, never what it computes: each one is checked against
the PyTorch reference (tests/test_triton_variants.py).

Levers (benchmarks/results/h200-2026-12-04.md has the measurements that motivated them):
- ``rows`` / ``num_warps``: rows of logits per program and warps per program. One warp per row
  keeps every reduction inside a warp (shuffles, no shared memory or barrier); several rows per
  program keep enough warps per SM when one-warp programs would hit the blocks-per-SM limit.
- ``block_v``: chunk width per row and iteration (elements in flight per thread = block_v * rows
  / (32 * num_warps)).
- ``num_stages``: 0 is a plain ``range`` loop; k > 0 is ``tl.range(..., num_stages=k)``, which lets
  Triton software-pipeline the loads (prefetch k - 1 chunks ahead).
- ``exp2``: exponentials as ``exp2`` of logits times ``log2(e) / temperature`` (one multiply
  folded into the load's scale instead of one inside every ``exp``).
- ``acc`` (forward): how the online log-sum-exp keeps its running maximum.
  ``"chunk"``: one maximum per row per chunk (a reduction across the program every chunk), sums
  per lane; ``"lane"``: maximum and sums per lane, merged once at the end (no reduction inside
  the loop, one exp per element); ``"scalar"``: maximum and sums per row, two reductions per chunk.
- ``peel_tail`` (forward): full chunks are loaded without a column mask and the last, partial
  chunk separately (the backward always does this).
- ``segments`` (backward): programs per row along the vocabulary (a 2-D grid over (row, vocab
  segment)); 0 picks enough segments to give every SM several programs.
- ``evict_first`` (backward): streaming-load / streaming-store hints (the logits are read once).
"""
from __future__ import annotations

from dataclasses import dataclass

ACC_MODES = ("chunk", "lane", "scalar")


@dataclass(frozen=True)
class LogprobFwdConfig:
    rows: int = 1
    num_warps: int = 8
    block_v: int = 4096
    num_stages: int = 0
    exp2: bool = False
    acc: str = "chunk"
    peel_tail: bool = False


@dataclass(frozen=True)
class LogprobBwdConfig:
    num_warps: int = 16
    block_v: int = 4096
    num_stages: int = 0
    exp2: bool = False
    segments: int = 1
    evict_first: bool = False


@dataclass(frozen=True)
class CosineConfig:
    """rows: rows per program (0: 4096 // block_d, today's rule); lane_vectors: 0 for today's chunk
    width min(next_pow2(D), 1024), else k 16-byte loads per lane of one warp per chunk (a chunk of
    32 * k * 16 / itemsize columns: with rows == num_warps, one row per warp); track_max: keep each
    row's largest magnitude in the hot loop (today) instead of recomputing it only for rows whose
    fp32 sums overflow."""
    rows: int = 0
    num_warps: int = 4
    lane_vectors: int = 0
    track_max: bool = True


# v1_baseline: the parameters the H200 run of 2026-12-04 measured (one 8-warp program per row,
# 4,096-wide chunks, a block-wide max per chunk; backward 16 warps, one program per row).
LOGPROB_FWD_CONFIGS = {
    "v1_baseline": LogprobFwdConfig(),
    "w8_c4096_s3_exp2": LogprobFwdConfig(num_stages=3, exp2=True),
    "w8_c4096_lane_s2_exp2": LogprobFwdConfig(num_stages=2, exp2=True, acc="lane"),
    "w4_c4096_lane_s2_exp2": LogprobFwdConfig(num_warps=4, num_stages=2, exp2=True, acc="lane"),
    "w4_c2048_lane_s3_exp2_peel": LogprobFwdConfig(num_warps=4, block_v=2048, num_stages=3, exp2=True, acc="lane",
                                                   peel_tail=True),
    "w1_c2048_scalar_s3_exp2": LogprobFwdConfig(num_warps=1, block_v=2048, num_stages=3, exp2=True, acc="scalar"),
    "w2_c4096_scalar_s3_exp2_peel": LogprobFwdConfig(num_warps=2, block_v=4096, num_stages=3, exp2=True,
                                                     acc="scalar", peel_tail=True),
    "r4w4_c1024_scalar_s3_exp2": LogprobFwdConfig(rows=4, num_warps=4, block_v=1024, num_stages=3, exp2=True,
                                                  acc="scalar"),
    "r2w2_c1024_lane_s2_exp2": LogprobFwdConfig(rows=2, num_warps=2, block_v=1024, num_stages=2, exp2=True,
                                                acc="lane"),
}

LOGPROB_BWD_CONFIGS = {
    "v1_baseline": LogprobBwdConfig(),
    "w8_c4096_s3_exp2_evict": LogprobBwdConfig(num_warps=8, num_stages=3, exp2=True, evict_first=True),
    "w16_c8192_s2_exp2_evict": LogprobBwdConfig(block_v=8192, num_stages=2, exp2=True, evict_first=True),
    "w4_c2048_seg_s3_exp2_evict": LogprobBwdConfig(num_warps=4, block_v=2048, num_stages=3, exp2=True, segments=0,
                                                   evict_first=True),
    "w8_c4096_seg4_s2_exp2_evict": LogprobBwdConfig(num_warps=8, num_stages=2, exp2=True, segments=4,
                                                    evict_first=True),
    "w1_c2048_s3_exp2_evict": LogprobBwdConfig(num_warps=1, block_v=2048, num_stages=3, exp2=True, evict_first=True),
}

COSINE_CONFIGS = {
    "v1_baseline": CosineConfig(),
    "v1_lazymax": CosineConfig(track_max=False),
    "warp_row_w4": CosineConfig(rows=4, num_warps=4, lane_vectors=1, track_max=False),
    "warp_row_w8": CosineConfig(rows=8, num_warps=8, lane_vectors=1, track_max=False),
    "warp_row_w4_x2": CosineConfig(rows=4, num_warps=4, lane_vectors=2, track_max=False),
}

REGISTRIES = {"logprob_fwd": LOGPROB_FWD_CONFIGS, "logprob_bwd": LOGPROB_BWD_CONFIGS, "cosine": COSINE_CONFIGS}


def lookup(kernel: str, name: str):
    """The config called ``name`` of ``kernel`` ("logprob_fwd", "logprob_bwd", "cosine")."""
    table = REGISTRIES[kernel]
    if name not in table:
        raise ValueError(f"unknown {kernel} config {name!r}; choose one of {tuple(table)}")
    return table[name]


def _check_tables() -> None:
    """Config values the kernels cannot take are an error at import, not at the first launch."""
    def pow2(n):
        return n > 0 and n & (n - 1) == 0
    for name, c in LOGPROB_FWD_CONFIGS.items():
        assert c.acc in ACC_MODES and pow2(c.rows) and pow2(c.num_warps) and pow2(c.block_v), name
    for name, c in LOGPROB_BWD_CONFIGS.items():
        assert pow2(c.num_warps) and pow2(c.block_v) and c.segments >= 0, name
    for name, c in COSINE_CONFIGS.items():
        assert pow2(c.num_warps) and (c.rows == 0 or pow2(c.rows)) and c.lane_vectors in (0, 1, 2, 4), name


_check_tables()
