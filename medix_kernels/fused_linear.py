"""The policy loss straight from hidden states and the LM head, chunked over tokens so the full
[B, L, V] logits never exist (memory O(chunk x V), not O(tokens x V)).

Forward and backward happen in one pass over the chunks: each chunk's logits are computed, turned
into log-probs by the fused kernel, the per-token loss gradient is taken on the chunk's vectors
(every aggregation is a sum of per-token terms with mask-only weights, _policy_math), the kernel
writes d logits over the chunk's logits, and two matmuls give the chunk's rows of d hidden
(written into one preallocated [T, H] buffer) and its share of d W, accumulated in float32
whatever the input dtype, into one preallocated fp32 [V, H] accumulator (on a GPU inside the
GEMM itself: no [V, H] temporary per chunk). One chunk of logits is alive at a time, and no
autograd graph spans the chunks. The autograd backward only hands the stored gradients over
(cast to the weight's dtype; scaled if grad_loss != 1). GSPO with an old policy first needs each
sequence's mean log-ratio: one extra forward-only pass computes it. So does a rollout correction
whose weights need other tokens' log-probs (sequence level, or rejecting tokens: the aggregation
weights change) when no old log-probs are given; with old log-probs, or at token level, the
correction costs no extra pass (the weights come from old_logp up front, or per chunk).
The torch backend runs the same pass in float32, with torch ops in place of the log-prob kernels
(torch_backend.logprob_fwd / logprob_bwd_); float64 inputs take the full-logits path.

Chunk size and d W accumulation: _fused_linear_chunks (named configurations; ``chunk_size`` takes
a token count or one of their names; docs/fused_linear.md). On a GPU a chunk holds as many bytes
of logits as the weight (H tokens, at least 2,048); on the CPU 12 MB of logits.

Peak extra memory of one forward + backward (``_fused_linear_chunks.peak_bytes`` has every term;
s = bytes per element, c = tokens per chunk; measured on the CPU by
tests/test_fused_linear_memory.py):
    4 V H (fp32 d W) + T H s (d hidden) + max(c V s + [CPU, bf16: 4 c (V + H) of fp32 copies],
                                              V H s: the bf16 d W handed back) + O(T)
At T = 8,192, V = 152,064, H = 4,096, bf16, GPU (c = 4,096): 2,376 + 64 + max(1,188, 1,188) MiB
= 3,628 MiB (the old 96-token chunks with a fp32 [V, H] temporary: 4,844 MiB, as measured).
"""
from __future__ import annotations

import torch

from . import torch_backend
from ._backend import resolve_backend
from ._fused_linear_chunks import ACCUMULATE, CHUNK_CONFIGS, accumulate_mode, chunk_rows, default_config
from ._policy_math import (
    per_token_terms,
    rollout_log_ratio,
    rollout_stats,
    rollout_weights,
    token_stats,
    token_weights,
)
from .grpo_loss import check_loss_inputs, grpo_loss
from .loss_config import ROLLOUT_STATS, SEQUENCE_RATIO_TYPES, LossConfig
from .selective_log_softmax import _ops


def default_chunk_size(vocab: int, hidden: int, dtype: torch.dtype, device: torch.device | str | None = None,
                       tokens: int = 0) -> int:
    """Tokens per chunk of the device's default configuration (_fused_linear_chunks.DEFAULT_CONFIG):
    64 at V = 49,152 in fp32 on the CPU; H tokens, at least 2,048, balanced over ``tokens``, on a GPU."""
    return chunk_rows(default_config(device), tokens, vocab, hidden, dtype)


def _resolve_chunk(chunk_size, tokens, weight, dtype, device) -> tuple[int, str]:
    """(tokens per chunk, requested d W accumulation) from an int, a configuration name or None."""
    if isinstance(chunk_size, int):
        return chunk_size, "auto"
    name = chunk_size or default_config(device)
    return chunk_rows(name, tokens, weight.shape[0], weight.shape[1], dtype), CHUNK_CONFIGS[name].accumulate


def _check_chunk_size(chunk_size, op):
    ok = chunk_size is None or (isinstance(chunk_size, int) and not isinstance(chunk_size, bool) and chunk_size >= 1)
    if not (ok or (isinstance(chunk_size, str) and chunk_size in CHUNK_CONFIGS)):
        raise ValueError(f"{op}: 'chunk_size' must be None, an int >= 1 or one of {sorted(CHUNK_CONFIGS)}, "
                         f"got {chunk_size!r}")


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


