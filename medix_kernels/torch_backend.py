"""The "torch" backend: plain PyTorch for every op, what runs where the compiled extension is missing
(a platform without a compiler) or when ``backend="torch"`` is asked for.

``medix_kernels.reference`` reads like the maths and is the tests' oracle; this module computes
the same results with fewer passes over the data and no host work beyond the checks:

- group statistics in float64, as the reference. A [G, g] view of fixed groups gives the sums
  with no repeat_interleave and no index tensors; ragged groups use one segment id per reward.
  Equal float32 rewards sum exactly in float64 (g * r needs at most 24 + 31 bits), so their mean
  is r and their squared deviations are 0: "degenerate" is ss == 0, no min / max pass. float64
  also keeps rewards near 3e38 finite, so there is no second path for them. Fixed groups of CPU
  tensors up to HOST_MAX_REWARDS go through numpy (same formulas, ~1 us per op instead of several).
- log-probs by one log_softmax and a gather, without dividing by a temperature of 1; without a
  gradient, CPU logits in 4 MiB chunks into one reused buffer, and the entropy without a second
  [T, V] temporary.
- cosine similarity in float32 by three row-wise dot products (small CPU batches in numpy, on
  this thread); sums that overflow (entries above ~1e19) or NaN / inf entries make the call use
  the float64 reference instead (one check per call).
- the fused-linear loss's chunk ops (logprob_fwd, logprob_bwd_): what the compiled kernels do on
  each chunk of logits, so the torch backend runs the same chunked pass and never holds [T, V].

tests/test_torch_backend.py checks every function here against the reference.
"""
from __future__ import annotations

import math

import torch

try:
    import numpy as _np
except ImportError:  # numpy is optional here: fixed groups on the CPU then use the torch formulation
    _np = None

from . import reference

#: Fixed groups of up to HOST_MAX_REWARDS rewards in CPU tensors go through numpy (the same float64
#: formulas). At the trainer's sizes (a few thousand rewards) a torch op costs a few microseconds of
#: dispatch and allocation, a numpy one about one, and the advantages are about a dozen such ops;
#: larger batches stay with torch, whose ops use every thread. The tests run both formulations.
FIXED_GROUPS_ON_HOST = _np is not None
HOST_MAX_REWARDS = 16384
#: Cosine rewards of CPU batches of up to COSINE_HOST_MAX_ELEMENTS entries per side go through numpy
#: (see cosine_rewards; 2^17: 256 x 384 MiniLM embeddings, or 128 x 1024).
COSINE_ON_HOST = _np is not None
COSINE_HOST_MAX_ELEMENTS = 1 << 17

# ----------------------------------------------------------------------------- group advantages

def _fixed_groups(r: torch.Tensor, g: int):
    """(mean, std, centred, count, expand) of fixed groups of g rewards (float64 r of length G * g).
    The statistics are [G, 1] columns, so they broadcast over the [G, g] rewards with no index op."""
    x = r.view(-1, g)
    mean = x.sum(1, keepdim=True).div_(g)  # sum, then divide: equal rewards give their value exactly
    centred = x - mean
    std = torch.linalg.vector_norm(centred, dim=1, keepdim=True)
    if g > 2:  # unbiased: the norm / sqrt(g - 1) (1 for g = 2, and a group of one has std 0)
        std.mul_(1.0 / (g - 1) ** 0.5)
    return mean, std, centred, float(g), lambda per_group: per_group


def _ragged_groups(r: torch.Tensor, counts: torch.Tensor):
    """(mean, std, centred, count, expand) of contiguous groups of counts [G] rewards."""
    seg = torch.repeat_interleave(torch.arange(counts.numel(), device=r.device), counts, output_size=r.numel())
    count = counts.double()
    mean = torch.zeros_like(count).index_add_(0, seg, r) / count.clamp_min(1.0)
    centred = r - mean[seg]
    ss = torch.zeros_like(count).index_add_(0, seg, centred * centred)
    return mean, (ss / (count - 1.0).clamp_min(1.0)).sqrt_(), centred, count, lambda per_group: per_group[seg]


def _verl_singleton(r, mode, scale, eps, batch_std):
    """verl's advantage of a group of one (mean 0, std 1), for float64 rewards r (a tensor or a numpy array)."""
    if mode == "grpo" and scale == "group":
        return r / (1.0 + eps)
    if mode == "grpo" and scale == "batch":
        return r / (batch_std + eps)
    return r


