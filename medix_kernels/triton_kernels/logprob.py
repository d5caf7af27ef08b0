"""Launchers and torch ops of the Triton log-prob / entropy kernels (the kernels: logprob_kernels.py).

Semantics (the same as csrc/cuda/logprob.cu and the C++ CPU kernels), per row of logits x:
    z = x / temperature,  lse = logsumexp(z),  logp = z[id] - lse,  H = lse - sum(softmax(z) * z)
    d logits = (1 / temperature) * (g_lp * (onehot(id) - p) - g_H * p * (z - lse + H)),  p = softmax(z)

How a kernel is launched (warps, rows per program, chunk width, pipelining, ...) is a named
configuration (configs.py); ``config=None`` takes the one medix_kernels._defaults names.

Ops: ``medix::logprob_fwd_triton``, ``medix::logprob_bwd_triton`` and the in-place
``medix::logprob_bwd_triton_``. Normally they are ``torch.library.triton_op``s (torch.compile
sees and can fuse around the kernels). Under TRITON_INTERPRET=1 they are opaque
``torch.library.custom_op``s with fake kernels instead: triton_op works eagerly there, but
tracing it under torch.compile runs the interpreter on fake tensors and fails ("Cannot access
data pointer of Tensor"), checked with torch 2.13 / triton 3.9.
"""
from __future__ import annotations

import math
import os

import torch
import triton

from .._defaults import kernel_config
from . import configs
from .logprob_kernels import logprob_bwd_kernel, logprob_fwd_kernel

_FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_LOG2E = 1.0 / math.log(2.0)


def fwd_config(config=None) -> configs.LogprobFwdConfig:
    """A LogprobFwdConfig from None (the default entry), a registered name or a config."""
    if config is None:
        config = kernel_config("logprob_fwd")
    return configs.lookup("logprob_fwd", config) if isinstance(config, str) else config


def bwd_config(config=None) -> configs.LogprobBwdConfig:
    if config is None:
        config = kernel_config("logprob_bwd")
    return configs.lookup("logprob_bwd", config) if isinstance(config, str) else config