def _dense(bias):
    """The bias as a dense [V] vector: oneDNN's linear reads it as one (a strided or expanded view
    would be read past its elements); a copy only when it is not already (V values, differentiable)."""
    return None if bias is None else bias.contiguous()


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


def _d_hidden_(dz, weight, out):
    """out := dZ W (the chunk's rows of the preallocated d hidden). On the CPU the product comes
    from oneDNN, like the logits (``mm(out=)`` would run MKL's sgemm: see _onednn_linear), and is
    copied in (c H elements per chunk, ~1% of the chunk's logits at H / V = 576 / 49,152)."""
    if _LINEAR is not None and dz.device.type == "cpu":
        out.copy_(_linear(dz, weight.t()))
    else:
        torch.mm(dz, weight, out=out)


def _needs_all_logp(config, old_logp, rollout_logp) -> bool:
    """Whether the loss needs every token's log-prob before the first chunk's gradient: GSPO's sequence
    ratio with old log-probs, or (no old log-probs) a sequence-level or rejecting rollout correction."""
    if config.loss_type in SEQUENCE_RATIO_TYPES and old_logp is not None:
        return True
    per_token = config.rollout_correction.startswith("token") and config.rollout_mask == "weight"
    return rollout_logp is not None and old_logp is None and not (per_token or config.rollout_correction == "none")


def _token_inputs(h, weight, bias, ids, mask, adv, old_logp, ref_logp, rollout_logp, config, backend, chunk):
    """The flat per-token vectors of the loss: weights, advantages, old / reference log-probs, GSPO's
    per-sequence log-ratio and the rollout correction's weights (one forward-only pass, when it needs
    one; the token-level rollout weights without old log-probs are left to the chunks: "log_rho" None)."""
    b, l = ids.shape
    t = b * l
    adv_bl = adv.float() if adv.dim() == 2 else adv.float()[:, None]
    tok = {"adv": adv_bl.expand(b, l).reshape(t), "old": None if old_logp is None else old_logp.float().reshape(t),
           "ref": None if ref_logp is None else ref_logp.float().reshape(t), "seq": None, "mask": mask.reshape(t),
           "roll": None if rollout_logp is None else rollout_logp.reshape(t), "log_rho": None, "isw": None,
           "keep": None, "inside": None}
    logp_all = None
    if _needs_all_logp(config, old_logp, rollout_logp):
        logp_all, _ = _chunked_logp(h, weight, bias, ids.reshape(t), config.temperature, backend, chunk)
    if config.loss_type in SEQUENCE_RATIO_TYPES and tok["old"] is not None:
        m = mask.float()
        seq = (((logp_all.view(b, l) - tok["old"].view(b, l)) * m).sum(-1, keepdim=True)
               / m.sum(-1, keepdim=True).clamp_min(1))
        tok["seq"] = seq.expand(b, l).reshape(t)
    train = tok["old"] if tok["old"] is not None else logp_all
    if rollout_logp is not None and train is not None:  # the rollout weights up front
        log_rho = rollout_log_ratio(train.view(b, l), rollout_logp, mask)
        isw, keep, inside = rollout_weights(log_rho, mask, config)
        tok.update(log_rho=log_rho.reshape(t), isw=None if isw is None else isw.reshape(t),
                   keep=None if keep is None else keep.reshape(t), inside=inside.reshape(t))
    elif rollout_logp is not None:  # token-level weights, from each chunk's log-probs
        tok.update(log_rho=None, isw_buf=torch.ones(t, device=h.device),
                   lr_buf=torch.empty(t, device=h.device), in_buf=torch.empty(t, dtype=torch.bool, device=h.device))
    tok["w"] = token_weights(mask if tok["keep"] is None else mask * tok["keep"].view(b, l), config).reshape(t)
    return tok


def _chunk_rollout_weight(lp, tok, s, e, config):
    """The rollout weights of tokens s:e (None: none), computed here from their log-probs when they were not
    known up front."""
    if tok["roll"] is None:
        return None
    if tok["log_rho"] is not None:
        return None if tok["isw"] is None else tok["isw"][s:e]
    lr = rollout_log_ratio(lp, tok["roll"][s:e], tok["mask"][s:e])
    isw, _, inside = rollout_weights(lr, tok["mask"][s:e], config)
    tok["lr_buf"][s:e] = lr
    tok["in_buf"][s:e] = inside
    if isw is not None:
        tok["isw_buf"][s:e] = isw
    return isw


