"""How fused_linear_grpo_loss splits the tokens and accumulates d W: the named chunk configurations,
the weight-gradient accumulation modes, and the peak-memory formula of one forward + backward.

Chunk size. Each chunk reads the whole weight W [V, H] twice (logits = h W^T, d h = dZ W) and
reads + writes the float32 d W once (d W += dZ^T h): 12 V H bytes per chunk in bf16 whatever its
size (20 V H with a fp32 temporary), plus ~12 c V bytes of logits traffic, for 6 c V H FLOPs.
With c = 96 tokens and the temporary (the old 32 MB GPU budget at V = 152,064, H = 4,096) that
is ~28 FLOP per byte, far below a GPU's ridge point (H200: ~190 FLOP/B); with c = H = 4,096
and d W accumulated in the GEMM it is ~1,000. On a GPU the default chunk therefore holds as
many bytes of logits as the weight itself (c V s <= V H s, i.e. c = H tokens; ``weight-x1``),
never fewer than 2,048 tokens (a GEMM whose K or M is 2,048 or more keeps the tensor cores
busy), rounded down to a multiple of 128 and balanced over the tokens (T = 5,000 at c = 4,096:
two chunks of 2,512, not 4,096 + 904).
Why the weight's size: for a bf16 weight the backward anyway holds the fp32 d W and its bf16 copy
(6 V H bytes) at once, so a chunk of logits no larger than the weight never raises the peak
above that (see ``peak_bytes``). On the CPU the chunk stays small (12 MB of logits: 64 tokens
of a 49,152-word vocabulary in fp32), where oneDNN keeps its speed.

Accumulating d W in float32 (``ACCUMULATE``):
- ``in-gemm``: ``torch.addmm(dW, dZ^T, h, out_dtype=torch.float32, out=dW)``: one cuBLAS GEMM
  with bf16 inputs, fp32 accumulation and beta = 1 reads and writes the fp32 d W in place
  (8 V H bytes per chunk, no temporary). Needs a torch whose CUDA ``addmm.dtype_out`` takes a
  float32 ``self`` (newer releases; older ones require self in the input dtype).
- ``in-gemm-bmm``: the same through ``torch.baddbmm(..., out_dtype=torch.float32, out=dW[None])``
  (older releases accumulate into ``out`` there without checking ``self``'s dtype).
- ``temp``: ``torch.mm(dZ^T, h, out_dtype=torch.float32)`` then ``dW.add_``: a fresh fp32
  [V, H] product per chunk, 16 V H bytes of traffic (write it, read it and d W, write d W).
- ``upcast``: float32 copies of the chunk's dZ^T and h, then ``dW.addmm_`` in fp32 (the CPU's
  only way: its matmuls have no ``out_dtype``); for fp32 inputs the copies are no-ops.
``auto`` picks the first of these that a tiny probe on the device computes correctly (once per
device and dtype). Every mode sums the chunks' products in float32: same numerics.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ChunkConfig:
    budget: str        # "bytes": `value` bytes of logits per chunk; "weight": `value` x the weight's bytes
    value: float
    min_rows: int      # never fewer tokens per chunk
    multiple: int      # rows rounded down to a multiple of this
    balance: bool      # spread the tokens evenly over the chunks
    accumulate: str    # a key of ACCUMULATE, or "auto"


CHUNK_CONFIGS = {
    # The CPU default: 12 MB of logits per chunk (64 tokens at V = 49,152 in fp32).
    "cpu-12mb": ChunkConfig("bytes", 12 << 20, 16, 16, False, "auto"),
    # The GPU default until 2026-12: 32 MB of logits (96 tokens at V = 152,064 in bf16) and a fp32
    # temporary per chunk; 278 ms at T = 8,192, H = 4,096 on an H200. Kept to time against.
    "gpu-32mb-temp": ChunkConfig("bytes", 32 << 20, 16, 16, False, "temp"),
    "weight-x0.5": ChunkConfig("weight", 0.5, 2048, 128, True, "auto"),
    "weight-x1": ChunkConfig("weight", 1.0, 2048, 128, True, "auto"),
    "weight-x2": ChunkConfig("weight", 2.0, 2048, 128, True, "auto"),
    # weight-x1 with the per-chunk fp32 temporary: what the in-GEMM accumulation saves
    "weight-x1-temp": ChunkConfig("weight", 1.0, 2048, 128, True, "temp"),
}
DEFAULT_CONFIG = {"cpu": "cpu-12mb", "other": "weight-x1"}


def default_config(device) -> str:
    return DEFAULT_CONFIG["cpu" if device is None or torch.device(device).type == "cpu" else "other"]


def chunk_rows(config: str, tokens: int, vocab: int, hidden: int, dtype: torch.dtype) -> int:
    """Tokens per chunk of the named configuration at this shape."""
    cfg = CHUNK_CONFIGS[config]
    itemsize = torch.finfo(dtype).bits // 8
    budget = cfg.value if cfg.budget == "bytes" else cfg.value * vocab * hidden * itemsize
    rows = int(budget // (vocab * itemsize))
    rows = max(cfg.min_rows, rows - rows % cfg.multiple)
    if cfg.balance and tokens > 0:
        n = math.ceil(tokens / rows)
        even = math.ceil(tokens / n)
        rows = min(rows, even + (-even) % 16)
    return rows


# ----------------------------------------------------------------------------- d W accumulation

def _acc_first(acc, a, b):
    """acc = a @ b in float32 (bf16 / fp16 inputs: the GEMM writes fp32 directly)."""
    torch.mm(a, b, out_dtype=torch.float32, out=acc)


def _in_gemm(acc, a, b, first):
    if first:
        _acc_first(acc, a, b)
    else:
        torch.addmm(acc, a, b, out_dtype=torch.float32, out=acc)


def _in_gemm_bmm(acc, a, b, first):
    if first:
        _acc_first(acc, a, b)
    else:
        out = acc.unsqueeze(0)
        torch.baddbmm(out, a.unsqueeze(0), b.unsqueeze(0), out_dtype=torch.float32, out=out)


def _temp(acc, a, b, first):
    prod = torch.mm(a, b, out_dtype=torch.float32)
    acc.copy_(prod) if first else acc.add_(prod)


def _upcast(acc, a, b, first):
    a32, b32 = a.float(), b.float()
    torch.mm(a32, b32, out=acc) if first else acc.addmm_(a32, b32)


ACCUMULATE = {"in-gemm": _in_gemm, "in-gemm-bmm": _in_gemm_bmm, "temp": _temp, "upcast": _upcast}
_AUTO_ORDER = ("in-gemm", "in-gemm-bmm", "temp", "upcast")
_PROBED: dict = {}


def _works(mode: str, device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``mode`` computes acc = a1 b1 + a2 b2 in float32 on this device (a is transposed,
    like dZ^T); cached. An unsupported overload raises; a wrong result is caught here too."""
    key = (mode, device.type, device.index, dtype)
    if key not in _PROBED:
        g = torch.Generator().manual_seed(0)
        a1, a2 = (torch.randn(16, 24, generator=g).to(dtype) for _ in range(2))
        b1, b2 = (torch.randn(16, 8, generator=g).to(dtype) for _ in range(2))
        want = a1.t().float() @ b1.float() + a2.t().float() @ b2.float()
        try:
            acc = torch.full((24, 8), float("nan"), device=device)
            ACCUMULATE[mode](acc, a1.to(device).t(), b1.to(device), True)
            ACCUMULATE[mode](acc, a2.to(device).t(), b2.to(device), False)
            _PROBED[key] = bool(torch.allclose(acc.cpu(), want, rtol=1e-3, atol=1e-3))
        except (RuntimeError, TypeError, NotImplementedError):
            _PROBED[key] = False
    return _PROBED[key]


