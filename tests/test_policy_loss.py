"""selective_log_softmax, grpo_loss and fused_linear_grpo_loss: the compiled CPU backend against
the reference and against TRL's and verl's formulas written out independently here."""
import math

import pytest
import torch

import medix_kernels as mk
from medix_kernels import reference as ref
from tests.tolerances import tol

LOSS_TYPES = ["grpo", "dapo", "dr_grpo", "gspo", "gspo_token", "cispo"]
AGGREGATIONS = ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"]


def make_batch(b, l, v, dtype=torch.float32, seed=0, empty_row=True):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(b, l, v, generator=gen) * 2).to(dtype)
    ids = torch.randint(0, v, (b, l), generator=gen)
    mask = torch.rand(b, l, generator=gen) > 0.25
    if empty_row and b > 1:
        mask[1] = False  # a sequence with no response token
    adv = torch.randn(b, generator=gen)
    base = ref.selective_log_softmax(logits.float(), ids)
    old = base + 0.3 * torch.randn(b, l, generator=gen)
    ref_lp = base + 0.3 * torch.randn(b, l, generator=gen)
    return logits, ids, mask, adv, old, ref_lp


# --- selective_log_softmax -----------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shape", [(1, 1, 1), (2, 1, 7), (3, 5, 1000), (2, 3, 49153), (4, 2, 152064)])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_selective_log_softmax_values_and_grads(dtype, shape, temperature):
    b, l, v = shape
    logits, ids, *_ = make_batch(b, l, v, dtype, seed=v)
    x = logits.clone().requires_grad_(True)
    logp, ent = mk.selective_log_softmax(x, ids, temperature=temperature, return_entropy=True, backend="cpu")
    # float64 oracle: at V = 152,064 torch's own float32 log_softmax / sum is off by ~1e-4 in the
    # entropy on some CPUs (AVX2 reductions), the kernel by ~2e-6
    xr = logits.clone().double().requires_grad_(True)
    logp_r, ent_r = ref.selective_log_softmax(xr, ids, temperature=temperature, return_entropy=True)
    torch.testing.assert_close(logp, logp_r.float(), **tol("logprob", dtype))
    torch.testing.assert_close(ent, ent_r.float(), **tol("logprob", dtype))
    g1, g2 = torch.randn(b, l), torch.randn(b, l)
    (logp * g1 + ent * g2).sum().backward()
    (logp_r * g1 + ent_r * g2).sum().backward()
    assert x.grad.dtype == dtype
    torch.testing.assert_close(x.grad.float(), xr.grad.to(dtype).float(), **tol("logprob_grad", dtype))


def test_inplace_backward_writes_into_logits_and_matches():
    logits, ids, *_ = make_batch(3, 4, 999)
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    g = torch.randn(3, 4)
    (mk.selective_log_softmax(a * 1.0, ids, backend="cpu") * g).sum().backward()  # a * 1.0: a fresh buffer
    y = b * 1.0
    y.retain_grad()
    (mk.selective_log_softmax(y, ids, inplace_backward=True, backend="cpu") * g).sum().backward()
    torch.testing.assert_close(b.grad, a.grad)
    assert y.grad is not None


def test_flat_tokens_and_int32_ids():
    logits, ids, *_ = make_batch(1, 6, 300)
    got = mk.selective_log_softmax(logits[0], ids[0].int(), backend="cpu")
    torch.testing.assert_close(got, ref.selective_log_softmax(logits[0], ids[0]), **tol("logprob", torch.float32))


def test_minus_inf_logits_stay_finite():
    logits, ids, *_ = make_batch(2, 2, 50)
    logits[..., 10:] = float("-inf")
    ids = ids % 10
    logp, ent = mk.selective_log_softmax(logits, ids, return_entropy=True, backend="cpu")
    assert torch.isfinite(logp).all() and torch.isfinite(ent).all()
    torch.testing.assert_close(logp, ref.selective_log_softmax(logits[..., :10], ids), **tol("logprob", torch.float32))