def _rollout_stats(tok, b, l, mask) -> dict:
    if tok["roll"] is None:
        return {}
    if tok["log_rho"] is not None:
        isw, keep = tok["isw"], tok["keep"]
        return rollout_stats(tok["log_rho"].view(b, l), None if isw is None else isw.view(b, l),
                             None if keep is None else keep.view(b, l), tok["inside"].view(b, l), mask)
    return rollout_stats(tok["lr_buf"].view(b, l), tok["isw_buf"].view(b, l), None, tok["in_buf"].view(b, l), mask)


def _chunk_loss(lp, tok, s, e, config):
    """(loss, d loss / d logp, ratio, KL) of tokens s:e from their log-probs."""
    def part(x):
        return None if x is None else x[s:e]
    is_weight = _chunk_rollout_weight(lp, tok, s, e, config)
    with torch.enable_grad():
        lp = lp.requires_grad_(True)
        per_tok, ratio, kl = per_token_terms(lp, part(tok["old"]), part(tok["ref"]), tok["adv"][s:e], config,
                                             part(tok["seq"]), is_weight)
        chunk_loss = (per_tok * tok["w"][s:e]).sum()
        (g_lp,) = torch.autograd.grad(chunk_loss, lp)
    return chunk_loss.detach(), g_lp, ratio, kl


class _FusedLinearGRPOLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, ids, mask, adv, old_logp, ref_logp, rollout_logp, config, chunk, backend,
                with_entropy, accumulate):
        b, l, hdim = hidden.shape
        t = b * l
        h = hidden.reshape(t, hdim)
        flat_ids = ids.reshape(t)
        tok = _token_inputs(h, weight, bias, ids, mask, adv, old_logp, ref_logp, rollout_logp, config, backend, chunk)
        fwd, _, bwd_inplace = _ops(backend)
        add_dw = ACCUMULATE[accumulate_mode(accumulate, weight.device, weight.dtype)]
        grad_h = torch.empty_like(h, memory_format=torch.contiguous_format)
        # The first chunk's product is written into d W directly (no [V, H] zero-fill first).
        grad_w = (torch.empty if t > 0 else torch.zeros)(weight.shape, dtype=torch.float32, device=weight.device)
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if bias is not None else None
        ratio_all = torch.empty(t, dtype=torch.float32, device=h.device)
        kl_all = torch.empty(t, dtype=torch.float32, device=h.device) if config.beta > 0 else None
        ent_all = torch.empty(t, dtype=torch.float32, device=h.device) if with_entropy else None
        loss = torch.zeros((), dtype=torch.float32, device=h.device)
        for s in range(0, t, chunk):
            e = min(t, s + chunk)
            logits = _chunk_logits(h[s:e], weight, bias)
            lp, lse, en = fwd(logits, flat_ids[s:e], config.temperature, with_entropy)
            chunk_loss, g_lp, ratio, kl = _chunk_loss(lp, tok, s, e, config)
            g_en = None
            if config.entropy_coef > 0:  # the bonus -coef * sum_t w_t H_t: d/dH_t = -coef * w_t, and the
                g_en = -config.entropy_coef * tok["w"][s:e]  # kernel's backward takes d entropy with d logp
                chunk_loss = chunk_loss + (g_en * en).sum()
            loss += chunk_loss
            ratio_all[s:e] = ratio
            if kl_all is not None:
                kl_all[s:e] = kl
            if ent_all is not None:
                ent_all[s:e] = en
            bwd_inplace(logits, flat_ids[s:e], lse, g_lp, None if g_en is None else en, g_en,
                        config.temperature)  # logits := d logits
            _d_hidden_(logits, weight, grad_h[s:e])  # d hidden = dZ W, into its rows of the buffer
            add_dw(grad_w, logits.t(), h[s:e], s == 0)  # d W (+)= dZ^T h, in float32
            if grad_b is not None:
                grad_b += logits.sum(0, dtype=torch.float32)
            del logits  # free this chunk before the next one is computed (one chunk alive, not two)
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.shapes = (hidden.shape, weight.dtype, None if bias is None else bias.dtype)
        stats = token_stats(ratio_all.view(b, l), None if kl_all is None else kl_all.view(b, l),
                            tok["adv"].view(b, l), mask, config, None if ent_all is None else ent_all.view(b, l))
        stats.update(_rollout_stats(tok, b, l, mask))
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
        return gh, gw, gb, None, None, None, None, None, None, None, None, None, None, None


