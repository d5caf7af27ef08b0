"""The policy loss straight from hidden states and the LM head, chunked over tokens so the full
[B, L, V] logits never exist (memory O(chunk x V), not O(tokens x V)).

Forward and backward happen in one pass over the chunks: each chunk's logits are computed, turned
into log-probs by the fused kernel, the per-token loss gradient is taken on the chunk's vectors
(every aggregation is a sum of per-token terms with mask-only weights, _policy_math), the kernel
writes d logits over the chunk's logits, and two matmuls give d hidden and the chunk's share of
d weight, accumulated in float32 whatever the input dtype (in place into the preallocated fp32
d W). One chunk of logits is alive at a time, and no autograd graph spans the chunks. The
autograd backward only hands the stored gradients over (scaled if grad_loss != 1). GSPO with an
old policy first needs each sequence's mean log-ratio: one extra forward-only pass computes it.

Peak extra memory of one forward + backward (CPU, fp32): the returned d hidden [T, H] and d W
[V, H] plus one chunk of logits (default ~12 MB) and per-token vectors.
"""
from __future__ import annotations

import torch

from . import torch_backend
from ._backend import resolve_backend
from ._policy_math import per_token_terms, token_stats, token_weights
from .grpo_loss import check_loss_inputs, grpo_loss
from .loss_config import SEQUENCE_RATIO_TYPES, LossConfig
from .selective_log_softmax import _ops

# Default chunk: bytes of one chunk of logits in the hidden dtype. On the CPU the chunk's logits
# (their gradient is written over them) are the only [chunk, V] memory of the whole call, so the
# chunk is kept small (what else the call holds is what it returns: d hidden and the fp32 d W);
# every chunk still reads W twice and updates d W once, which bounds how small it can be before
# time is lost (the matmuls run on oneDNN, which keeps its speed at such chunks). On a GPU a
# larger chunk keeps the matmuls wide.
_CHUNK_BYTES = {"cpu": 12 << 20, "other": 32 << 20}


def default_chunk_size(vocab: int, dtype: torch.dtype, device: torch.device | str | None = None) -> int:
    """Tokens per chunk: the chunk budget in rows of logits, a multiple of 16 (GEMM-friendly), >= 16.
    (12 MB on the CPU: 64 tokens of SmolLM2's 49,152-word vocabulary in fp32.)"""
    kind = "cpu" if device is None or torch.device(device).type == "cpu" else "other"
    rows = _CHUNK_BYTES[kind] // (vocab * torch.finfo(dtype).bits // 8)
    return max(16, rows - rows % 16)


def _addmm_f32_(acc: torch.Tensor, a: torch.Tensor, b: torch.Tensor, first: bool = False) -> None:
    """acc += a @ b (acc = a @ b when ``first``) with acc in float32: in place for float32 inputs
    (no [V, H] temporary per chunk); for bf16/fp16 the chunk's product is formed in float32, never
    summed in bf16 (on the CPU, where mm has no out_dtype, from float32 copies of the chunk)."""
    if a.dtype == torch.float32:
        torch.mm(a, b, out=acc) if first else acc.addmm_(a, b)
        return
    try:
        prod = torch.mm(a, b, out_dtype=torch.float32)
    except (TypeError, RuntimeError, NotImplementedError):
        torch.mm(a.float(), b.float(), out=acc) if first else acc.addmm_(a.float(), b.float())
        return
    acc.copy_(prod) if first else acc.add_(prod)


def _onednn_linear():
    """oneDNN's linear (x @ w^T + b) on CPU tensors, or None. With a chunk of a few dozen rows
    MKL's sgemm re-packs all of W on every call and runs at about half its large-M speed; oneDNN's
    matmul keeps its speed down to such chunks (measured here: 72 vs 40 GFLOP/s at 64 x 576 x
    49,152 fp32, both exact fp32) and reads W as it is (no reordered copy)."""
    op = getattr(getattr(torch.ops, "mkldnn", None), "_linear_pointwise", None)
    return op if op is not None and torch.backends.mkldnn.is_available() else None


_LINEAR = _onednn_linear()


