"""Property-based tests (hypothesis) of every op: the compiled CPU kernels, and the Triton kernels
under Triton's interpreter, against the torch reference, values and gradients.

Hypothesis draws the structure of each case (shapes from length 1 up, odd sizes, ragged groups,
dtype fp32 / bf16, every argument of every op (weights and bias included) contiguous, strided,
transposed or expanded (LAYOUTS), magnitudes from 1e-30 to 3e38, -inf logit entries, all-zero
masks, NaN rewards with nan_policy="zero", every loss type / aggregation / KL option) and a seed
from which the bulk values are generated with torch: data stays small and fast to make, and a
failure shrinks to a small structure.

Bounds: the tolerance table (tests/tolerances.py) plus, where the maths is ill-conditioned, the
forward-error bound of fp32 arithmetic (unit roundoff u = 2**-24): a group's advantage can be no
more accurate than u * (group size) * max|r| / (std + eps) (catastrophic cancellation in r - mean),
a cosine than u * D, a log-probability than u * max|logit / T|. Those are properties of any fp32
implementation, which the kernels are; the float64 reference has no such error.

Budgets: the "ci" profile (the default) is derandomized (the same examples every run) and sized
so the whole file runs in well under a minute on two cores; MEDIX_HYPOTHESIS_PROFILE=thorough
draws ten times as many, randomly. The Triton interpreter runs in a subprocess (TRITON_INTERPRET
must be set before Triton is imported) on smaller budgets.
"""
from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import medix_kernels as mk
from medix_kernels import reference as ref
from medix_kernels.loss_config import AGGREGATIONS, KL_ESTIMATORS, LOSS_TYPES
from tests.tolerances import tol

U32 = 2.0 ** -24  # fp32 unit roundoff
BIG = 1.5e38  # largest reward magnitude drawn: r - mean and RLOO's r - mean(others) stay finite

settings.register_profile("ci", deadline=None, derandomize=True, database=None, print_blob=True,
                          suppress_health_check=list(HealthCheck))
settings.register_profile("thorough", deadline=None, derandomize=False, database=None, print_blob=True,
                          suppress_health_check=list(HealthCheck))
PROFILE = os.environ.get("MEDIX_HYPOTHESIS_PROFILE", "ci")
SCALE = 10 if PROFILE == "thorough" else 1


def run(check, strategy, backend: str, examples: int) -> None:
    """Run ``check(case, backend)`` over ``examples`` cases drawn from ``strategy``."""
    @settings(settings.get_profile(PROFILE), max_examples=examples * SCALE)
    @given(strategy)
    def prop(case):
        check(case, backend)

    prop()


def assert_within(got, want, bound, what):
    """|got - want| <= bound elementwise (inf only where want is the same inf); NaN never."""
    got, want = got.double(), want.double()
    assert not got.isnan().any(), f"{what}: NaN in {got}"
    same_inf = torch.isinf(want) & (got == want)
    err = torch.where(same_inf, torch.zeros_like(got), (got - want).abs())
    bad = ~(err <= bound)
    assert not bad.any(), (f"{what}: {int(bad.sum())} element(s) out of bounds; got {got[bad][:5].tolist()}, "
                           f"want {want[bad][:5].tolist()}, "
                           f"bound {torch.broadcast_to(bound, got.shape)[bad][:5].tolist()}")


def table(family, dtype, want):
    rtol, atol = tol(family, dtype)["rtol"], tol(family, dtype)["atol"]
    return atol + rtol * want.double().abs()


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# Every argument of every op is drawn in one of these memory layouts (issue 30: strided weights and
# biases were read as if contiguous). "expanded" changes the values (the first slice along dim 0
# repeated with stride 0): kernel and reference get the same expanded tensor.
LAYOUTS = ("contiguous", "strided", "transposed", "expanded")