def test_reference_entropy_of_rows_with_minus_inf_logits():
    """Rows that are -inf except for some entries (masked-out words): the reference used to give
    NaN entropy (0 * -inf); 0 log 0 = 0 now, in the value and the gradient, as the cpu kernel."""
    logits, ids, *_ = make_batch(2, 3, 40)
    logits[0, :, 5:] = float("-inf")
    logits[1, 1, ::2] = float("-inf")
    ids[0] %= 5
    ids[1, 1] = 1
    xr = logits.clone().requires_grad_(True)
    logp_r, ent_r = ref.selective_log_softmax(xr, ids, temperature=0.7, return_entropy=True)
    assert torch.isfinite(logp_r).all() and torch.isfinite(ent_r).all()
    finite = logits[0, 0, :5] / 0.7  # the entropy of the finite entries alone
    p = finite.softmax(-1)
    torch.testing.assert_close(ent_r[0, 0], -(p * p.log()).sum())
    x = logits.clone().requires_grad_(True)
    logp, ent = mk.selective_log_softmax(x, ids, temperature=0.7, return_entropy=True, backend="cpu")
    torch.testing.assert_close(ent, ent_r, **tol("logprob", torch.float32))
    g = torch.randn(2, 3)
    (logp_r + g * ent_r).sum().backward()
    (logp + g * ent).sum().backward()
    assert torch.isfinite(xr.grad).all()
    torch.testing.assert_close(x.grad, xr.grad, **tol("logprob_grad", torch.float32))


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("fused", [False, True])
def test_bad_mask_values_and_non_finite_advantages_are_refused(backend, fused):
    logits, ids, mask, adv, old, _ = make_batch(2, 3, 50)
    hidden, weight = torch.randn(2, 3, 8), torch.randn(50, 8)

    def call(mask, adv):
        if fused:
            return mk.fused_linear_grpo_loss(hidden, weight, ids, mask, adv, old_logp=old, backend=backend)
        return mk.grpo_loss(logits, ids, mask, adv, old_logp=old, backend=backend)

    for bad_mask, shown in ((mask.float() * 2, "2.0"), (mask.float().masked_fill(~mask, float("nan")), "nan"),
                            (mask.long() - 1, "-1"), (mask.float() * 0.5, "0.5")):
        with pytest.raises(ValueError, match=rf"'mask' must hold only 0 and 1 \(or be bool\), got {shown}"):
            call(bad_mask, adv)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match=r"'advantages' must be finite, got .* at position \[1\]"):
            call(mask, torch.tensor([0.5, bad]))
        per_token = adv[:, None].expand(2, 3).clone()
        per_token[0, 2] = bad
        with pytest.raises(ValueError, match=r"'advantages' must be finite, got .* at position \[0, 2\]"):
            call(mask, per_token)
    call(mask.float(), adv)  # 0/1 floats and ints are fine
    call(mask.long(), adv)


def test_inplace_backward_refuses_logits_that_share_memory():
    """An expanded (stride-0) view as logits: the in-place backward would write every row's
    gradient into the same memory (wrong gradients on the cpu backend); it is refused, in Python
    and in the C++ op."""
    base = torch.randn(1, 7, requires_grad=True)
    ids = torch.randint(0, 7, (6,))
    for logits in (base.expand(6, 7), base[:, None, :].expand(2, 3, 7)):
        with pytest.raises(ValueError, match="inplace_backward=True needs logits whose elements do not share memory"):
            mk.selective_log_softmax(logits, ids.view(logits.shape[:-1]), inplace_backward=True, backend="cpu")
        with pytest.raises(ValueError, match="do not share memory"):
            mk.grpo_loss(logits.reshape(2, 3, 7), ids.view(2, 3), torch.ones(2, 3), torch.ones(2),
                         inplace_backward=True, backend="cpu")
    x = base.detach().expand(6, 7)
    lp, lse, _ = torch.ops.medix.logprob_fwd(x, ids, 1.0, False)
    with pytest.raises(ValueError, match="'logits' is written in place but its elements share memory"):
        torch.ops.medix.logprob_bwd_(x, ids, lse, torch.ones(6), None, None, 1.0)
    # without in-place, the same view gives the reference gradient
    lp = mk.selective_log_softmax(base.expand(6, 7), ids, backend="cpu")
    (g,) = torch.autograd.grad(lp.sum(), base)
    (want,) = torch.autograd.grad(ref.selective_log_softmax(base.expand(6, 7), ids).sum(), base)
    torch.testing.assert_close(g, want, **tol("logprob_grad", torch.float32))


# --- grpo_loss -------------------------------------------------------------------------------------
# every loss type with every aggregation it accepts (dr_grpo is defined by its own)
VALID_PAIRS = [(lt, agg) for lt in LOSS_TYPES for agg in AGGREGATIONS
               if lt != "dr_grpo" or agg == "seq-mean-token-sum-norm"]