def _linear(x, w, bias=None):
    """x @ w^T (+ bias) as a new tensor; oneDNN on the CPU when it takes these tensors."""
    if _LINEAR is not None and x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16):
        try:
            return _LINEAR(x, w, bias, "none", [], "")
        except RuntimeError:  # a dtype / layout this oneDNN build does not take: the plain matmul
            pass
    return x @ w.t() if bias is None else torch.addmm(bias, x, w.t())


def _chunk_logits(h, weight, bias):
    """The logits h @ weight^T (+ bias) of one chunk of tokens (a new [rows, V] tensor)."""
    return _linear(h, weight, bias)


def _check(hidden, weight, ids, bias, op):
    if not isinstance(hidden, torch.Tensor) or not hidden.dtype.is_floating_point or hidden.dim() != 3:
        raise ValueError(f"{op}: 'hidden' must be a float tensor [B, L, H], got "
                         f"{tuple(hidden.shape) if isinstance(hidden, torch.Tensor) else type(hidden).__name__}")
    if not isinstance(weight, torch.Tensor) or weight.dim() != 2 or weight.shape[1] != hidden.shape[2]:
        raise ValueError(f"{op}: 'lm_head_weight' must be [V, H] with H = {hidden.shape[2]}, got "
                         f"{tuple(weight.shape) if isinstance(weight, torch.Tensor) else type(weight).__name__}")
    if weight.dtype != hidden.dtype:
        raise TypeError(f"{op}: 'lm_head_weight' dtype {weight.dtype} differs from 'hidden' dtype {hidden.dtype}")
    if weight.device != hidden.device:
        raise ValueError(f"{op}: 'lm_head_weight' is on {weight.device} but 'hidden' is on {hidden.device}")
    if bias is not None and (bias.shape != (weight.shape[0],) or bias.dtype != hidden.dtype):
        raise ValueError(f"{op}: 'lm_head_bias' must be [V] = [{weight.shape[0]}] of dtype {hidden.dtype}")
    if not isinstance(ids, torch.Tensor) or ids.dtype not in (torch.int64, torch.int32):
        raise TypeError(f"{op}: 'ids' must be an int64 or int32 tensor [B, L]")
    if tuple(ids.shape) != tuple(hidden.shape[:2]):
        raise ValueError(f"{op}: 'ids' must be [B, L] = {list(hidden.shape[:2])}, got {tuple(ids.shape)}")
    if ids.device != hidden.device:
        raise ValueError(f"{op}: 'ids' is on {ids.device} but 'hidden' is on {hidden.device}")
    if not torch.compiler.is_compiling() and ids.numel():
        v = weight.shape[0]
        bad = (ids < 0) | (ids >= v)
        if bool(bad.any()):
            pos = bad.nonzero()[0].tolist()
            raise ValueError(f"{op}: 'ids' must be in [0, V={v}), got {int(ids[tuple(pos)])} at position {pos}")


def _chunked_logp(h, weight, bias, ids, temperature, backend, chunk, with_entropy=False):
    """Per-token log-probs (and entropy) of flat tokens, chunk by chunk, no gradient."""
    fwd, _, _ = _ops(backend)
    t = h.shape[0]
    logp = torch.empty(t, dtype=torch.float32, device=h.device)
    ent = torch.empty(t if with_entropy else 0, dtype=torch.float32, device=h.device)
    for s in range(0, t, chunk):
        e = min(t, s + chunk)
        lp, _, en = fwd(_chunk_logits(h[s:e], weight, bias), ids[s:e], temperature, with_entropy)
        logp[s:e] = lp
        if with_entropy:
            ent[s:e] = en
    return logp, ent