def group_advantages(values, weights, group_size, offsets, *, mode, scale, eps, singleton, nan_to_zero,
                     with_degenerate=True):
    """(adv, total, mean, std, degenerate) as torch.ops.medix.group_advantages returns them, except
    that mean and std stay float64 (group_stats rounds them; the other callers do not read them) and
    degenerate is None unless ``with_degenerate`` (only group_stats reads it: one op less per call).

    values: [N] rewards or [N, K] components (with weights [K]); group_size, or offsets [G + 1]
    (int64, checked by the caller) for ragged groups."""
    if nan_to_zero:
        values = torch.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    if offsets is None and FIXED_GROUPS_ON_HOST and values.device.type == "cpu" and len(values) <= HOST_MAX_REWARDS:
        return _fixed_group_advantages_host(values, weights, group_size, mode=mode, scale=scale, eps=eps,
                                            singleton=singleton, with_degenerate=with_degenerate)
    total = torch.mv(values.double(), weights.double()).float() if values.dim() == 2 else values.float()
    r = total.double()
    if offsets is None:
        mean, std, centred, count, expand = _fixed_groups(r, group_size)
    else:
        mean, std, centred, count, expand = _ragged_groups(r, offsets.to(r.device).diff())
    degenerate = None
    if with_degenerate or eps == 0:  # every member equal (a group of one included; not an empty group)
        degenerate = std == 0 if offsets is None else (std == 0) & (count > 0)
    needs_batch_std = scale == "batch" or singleton == "verl"
    batch_std = (r.std() if r.numel() > 1 else r.new_zeros(())) if needs_batch_std else None
    if mode == "rloo":
        factor = count / ((count - 1.0).clamp_min(1.0) if offsets is not None else max(count - 1.0, 1.0))
        adv = centred.mul_(expand(factor) if isinstance(factor, torch.Tensor) else factor)
    elif mode == "dr_grpo" or scale == "none":
        adv = centred
    elif scale == "batch":
        adv = centred.div_(batch_std + eps)
    else:
        adv = centred.div_(expand(std + eps))
    if eps == 0:  # a degenerate group's centred rewards are exactly 0: only an infinite factor matters
        adv.masked_fill_(expand(degenerate), 0.0)
    single = expand(count == 1.0) if offsets is not None else group_size == 1
    if singleton == "verl" and mode != "rloo" and single is not False:
        verl = _verl_singleton(r, mode, scale, eps, batch_std)
        adv = verl.view_as(adv) if single is True else torch.where(single, verl, adv)
    if degenerate is not None:
        degenerate = degenerate.view(-1)
    return adv.reshape(-1).to(values.dtype), total, mean.view(-1), std.view(-1), degenerate


def _fixed_group_advantages_host(values, weights, g, *, mode, scale, eps, singleton, with_degenerate):
    """group_advantages for fixed groups of CPU tensors, in numpy: the formulas of the torch
    formulation above, float64 statistics of the float32 totals, outputs shared with numpy (no copy).
    The sums of squares are dot products with a vector of ones (numpy's sum along a short axis costs
    ~4x more); the means are not: BLAS may add 3e38 - 3e38 + 1 + 2 in an order that gives 0, not 3."""
    v = (values if values.dtype in (torch.float32, torch.float64) else values.float()).numpy()
    with _np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # inf / NaN as torch gives them
        if v.ndim == 2:
            total = _np.dot(v.astype(_np.float64), weights.numpy().astype(_np.float64)).astype(_np.float32)
        else:
            total = v.astype(_np.float32, copy=False)
        r = total.astype(_np.float64)
        x = r.reshape(-1, g)
        mean = x.sum(1, keepdims=True) / g  # sum, then divide: equal rewards give their value exactly
        centred = x - mean
        std = _np.sqrt(_np.dot(centred * centred, _np.ones(g)))[:, None]
        if g > 2:
            std *= 1.0 / math.sqrt(g - 1)
        degenerate = std == 0 if with_degenerate or eps == 0 else None
        batch_std = (r.std(ddof=1) if r.size > 1 else 0.0) if scale == "batch" or singleton == "verl" else None
        if mode == "rloo":
            adv = centred * (g / max(g - 1, 1))
        elif mode == "dr_grpo" or scale == "none":
            adv = centred
        elif scale == "batch":
            adv = centred / (batch_std + eps)
        else:
            adv = centred / (std + eps)
        if eps == 0:  # a degenerate group's centred rewards are exactly 0: only an infinite factor matters
            adv = _np.where(degenerate, 0.0, adv)
        if singleton == "verl" and mode != "rloo" and g == 1:
            adv = _verl_singleton(r, mode, scale, eps, batch_std)
        adv = adv.reshape(-1)
        adv = adv if values.dtype == torch.float64 else adv.astype(_np.float32)
    adv = torch.from_numpy(adv)
    if adv.dtype != values.dtype:  # bfloat16 / float16 rewards
        adv = adv.to(values.dtype)
    return (adv, torch.from_numpy(total), torch.from_numpy(mean.reshape(-1)), torch.from_numpy(std.reshape(-1)),
            None if degenerate is None else torch.from_numpy(degenerate.reshape(-1)))