def relayout(t, how: str):
    """``t``'s values (for "expanded": its first slice, broadcast) in another memory layout, by
    differentiable ops, so a gradient reaches the tensor it was made from:
    "strided": every other element of a buffer twice as long in the last dim;
    "transposed": stored with the first and last dims swapped (1-D: a column of an [n, 3] buffer);
    "expanded": ``t[:1].expand_as(t)`` (stride 0 along dim 0)."""
    if t is None or how == "contiguous" or t.dim() == 0:
        return t
    if how == "strided":
        return torch.stack([t, torch.zeros_like(t)], -1).flatten(-2)[..., ::2]
    if how == "transposed":
        if t.dim() == 1:
            return torch.stack([t, torch.zeros_like(t), torch.zeros_like(t)], -1)[:, 0]
        return t.transpose(0, -1).contiguous().transpose(0, -1)
    if how == "expanded":
        return t[:1].expand_as(t)
    raise ValueError(how)


def layouts(draw, *names):
    """One drawn layout per argument name."""
    return {n: draw(st.sampled_from(LAYOUTS)) for n in names}


# --- rewards: group_advantages, group_stats, composite_advantages -----------------------------
MAGNITUDES = [1.0, 1e-30, 1e-6, 3.0, 1e6, 1e19, 1e37, BIG]


@st.composite
def reward_cases(draw, composite=False):
    ragged = draw(st.booleans())
    if ragged:
        sizes = draw(st.lists(st.integers(1, 20), min_size=1, max_size=8))
    else:
        g = draw(st.sampled_from([1, 2, 3, 4, 5, 7, 8, 16, 17, 32, 64]))
        sizes = [g] * draw(st.integers(1, 6))
    return dict(
        sizes=sizes, ragged=ragged, composite=composite, k=draw(st.integers(1, 5)) if composite else 1,
        dtype=draw(st.sampled_from([torch.float32, torch.bfloat16])),
        kind=draw(st.sampled_from(["normal", "ties", "binary"])),  # ties / 0-1 rewards: degenerate groups
        magnitude=draw(st.sampled_from(MAGNITUDES)),
        mode=draw(st.sampled_from(["grpo", "dr_grpo", "rloo"])),
        scale=draw(st.sampled_from(["group", "batch", "none"])),
        singleton=draw(st.sampled_from(["zero", "verl"])), eps=draw(st.sampled_from([1e-6, 1e-4])),
        stride=draw(st.sampled_from([1, 1, 2, 3])), nan=draw(st.booleans()), seed=draw(st.integers(0, 2 ** 31 - 1)),
        layout=layouts(draw, "values", "weights", "group_index"))


def make_rewards(c):
    gen = seeded(c["seed"])
    n, k = sum(c["sizes"]), c["k"]
    if c["kind"] == "normal":
        x = torch.rand(n, k, generator=gen) * 2 - 1
    elif c["kind"] == "ties":
        x = torch.randint(-2, 3, (n, k), generator=gen).float() / 2
    else:
        x = torch.randint(0, 2, (n, k), generator=gen).float()
    x = (x * c["magnitude"]).clamp(-BIG, BIG)
    if c["nan"] and n > 1:  # non-finite rewards, counted as 0 (nan_policy="zero")
        x.view(-1)[torch.randint(0, n * k, (2,), generator=gen)] = torch.tensor([float("nan"), -float("inf")])
    x = x.to(c["dtype"])
    if c["stride"] > 1:  # a strided view: every stride-th row of a larger buffer
        buf = torch.zeros(n * c["stride"], k, dtype=c["dtype"])
        buf[:: c["stride"]] = x
        x = buf[:: c["stride"]]
    lay = c["layout"]
    values = relayout(x if c["composite"] else x[:, 0], lay["values"])
    weights = relayout((torch.rand(k, generator=gen) * 4 - 2) / k, lay["weights"]) if c["composite"] else None
    kw = (dict(group_index=relayout(torch.repeat_interleave(torch.arange(len(c["sizes"])) * 2,
                                                            torch.tensor(c["sizes"])), lay["group_index"]))
          if c["ragged"] else dict(group_size=c["sizes"][0]))
    return values, weights, kw


def effective_case(c):
    """The case with the groups the drawn group_index really has: an expanded index repeats its
    first id, so the batch is one group."""
    if c["ragged"] and c["layout"]["group_index"] == "expanded":
        return {**c, "sizes": [sum(c["sizes"])]}
    return c