class _FusedLinearGRPOLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, ids, mask, adv, old_logp, ref_logp, config, chunk, backend, with_entropy):
        b, l, hdim = hidden.shape
        t = b * l
        h = hidden.reshape(t, hdim)
        flat_ids = ids.reshape(t)
        w_tok = token_weights(mask, config).reshape(t)
        adv_bl = adv.float() if adv.dim() == 2 else adv.float()[:, None]
        adv_tok = adv_bl.expand(b, l).reshape(t)
        old = None if old_logp is None else old_logp.float().reshape(t)
        ref = None if ref_logp is None else ref_logp.float().reshape(t)
        seq_log_ratio = None
        if config.loss_type in SEQUENCE_RATIO_TYPES and old is not None:
            logp_all, _ = _chunked_logp(h, weight, bias, flat_ids, config.temperature, backend, chunk)
            m = mask.float()
            seq = (((logp_all.view(b, l) - old.view(b, l)) * m).sum(-1, keepdim=True)
                   / m.sum(-1, keepdim=True).clamp_min(1))
            seq_log_ratio = seq.expand(b, l).reshape(t)

        fwd, _, bwd_inplace = _ops(backend)
        # d hidden chunk by chunk, joined once at the end (no per-chunk copy into a [T, H] buffer:
        # on a loaded machine each small threaded copy can wait a scheduler slice for its team);
        # the join happens after the last chunk's logits are freed, so it adds nothing to the peak.
        grad_h_parts = []
        # The first chunk's product is written into d W directly (no [V, H] zero-fill first).
        grad_w = (torch.empty if t > 0 else torch.zeros)(weight.shape, dtype=torch.float32, device=weight.device)
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if bias is not None else None
        ratio_all = torch.empty(t, dtype=torch.float32, device=h.device)
        kl_all = torch.empty(t, dtype=torch.float32, device=h.device) if config.beta > 0 else None
        ent_all = torch.empty(t, dtype=torch.float32, device=h.device) if with_entropy else None
        loss = torch.zeros((), dtype=torch.float32, device=h.device)
        w_t = weight.t()
        for s in range(0, t, chunk):
            e = min(t, s + chunk)
            logits = _chunk_logits(h[s:e], weight, bias)
            lp, lse, en = fwd(logits, flat_ids[s:e], config.temperature, with_entropy)
            with torch.enable_grad():
                lp = lp.requires_grad_(True)
                per_tok, ratio, kl = per_token_terms(
                    lp, None if old is None else old[s:e], None if ref is None else ref[s:e], adv_tok[s:e], config,
                    None if seq_log_ratio is None else seq_log_ratio[s:e])
                chunk_loss = (per_tok * w_tok[s:e]).sum()
                (g_lp,) = torch.autograd.grad(chunk_loss, lp)
            loss += chunk_loss.detach()
            ratio_all[s:e] = ratio
            if kl_all is not None:
                kl_all[s:e] = kl
            if ent_all is not None:
                ent_all[s:e] = en
            bwd_inplace(logits, flat_ids[s:e], lse, g_lp, None, None, config.temperature)  # logits := d logits
            grad_h_parts.append(_linear(logits, w_t))  # d hidden = dZ W
            _addmm_f32_(grad_w, logits.t(), h[s:e], first=s == 0)  # d W (+)= dZ^T h, in place
            if grad_b is not None:
                grad_b += logits.sum(0, dtype=torch.float32)
            del logits  # free this chunk before the next one is computed (one chunk alive, not two)
        grad_h = torch.cat(grad_h_parts) if grad_h_parts else torch.empty_like(h)
        del grad_h_parts
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.shapes = (hidden.shape, weight.dtype, None if bias is None else bias.dtype)
        stats = token_stats(ratio_all.view(b, l), None if kl_all is None else kl_all.view(b, l),
                            adv_tok.view(b, l), mask, config, None if ent_all is None else ent_all.view(b, l))
        names = sorted(stats)
        ctx.mark_non_differentiable(*[stats[k] for k in names])
        ctx.stat_names = names
        return (loss, *[stats[k] for k in names])

    @staticmethod
    def backward(ctx, grad_loss, *unused):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        hidden_shape, w_dtype, b_dtype = ctx.shapes
        if torch.equal(grad_loss, torch.ones_like(grad_loss)):
            # The usual case (loss.backward()): hand the stored gradients over as they are, no
            # second [V, H] buffer (a fp32 weight's gradient is then never copied at all).
            gh, gw = grad_h.view(hidden_shape), grad_w.to(w_dtype)
            gb = None if grad_b is None else grad_b.to(b_dtype)
        else:
            gh = (grad_h * grad_loss.to(grad_h.dtype)).view(hidden_shape)
            gw = (grad_w * grad_loss).to(w_dtype)
            gb = None if grad_b is None else (grad_b * grad_loss).to(b_dtype)
        return gh, gw, gb, None, None, None, None, None, None, None, None, None


