"""group_advantages / group_stats / composite_advantages on every backend vs the reference, and
vs TRL's and verl's formulas written out independently here."""
import math
import zlib

import pytest
import torch

import medix_kernels as mk
from medix_kernels import reference as ref
from tests.kernel_backends import CPU_BACKENDS, gpu_backends, needs_cuda
from tests.tolerances import tol


def random_group_index(n, max_group, gen):
    sizes, total = [], 0
    while total < n:
        s = min(int(torch.randint(1, max_group + 1, (1,), generator=gen)), n - total)
        sizes.append(s)
        total += s
    return torch.repeat_interleave(torch.arange(len(sizes)) * 3, torch.tensor(sizes))  # ids need not be dense


# --- independent peer formulas --------------------------------------------------------------
def trl_advantages(r, g):
    """TRL GRPOTrainer: (r - group mean) / (group std + 1e-4), std unbiased."""
    grouped = r.view(-1, g)
    mean = grouped.mean(dim=1).repeat_interleave(g)
    std = grouped.std(dim=1).repeat_interleave(g)
    return (r - mean) / (std + 1e-4)


def verl_advantages(r, index):
    """verl compute_grpo_outcome_advantage: per-id lists; size 1 -> mean 0, std 1; eps 1e-6."""
    scores = {}
    for i, idx in enumerate(index):
        scores.setdefault(idx, []).append(float(r[i]))
    out = []
    for i, idx in enumerate(index):
        vals = scores[idx]
        if len(vals) == 1:
            mean, std = 0.0, 1.0
        else:
            mean = sum(vals) / len(vals)
            std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
        out.append((float(r[i]) - mean) / (std + 1e-6))
    return torch.tensor(out)


def test_trl_preset_matches_trl_formula():
    r = torch.rand(64) * 3
    got = mk.group_advantages(r, 8, **mk.ADVANTAGE_PRESETS["trl"])
    torch.testing.assert_close(got, trl_advantages(r, 8), rtol=1e-5, atol=1e-5)


def test_verl_preset_matches_verl_formula_with_singletons():
    r = torch.tensor([0.3, 1.0, 0.0, 2.5, 0.7, 0.7, 0.1])
    index = [0, 0, 0, 1, 2, 2, 3]
    got = mk.group_advantages(r, group_index=torch.tensor(index), **mk.ADVANTAGE_PRESETS["verl"])
    want = verl_advantages(r, index)
    want[4:6] = 0.0  # verl divides 0 by eps for equal rewards: exactly 0 too
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_default_semantics_by_hand():
    r = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 5.0, 5.0, 5.0])
    s = math.sqrt(5 / 3)
    want = torch.tensor([(v - 2.5) / (s + 1e-6) for v in (1, 2, 3, 4)] + [0.0] * 4)
    torch.testing.assert_close(mk.group_advantages(r, 4), want)
    assert mk.group_advantages(torch.tensor([3.0]), 1).item() == 0.0  # a group of one gets 0
    # equal rewards that do not sum exactly in fp32 still give exactly 0
    assert (mk.group_advantages(torch.full((3,), 0.1), 3) == 0).all()


def test_rloo_and_dr_grpo_by_hand():
    r = torch.tensor([1.0, 2.0, 6.0])
    torch.testing.assert_close(mk.group_advantages(r, 3, mode="rloo"), torch.tensor([1 - 4.0, 2 - 3.5, 6 - 1.5]))
    torch.testing.assert_close(mk.group_advantages(r, 3, mode="dr_grpo"), r - 3.0)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("mode", ["grpo", "dr_grpo", "rloo"])
@pytest.mark.parametrize("scale", ["group", "batch", "none"])
@pytest.mark.parametrize("singleton", ["zero", "verl"])
def test_ragged_groups_vs_reference(backend, mode, scale, singleton):
    gen = torch.Generator().manual_seed(zlib.crc32(f"{mode}/{scale}/{singleton}".encode()) % 1000)  # not hash(): salted
    r = torch.randn(257, generator=gen)
    r[10:14] = 0.5  # a degenerate stretch
    gi = random_group_index(257, 9, gen)
    kw = dict(group_index=gi, mode=mode, scale=scale, singleton=singleton)
    got = mk.group_advantages(r, backend=backend, **kw)
    want = ref.group_advantages(r, **kw)
    torch.testing.assert_close(got, want, **tol("advantages", torch.float32))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,group_size", [(1, 1), (5, 5), (64, 8), (1000, 1), (4096, 64), (65536, 8), (10**6, 16)])