def accumulate_mode(requested: str, device, dtype: torch.dtype) -> str:
    """The d W accumulation that runs: ``requested`` where it works here, else the first that
    does (fp32 inputs: always ``upcast``, which is then the plain in-place fp32 GEMM)."""
    device = torch.device(device)
    if dtype == torch.float32 or device.type == "cpu":
        return "upcast"
    if requested != "auto" and _works(requested, device, dtype):
        return requested
    return next(m for m in _AUTO_ORDER if m == "upcast" or _works(m, device, dtype))


# ----------------------------------------------------------------------------- peak memory

def peak_bytes(tokens: int, vocab: int, hidden: int, dtype: torch.dtype, chunk: int, *, device: str = "cpu",
               accumulate: str = "upcast", bias: bool = False) -> dict:
    """The peak extra memory of one forward + backward of fused_linear_grpo_loss (contiguous
    hidden states; what the call returns included), in bytes, term by term:

        peak  = 4 V H + T H s + 4 V [bias] + max(chunk, cast)       + per_token
        chunk = c V s + max(c H s        oneDNN's d hidden before it is copied in (CPU)
                            4 c (V + H)  float32 copies of dZ^T and h (upcast, s < 4)
                            4 V H        the fp32 product            (temp)
                            4 V)         the chunk's d bias sum      (bias)
        cast  = V H s + V s [bias]       d W (and d bias) in the weight's dtype (backward, s < 4)
        per_token: O(T) float32 vectors (weights, ratio, KL, log-probs, ...), under 64 T bytes

    s: bytes per element of the hidden dtype; c = min(chunk, T); 4 V H: the fp32 d W accumulator;
    T H s: the preallocated d hidden; c V s: one chunk of logits (their gradient overwrites them).
    Not counted: oneDNN's scratch on the CPU while a chunk's logits are computed (26-260 KB at the
    shapes measured) and non-contiguous hidden states (one contiguous copy, T H s).
    """
    s = torch.finfo(dtype).bits // 8
    c = min(chunk, tokens)
    extra = [c * hidden * s if device == "cpu" else 0, 4 * vocab if bias else 0]
    if accumulate == "upcast" and s < 4:
        extra.append(4 * c * (vocab + hidden))
    if accumulate == "temp":
        extra.append(4 * vocab * hidden)
    chunk_b = c * vocab * s + max(extra)
    cast = (vocab * hidden * s + (vocab * s if bias else 0)) if s < 4 else 0
    fixed = 4 * vocab * hidden + tokens * hidden * s + (4 * vocab if bias else 0)
    return {"fixed": fixed, "chunk": chunk_b, "cast": cast, "per_token_max": 64 * tokens,
            "peak": fixed + max(chunk_b, cast)}
