"""Triton kernels for fused per-token log-probabilities and entropy, forward and backward.

Semantics (the same as csrc/cuda/logprob.cu and the C++ CPU kernels), per row of logits x:
    z = x / temperature,  lse = logsumexp(z),  logp = z[id] - lse,  H = lse - sum(softmax(z) * z)
    d logits = (1 / temperature) * (g_lp * (onehot(id) - p) - g_H * p * (z - lse + H)),  p = softmax(z)

Forward: one program per row walks V in BLOCK_V chunks with an online log-sum-exp: one block-wide
max per chunk (so one exp per element, not two), per-lane sums of exp(z - m) and exp(z - m) * z
rescaled when the running max grows, fp32 throughout, merged once at the end. Any V works (the
last chunk is masked). Backward: one program per row, one pass, each element read and then
written by the same program, so the gradient may overwrite the logits in place.

Grid: a 1-D grid over rows. Grid dimension 0 may hold up to 2**31 - 1 programs (dimensions 1
and 2 only 65,535), so T = B * L up to 2**31 - 1 rows works; Liger-Kernel's GRPO loss puts L on
a 65,535-limited grid dimension and fails for L >= 65,536.

Ops: ``medix::logprob_fwd_triton``, ``medix::logprob_bwd_triton`` and the in-place
``medix::logprob_bwd_triton_``. Normally they are ``torch.library.triton_op``s (torch.compile
sees and can fuse around the kernels). Under TRITON_INTERPRET=1 they are opaque
``torch.library.custom_op``s with fake kernels instead: triton_op works eagerly there, but
tracing it under torch.compile runs the interpreter on fake tensors and fails ("Cannot access
data pointer of Tensor"), checked with torch 2.13 / triton 3.9.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

# Tuning for H100 bf16 at V = 152,064: a 4096-wide chunk over 8 warps is 16 elements per thread,
# i.e. two 16-byte loads in flight per thread per iteration, and 37 chunks per row. The backward
# also writes, so it uses the same chunk with more warps to keep more loads outstanding.
FWD_BLOCK_V = 4096
FWD_NUM_WARPS = 8
BWD_BLOCK_V = 4096
BWD_NUM_WARPS = 16

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


@triton.jit
def _logprob_fwd_kernel(logits_ptr, ids_ptr, logp_ptr, lse_ptr, ent_ptr, V, stride_row, inv_temp,
                        WITH_ENTROPY: tl.constexpr, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # 1-D grid: up to 2**31 - 1 rows; int64 offsets below
    base = logits_ptr + row * stride_row
    offs = tl.arange(0, BLOCK_V)
    m = tl.full([], float("-inf"), tl.float32)   # running max of z
    s = tl.zeros([BLOCK_V], dtype=tl.float32)    # per lane: sum exp(z - m)
    t = tl.zeros([BLOCK_V], dtype=tl.float32)    # per lane: sum exp(z - m) * z
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + offs
        z = tl.load(base + cols, mask=cols < V, other=float("-inf")).to(tl.float32) * inv_temp
        m_new = tl.maximum(m, tl.max(z, axis=0))
        # While every z seen is -inf, shift by 0 instead (exp(-inf - -inf) would be NaN).
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m - m_safe)
        e = tl.exp(z - m_safe)
        s = s * alpha + e
        if WITH_ENTROPY:
            # e == 0 for masked lanes and z = -inf logits: their p * z term is 0, not 0 * -inf.
            t = t * alpha + e * tl.where(e > 0.0, z, 0.0)
        m = m_new
    total = tl.sum(s, axis=0)
    lse = m + tl.log(total)
    tok = tl.load(ids_ptr + row)
    valid = (tok >= 0) & (tok < V)  # the callers validate ids; never read outside the row anyway
    z_tok = tl.load(base + tok, mask=valid, other=float("nan")).to(tl.float32) * inv_temp
    tl.store(logp_ptr + row, z_tok - lse)
    tl.store(lse_ptr + row, lse)
    if WITH_ENTROPY:
        tl.store(ent_ptr + row, lse - tl.sum(t, axis=0) / total)


@triton.jit
def _logprob_bwd_kernel(logits_ptr, out_ptr, ids_ptr, lse_ptr, glp_ptr, ent_ptr, gent_ptr, V, stride_row,
                        out_stride_row, inv_temp, HAS_GRAD_ENTROPY: tl.constexpr, BLOCK_V: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    base = logits_ptr + row * stride_row
    out_base = out_ptr + row * out_stride_row
    offs = tl.arange(0, BLOCK_V)
    lse = tl.load(lse_ptr + row)
    g_lp = tl.load(glp_ptr + row)
    tok = tl.load(ids_ptr + row)
    if HAS_GRAD_ENTROPY:
        ent = tl.load(ent_ptr + row)
        g_ent = tl.load(gent_ptr + row)
    for v0 in range(0, V, BLOCK_V):
        cols = v0 + offs
        mask = cols < V
        # Read before write: when out is the logits, this program owns these elements alone.
        z = tl.load(base + cols, mask=mask, other=0.0).to(tl.float32) * inv_temp
        p = tl.exp(z - lse)
        g = tl.where(cols == tok, g_lp, 0.0) - g_lp * p
        if HAS_GRAD_ENTROPY:
            # p * log p -> 0 as p -> 0: keep z = -inf logits at 0 instead of 0 * -inf.
            g -= g_ent * p * tl.where(p > 0.0, z - lse + ent, 0.0)
        tl.store(out_base + cols, (g * inv_temp).to(out_ptr.dtype.element_ty), mask=mask)


def _chunk(v: int, block_v: int, num_warps: int) -> tuple[int, int]:
    """Chunk width and warps for a row of v elements: the tuned values, shrunk for small v."""
    block = min(block_v, triton.next_power_of_2(max(v, 1)))
    warps = max(1, min(num_warps, block // 256))  # at least 8 elements per thread
    return block, warps


def _check_common(logits: torch.Tensor, ids: torch.Tensor, temperature: float, op: str) -> int:
    if not isinstance(logits, torch.Tensor) or logits.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{op}: 'logits' must be a float32/bfloat16/float16 tensor, got "
                        f"{getattr(logits, 'dtype', type(logits))}")
    if logits.dim() < 1 or logits.shape[-1] < 1:
        raise ValueError(f"{op}: 'logits' must be [..., V] with V >= 1, got shape {tuple(logits.shape)}")
    if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{op}: 'ids' must be an int64 or int32 tensor, got {getattr(ids, 'dtype', type(ids))}")
    if tuple(ids.shape) != tuple(logits.shape[:-1]):
        raise ValueError(f"{op}: 'ids' must have shape {tuple(logits.shape[:-1])} (logits without the vocab "
                         f"dimension), got {tuple(ids.shape)}")
    if ids.device != logits.device:
        raise ValueError(f"{op}: 'ids' is on {ids.device} but 'logits' is on {logits.device}")
    if not temperature > 0:
        raise ValueError(f"{op}: 'temperature' must be > 0, got {temperature}")
    return logits.shape[-1]


def _rows(x: torch.Tensor, v: int) -> tuple[torch.Tensor, bool]:
    """x as [T, v] with unit column stride, and whether that is a view of x (else a copy).
    (No data_ptr() here: triton_op bodies also run on fake tensors under torch.compile.)"""
    if x.dim() == 2 and x.stride(1) == 1:
        return x, True
    try:
        x2 = x.view(-1, v)
    except RuntimeError:
        return x.reshape(-1, v).contiguous(), False
    if x2.stride(1) == 1 or v == 1:  # with v == 1 the column stride is never used
        return x2, True
    return x2.contiguous(), False


def _row_vector(x: torch.Tensor, t: int, name: str, op: str, device: torch.device) -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.numel() != t:
        raise ValueError(f"{op}: '{name}' must hold one value per token ({t}), got "
                         f"{tuple(x.shape) if isinstance(x, torch.Tensor) else type(x)}")
    if x.device != device:
        raise ValueError(f"{op}: '{name}' is on {x.device} but 'logits' is on {device}")
    if not x.is_floating_point():
        raise TypeError(f"{op}: '{name}' must be a float tensor, got {x.dtype}")
    return x.reshape(t).to(torch.float32).contiguous()


def logprob_fwd(logits: torch.Tensor, ids: torch.Tensor, temperature: float = 1.0, with_entropy: bool = False):
    """Per-token log-probs of ``ids`` under softmax(logits / temperature), with the row lse and
    (if ``with_entropy``) the entropy. ``logits`` [..., V]; returns fp32 tensors shaped like ``ids``
    (entropy is an empty [0] tensor when not asked for)."""
    v = _check_common(logits, ids, temperature, "logprob_fwd")
    lead = tuple(ids.shape)
    x, _ = _rows(logits, v)
    t = x.shape[0]
    tok = ids.reshape(t).to(torch.int64).contiguous()
    f32 = dict(dtype=torch.float32, device=logits.device)
    logp, lse = torch.empty(t, **f32), torch.empty(t, **f32)
    ent = torch.empty(t if with_entropy else 0, **f32)
    if t > 0:
        block, warps = _chunk(v, FWD_BLOCK_V, FWD_NUM_WARPS)
        _wrap(_logprob_fwd_kernel)[(t,)](
            x, tok, logp, lse, ent if with_entropy else logp, v, x.stride(0), 1.0 / float(temperature),
            WITH_ENTROPY=bool(with_entropy), BLOCK_V=block, num_warps=warps)
    return logp.view(lead), lse.view(lead), ent.view(lead) if with_entropy else ent


def logprob_bwd(logits: torch.Tensor, ids: torch.Tensor, lse: torch.Tensor, grad_logp: torch.Tensor,
                entropy: torch.Tensor | None = None, grad_entropy: torch.Tensor | None = None,
                temperature: float = 1.0, out: torch.Tensor | None = None) -> torch.Tensor:
    """Gradient of (sum g_lp * logp + sum g_H * H) with respect to ``logits``, in the logits dtype.

    ``out`` (same shape and dtype as logits) receives it; ``out=logits`` overwrites the logits in
    place, which is safe: each element is read before it is written, by the same program.
    ``grad_entropy`` needs ``entropy`` (the forward's); None means no entropy term."""
    op = "logprob_bwd"
    v = _check_common(logits, ids, temperature, op)
    t = ids.numel()
    dev = logits.device
    lse32 = _row_vector(lse, t, "lse", op, dev)
    glp = _row_vector(grad_logp, t, "grad_logp", op, dev)
    has_ge = grad_entropy is not None
    if has_ge:
        if entropy is None:
            raise ValueError(f"{op}: 'entropy' (the forward's) is required when 'grad_entropy' is given")
        ent = _row_vector(entropy, t, "entropy", op, dev)
        gent = _row_vector(grad_entropy, t, "grad_entropy", op, dev)
    else:
        ent = gent = glp  # unused by the kernel (HAS_GRAD_ENTROPY=False)
    if out is None:
        out = torch.empty(logits.shape, dtype=logits.dtype, device=dev)
    elif (not isinstance(out, torch.Tensor) or out.shape != logits.shape or out.dtype != logits.dtype
          or out.device != dev):
        raise ValueError(f"{op}: 'out' must match logits (shape {tuple(logits.shape)}, {logits.dtype}, {dev})")
    inplace = out is logits
    if inplace and any(st == 0 and n > 1 for st, n in zip(logits.stride(), logits.shape)):
        raise ValueError(f"{op}: in-place backward needs logits whose elements do not share memory, got shape "
                         f"{tuple(logits.shape)} with strides {logits.stride()} (an expanded view)")
    x, x_is_view = _rows(logits, v)
    if inplace and not x_is_view:
        raise ValueError(f"{op}: in-place backward needs logits viewable as [T, V] with unit column stride")
    y, y_is_view = (x, True) if inplace else _rows(out, v)
    copy_back = not y_is_view  # out is not viewable as [T, V]: the kernel writes a copy
    if t > 0:
        block, warps = _chunk(v, BWD_BLOCK_V, BWD_NUM_WARPS)
        tok = ids.reshape(t).to(torch.int64).contiguous()
        _wrap(_logprob_bwd_kernel)[(t,)](
            x, y, tok, lse32, glp, ent, gent, v, x.stride(0), y.stride(0), 1.0 / float(temperature),
            HAS_GRAD_ENTROPY=has_ge, BLOCK_V=block, num_warps=warps)
    if copy_back:
        out.copy_(y.view(out.shape))
    return out


# --- torch custom ops -------------------------------------------------------------------------

_INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"


def _wrap(kernel):
    """wrap_triton inside a triton_op (so torch.compile sees the launch); the plain kernel otherwise."""
    if _INTERPRETING:
        return kernel
    return torch.library.wrap_triton(kernel)


def _define(name: str, mutates_args, fn, fake=None):
    if _INTERPRETING:
        op = torch.library.custom_op(name, mutates_args=mutates_args)(fn)
        if fake is not None:
            op.register_fake(fake)
        return op
    return torch.library.triton_op(name, mutates_args=mutates_args)(fn)


def _fwd_op(logits: torch.Tensor, ids: torch.Tensor, temperature: float,
            with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return logprob_fwd(logits, ids, temperature, with_entropy)


def _fwd_fake(logits, ids, temperature, with_entropy):
    f32 = dict(dtype=torch.float32, device=logits.device)
    ent_shape = tuple(ids.shape) if with_entropy else (0,)
    return torch.empty(ids.shape, **f32), torch.empty(ids.shape, **f32), torch.empty(ent_shape, **f32)


def _bwd_op(logits: torch.Tensor, ids: torch.Tensor, lse: torch.Tensor, grad_logp: torch.Tensor,
            entropy: torch.Tensor | None, grad_entropy: torch.Tensor | None,
            temperature: float) -> torch.Tensor:
    return logprob_bwd(logits, ids, lse, grad_logp, entropy, grad_entropy, temperature, out=None)


def _bwd_fake(logits, ids, lse, grad_logp, entropy, grad_entropy, temperature):
    return torch.empty_like(logits)


def _bwd_inplace_op(logits: torch.Tensor, ids: torch.Tensor, lse: torch.Tensor, grad_logp: torch.Tensor,
                    entropy: torch.Tensor | None, grad_entropy: torch.Tensor | None,
                    temperature: float) -> None:
    logprob_bwd(logits, ids, lse, grad_logp, entropy, grad_entropy, temperature, out=logits)


def _bwd_inplace_fake(logits, ids, lse, grad_logp, entropy, grad_entropy, temperature):
    return None


logprob_fwd_op = _define("medix::logprob_fwd_triton", (), _fwd_op, _fwd_fake)
logprob_bwd_op = _define("medix::logprob_bwd_triton", (), _bwd_op, _bwd_fake)
logprob_bwd_inplace_op = _define("medix::logprob_bwd_triton_", ("logits",), _bwd_inplace_op, _bwd_inplace_fake)