@pytest.mark.parametrize("loss_type,aggregation", VALID_PAIRS)
@pytest.mark.parametrize("kl", ["k1", "k2", "k3"])
def test_grpo_loss_matches_reference(loss_type, aggregation, kl):
    logits, ids, mask, adv, old, ref_lp = make_batch(3, 6, 333, seed=7)
    cfg = mk.LossConfig(loss_type=loss_type, aggregation=aggregation, kl=kl, beta=0.05, clip_low=0.2, clip_high=0.28,
                        dual_clip=3.0 if loss_type == "grpo" else None, temperature=0.9, max_len=8)
    x1 = logits.clone().requires_grad_(True)
    x2 = logits.clone().requires_grad_(True)
    l1, s1 = mk.grpo_loss(x1, ids, mask, adv, old_logp=old, ref_logp=ref_lp, config=cfg, return_entropy=True,
                          backend="cpu")
    l2, s2 = ref.grpo_loss(x2, ids, mask, adv, old_logp=old, ref_logp=ref_lp, config=cfg, return_entropy=True)
    torch.testing.assert_close(l1, l2, **tol("loss", torch.float32))
    for k in s2:
        torch.testing.assert_close(s1[k], s2[k], **tol("loss", torch.float32))
    l1.backward()
    l2.backward()
    torch.testing.assert_close(x1.grad, x2.grad, **tol("logprob_grad", torch.float32))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_grpo_loss_low_precision(dtype):
    logits, ids, mask, adv, old, ref_lp = make_batch(4, 5, 4099, dtype, seed=3)
    cfg = mk.LossConfig.preset("grpo")
    x1 = logits.clone().requires_grad_(True)
    x2 = logits.clone().float().requires_grad_(True)
    l1, _ = mk.grpo_loss(x1, ids, mask, adv, old_logp=old, ref_logp=ref_lp, config=cfg, backend="cpu")
    l2, _ = ref.grpo_loss(x2, ids, mask, adv, old_logp=old, ref_logp=ref_lp, config=cfg)
    torch.testing.assert_close(l1, l2, **tol("loss", dtype))
    l1.backward()
    l2.backward()
    torch.testing.assert_close(x1.grad.float(), x2.grad.to(dtype).float(), **tol("logprob_grad", dtype))


def trl_dapo_loss(logp, old, adv, mask, eps_low=0.2, eps_high=0.28):
    """TRL GRPOTrainer (loss_type 'dapo', beta 0), written from its published formula."""
    coef_1 = torch.exp(logp - old)
    coef_2 = torch.clamp(coef_1, 1 - eps_low, 1 + eps_high)
    per_token_loss = -torch.min(coef_1 * adv.unsqueeze(1), coef_2 * adv.unsqueeze(1))
    return (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)


def verl_vanilla_loss(logp, old, adv, mask, clip=0.2, c=3.0):
    """verl compute_policy_loss (vanilla, dual clip, token-mean), from its published formula."""
    negative_approx_kl = torch.clamp(logp - old, min=-20.0, max=20.0)
    ratio = torch.exp(negative_approx_kl)
    pg_losses1 = -adv.unsqueeze(1) * ratio
    pg_losses2 = -adv.unsqueeze(1) * torch.clamp(ratio, 1 - clip, 1 + clip)
    clip_pg_losses1 = torch.maximum(pg_losses1, pg_losses2)
    pg_losses3 = -adv.unsqueeze(1) * c
    clip_pg_losses2 = torch.min(pg_losses3, clip_pg_losses1)
    pg_losses = torch.where(adv.unsqueeze(1) < 0, clip_pg_losses2, clip_pg_losses1)
    return (pg_losses * mask).sum() / mask.sum()


def test_matches_trl_and_verl_formulas():
    logits, ids, mask, adv, old, _ = make_batch(4, 7, 500, seed=11, empty_row=False)
    logp = ref.selective_log_softmax(logits, ids)
    m = mask.float()
    got, _ = mk.grpo_loss(logits, ids, mask, adv, old_logp=old, config=mk.LossConfig.preset("dapo"), backend="cpu")
    torch.testing.assert_close(got, trl_dapo_loss(logp, old, adv, m), rtol=1e-5, atol=1e-6)
    cfg = mk.LossConfig.preset("verl", beta=0.0)
    got, _ = mk.grpo_loss(logits, ids, mask, adv * 3, old_logp=old, config=cfg, backend="cpu")
    torch.testing.assert_close(got, verl_vanilla_loss(logp, old, adv * 3, m), rtol=1e-5, atol=1e-6)


