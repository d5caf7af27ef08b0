"""medix_kernels.torch_backend (the "torch" backend: plain PyTorch formulated for speed) against
medix_kernels.reference (the readable oracle), function by function, including the cases its
formulation treats differently: degenerate groups found by ss == 0, groups of one, huge rewards,
composite totals from strided weights, float32 cosine sums that overflow, -inf logits in the
entropy with and without a gradient."""
import pytest
import torch

from medix_kernels import reference as ref
from medix_kernels import torch_backend as tb
from medix_kernels._groups import group_offsets
from tests.tolerances import tol

MODES = [("grpo", "group"), ("grpo", "batch"), ("grpo", "none"), ("dr_grpo", "none"), ("rloo", "none")]


@pytest.fixture(autouse=True, params=["host", "torch"])
def host_formulation(request, monkeypatch):
    """Every test runs twice: fixed groups and small cosine batches of CPU tensors through numpy (the
    default on the CPU) and through the torch formulation (what CUDA tensors, ragged groups, large
    batches and a machine without numpy get)."""
    if request.param == "host" and not (tb.FIXED_GROUPS_ON_HOST and tb.COSINE_ON_HOST):
        pytest.skip("numpy is not installed")
    monkeypatch.setattr(tb, "FIXED_GROUPS_ON_HOST", request.param == "host")
    monkeypatch.setattr(tb, "COSINE_ON_HOST", request.param == "host")
    return request.param