def fused_linear_grpo_loss(hidden: torch.Tensor, lm_head_weight: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor,
                           advantages: torch.Tensor, *, lm_head_bias: torch.Tensor | None = None,
                           old_logp: torch.Tensor | None = None, ref_logp: torch.Tensor | None = None,
                           rollout_logp: torch.Tensor | None = None, config: LossConfig = LossConfig(),
                           chunk_size: int | str | None = None,
                           return_entropy: bool = False, backend: str = "auto"):
    """grpo_loss from the last hidden states [B, L, H] and the LM head [V, H] (+ bias [V]).

    Gradients flow to hidden, lm_head_weight (accumulated in float32, returned in its dtype) and
    lm_head_bias. chunk_size: tokens per chunk, or the name of a chunk configuration
    (_fused_linear_chunks.CHUNK_CONFIGS: its token budget and d W accumulation); None: the
    device's default (CPU: 12 MB of logits, 64 tokens at V = 49,152 in fp32; GPU: ``weight-x1``,
    a chunk of logits as large as the weight, H tokens, at least 2,048). Smaller chunks hold less
    memory but re-read W and read + write the fp32 d W once per chunk.
    rollout_logp: the rollout engine's log-probs, as in grpo_loss (the correction and its stats).
    Returns (loss, stats) like grpo_loss.
    """
    op = "fused_linear_grpo_loss"
    _check(hidden, lm_head_weight, ids, lm_head_bias, op)
    lm_head_bias = _dense(lm_head_bias)
    check_loss_inputs(tuple(ids.shape), hidden.device, mask, advantages, old_logp, ref_logp, config, op,
                      rollout_logp=rollout_logp)
    _check_chunk_size(chunk_size, op)
    backend = resolve_backend(backend, hidden, op)
    if hidden.dtype == torch.float64:
        return grpo_loss(torch_backend.fused_linear_logits(hidden, lm_head_weight, lm_head_bias), ids, mask, advantages,
                         old_logp=old_logp, ref_logp=ref_logp, rollout_logp=rollout_logp, config=config,
                         return_entropy=return_entropy, backend="torch", validate=False)
    if backend == "torch":  # the same chunks, their log-probs and gradients in torch ops, in float32
        hidden, lm_head_weight = hidden.float(), lm_head_weight.float()
        lm_head_bias = None if lm_head_bias is None else lm_head_bias.float()
    chunk, accumulate = _resolve_chunk(chunk_size, ids.numel(), lm_head_weight, hidden.dtype, hidden.device)
    with_entropy = bool(return_entropy) or config.entropy_coef > 0  # the entropy bonus needs it
    out = _FusedLinearGRPOLoss.apply(hidden, lm_head_weight, lm_head_bias, ids, mask, advantages, old_logp,
                                     ref_logp, rollout_logp, config, chunk, backend, with_entropy, accumulate)
    names = sorted(["clip_frac_low", "clip_frac_high", "ratio_mean", "kl_mean"]
                   + (["entropy_mean"] if with_entropy else [])
                   + (list(ROLLOUT_STATS) if rollout_logp is not None else []))
    return out[0], dict(zip(names, out[1:]))


@torch.no_grad()
def fused_linear_selective_log_softmax(hidden: torch.Tensor, weight: torch.Tensor, ids: torch.Tensor, *,
                                       bias: torch.Tensor | None = None, temperature: float = 1.0,
                                       chunk_size: int | str | None = None, return_entropy: bool = False,
                                       backend: str = "auto"):
    """Per-token log-probs [B, L] (float32) of ids from hidden states and the LM head, chunked, no
    gradient: the reference / old-policy log-probs of a GRPO step without full logits. chunk_size:
    as in fused_linear_grpo_loss."""
    op = "fused_linear_selective_log_softmax"
    _check(hidden, weight, ids, bias, op)
    _check_chunk_size(chunk_size, op)
    bias = _dense(bias)
    if not (isinstance(temperature, (int, float)) and temperature > 0):
        raise ValueError(f"{op}: 'temperature' must be a float > 0, got {temperature!r}")
    backend = resolve_backend(backend, hidden, op)
    b, l, hdim = hidden.shape
    if backend == "torch" or hidden.dtype == torch.float64:
        logits = _chunk_logits(hidden.float(), weight.float(), None if bias is None else bias.float())
        return torch_backend.selective_log_softmax(logits, ids, temperature=temperature, return_entropy=return_entropy)
    chunk, _ = _resolve_chunk(chunk_size, b * l, weight, hidden.dtype, hidden.device)
    logp, ent = _chunked_logp(hidden.reshape(b * l, hdim), weight, bias, ids.reshape(b * l), float(temperature),
                              backend, chunk, with_entropy=return_entropy)
    return (logp.view(b, l), ent.view(b, l)) if return_entropy else logp.view(b, l)