def test_fixed_groups_sizes_and_dtypes(backend, dtype, n, group_size):
    gen = torch.Generator().manual_seed(n)
    r = (torch.rand(n, generator=gen) * 2).round(decimals=1).to(dtype)  # ties -> degenerate groups
    got = mk.group_advantages(r, group_size, backend=backend)
    assert got.dtype == dtype and got.shape == (n,)
    want = ref.group_advantages(r.float(), group_size).to(dtype)
    torch.testing.assert_close(got.float(), want.float(), **tol("advantages", dtype))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_group_stats(backend):
    r = torch.tensor([1.0, 1.0, 2.0, 4.0, 3.0, 7.0])
    gi = torch.tensor([0, 0, 1, 1, 1, 2])
    st = mk.group_stats(r, group_index=gi, backend=backend)
    torch.testing.assert_close(st.mean, torch.tensor([1.0, 3.0, 7.0]))
    torch.testing.assert_close(st.std, torch.tensor([0.0, 1.0, 0.0]))
    assert st.degenerate.tolist() == [True, False, True]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_composite_advantages(backend, dtype):
    gen = torch.Generator().manual_seed(1)
    comp = (torch.rand(40, 4, generator=gen) > 0.5).float().to(dtype)
    w = [0.9 * 0.575, 0.9 * 0.375, 0.9 * 0.05, 0.1]  # MediX-R1's weights
    total, adv = mk.composite_advantages(comp, w, 5, backend=backend)
    want_total = ref.composite_rewards(comp.float(), torch.tensor(w))
    torch.testing.assert_close(total, want_total, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(adv.float(), ref.group_advantages(want_total, 5).to(dtype).float(),
                               **tol("advantages", dtype))
    # strided (non-contiguous) components give the same answer
    total2, _ = mk.composite_advantages(comp.t().contiguous().t(), w, 5, backend=backend)
    torch.testing.assert_close(total2, total)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_nan_policy(backend):
    r = torch.tensor([1.0, float("nan"), 2.0, float("inf")])
    with pytest.raises(ValueError, match=r"positions \[1, 3\]"):
        mk.group_advantages(r, 2, backend=backend)
    got = mk.group_advantages(r, 2, nan_policy="zero", backend=backend)
    torch.testing.assert_close(got, mk.group_advantages(torch.tensor([1.0, 0.0, 2.0, 0.0]), 2, backend="torch"))


# --- edge cases (issue 17) ---------------------------------------------------------------------
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("ragged", [False, True])
def test_rewards_that_require_grad_give_detached_advantages(backend, ragged):
    """Rewards that require grad (e.g. a learned reward model's output) are accepted by every
    backend, and the advantages carry no gradient on any of them (a reward is data to the loss)."""
    r = torch.randn(12, requires_grad=True)
    kw = dict(group_index=torch.tensor([0] * 5 + [1] * 7)) if ragged else dict(group_size=4)
    got = mk.group_advantages(r, backend=backend, **kw)
    assert not got.requires_grad and got.grad_fn is None
    torch.testing.assert_close(got, ref.group_advantages(r.detach(), **kw), **tol("advantages", torch.float32))
    st = mk.group_stats(r, backend=backend, **kw)
    assert not any(t.requires_grad for t in st)
    comp = torch.rand(12, 3, requires_grad=True)
    w = torch.tensor([0.5, 0.3, 0.2], requires_grad=True)
    total, adv = mk.composite_advantages(comp, w, backend=backend, **kw)
    assert not total.requires_grad and not adv.requires_grad
    torch.testing.assert_close(total, ref.composite_rewards(comp.detach(), w.detach()))


def huge_rewards(g: int) -> torch.Tensor:
    """Groups of finite rewards whose fp32 sums or squared deviations overflow: all equal near
    3e38 (degenerate: A = 0), +-3e38 mixed with small values, spreads of 1e20 (squares above the
    fp32 range), and one ordinary group."""
    gen = torch.Generator().manual_seed(g)
    groups = [torch.full((g,), 3e38), torch.full((g,), -3.3e38),
              torch.tensor([3e38, -3e38] * g)[:g] + torch.arange(g), torch.tensor([3e38] * (g - 1) + [1.0]),
              torch.randn(g, generator=gen) * 1e20, torch.randn(g, generator=gen) * 1e37, torch.randn(g, generator=gen)]
    return torch.cat(groups).float()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("g", [2, 3, 4, 5, 8, 16, 17, 64])
@pytest.mark.parametrize("mode,scale", [("grpo", "group"), ("grpo", "batch"), ("dr_grpo", "none"), ("rloo", "none")])
def test_huge_finite_rewards_match_the_reference(backend, dtype, g, mode, scale):
    """Finite rewards near 3e38 gave NaN advantages on the cpu backend (fp32 sums overflowed:
    (r - inf) * 0 for an all-equal group); the kernels redo such groups in double, as the
    float64 reference. Fixed sizes with and without an unrolled kernel, ragged groups, bf16."""
    r = huge_rewards(g).to(dtype)
    for kw in (dict(group_size=g), dict(group_index=torch.repeat_interleave(torch.arange(r.numel() // g), g))):
        got = mk.group_advantages(r, mode=mode, scale=scale, backend=backend, **kw)
        want = ref.group_advantages(r.float(), mode=mode, scale=scale, **kw).to(dtype)
        assert not got.isnan().any(), got
        torch.testing.assert_close(got.float(), want.float(), **tol("advantages", dtype))
        if mode == "grpo" and scale == "group":
            assert (got[: 2 * g] == 0).all()  # all-equal groups: exactly 0
            assert torch.isfinite(got).all()
        st = mk.group_stats(r, backend=backend, **kw)
        mean, std, deg = ref.group_stats(r.float(), **kw)
        torch.testing.assert_close(st.mean, mean, **tol("advantages", torch.float32))
        torch.testing.assert_close(st.std, std, **tol("advantages", torch.float32))
        assert st.degenerate.tolist() == deg.tolist()


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_refused(backend, bad):
    comp = torch.rand(8, 3)
    with pytest.raises(ValueError, match=r"'weights' must be finite.*positions \[1\]"):
        mk.composite_advantages(comp, [0.5, bad, 0.2], 4, backend=backend)
    with pytest.raises(ValueError, match=r"'weights' must be finite"):
        mk.composite_advantages(comp, torch.tensor([bad, 0.5, 0.2]), 4, backend=backend)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: mk.group_advantages(torch.ones(2, 2), 2), ValueError, r"'rewards' must be 1-D \[N\]"),
    (lambda: mk.group_advantages(torch.ones(7), 2), ValueError, r"\(7\) must be divisible by 'group_size' \(2\)"),
    (lambda: mk.group_advantages(torch.ones(4, dtype=torch.int64), 2), TypeError, r"'rewards' must be a floating"),
    (lambda: mk.group_advantages(torch.ones(4)), ValueError, r"exactly one of 'group_size'"),
    (lambda: mk.group_advantages(torch.ones(4), 2, group_index=torch.zeros(4, dtype=torch.long)),
     ValueError, "exactly one"),
    (lambda: mk.group_advantages(torch.ones(3), group_index=torch.tensor([0, 2, 1])),
     ValueError, r"non-decreasing.*position 2"),
    (lambda: mk.group_advantages(torch.ones(3), group_index=torch.tensor([0, 1])), ValueError, r"length N=3"),
    (lambda: mk.group_advantages(torch.ones(3), group_index=torch.tensor([0.0, 1, 1])), TypeError, "integer tensor"),
    (lambda: mk.group_advantages(torch.ones(4), 2, mode="ppo"), ValueError, r"'mode' must be one of"),
    (lambda: mk.group_advantages(torch.ones(4), 2, scale="global"), ValueError, r"'scale' must be one of"),
    (lambda: mk.group_advantages(torch.ones(4), 0), ValueError, r"'group_size' must be a positive int"),
    (lambda: mk.group_advantages(torch.ones(4), 2, backend="tpu"), ValueError, "backend must be one of"),
    (lambda: mk.group_advantages(torch.ones(4), 2, backend="cuda"), ValueError, "needs CUDA tensors"),
    (lambda: mk.composite_advantages(torch.ones(4, 3), [1.0, 2.0], 2), ValueError, r"'weights' must be 1-D \[K=3\]"),
    (lambda: mk.composite_advantages(torch.ones(4, 0), [], 2), ValueError, "at least one column"),
    (lambda: mk.group_advantages(torch.ones(4, dtype=torch.float64), 2, backend="cpu"), TypeError, "float64"),
])
def test_bad_input_is_a_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_compiled_op_checks_guard_direct_calls():
    # The C++ checks stand behind the Python ones: a direct op call with bad sizes is an error, not a crash.
    with pytest.raises(ValueError, match="divisible"):
        torch.ops.medix.group_advantages(torch.ones(5), None, None, 2, 0, 0, 0, 1e-6, False)
    with pytest.raises(ValueError, match="offsets"):
        torch.ops.medix.group_advantages(torch.ones(5), None, torch.tensor([0, 3, 2, 5]), 0, 0, 0, 0, 1e-6, False)
    with pytest.raises(ValueError, match="'weights' must be 1-D"):
        torch.ops.medix.group_advantages(torch.ones(4, 2), torch.ones(3), None, 2, 0, 0, 0, 1e-6, False)


def test_opcheck_group_advantages():
    r = torch.randn(24)
    torch.library.opcheck(torch.ops.medix.group_advantages.default, (r, None, None, 8, 0, 0, 0, 1e-6, False))
    off = torch.tensor([0, 3, 4, 10, 24])
    torch.library.opcheck(torch.ops.medix.group_advantages.default, (r, None, off, 0, 2, 0, 0, 1e-6, True))
    comp, w = torch.rand(24, 3), torch.rand(3)
    torch.library.opcheck(torch.ops.medix.group_advantages.default, (comp, w, None, 6, 0, 1, 1, 1e-4, False))


def test_torch_compile_fullgraph():
    def step(rewards, components, weights, pred, refe):
        adv = mk.group_advantages(rewards, 8)
        total, adv2 = mk.composite_advantages(components, weights, 8)
        cos = mk.cosine_rewards(pred, refe, threshold=0.5)
        return adv * 2 + adv2 + cos.sum(), total

    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    args = (torch.randn(32), torch.rand(32, 4), torch.rand(4), torch.randn(5, 16), torch.randn(5, 16))
    for got, want in zip(compiled(*args), step(*args)):
        torch.testing.assert_close(got, want)


# --- GPU backends (Triton under TRITON_INTERPRET=1 here, CUDA on a GPU) ------------------------
@pytest.mark.parametrize("backend", gpu_backends() or [pytest.param("triton", marks=pytest.mark.skip(
    reason="Triton needs a GPU or TRITON_INTERPRET=1 (tests/test_triton_interpreter.py runs it)"))])
def test_gpu_backends_vs_reference(backend):
    device = "cuda" if torch.cuda.is_available() else "cpu"
    gen = torch.Generator().manual_seed(3)
    r = torch.randn(1000, generator=gen)
    gi = random_group_index(1000, 17, gen)
    for mode in ("grpo", "dr_grpo", "rloo"):
        for scale in ("group", "batch", "none"):
            kw = dict(group_index=gi.to(device), mode=mode, scale=scale)
            got = mk.group_advantages(r.to(device), backend=backend, **kw).cpu()
            torch.testing.assert_close(got, ref.group_advantages(r, group_index=gi, mode=mode, scale=scale),
                                       **tol("advantages", torch.float32))


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,g", [(1, 1), (65536, 8), (10**6, 64), (1000, 5)])
def test_cuda_fixed_groups(dtype, n, g):
    r = torch.rand(n, device="cuda").round(decimals=1).to(dtype)
    for backend in gpu_backends():
        got = mk.group_advantages(r, g, backend=backend)
        want = ref.group_advantages(r.float().cpu(), g).to(dtype)
        torch.testing.assert_close(got.float().cpu(), want.float(), **tol("advantages", dtype))


# --- CPU kernel paths: serial vs threaded, ragged offsets in C++ (every ISA level: test_cpu_levels.py)
SERIAL_WORK = 1 << 18  # csrc/cpu/group_advantages.h kGroupAdvSerialWork


@pytest.mark.parametrize("g", [4, 5, 8, 16, 64])
def test_serial_and_threaded_paths_agree(g):
    """Below kGroupAdvSerialWork elements a call stays on the calling thread, above it the groups
    are split over the threads: both give the reference's values (and each other's)."""
    gen = torch.Generator().manual_seed(g)
    for n in (SERIAL_WORK - SERIAL_WORK % g - g, SERIAL_WORK - SERIAL_WORK % g + 16 * g * 37):
        r = (torch.rand(n, generator=gen) * 2).round(decimals=1)
        got = mk.group_advantages(r, g, backend="cpu")
        torch.testing.assert_close(got, ref.group_advantages(r, g), **tol("advantages", torch.float32))
        threads = torch.get_num_threads()
        try:
            torch.set_num_threads(1)
            one = mk.group_advantages(r, g, backend="cpu")
        finally:
            torch.set_num_threads(threads)
        torch.testing.assert_close(got, one, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.int16])
def test_cpu_group_offsets_op(dtype):
    ids = torch.tensor([3, 3, 5, 9, 9, 9, 10], dtype=dtype)
    assert torch.ops.medix.group_offsets(ids).tolist() == [0, 2, 3, 6, 7]
    assert torch.ops.medix.group_offsets(ids[:0]).tolist() == [0]
    with pytest.raises(ValueError, match=r"non-decreasing.*position 3 has id 0 after 1"):
        torch.ops.medix.group_offsets(torch.tensor([0, 0, 1, 0], dtype=dtype))
    with pytest.raises(TypeError, match="integer tensor"):
        torch.ops.medix.group_offsets(torch.tensor([0.0, 1.0]))


def test_ragged_cpu_matches_python_offsets_path():
    gen = torch.Generator().manual_seed(5)
    gi = random_group_index(5000, 20, gen)
    r = torch.rand(5000, generator=gen).round(decimals=1)
    got = mk.group_advantages(r, group_index=gi, backend="cpu")
    want = torch.ops.medix.group_advantages(r, None, group_offsets_py(5000, gi), 0, 0, 0, 0, 1e-6, False)[0]
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(got, ref.group_advantages(r, group_index=gi), **tol("advantages", torch.float32))


def group_offsets_py(n, gi):
    from medix_kernels._groups import group_offsets
    return group_offsets(n, None, gi)