def medix_official_loss(logp, old, adv, mask, loss_type, lo, hi, dual=3.0, avg="token", ref_lp=None, kl_coef=0.0):
    """MediX-R1's trainer (an EasyR1 verl fork): compute_policy_loss + the low_var_kl loss term,
    written out independently from its published formula (docs/official_loss_semantics.md)."""
    d = logp - old
    if loss_type == "gspo_token":
        seq = (d * mask).sum(-1) / (mask.sum(-1) + 1e-8)
        log_r = seq.detach()[:, None] + logp - logp.detach()
    else:
        log_r = d
    ratio = torch.exp(log_r.clamp(-20.0, 20.0))
    clipped = torch.exp(log_r.clamp(math.log(1 - lo), math.log(1 + hi)))
    a = adv[:, None]
    higher = torch.maximum(-a * ratio, -a * clipped)
    per_token = torch.where(a < 0, torch.minimum(higher, -a * dual), higher)

    def average(x):
        if avg == "token":
            return (x * mask).sum() / (mask.sum() + 1e-8)
        return ((x * mask).sum(-1) / (mask.sum(-1) + 1e-8)).mean()

    loss = average(per_token)
    if kl_coef:
        x = (ref_lp - logp).clamp(-20.0, 20.0)
        loss = loss + kl_coef * average((x.exp() - x - 1).clamp(-10.0, 10.0))
    return loss


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("preset,official", [
    ("medix_gspo", dict(loss_type="gspo_token", lo=3e-4, hi=4e-4, avg="seq")),
    ("medix_grpo", dict(loss_type="default", lo=0.2, hi=0.3, kl_coef=1e-2)),
    ("medix_dapo", dict(loss_type="default", lo=0.2, hi=0.28)),
])
def test_medix_presets_match_the_official_formulas(backend, dtype, preset, official):
    """Values and gradients of the medix_* presets against MediX-R1's loss written out, with
    sequences whose mean log-ratio leaves [-20, 10] (where 'gspo' and 'gspo_token' differ) and
    per-token log-ratios across every clip boundary."""
    logits, ids, mask, adv, _, ref_lp = make_batch(5, 6, 211, dtype, seed=4, empty_row=False)
    logits_f = logits.float()
    logp = ref.selective_log_softmax(logits_f, ids)
    gen = torch.Generator().manual_seed(1)
    shift = torch.tensor([0.0, 0.3, -0.4, 14.0, -25.0])[:, None]  # mean log-ratio d: row 3 ~14 > 10, row 4 < -20
    old = logp - shift + 0.2 * torch.randn(5, 6, generator=gen)
    adv = torch.tensor([1.0, -1.5, 0.7, -2.0, 1.2])
    x = logits.clone().requires_grad_(True)
    loss, _ = mk.grpo_loss(x, ids, mask, adv, old_logp=old, ref_logp=ref_lp, config=mk.LossConfig.preset(preset),
                           backend=backend)
    xr = logits_f.clone().requires_grad_(True)
    want = medix_official_loss(ref.selective_log_softmax(xr, ids), old, adv, mask.float(), ref_lp=ref_lp, **official)
    torch.testing.assert_close(loss, want, **tol("loss", dtype))
    loss.backward()
    want.backward()
    torch.testing.assert_close(x.grad.float(), xr.grad.to(dtype).float(), **tol("logprob_grad", dtype))


def test_gspo_and_gspo_token_differ_only_outside_the_log_ratio_caps():
    """'gspo' caps the log-ratio at 10 (verl), 'gspo_token' clamps it to [-20, 20] (MediX-R1):
    the same loss while every sequence's mean log-ratio is in [-20, 10], not beyond."""
    logits, ids, mask, adv, _, _ = make_batch(3, 5, 97, seed=2, empty_row=False)
    logp = ref.selective_log_softmax(logits, ids)
    adv = torch.tensor([0.5, -1.0, 0.8])
    cfg = dict(clip_low=3e-4, clip_high=4e-4, aggregation="seq-mean-token-mean")
    for shift, same in ((torch.tensor([0.3, -0.5, 1.0]), True), (torch.tensor([0.0, 15.0, 0.0]), False)):
        old = logp - shift[:, None]
        a, _ = mk.grpo_loss(logits, ids, mask, adv, old_logp=old, config=mk.LossConfig(loss_type="gspo", **cfg))
        b, _ = mk.grpo_loss(logits, ids, mask, adv, old_logp=old, config=mk.LossConfig(loss_type="gspo_token", **cfg))
        assert torch.allclose(a, b) == same, (a, b)
        want = medix_official_loss(logp, old, adv, mask.float(), "gspo_token", 3e-4, 4e-4, dual=1e30, avg="seq")
        torch.testing.assert_close(b, want, **tol("loss", torch.float32))