def group_bound(c, values, weights, want, mean, std, kw):
    """Per element: the table plus the fp32 forward error of (r - mean) * factor."""
    v = torch.nan_to_num(values.double(), nan=0.0, posinf=0.0, neginf=0.0)
    mag = (v.abs() * weights.double().abs()).sum(1) if weights is not None else v.abs()
    sizes = torch.tensor(c["sizes"])
    seg = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
    m_g = torch.zeros(len(sizes), dtype=torch.float64).scatter_reduce(0, seg, mag, "amax")
    n_g = sizes.double()
    total = ref.composite_rewards(v, weights) if weights is not None else v
    if c["mode"] == "grpo" and c["scale"] == "group":
        denom = std.double() + c["eps"]
    elif c["mode"] == "grpo" and c["scale"] == "batch":
        denom = (total.double().std() if total.numel() > 1 else torch.tensor(0.0, dtype=torch.float64)) + c["eps"]
        denom = denom.expand(len(sizes))
    else:
        denom = torch.ones(len(sizes), dtype=torch.float64)
    slack = (16 * U32 * n_g * m_g / denom)[seg]
    if c["singleton"] == "verl":
        slack = slack + 4 * U32 * mag / (denom[seg] if c["scale"] == "batch" else 1.0)
    return table("advantages", c["dtype"], want) + slack


def check_advantages(c, backend):
    values, weights, kw = make_rewards(c)
    c = effective_case(c)
    opts = dict(mode=c["mode"], scale=c["scale"], singleton=c["singleton"], eps=c["eps"], nan_policy="zero", **kw)
    if weights is None:
        got = mk.group_advantages(values, backend=backend, **opts)
        want = mk.group_advantages(values, backend="torch", **opts)
    else:
        total, got = mk.composite_advantages(values, weights, backend=backend, **opts)
        want_total, want = mk.composite_advantages(values, weights, backend="torch", **opts)
        k_bound = 4 * U32 * c["k"] * (torch.nan_to_num(values.double(), 0, 0, 0).abs() * weights.double().abs()).sum(1)
        assert_within(total, want_total, table("advantages", torch.float32, want_total) + k_bound, "total")
    assert got.dtype == values.dtype and got.shape == (values.shape[0],)
    mean, std, deg = mk.group_stats(values if weights is None else want_total, backend="torch", nan_policy="zero", **kw)
    assert_within(got, want, group_bound(c, values, weights, want, mean, std, kw), "advantages")
    if weights is None:  # group_stats: mean, unbiased std, degenerate mask
        st_ = mk.group_stats(values, backend=backend, nan_policy="zero", **kw)
        sizes = torch.tensor(c["sizes"])
        seg = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
        v = torch.nan_to_num(values.double(), 0.0, 0.0, 0.0).abs()
        m_g = torch.zeros(len(sizes), dtype=torch.float64).scatter_reduce(0, seg, v, "amax")
        slack = 16 * U32 * sizes.double() * m_g
        assert_within(st_.mean, mean, table("advantages", torch.float32, mean) + slack, "mean")
        assert_within(st_.std, std, table("advantages", torch.float32, std) + slack, "std")
        assert st_.degenerate.tolist() == deg.tolist()


# --- cosine_rewards ---------------------------------------------------------------------------
@st.composite
def cosine_cases(draw):
    b = draw(st.integers(1, 6))
    return dict(b=b, d=draw(st.sampled_from([1, 2, 3, 7, 16, 33, 130])),
                dtype=draw(st.sampled_from([torch.float32, torch.bfloat16])),
                magnitudes=draw(st.lists(st.sampled_from([1.0, 1e-20, 1e-8, 1e10, 1e20, 1e30, 3e38]),
                                         min_size=b, max_size=b)),
                zero_row=draw(st.booleans()), wide=draw(st.booleans()), layout=layouts(draw, "pred", "ref"),
                threshold=draw(st.sampled_from([None, 0.0, 0.8])), seed=draw(st.integers(0, 2 ** 31 - 1)))