def _warps(cfg_warps: int, elements: int) -> int:
    """The config's warps, fewer for small rows (at least 8 elements per thread)."""
    return max(1, min(cfg_warps, elements // 256))


def launch_fwd(x, tok, logp, lse, ent, temperature: float, with_entropy: bool, cfg, row_mask=None):
    """The forward kernel over rows x [T, V] (unit column stride) into fp32 logp / lse / ent [T].
    Returns Triton's compiled-kernel handle (registers, spills) when launched eagerly on a GPU."""
    t, v = x.shape
    block = min(cfg.block_v, triton.next_power_of_2(max(v, 1)))
    rows = min(cfg.rows, triton.next_power_of_2(max(t, 1)))
    inv_temp = 1.0 / float(temperature)
    return _wrap(logprob_fwd_kernel)[(triton.cdiv(t, rows),)](
        x, tok, logp if row_mask is None else row_mask, logp, lse, ent if with_entropy else logp, t, v, x.stride(0),
        inv_temp * _LOG2E if cfg.exp2 else inv_temp, WITH_ENTROPY=bool(with_entropy),
        HAS_ROW_MASK=row_mask is not None, ROWS=rows, BLOCK_V=block, ACC=cfg.acc, NUM_STAGES=cfg.num_stages,
        EXP2=cfg.exp2, PEEL_TAIL=cfg.peel_tail, num_warps=_warps(cfg.num_warps, rows * block))


def _segments(cfg, t: int, v: int, block: int, device: torch.device) -> int:
    chunks = triton.cdiv(v, block)
    if cfg.segments > 0:
        return min(cfg.segments, chunks)
    sms = torch.cuda.get_device_properties(device).multi_processor_count if device.type == "cuda" else 4
    return max(1, min(chunks, triton.cdiv(8 * sms, max(t, 1))))  # ~8 programs per SM


def launch_bwd(x, y, tok, lse, glp, ent, gent, temperature: float, cfg, scaled=None):
    """The backward kernel: d logits of rows x [T, V] into y [T, V] (y may be x). ``scaled``:
    (g_scale [1], seq_coef [B], L) for the lean grpo_loss (g_lp[row] * g_scale * seq_coef[row // L])."""
    t, v = x.shape
    block = min(cfg.block_v, triton.next_power_of_2(max(v, 1)))
    segs = _segments(cfg, t, v, block, x.device)
    seg_len = triton.cdiv(triton.cdiv(v, segs), block) * block
    segs = triton.cdiv(v, seg_len)
    gscale, coef, seq_len = scaled if scaled is not None else (glp, glp, 1)
    has_ge = ent is not None and gent is not None
    ent, gent = (ent, gent) if has_ge else (glp, glp)  # unused by the kernel without HAS_GRAD_ENTROPY
    inv_temp = 1.0 / float(temperature)
    return _wrap(logprob_bwd_kernel)[(t, segs)](
        x, y, tok, lse, glp, ent, gent, gscale, coef, v, seq_len, seg_len, x.stride(0), y.stride(0), inv_temp,
        inv_temp * _LOG2E if cfg.exp2 else inv_temp, HAS_GRAD_ENTROPY=has_ge,
        SCALED=scaled is not None, BLOCK_V=block, NUM_STAGES=cfg.num_stages, EXP2=cfg.exp2,
        EVICT="evict_first" if cfg.evict_first else "", num_warps=_warps(cfg.num_warps, block))


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


def logprob_fwd(logits: torch.Tensor, ids: torch.Tensor, temperature: float = 1.0, with_entropy: bool = False, *,
                config=None, row_mask: torch.Tensor | None = None):
    """Per-token log-probs of ``ids`` under softmax(logits / temperature), with the row lse and
    (if ``with_entropy``) the entropy. ``logits`` [..., V]; returns fp32 tensors shaped like ``ids``
    (entropy is an empty [0] tensor when not asked for). ``row_mask`` (shaped like ``ids``): rows
    where it is 0 read no logits and get 0 for every output. ``config``: a configs.LOGPROB_FWD_CONFIGS
    name or a LogprobFwdConfig (None: the default entry)."""
    v = _check_common(logits, ids, temperature, "logprob_fwd")
    lead = tuple(ids.shape)
    x, _ = _rows(logits, v)
    t = x.shape[0]
    tok = ids.reshape(t).to(torch.int64).contiguous()
    if row_mask is not None:
        if not isinstance(row_mask, torch.Tensor) or row_mask.numel() != t or row_mask.device != logits.device:
            raise ValueError(f"logprob_fwd: 'row_mask' must hold one value per token ({t}) on {logits.device}")
        row_mask = row_mask.reshape(t).contiguous()
    f32 = dict(dtype=torch.float32, device=logits.device)
    logp, lse = torch.empty(t, **f32), torch.empty(t, **f32)
    ent = torch.empty(t if with_entropy else 0, **f32)
    if t > 0:
        launch_fwd(x, tok, logp, lse, ent, temperature, with_entropy, fwd_config(config), row_mask)
    return logp.view(lead), lse.view(lead), ent.view(lead) if with_entropy else ent


def logprob_bwd(logits: torch.Tensor, ids: torch.Tensor, lse: torch.Tensor, grad_logp: torch.Tensor,
                entropy: torch.Tensor | None = None, grad_entropy: torch.Tensor | None = None,
                temperature: float = 1.0, out: torch.Tensor | None = None, *, config=None) -> torch.Tensor:
    """Gradient of (sum g_lp * logp + sum g_H * H) with respect to ``logits``, in the logits dtype.

    ``out`` (same shape and dtype as logits) receives it; ``out=logits`` overwrites the logits in
    place, which is safe: each element is read before it is written, by the same program.
    ``grad_entropy`` needs ``entropy`` (the forward's); None means no entropy term. ``config``: a
    configs.LOGPROB_BWD_CONFIGS name or a LogprobBwdConfig (None: the default entry)."""
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
        ent = gent = None
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
        tok = ids.reshape(t).to(torch.int64).contiguous()
        launch_bwd(x, y, tok, lse32, glp, ent, gent, temperature, bwd_config(config))
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