# ----------------------------------------------------------------------------- cosine rewards

def cosine_rewards(pred, ref, *, threshold=None, eps=1e-8):
    """Row-wise cosine similarity (each norm clamped to eps), or 1.0 / 0.0 against a threshold.

    Three row-wise dot products (x.y, x.x, y.y), then B values. Small CPU batches (up to
    COSINE_HOST_MAX_ELEMENTS entries per side) go through numpy, on this thread: a torch reduction
    of 100K entries wakes the OpenMP team, which costs more than the work where threads wait
    passively (the trainer's setting). float32 sums that overflow (entries above ~1e19) and NaN /
    inf entries make a norm or a dot product non-finite: one check of their sums, then the float64
    reference (a float32 sum of huge finite values can send it there too: slower, same result)."""
    x = pred if pred.dtype in (torch.float32, torch.float64) else pred.float()
    y = ref if ref.dtype in (torch.float32, torch.float64) else ref.float()
    if x.dtype != y.dtype:
        x, y = x.double(), y.double()
    if COSINE_ON_HOST and x.device.type == "cpu" and x.numel() <= COSINE_HOST_MAX_ELEMENTS:
        a, b = x.numpy(), y.numpy()
        with _np.errstate(over="ignore", invalid="ignore"):  # overflow and NaN: the check below
            dot = _rowwise_dot(a, b)
            denom = _np.maximum(_np.sqrt(_rowwise_dot(a, a)), eps) * _np.maximum(_np.sqrt(_rowwise_dot(b, b)), eps)
            finite = x.dtype == torch.float64 or math.isfinite(float(dot.sum()) + float(denom.sum()))
    else:
        dot = torch.linalg.vecdot(x, y)
        norm_x, norm_y = (torch.linalg.vector_norm(t, dim=1).clamp_min_(eps) for t in (x, y))
        denom = norm_x.mul_(norm_y)
        finite = x.dtype == torch.float64 or math.isfinite(float(dot.sum()) + float(denom.sum()))
    if not finite:
        return reference.cosine_rewards(pred, ref, threshold=threshold, eps=eps)
    cos = dot / denom
    if threshold is not None:
        cos = cos >= threshold
    if isinstance(cos, torch.Tensor):
        return cos.float()
    return torch.from_numpy(cos.astype(_np.float32, copy=False))


def _rowwise_dot(a, b):
    """[B] dot products of the rows of two [B, D] arrays: numpy 2's vecdot, else B products of
    [1, D] by [D, 1] (both about half the time of einsum's)."""
    if hasattr(_np, "vecdot"):
        return _np.vecdot(a, b)
    return (a[:, None, :] @ b[:, :, None]).reshape(-1)


# ----------------------------------------------------------------------------- log-probs

#: Without a gradient, the log-probs of CPU logits are computed LOGPROB_CHUNK_BYTES of them at a time
#: into one reused buffer: a [T, V] float32 result is hundreds of MB of fresh pages, which the
#: kernel has to fault in and the memory has to take (3.3x-4x faster at T = 1,024, V = 32,768 on a
#: 2-core AVX-512 EPYC). The values are the same: every row's log_softmax is computed on its own.
LOGPROB_CHUNK_BYTES = 4 << 20


def selective_log_softmax(logits, ids, *, temperature=1.0, return_entropy=False):
    """log softmax(logits / temperature) at ids, float32 (float64 for float64 logits), and the
    entropy (0 log 0 = 0 for -inf logits, in the value and the gradient)."""
    if logits.device.type == "cpu" and not (logits.requires_grad and torch.is_grad_enabled()):
        rows = _as_rows(logits)
        if rows is not None:
            out = _selective_log_softmax_rows(rows, ids.reshape(-1, 1), temperature, return_entropy)
            return tuple(t.view(logits.shape[:-1]) for t in out) if return_entropy else out[0].view(logits.shape[:-1])
    x = logits if logits.dtype in (torch.float32, torch.float64) else logits.float()
    if temperature != 1.0:
        x = x / temperature
    logprobs = torch.log_softmax(x, dim=-1)
    logp = logprobs.gather(-1, ids.long().unsqueeze(-1)).squeeze(-1)
    if not return_entropy:
        return logp
    # 0 log 0 = 0: log-probs clamped to -1e4 (a probability is 0 below ~-745 in float64), so a
    # -inf logit adds 0 * -1e4 to the value and 0 to the gradient (not 0 * -inf = NaN).
    probs = logprobs.exp()
    if logprobs.requires_grad:
        return logp, -(probs * logprobs.clamp_min(-1e4)).sum(-1)
    # No gradient: the log-probs are ours to clamp in place, and a batched dot product sums
    # p * log p without a third [T, V] tensor.
    logprobs.clamp_(min=-1e4)
    v = logprobs.shape[-1]
    entropy = torch.bmm(probs.reshape(-1, 1, v), logprobs.reshape(-1, v, 1)).reshape(logp.shape)
    return logp, entropy.neg_()