def check_cosine(c, backend):
    gen = seeded(c["seed"])
    b, d = c["b"], c["d"]
    mag = torch.tensor(c["magnitudes"])[:, None]
    x = (torch.rand(b, d, generator=gen) * 2 - 1) * mag
    y = (0.6 * (x / mag) + 0.4 * (torch.rand(b, d, generator=gen) * 2 - 1)) * mag
    if c["zero_row"]:
        x[0] = 0.0
    x, y = x.to(c["dtype"]), y.to(c["dtype"])
    if c["wide"]:  # rows with a stride larger than D
        x = torch.cat([x, torch.ones(b, 3, dtype=c["dtype"])], 1)[:, :d]
    # strided / transposed: column stride != 1, the wrapper makes rows contiguous
    x, y = relayout(x, c["layout"]["pred"]), relayout(y, c["layout"]["ref"])
    want = ref.cosine_rewards(x, y)
    bound = table("cosine", c["dtype"], want) + 8 * U32 * d
    assert_within(mk.cosine_rewards(x, y, backend=backend), want, bound, "cosine")
    if c["threshold"] is not None:
        got = mk.cosine_rewards(x, y, threshold=c["threshold"], backend=backend)
        clear = (want - c["threshold"]).abs() > bound  # away from the threshold: the same decision
        assert got[clear].tolist() == (want >= c["threshold"]).float()[clear].tolist()


# --- selective_log_softmax --------------------------------------------------------------------
@st.composite
def logprob_cases(draw):
    return dict(shape=draw(st.sampled_from([(1,), (5,), (2, 3), (1, 1), (3, 1), (2, 4)])),
                v=draw(st.sampled_from([1, 2, 3, 31, 64, 257])),
                dtype=draw(st.sampled_from([torch.float32, torch.bfloat16, torch.float16])),
                scale=draw(st.sampled_from([1e-3, 1.0, 8.0, 30.0])), temperature=draw(st.sampled_from([0.5, 1.0, 1.7])),
                minus_inf=draw(st.booleans()),
                layout=draw(st.sampled_from(["contiguous", "wide", "permuted", "strided", "transposed", "expanded"])),
                ids_layout=draw(st.sampled_from(LAYOUTS)),
                entropy=draw(st.booleans()), inplace=draw(st.booleans()), seed=draw(st.integers(0, 2 ** 31 - 1)))


def make_logits(c, gen):
    shape, v = c["shape"], c["v"]
    logits = torch.randn(*shape, v, generator=gen) * c["scale"]
    ids = relayout(torch.randint(0, v, shape, generator=gen), c["ids_layout"])
    if c["minus_inf"] and v > 1:  # masked-out words: -inf except the sampled id and a few others
        drop = torch.rand(*shape, v, generator=gen) < 0.6
        drop.scatter_(-1, ids.unsqueeze(-1), False)
        if c["layout"] == "expanded":  # every row reads the first row's logits: keep every row's id there
            drop[..., ids.flatten()] = False
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.to(c["dtype"]), ids


def layout(logits, how):
    """The same values as a non-contiguous tensor (see relayout for the other layouts)."""
    if how == "wide":  # rows with a stride larger than V
        return torch.cat([logits, torch.zeros(*logits.shape[:-1], 5, dtype=logits.dtype)], -1)[..., : logits.shape[-1]]
    if how == "permuted":  # [B, L, V] stored as [L, B, V]
        return logits.transpose(0, 1).contiguous().transpose(0, 1) if logits.dim() == 3 else logits
    return relayout(logits, how)


def rows_viewable(t):
    try:
        rows = t.view(-1, t.shape[-1])
    except RuntimeError:
        return False
    return t.shape[-1] == 1 or rows.stride(1) == 1


def inplace_refusal(t):
    """The error an in-place backward over ``t`` gets (None when it takes it)."""
    if any(st_ == 0 and n > 1 for st_, n in zip(t.stride(), t.shape)):
        return "do not share memory"
    return None if rows_viewable(t) else "viewable as"


def logprob_slack(logits, temperature, g_lp=None, g_h=None):
    """fp32 forward error of z - lse (and of the entropy's p * (z - lse + H)) per token."""
    z = logits.float() / temperature
    zmax = torch.where(torch.isfinite(z), z.abs(), torch.zeros_like(z)).amax(-1).double()
    base = 8 * U32 * (1 + zmax) * (1 + math.log(max(logits.shape[-1], 2)))
    if g_lp is None:
        return base
    return base * (g_lp.abs().double() + g_h.abs().double() * (1 + 2 * zmax))