def test_on_policy_ratio_is_one_and_gradient_flows():
    logits, ids, mask, adv, *_ = make_batch(2, 4, 100, empty_row=False)
    x = logits.clone().requires_grad_(True)
    loss, stats = mk.grpo_loss(x, ids, mask, adv, config=mk.LossConfig.preset("dapo"), backend="cpu")
    assert stats["ratio_mean"].item() == pytest.approx(1.0)
    loss.backward()
    assert x.grad.abs().sum() > 0


def test_all_masked_batch_is_defined():
    logits, ids, mask, adv, old, ref_lp = make_batch(2, 3, 50)
    mask[:] = False
    for agg in AGGREGATIONS:
        x = logits.clone().requires_grad_(True)
        loss, stats = mk.grpo_loss(x, ids, mask, adv, old_logp=old, ref_logp=ref_lp,
                                   config=mk.LossConfig.preset("grpo", aggregation=agg), backend="cpu")
        loss.backward()
        assert loss.item() == 0.0 and all(torch.isfinite(v) for v in stats.values())
        assert (x.grad == 0).all()


def test_131072_tokens_on_cpu():
    b, l, v = 2, 65536, 64
    logits, ids, mask, adv, old, _ = make_batch(b, l, v, seed=5)
    x = logits.clone().requires_grad_(True)
    loss, stats = mk.grpo_loss(x, ids, mask, adv, old_logp=old, config=mk.LossConfig.preset("dapo"),
                               inplace_backward=True, backend="cpu")
    want, _ = ref.grpo_loss(logits, ids, mask, adv, old_logp=old, config=mk.LossConfig.preset("dapo"))
    torch.testing.assert_close(loss, want, rtol=1e-4, atol=1e-6)
    loss.backward()
    assert torch.isfinite(x.grad).all()


@pytest.mark.parametrize("call,exc,match", [
    (lambda b: mk.grpo_loss(b[0][0], b[1][0], b[2], b[3]), ValueError, r"'logits' must be \[B, L, V\]"),
    (lambda b: mk.grpo_loss(b[0], b[1][:, :2], b[2], b[3]), ValueError, r"'ids' must have shape"),
    (lambda b: mk.grpo_loss(b[0], b[1].float(), b[2], b[3]), TypeError, "'ids' must be an int64"),
    (lambda b: mk.grpo_loss(b[0], b[1] + 1000, b[2], b[3]), ValueError, r"'ids' must be in \[0, V=50\)"),
    (lambda b: mk.grpo_loss(b[0], b[1], b[2][:, :1], b[3]), ValueError, r"'mask' must be a \[B, L\]"),
    (lambda b: mk.grpo_loss(b[0], b[1], b[2], b[3][:1]), ValueError, r"'advantages' must be \[B\]"),
    (lambda b: mk.grpo_loss(b[0], b[1], b[2], b[3], config=mk.LossConfig(beta=0.1)),
     ValueError, "'ref_logp'.*required"),
    (lambda b: mk.grpo_loss(b[0], b[1], b[2], b[3], old_logp=b[4][:, :1]), ValueError, "'old_logp' must be"),
    (lambda b: mk.LossConfig(clip_low=1.5), ValueError, "'clip_low' must be a float in"),
    (lambda b: mk.LossConfig(dual_clip=0.5), ValueError, "'dual_clip' must be None or a float > 1"),
    (lambda b: mk.LossConfig(temperature=0.0), ValueError, "'temperature' must be a float > 0"),
    (lambda b: mk.LossConfig(loss_type="ppo"), ValueError, "'loss_type' must be one of"),
    (lambda b: mk.LossConfig.preset("nope"), ValueError, "unknown preset"),
    (lambda b: mk.selective_log_softmax(b[0], b[1], temperature=-1.0), ValueError, "'temperature' must be"),
])
def test_bad_input(call, exc, match):
    batch = make_batch(2, 3, 50)
    with pytest.raises(exc, match=match):
        call(batch)


def test_check_finite_mode():
    logits, ids, mask, adv, *_ = make_batch(2, 3, 20)
    logits[1, 2, 5] = float("nan")
    with pytest.raises(ValueError, match=r"non-finite value at position \[1, 2, 5\]"):
        mk.grpo_loss(logits, ids, mask, adv, check_finite=True)