def check_advantages(values, group_size=None, group_index=None, weights=None, dtype=torch.float32, eps=1e-6, **kw):
    offsets = None if group_index is None else group_offsets(values.shape[0], None, group_index)
    adv, total, mean, std, degenerate = tb.group_advantages(values, weights, group_size, offsets, eps=eps,
                                                            nan_to_zero=False, **kw)
    want_total = ref.composite_rewards(values, weights) if weights is not None else values.float()
    lay = dict(group_index=group_index) if group_index is not None else dict(group_size=group_size)
    want = ref.group_advantages(want_total, **lay, eps=eps, **kw).to(dtype)
    want_mean, want_std, want_deg = ref.group_stats(want_total, **lay)
    assert adv.dtype == dtype
    # float64 rewards are summed as float32 totals (as by every backend): float32's tolerance
    torch.testing.assert_close(adv.float(), want.float(), **tol("advantages", torch.float32 if dtype == torch.float64
                                                                     else dtype))
    torch.testing.assert_close(total, want_total, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(mean.float(), want_mean, **tol("advantages", torch.float32))  # float64 here
    torch.testing.assert_close(std.float(), want_std, **tol("advantages", torch.float32))
    assert degenerate.tolist() == want_deg.tolist()
    return adv


@pytest.mark.parametrize("mode,scale", MODES)
@pytest.mark.parametrize("singleton", ["zero", "verl"])
@pytest.mark.parametrize("g", [1, 2, 5, 8, 64])
def test_fixed_groups(mode, scale, singleton, g):
    r = (torch.rand(16 * g, generator=torch.Generator().manual_seed(g)) * 2).round(decimals=1)
    r[:g] = 0.1  # equal rewards that do not sum exactly in float32: degenerate, A = 0 exactly
    adv = check_advantages(r, g, mode=mode, scale=scale, singleton=singleton)
    if g > 1:
        assert (adv[:g] == 0).all()


@pytest.mark.parametrize("mode,scale", MODES)
def test_eps_zero(mode, scale):
    """eps = 0: degenerate groups (and a batch of equal rewards) still give 0, not 0 / 0."""
    r = torch.tensor([1.0, 1.0, 2.0, 4.0, 0.5, 0.5])
    check_advantages(r, 2, eps=0.0, mode=mode, scale=scale, singleton="zero")
    check_advantages(torch.full((6,), 0.3), 3, eps=0.0, mode=mode, scale=scale, singleton="zero")
    check_advantages(r, group_index=torch.tensor([0, 0, 1, 1, 1, 2]), eps=0.0, mode=mode, scale=scale, singleton="zero")


@pytest.mark.parametrize("mode,scale", MODES)
@pytest.mark.parametrize("singleton", ["zero", "verl"])
def test_ragged_groups(mode, scale, singleton):
    gen = torch.Generator().manual_seed(1)
    sizes = torch.randint(1, 12, (60,), generator=gen)  # groups of one included
    gi = torch.repeat_interleave(torch.arange(60) * 3, sizes)
    r = torch.randn(gi.numel(), generator=gen)
    r[: sizes[0]] = 0.7
    check_advantages(r, group_index=gi, mode=mode, scale=scale, singleton=singleton)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_dtypes_and_huge_rewards(dtype):
    r = torch.cat([torch.full((4,), 3e38), torch.tensor([3e38, -3e38, 1.0, 2.0]), torch.randn(8) * 1e20])
    if dtype != torch.float32:
        r = torch.randn(64) * 3
    check_advantages(r.to(dtype), 4, dtype=dtype, mode="grpo", scale="group", singleton="zero")


def test_composite_totals_strided_weights():
    gen = torch.Generator().manual_seed(2)
    comp = (torch.rand(40, 4, generator=gen) > 0.5).float()
    w = torch.tensor([0.5175, 9.0, 0.3375, 9.0, 0.045, 9.0, 0.1, 9.0])[::2]  # a strided view
    for kw in (dict(group_size=8), dict(group_index=torch.repeat_interleave(torch.arange(8), 5))):
        check_advantages(comp, weights=w, mode="grpo", scale="group", singleton="zero", **kw)
        check_advantages(comp.t().contiguous().t(), weights=w, mode="rloo", scale="none", singleton="zero", **kw)


@pytest.mark.parametrize("threshold", [None, 0.5])
def test_cosine(threshold):
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(64, 48, generator=gen)
    y = x + torch.randn(64, 48, generator=gen)
    x[3] = 0.0  # a zero row: 0, not NaN
    x[5] *= 1e25  # float32 sums of squares overflow: the float64 path
    for a, b in ((x, y), (x.bfloat16(), y.bfloat16()), (x, y.double()), (x[:, ::2], y[:, ::2])):
        got = tb.cosine_rewards(a, b, threshold=threshold)
        torch.testing.assert_close(got, ref.cosine_rewards(a, b, threshold=threshold), **tol("cosine", torch.float32))
    assert tb.cosine_rewards(x[:3], y[:3], eps=1e-3).dtype == torch.float32


def test_cosine_non_finite_and_huge_rows():
    """NaN and inf entries, and rows each finite in float32 whose norms' sum is not (~1e19 entries),
    give the reference's values (the check of the sums sends them to the float64 path)."""
    gen = torch.Generator().manual_seed(5)
    x, y = torch.randn(16, 8, generator=gen), torch.randn(16, 8, generator=gen)
    x[1, 2], y[2, 0], x[4, 4] = float("nan"), float("inf"), -float("inf")
    x[8:] *= 3e18
    for threshold in (None, 0.0):
        got, want = tb.cosine_rewards(x, y, threshold=threshold), ref.cosine_rewards(x, y, threshold=threshold)
        torch.testing.assert_close(got, want, equal_nan=True, **tol("cosine", torch.float32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("grad", [False, True])
@pytest.mark.parametrize("chunk_rows", [None, 4])
def test_selective_log_softmax(dtype, temperature, grad, chunk_rows, monkeypatch):
    """chunk_rows 4: the no-gradient path in chunks of 4 of the 6 rows (a full chunk and a partial one)."""
    if chunk_rows is not None:
        monkeypatch.setattr(tb, "LOGPROB_CHUNK_BYTES", chunk_rows * 500 * (8 if dtype == torch.float64 else 4))
    gen = torch.Generator().manual_seed(4)
    logits = (torch.randn(2, 3, 500, generator=gen) * 2).to(dtype)
    logits[0, 1, :200] = -float("inf")  # masked words
    ids = torch.randint(200, 500, (2, 3), generator=gen)
    x, xr = logits.clone().requires_grad_(grad), logits.double().requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        logp, ent = tb.selective_log_softmax(x, ids, temperature=temperature, return_entropy=True)
        logp_r, ent_r = ref.selective_log_softmax(xr, ids, temperature=temperature, return_entropy=True)
    torch.testing.assert_close(logp, logp_r.to(logp.dtype), **tol("logprob", dtype if dtype != torch.float64 else
                                                                     torch.float32))
    torch.testing.assert_close(ent, ent_r.to(ent.dtype), **tol("logprob", torch.float32))
    torch.testing.assert_close(tb.selective_log_softmax(x, ids, temperature=temperature), logp)
    if grad:
        g = torch.randn(2, 3, generator=gen)
        (logp * g + ent * g.flip(0)).sum().backward()
        (logp_r * g + ent_r * g.flip(0)).sum().backward()
        assert (x.grad[0, 1, :200] == 0).all()  # -inf logits: zero gradient, not NaN
        torch.testing.assert_close(x.grad.float(), xr.grad.to(dtype).float(),
                                   **tol("logprob_grad", dtype if dtype != torch.float64 else torch.float32))


@pytest.mark.parametrize("return_entropy", [False, True])
def test_selective_log_softmax_chunks_equal_one_pass(return_entropy, monkeypatch):
    """Without a gradient, chunks of 5 rows give the values of one chunk of all 24 bit for bit (each
    row's log_softmax is its own), and a slice whose strides allow no [n, V] view takes the one-pass
    path, with the values of its contiguous copy in chunks."""
    gen = torch.Generator().manual_seed(6)
    logits = torch.randn(3, 8, 37, generator=gen) * 3
    ids = torch.randint(0, 37, (3, 8), generator=gen)
    sliced = torch.randn(3, 9, 37, generator=gen)[:, :-1]  # [B, L + 1, V] without its last position: no view
    assert tb._as_rows(sliced) is None and tb._as_rows(logits) is not None
    call = lambda x: tb.selective_log_softmax(x, ids, temperature=0.9, return_entropy=return_entropy)
    monkeypatch.setattr(tb, "LOGPROB_CHUNK_BYTES", 1 << 30)
    want = [call(logits), call(sliced.contiguous())]
    monkeypatch.setattr(tb, "LOGPROB_CHUNK_BYTES", 5 * 37 * 4)  # 24 rows = 4 chunks of 5 and one of 4
    got = [call(logits), call(sliced)]
    for i, (g, w) in enumerate(zip(got, want)):
        for a, b in zip(g if return_entropy else (g,), w if return_entropy else (w,)):
            assert a.shape == (3, 8)
            if i == 0:
                assert torch.equal(a, b)
            else:  # strided input: torch may vectorise it differently
                torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("with_entropy", [False, True])
def test_chunk_logprob_fwd_and_bwd_match_autograd(dtype, temperature, with_entropy):
    """logprob_fwd / logprob_bwd_ (the fused-linear loss's chunk ops on the torch backend): values, and
    the in-place d logits against autograd through the reference, with -inf logits and a zero row."""
    gen = torch.Generator().manual_seed(7)
    logits = (torch.randn(6, 301, generator=gen) * 3).to(dtype)
    logits[1, :100] = -float("inf")
    ids = torch.randint(100, 301, (6,), generator=gen)
    g_lp, g_ent = torch.randn(6, generator=gen), torch.randn(6, generator=gen)
    g_lp[4], g_ent[4] = 0.0, 0.0  # a masked token: its row of d logits is 0
    logp, lse, ent = tb.logprob_fwd(logits, ids, temperature, with_entropy)
    x = logits.double().requires_grad_(True)
    want_lp, want_ent = ref.selective_log_softmax(x, ids, temperature=temperature, return_entropy=True)
    torch.testing.assert_close(logp, want_lp.float(), **tol("logprob", torch.float32))
    want_lse = torch.logsumexp(x.detach() / temperature, -1).float()
    torch.testing.assert_close(lse, want_lse, **tol("logprob", torch.float32))
    assert ent.numel() == (6 if with_entropy else 0)
    if with_entropy:
        torch.testing.assert_close(ent, want_ent.float(), **tol("logprob", torch.float32))
    ((want_lp * g_lp).sum() + ((want_ent * g_ent).sum() if with_entropy else 0)).backward()
    grad = logits.clone()
    out = tb.logprob_bwd_(grad, ids, lse, g_lp, ent if with_entropy else None, g_ent if with_entropy else None,
                          temperature)
    assert out is grad and grad.dtype == dtype
    assert (grad[4] == 0).all() and (grad[1, :100] == 0).all()
    torch.testing.assert_close(grad.float(), x.grad.float(), **tol("logprob_grad", dtype))


def test_fused_linear_logits():
    gen = torch.Generator().manual_seed(5)
    h, w, b = torch.randn(2, 3, 8, generator=gen), torch.randn(11, 8, generator=gen), torch.randn(11, generator=gen)
    torch.testing.assert_close(tb.fused_linear_logits(h.bfloat16(), w.bfloat16(), b),
                               h.bfloat16().float() @ w.bfloat16().float().t() + b)