def check_logprob(c, backend):
    gen = seeded(c["seed"])
    logits, ids = make_logits(c, gen)
    temp = c["temperature"]
    how = c["layout"]
    xg = logits.clone().requires_grad_(True)
    # in place: a fresh (non-leaf) buffer the backward may overwrite, laid out as drawn
    inp = layout(xg * 1.0 if c["inplace"] else xg, how)
    refusal = inplace_refusal(inp) if c["inplace"] else None
    if refusal:  # the in-place backward walks [T, V] rows that own their memory
        with pytest.raises(ValueError, match=refusal):
            mk.selective_log_softmax(inp, ids, inplace_backward=True, backend=backend)
        how = "contiguous"
        inp = layout(xg * 1.0, how)
    out = mk.selective_log_softmax(inp, ids, temperature=temp, return_entropy=c["entropy"],
                                   inplace_backward=c["inplace"], backend=backend)
    lp, ent = out if c["entropy"] else (out, None)
    xr = logits.float().requires_grad_(True)
    xr_laid = layout(xr, how)
    xr_laid.retain_grad()  # d logits per element as laid out: the bounds are per element, then summed
    want = ref.selective_log_softmax(xr_laid, ids, temperature=temp, return_entropy=c["entropy"])
    lp_r, ent_r = want if c["entropy"] else (want, None)
    logits = layout(logits, how)  # the values the op saw (an expanded layout repeats the first slice)
    slack = logprob_slack(logits, temp)
    assert_within(lp, lp_r, table("logprob", c["dtype"], lp_r) + slack, "logp")
    if ent is not None:
        assert_within(ent, ent_r, table("logprob", c["dtype"], ent_r) + slack, "entropy")
    g1 = torch.randn(ids.shape, generator=gen)
    g2 = torch.randn(ids.shape, generator=gen) if ent is not None else torch.zeros(ids.shape)
    ((lp * g1).sum() + ((ent * g2).sum() if ent is not None else 0)).backward()
    ((lp_r * g1).sum() + ((ent_r * g2).sum() if ent is not None else 0)).backward()
    assert xg.grad.dtype == c["dtype"]
    laid = xr_laid.grad.to(c["dtype"]).float()
    bound = table("logprob_grad", c["dtype"], laid) + logprob_slack(logits, temp, g1, g2)[..., None]
    assert_within(xg.grad.float(), xr.grad.to(c["dtype"]).float(), pulled_back(bound, layout, how), "d logits")


def pulled_back(bound, layout_fn, how):
    """A per-element bound of the gradient of a laid-out tensor carried to the tensor it was made
    from: an expanded layout's copies share one source element, whose bound is their sum."""
    z = torch.zeros(bound.shape, dtype=torch.float64, requires_grad=True)
    (layout_fn(z, how) * bound).sum().backward()
    return z.grad


def sampled_id_cancellation(logits, ids, mask, adv, old, ref_lp, cfg):
    """A bound [B, L, V], nonzero at the sampled ids, for the cancellation in their d logit
    g (1 - p_id) / T (g = d loss / d logp): where p_id rounds to ~1 in fp32, 1 - p_id is a difference
    of nearly equal numbers, off by |g| / T times the rounding of p_id, whose log z_id - lse carries a
    few ulps of |z| and |lse| (z = logits / T). A property of any fp32 implementation: with |z| ~ 14
    and 1 - p_id ~ 1e-6, both fp32 computations of that element can be off by tens of percent."""
    z = logits.detach().double() / cfg.temperature
    lp, ent = ref.selective_log_softmax(z, ids, return_entropy=True)
    lp = lp.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(ref.policy_loss(lp, mask, adv, old, ref_lp, cfg, ent.detach())[0], lp)
    finite_z = torch.where(torch.isfinite(z), z, torch.zeros_like(z))
    scale = finite_z.abs().amax(-1) + torch.logsumexp(z, -1).abs() + 1.0
    cancel = 4 * U32 * g.abs() / cfg.temperature * scale
    return torch.zeros_like(z).scatter_(-1, ids.long().unsqueeze(-1), cancel.unsqueeze(-1))