def _as_rows(logits):
    """An [n, V] view of the logits, or None where their strides allow none (then no chunking)."""
    try:
        return logits.view(-1, logits.shape[-1])
    except RuntimeError:
        return None


def _selective_log_softmax_rows(rows, ids, temperature, return_entropy):
    """(logp [n], entropy [n] or None) of [n, V] logits and [n, 1] ids, chunk by chunk (no gradient)."""
    n, v = rows.shape
    dtype = torch.float64 if rows.dtype == torch.float64 else torch.float32
    chunk = max(1, LOGPROB_CHUNK_BYTES // max(1, v * dtype.itemsize))
    logp = torch.empty(n, dtype=dtype)
    entropy = torch.empty(n, dtype=dtype) if return_entropy else None
    buf = torch.empty(min(chunk, n), v, dtype=dtype)
    probs = torch.empty_like(buf) if return_entropy else None
    ids = ids.long()
    for start in range(0, n, chunk):
        x = rows[start:start + chunk].to(dtype)
        if temperature != 1.0:
            x = x / temperature
        m = x.shape[0]
        logprobs = torch.log_softmax(x, -1, out=buf[:m])
        torch.gather(logprobs, 1, ids[start:start + m], out=logp[start:start + m].unsqueeze(1))
        if return_entropy:  # vecdot's [m, V] product is chunk-sized: 3x faster than a batched dot here
            p = torch.exp(logprobs, out=probs[:m])
            torch.linalg.vecdot(p, logprobs.clamp_(min=-1e4), out=entropy[start:start + m]).neg_()
    return logp, entropy


# ----------------------------------------------------------------------------- a chunk of the fused-linear loss

def logprob_fwd(logits, ids, temperature, with_entropy):
    """(logp [n], lse [n], entropy [n], empty without with_entropy) of one chunk's [n, V] logits, float32
    and without a graph: the torch counterpart of medix::logprob_fwd, which the fused-linear loss calls
    on each chunk. lse is the log-sum-exp of logits / temperature, which logprob_bwd_ takes back."""
    z = logits.float()
    if temperature != 1.0:
        z = z / temperature
    lse = torch.logsumexp(z, -1)
    logp = z.gather(1, ids.long().unsqueeze(1)).squeeze(1).sub_(lse)
    if not with_entropy:
        return logp, lse, logp.new_empty(0)
    logprobs = (z - lse.unsqueeze(1)).clamp_min_(-1e4)  # 0 log 0 = 0, as in selective_log_softmax
    return logp, lse, torch.linalg.vecdot(logprobs.exp(), logprobs).neg_()


def logprob_bwd_(logits, ids, lse, grad_logp, entropy, grad_entropy, temperature):
    """logits := d loss / d logits of one chunk, in place, from d loss / d logp (and d loss / d entropy):
    with z = logits / T, p = softmax(z) and log p clamped at -1e4,
        d logits_j = (g_logp [j = id] - p_j (g_logp + g_entropy (log p_j + entropy))) / T.
    The torch counterpart of medix::logprob_bwd_."""
    z = logits if logits.dtype == torch.float32 else logits.float()
    if temperature != 1.0:
        z.div_(temperature)
    logprobs = z.sub_(lse.unsqueeze(1))
    if grad_entropy is None:
        grad = logprobs.exp_().mul_(grad_logp.neg().unsqueeze(1))
    else:
        probs = logprobs.clamp_(min=-1e4).exp()
        grad = (logprobs.add_(entropy.unsqueeze(1)).mul_(grad_entropy.unsqueeze(1)).add_(grad_logp.unsqueeze(1))
                .mul_(probs).neg_())
    grad.scatter_add_(1, ids.long().unsqueeze(1), grad_logp.unsqueeze(1).to(grad.dtype))
    if temperature != 1.0:
        grad.div_(temperature)
    if grad is not logits:
        logits.copy_(grad)
    return logits


def fused_linear_logits(hidden, weight, bias=None):
    """Full float32 logits h @ W^T (+ b): the fused-linear loss of float64 inputs, on any backend."""
    logits = hidden.float() @ weight.float().t()
    return logits if bias is None else logits + bias.float()