def fused_linear_grpo_loss(hidden: torch.Tensor, lm_head_weight: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
                           advantages: torch.Tensor, *, lm_head_bias: torch.Tensor | None = None,
                           old_logp: torch.Tensor | None = None, ref_logp: torch.Tensor | None = None,
                           config: LossConfig = LossConfig(), chunk_size: int | None = None,
                           return_entropy: bool = False, backend: str = "auto"):
    """grpo_loss from the last hidden states [B, L, H] and the LM head [V, H] (+ bias [V]).

    Gradients flow to hidden, lm_head_weight (accumulated in float32, returned in its dtype) and
    lm_head_bias. chunk_size: tokens per chunk (default: ~12 MB of logits per chunk on the CPU,
    a multiple of 16 tokens: 64 at V = 49,152 in fp32; ~32 MB on a GPU). Smaller chunks hold less
    memory but re-read W and re-write the fp32 d W once per chunk.
    Returns (loss, stats) like grpo_loss.
    """
    op = "fused_linear_grpo_loss"
    _check(hidden, lm_head_weight, ids, lm_head_bias, op)
    check_loss_inputs(tuple(ids.shape), hidden.device, mask, advantages, old_logp, ref_logp, config, op)
    if chunk_size is not None and not (isinstance(chunk_size, int) and chunk_size >= 1):
        raise ValueError(f"{op}: 'chunk_size' must be None or an int >= 1, got {chunk_size!r}")
    backend = resolve_backend(backend, hidden, op)
    if backend == "torch" or hidden.dtype == torch.float64:
        return grpo_loss(torch_backend.fused_linear_logits(hidden, lm_head_weight, lm_head_bias), ids, mask, advantages,
                         old_logp=old_logp, ref_logp=ref_logp, config=config, return_entropy=return_entropy,
                         backend="torch")
    chunk = chunk_size or default_chunk_size(lm_head_weight.shape[0], hidden.dtype, hidden.device)
    out = _FusedLinearGRPOLoss.apply(hidden, lm_head_weight, lm_head_bias, ids, mask, advantages, old_logp,
                                     ref_logp, config, chunk, backend, bool(return_entropy))
    names = sorted(["clip_frac_low", "clip_frac_high", "ratio_mean", "kl_mean"]
                   + (["entropy_mean"] if return_entropy else []))
    return out[0], dict(zip(names, out[1:]))


@torch.no_grad()
def fused_linear_selective_log_softmax(hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor, *,
                                       bias: torch.Tensor | None = None, temperature: float = 1.0,
                                       chunk_size: int | None = None, return_entropy: bool = False,
                                       backend: str = "auto"):
    """Per-token log-probs [B, L] (float32) of ids from hidden states and the LM head, chunked, no
    gradient: the reference / old-policy log-probs of a GRPO step without full logits."""
    op = "fused_linear_selective_log_softmax"
    _check(hidden, weight, ids, bias, op)
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"{op}: 'temperature' must be a float > 0, got {temperature!r}")
    backend = resolve_backend(backend, hidden, op)
    b, l, hdim = hidden.shape
    if backend == "torch" or hidden.dtype == torch.float64:
        logits = _chunk_logits(hidden.float(), weight.float(), None if bias is None else bias.float())
        return torch_backend.selective_log_softmax(logits, ids, temperature=temperature, return_entropy=return_entropy)
    chunk = chunk_size or default_chunk_size(weight.shape[0], hidden.dtype, hidden.device)
    logp, ent = _chunked_logp(hidden.reshape(b * l, hdim), weight, bias, ids.reshape(b * l), float(temperature),
                              backend, chunk, with_entropy=return_entropy)
    return (logp.view(b, l), ent.view(b, l)) if return_entropy else logp.view(b, l)