# --- grpo_loss and fused_linear_grpo_loss -----------------------------------------------------
@st.composite
def loss_cases(draw):
    lt = draw(st.sampled_from(LOSS_TYPES))
    return dict(
        b=draw(st.integers(1, 4)), l=draw(st.integers(1, 6)), v=draw(st.sampled_from([2, 5, 33, 64])),
        h=draw(st.sampled_from([1, 4, 9])), chunk=draw(st.sampled_from([1, 2, 5, None])), bias=draw(st.booleans()),
        dtype=draw(st.sampled_from([torch.float32, torch.bfloat16])),
        config=mk.LossConfig(loss_type=lt, aggregation=None if lt == "dr_grpo" else draw(st.sampled_from(AGGREGATIONS)),
                             kl=draw(st.sampled_from(KL_ESTIMATORS)), beta=draw(st.sampled_from([0.0, 0.05])),
                             clip_low=draw(st.sampled_from([0.0, 3e-4, 0.2])),
                             clip_high=draw(st.sampled_from([4e-4, 0.28])),
                             dual_clip=draw(st.sampled_from([None, 3.0])),
                             temperature=draw(st.sampled_from([0.7, 1.0])),
                             max_len=draw(st.sampled_from([None, 8]))),
        mask=draw(st.sampled_from(["random", "all_zero", "empty_row", "all_one"])),
        per_token_adv=draw(st.booleans()), adv_scale=draw(st.sampled_from([0.0, 1.0, 1e3])),
        old=draw(st.sampled_from(["none", "near", "far"])), minus_inf=draw(st.booleans()),
        inplace=draw(st.booleans()), entropy=draw(st.booleans()), seed=draw(st.integers(0, 2 ** 31 - 1)),
        layout=layouts(draw, "logits", "hidden", "weight", "bias", "ids", "mask", "advantages", "old_logp",
                       "ref_logp"))


def loss_inputs(c, gen, logp):
    b, l = c["b"], c["l"]
    mask = {"random": torch.rand(b, l, generator=gen) > 0.3, "all_zero": torch.zeros(b, l, dtype=torch.bool),
            "all_one": torch.ones(b, l, dtype=torch.bool)}.get(c["mask"])
    if mask is None:
        mask = torch.ones(b, l, dtype=torch.bool)
        mask[0] = False
    adv = torch.randn((b, l) if c["per_token_adv"] else (b,), generator=gen) * c["adv_scale"]
    offset = {"none": None, "near": 0.3, "far": 30.0}[c["old"]]
    old = None if offset is None else logp + offset * torch.randn(b, l, generator=gen)
    ref_lp = logp + 0.5 * torch.randn(b, l, generator=gen)
    lay = c["layout"]
    return (relayout(mask, lay["mask"]), relayout(adv, lay["advantages"]), relayout(old, lay["old_logp"]),
            relayout(ref_lp, lay["ref_logp"]))