def test_opcheck_logprob_ops():
    logits, ids, *_ = make_batch(2, 3, 40)
    x = logits.reshape(6, 40)
    i = ids.reshape(6)
    torch.library.opcheck(torch.ops.medix.logprob_fwd.default, (x, i, 0.8, True))
    lp, lse, ent = torch.ops.medix.logprob_fwd(x, i, 0.8, True)
    torch.library.opcheck(torch.ops.medix.logprob_bwd.default, (x, i, lse, torch.randn(6), ent, torch.randn(6), 0.8))
    torch.library.opcheck(torch.ops.medix.logprob_bwd_.default, (x.clone(), i, lse, torch.randn(6), None, None, 0.8))


def test_torch_compile_fullgraph_training_step():
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 200, bias=False)
    cfg = mk.LossConfig.preset("grpo")

    def step(h, ids, mask, adv, old, ref_lp):
        loss, stats = mk.grpo_loss(head(h), ids, mask, adv, old_logp=old, ref_logp=ref_lp, config=cfg)
        adv2 = mk.group_advantages(adv, 2)
        return loss + 0 * adv2.sum(), stats["kl_mean"]

    h = torch.randn(4, 5, 16)
    ids = torch.randint(0, 200, (4, 5))
    mask = torch.ones(4, 5, dtype=torch.bool)
    adv = torch.randn(4)
    old = torch.randn(4, 5) - 5
    ref_lp = torch.randn(4, 5) - 5
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    loss_c, kl_c = compiled(h, ids, mask, adv, old, ref_lp)
    loss_c.backward()
    grad_c = head.weight.grad.clone()
    head.weight.grad = None
    loss_e, kl_e = step(h, ids, mask, adv, old, ref_lp)
    loss_e.backward()
    torch.testing.assert_close(loss_c, loss_e)
    torch.testing.assert_close(head.weight.grad, grad_c)


def test_out_of_range_ids_on_the_torch_backend_is_a_value_error():
    logits, ids, mask, adv, *_ = make_batch(2, 3, 20)
    with pytest.raises(ValueError, match=r"'ids' must be in \[0, V=20\)"):
        mk.grpo_loss(logits, ids + 20, mask, adv, backend="torch")


def test_empty_sequences_count_in_no_denominator():
    logits, ids, mask, adv, old, _ = make_batch(3, 4, 30, empty_row=False)
    mask[2] = False
    for agg in AGGREGATIONS:
        cfg = mk.LossConfig.preset("dapo", aggregation=agg, max_len=4)
        full, _ = mk.grpo_loss(logits, ids, mask, adv, old_logp=old, config=cfg, backend="cpu")
        dropped, _ = mk.grpo_loss(logits[:2], ids[:2], mask[:2], adv[:2], old_logp=old[:2], config=cfg, backend="cpu")
        torch.testing.assert_close(full, dropped)


def test_aggregation_defaults_to_the_loss_types_own():
    """aggregation=None selects the paper's normaliser (as TRL's loss_type does); the resolved name is stored."""
    assert mk.LossConfig(loss_type="dr_grpo").aggregation == "seq-mean-token-sum-norm"
    assert mk.LossConfig(loss_type="gspo").aggregation == "seq-mean-token-mean"
    assert mk.LossConfig(loss_type="gspo_token").aggregation == "seq-mean-token-mean"
    for lt in ("grpo", "dapo", "cispo"):
        assert mk.LossConfig(loss_type=lt).aggregation == "token-mean"
    assert mk.LossConfig(loss_type="gspo", aggregation="token-mean").aggregation == "token-mean"  # explicit wins
    # Dr. GRPO's loss differs from GRPO's: the constant normaliser, not the per-token mean
    logits, ids, mask, adv, old, _ = make_batch(3, 6, 33, seed=3)
    mask[0, 3:] = 0
    dr, _ = ref.grpo_loss(logits, ids, mask, adv, old_logp=old, config=mk.LossConfig(loss_type="dr_grpo", max_len=6))
    gr, _ = ref.grpo_loss(logits, ids, mask, adv, old_logp=old, config=mk.LossConfig(loss_type="grpo"))
    assert not torch.allclose(dr, gr)


def test_dr_grpo_with_another_aggregation_is_refused():
    with pytest.raises(ValueError, match="'aggregation'.*dr_grpo"):
        mk.LossConfig(loss_type="dr_grpo", aggregation="token-mean")