def check_loss(c, backend):
    gen = seeded(c["seed"])
    b, l, v = c["b"], c["l"], c["v"]
    logits = torch.randn(b, l, v, generator=gen) * 3
    ids = torch.randint(0, v, (b, l), generator=gen)
    if c["minus_inf"] and v > 2:
        logits[..., 0] = float("-inf")
        ids = ids.clamp_min(1)
    ids = relayout(ids, c["layout"]["ids"])
    logits = logits.to(c["dtype"])
    cfg = c["config"]
    x = logits.clone().requires_grad_(True)
    how = c["layout"]["logits"]
    inp = relayout(x * 1.0 if c["inplace"] else x, how)
    refusal = inplace_refusal(inp) if c["inplace"] else None
    if refusal:  # the in-place backward writes over [T, V] rows that own their memory
        with pytest.raises(ValueError, match=refusal):
            mk.grpo_loss(inp, ids, torch.ones(b, l), torch.zeros(b), inplace_backward=True, backend=backend)
        how = "contiguous"
        inp = x * 1.0
    logp = ref.selective_log_softmax(relayout(logits, how).float(), ids, temperature=cfg.temperature)
    mask, adv, old, ref_lp = loss_inputs(c, gen, logp)
    loss, stats = mk.grpo_loss(inp, ids, mask, adv, old_logp=old, ref_logp=ref_lp,
                               config=cfg, inplace_backward=c["inplace"], return_entropy=c["entropy"], backend=backend)
    xr = logits.float().requires_grad_(True)
    xr_laid = relayout(xr, how)
    xr_laid.retain_grad()
    want, want_stats = ref.grpo_loss(xr_laid, ids, mask, adv, old_logp=old, ref_logp=ref_lp, config=cfg,
                                     return_entropy=c["entropy"])
    scale = 1 + c["adv_scale"]
    assert_within(loss, want, table("loss", c["dtype"], want) * scale, "loss")
    for k in want_stats:
        assert_within(stats[k], want_stats[k], table("loss", c["dtype"], want_stats[k]), k)
    loss.backward()
    want.backward()
    laid = xr_laid.grad.to(c["dtype"]).float()
    bound = table("logprob_grad", c["dtype"], laid) * scale + sampled_id_cancellation(xr_laid, ids, mask, adv, old,
                                                                                     ref_lp, cfg)
    bound = pulled_back(bound, relayout, how)
    assert_within(x.grad.float(), xr.grad.to(c["dtype"]).float(), bound, "d logits")
    if c["mask"] == "all_zero":
        assert loss.item() == 0.0 and (x.grad == 0).all()


def check_fused_linear(c, backend):
    gen = seeded(c["seed"])
    b, l, v, h = c["b"], c["l"], c["v"], c["h"]
    hidden = torch.randn(b, l, h, generator=gen).to(c["dtype"])
    weight = (torch.randn(v, h, generator=gen) * 0.5).to(c["dtype"])
    bias = (torch.randn(v, generator=gen) * 0.1).to(c["dtype"]) if c["bias"] else None
    ids = relayout(torch.randint(0, v, (b, l), generator=gen), c["layout"]["ids"])
    cfg = c["config"]
    lay = [c["layout"][k] for k in ("hidden", "weight", "bias")]
    laid = [relayout(t, how) for t, how in zip((hidden, weight, bias), lay)]
    logits = laid[0].float() @ laid[1].float().t() + (laid[2].float() if bias is not None else 0.0)
    logp = ref.selective_log_softmax(logits, ids, temperature=cfg.temperature)
    mask, adv, old, ref_lp = loss_inputs(c, gen, logp)
    leaves = [t.clone().requires_grad_(True) if t is not None else None for t in (hidden, weight, bias)]
    args = [relayout(t, how) for t, how in zip(leaves, lay)]
    loss, _ = mk.fused_linear_grpo_loss(args[0], args[1], ids, mask, adv, lm_head_bias=args[2], old_logp=old,
                                        ref_logp=ref_lp, config=cfg, chunk_size=c["chunk"], backend=backend)
    refs = [t.float().clone().requires_grad_(True) if t is not None else None for t in (hidden, weight, bias)]
    ref_laid = [relayout(t, how) for t, how in zip(refs, lay)]
    for t in ref_laid:
        if t is not None:
            t.retain_grad()
    if c["dtype"] == torch.float32:
        want, _ = ref.fused_linear_grpo_loss(ref_laid[0], ref_laid[1], ids, mask, adv, bias=ref_laid[2], old_logp=old,
                                             ref_logp=ref_lp, config=cfg)
    else:
        # The fused path's matmuls run in the input dtype: its logits are rounded to bf16. With clip
        # ranges as small as 3e-4 that rounding (~0.4%) can move a ratio across a clip boundary,
        # which switches the gradient off: the oracle rounds its logits the same way.
        z = ref_laid[0] @ ref_laid[1].t() + (ref_laid[2] if ref_laid[2] is not None else 0.0)
        want, _ = ref.grpo_loss(z.to(c["dtype"]), ids, mask, adv, old_logp=old, ref_logp=ref_lp, config=cfg)
    scale = 1 + c["adv_scale"]
    assert_within(loss, want, table("fused_linear", c["dtype"], want) * scale, "loss")
    loss.backward()
    want.backward()
    for name, got_t, want_t, laid_t, how in zip(("d hidden", "d weight", "d bias"), leaves, refs, ref_laid, lay):
        if got_t is None:
            continue
        assert got_t.grad.dtype == c["dtype"]
        per_element = table("fused_linear", c["dtype"], laid_t.grad.to(c["dtype"]).float()) * scale
        assert_within(got_t.grad.float(), want_t.grad.to(c["dtype"]).float(), pulled_back(per_element, relayout, how),
                      name)


def check_fused_logprob(c, backend):
    """fused_linear_selective_log_softmax (no gradient) against log-softmax of the reference logits."""
    gen = seeded(c["seed"])
    b, l, v, h = c["b"], c["l"], c["v"], c["h"]
    lay = c["layout"]
    hidden = relayout(torch.randn(b, l, h, generator=gen).to(c["dtype"]), lay["hidden"])
    weight = relayout((torch.randn(v, h, generator=gen) * 0.5).to(c["dtype"]), lay["weight"])
    bias = relayout((torch.randn(v, generator=gen) * 0.1).to(c["dtype"]), lay["bias"]) if c["bias"] else None
    ids = relayout(torch.randint(0, v, (b, l), generator=gen), lay["ids"])
    temp = c["config"].temperature
    got, ent = mk.fused_linear_selective_log_softmax(hidden, weight, ids, bias=bias, temperature=temp,
                                                     chunk_size=c["chunk"], return_entropy=True, backend=backend)
    z = hidden.float() @ weight.float().t() + (bias.float() if bias is not None else 0.0)
    if c["dtype"] != torch.float32:  # the fused matmuls run in the input dtype (see check_fused_linear)
        z = z.to(c["dtype"]).float()
    want, want_ent = ref.selective_log_softmax(z, ids, temperature=temp, return_entropy=True)
    assert_within(got, want, table("fused_linear", c["dtype"], want), "logp")
    assert_within(ent, want_ent, table("fused_linear", c["dtype"], want_ent), "entropy")


# --- the properties, on the compiled CPU backend --------------------------------------------
def test_group_advantages_and_stats_cpu():
    run(check_advantages, reward_cases(), "cpu", 400)


def test_composite_advantages_cpu():
    run(check_advantages, reward_cases(composite=True), "cpu", 150)


def test_cosine_rewards_cpu():
    run(check_cosine, cosine_cases(), "cpu", 300)


def test_selective_log_softmax_cpu():
    run(check_logprob, logprob_cases(), "cpu", 300)


def test_grpo_loss_cpu():
    run(check_loss, loss_cases(), "cpu", 400)


def test_fused_linear_grpo_loss_cpu():
    run(check_fused_linear, loss_cases(), "cpu", 150)


def test_fused_linear_selective_log_softmax_cpu():
    run(check_fused_logprob, loss_cases(), "cpu", 150)


# --- and on Triton, under the interpreter (in a subprocess) ----------------------------------
TRITON_BUDGET = {"advantages": 100, "composite": 30, "cosine": 80, "logprob": 40, "loss": 50, "fused_linear": 20,
                 "fused_logprob": 20}


def triton_main() -> None:
    assert "triton" in mk.backends(), mk.backends()
    run(check_advantages, reward_cases(), "triton", TRITON_BUDGET["advantages"])
    run(check_advantages, reward_cases(composite=True), "triton", TRITON_BUDGET["composite"])
    run(check_cosine, cosine_cases(), "triton", TRITON_BUDGET["cosine"])
    run(check_logprob, logprob_cases(), "triton", TRITON_BUDGET["logprob"])
    run(check_loss, loss_cases(), "triton", TRITON_BUDGET["loss"])
    run(check_fused_linear, loss_cases(), "triton", TRITON_BUDGET["fused_linear"])
    run(check_fused_logprob, loss_cases(), "triton", TRITON_BUDGET["fused_logprob"])
    print("TRITON-PROPERTIES-OK")


def test_triton_kernels_under_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = "from tests.test_kernel_properties import triton_main; triton_main()"
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-8000:]
    assert "TRITON-PROPERTIES-OK" in proc.stdout
