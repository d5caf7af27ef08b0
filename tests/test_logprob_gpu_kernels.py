"""GPU-side kernels of the fused log-prob / entropy ops.

- Triton launchers (medix_kernels.triton_kernels.logprob) vs a float64 autograd reference, run
  here on CPU tensors under TRITON_INTERPRET=1 (small shapes: the interpreter is slow). Triton
  reads the flag when a kernel is defined, and setting it inside a shared pytest session would
  leak into other modules, so without a GPU this module re-runs itself in a subprocess with
  TRITON_INTERPRET=1 (test_triton_kernels_under_interpreter); there the Triton tests run.
- The CUDA ops torch.ops.medix.logprob_fwd / logprob_bwd / logprob_bwd_ and the Triton ops on a
  GPU, with the same cases plus V = 152,064 and T = 131,072 rows; skipped without CUDA.
"""
import os
import subprocess
import sys

import pytest
import torch

triton = pytest.importorskip("triton")

from medix_kernels.triton_kernels import logprob as tk  # noqa: E402

HAS_CUDA = torch.cuda.is_available()
INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def reference(logits, ids, temperature, g_lp=None, g_ent=None):
    """float64 logp, lse, entropy and (given upstream grads) d logits, by autograd."""
    x = logits.detach().to(torch.float64).requires_grad_(True)
    z = x / temperature
    lse = torch.logsumexp(z, dim=-1)
    logp = z.gather(-1, ids.long().unsqueeze(-1)).squeeze(-1) - lse
    p = torch.softmax(z, dim=-1)
    ent = lse - (p * torch.where(p > 0, z, torch.zeros_like(z))).sum(-1)
    grad = None
    if g_lp is not None:
        loss = (g_lp.double() * logp).sum()
        if g_ent is not None:
            loss = loss + (g_ent.double() * ent).sum()
        (grad,) = torch.autograd.grad(loss, x)
    return logp.detach(), lse.detach(), ent.detach(), grad


def make_logits(t, v, dtype, device="cpu", seed=0, scale=4.0):
    g = torch.Generator().manual_seed(seed + 131 * t + v)
    x = torch.randn(t, v, generator=g) * scale
    ids = torch.randint(0, v, (t,), generator=g)
    return x.to(dtype).to(device), ids.to(device)


def fwd_tol(dtype):
    # Inputs are the same rounded values on both sides: only fp32 accumulation differs.
    return dict(rtol=1e-5, atol=2e-5) if dtype == torch.float32 else dict(rtol=1e-5, atol=5e-5)


def grad_tol(dtype, ref):
    # The gradient is stored in the logits dtype: allow its rounding (relative to the largest entry).
    big = ref.abs().max().item()
    eps = {torch.float32: 1e-5, torch.bfloat16: 2 ** -8, torch.float16: 2 ** -11}[dtype]
    return dict(rtol=2 * eps, atol=2 * eps * big + 1e-7)


# --- Triton under the interpreter (or on a GPU when there is one) ---------------------------------

triton_device = "cuda" if HAS_CUDA and not INTERPRET else "cpu"
triton_runs = pytest.mark.skipif(not (INTERPRET or HAS_CUDA),
                                 reason="runs in the TRITON_INTERPRET=1 subprocess (no GPU here)")


@pytest.mark.skipif(INTERPRET or HAS_CUDA, reason="Triton runs directly in this session")
def test_triton_kernels_under_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "triton",
                           os.path.abspath(__file__)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout, proc.stdout[-2000:]


@triton_runs
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("v", [1, 7, 1000, 4099])
@pytest.mark.parametrize("t", [1, 3, 17])
def test_triton_forward_matches_reference(t, v, dtype):
    x, ids = make_logits(t, v, dtype, triton_device)
    for temperature in (1.0, 0.7):
        lp, lse, ent = tk.logprob_fwd(x, ids, temperature, True)
        rlp, rlse, rent, _ = reference(x.cpu(), ids.cpu(), temperature)
        tol = fwd_tol(dtype)
        torch.testing.assert_close(lp.cpu().double(), rlp, **tol)
        torch.testing.assert_close(lse.cpu().double(), rlse, **tol)
        torch.testing.assert_close(ent.cpu().double(), rent, **tol)
        lp2, lse2, ent2 = tk.logprob_fwd(x, ids, temperature, False)
        assert ent2.numel() == 0
        assert torch.equal(lp2, lp) and torch.equal(lse2, lse)


@triton_runs
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("v", [1, 7, 1000, 4099])
@pytest.mark.parametrize("t", [1, 3, 17])
def test_triton_backward_matches_autograd(t, v, dtype):
    x, ids = make_logits(t, v, dtype, triton_device, seed=1)
    g = torch.Generator().manual_seed(7)
    g_lp = torch.randn(t, generator=g).to(triton_device)
    g_ent = torch.randn(t, generator=g).to(triton_device)
    for temperature, with_ent in ((1.0, False), (0.7, True)):
        lp, lse, ent = tk.logprob_fwd(x, ids, temperature, with_ent)
        ge = g_ent if with_ent else None
        grad = tk.logprob_bwd(x, ids, lse, g_lp, ent if with_ent else None, ge, temperature)
        assert grad.dtype == dtype and grad.shape == x.shape
        _, _, _, rgrad = reference(x.cpu(), ids.cpu(), temperature, g_lp.cpu(), None if ge is None else ge.cpu())
        torch.testing.assert_close(grad.cpu().double(), rgrad, **grad_tol(dtype, rgrad))
        # In place over the logits: the same values, and the op returns the logits tensor itself.
        buf = x.clone()
        res = tk.logprob_bwd(buf, ids, lse, g_lp, ent if with_ent else None, ge, temperature, out=buf)
        assert res is buf
        assert torch.equal(buf, grad)


@triton_runs
def test_triton_strided_3d_and_int32_ids():
    # logits[:, :-1] of a [B, L + 1, V] tensor: not viewable as [T, V] -> copied, same answer.
    full, _ = make_logits(2 * 6, 300, torch.float32, triton_device, seed=3)
    full = full.view(2, 6, 300)
    x = full[:, :-1]
    ids = torch.randint(0, 300, (2, 5), generator=torch.Generator().manual_seed(4)).to(triton_device)
    lp, lse, ent = tk.logprob_fwd(x, ids.int(), 0.9, True)
    assert lp.shape == (2, 5) and ent.shape == (2, 5)
    rlp, rlse, rent, _ = reference(x.cpu(), ids.cpu(), 0.9)
    torch.testing.assert_close(lp.cpu().double(), rlp, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(ent.cpu().double(), rent, rtol=1e-5, atol=2e-5)
    g_lp = torch.ones(2, 5, device=triton_device)
    out = torch.empty_like(x)  # also not viewable as [T, V]: written through a copy
    grad = tk.logprob_bwd(x, ids, lse, g_lp, None, None, 0.9, out=out)
    assert grad is out
    _, _, _, rgrad = reference(x.cpu(), ids.cpu(), 0.9, g_lp.cpu())
    torch.testing.assert_close(out.cpu().double(), rgrad, rtol=1e-5, atol=1e-6)
    # Rows with a stride larger than V (a [T, V] slice of a wider buffer) are read in place.
    wide = torch.randn(4, 40, device=triton_device)
    rows = wide[:, :33]
    tok = torch.tensor([0, 5, 32, 17], device=triton_device)
    lp2, _, _ = tk.logprob_fwd(rows, tok, 1.0, False)
    torch.testing.assert_close(lp2.cpu().double(), reference(rows.cpu(), tok.cpu(), 1.0)[0], rtol=1e-5, atol=2e-5)


@triton_runs
def test_triton_minus_inf_logits_stay_finite():
    # Banned tokens (-inf logits) are common: entropy and gradients must not turn into NaN.
    x, ids = make_logits(3, 50, torch.float32, triton_device, seed=5)
    x[:, 10:20] = float("-inf")
    ids[:] = 3
    lp, lse, ent = tk.logprob_fwd(x, ids, 1.0, True)
    rlp, rlse, rent, _ = reference(x.cpu(), ids.cpu(), 1.0)
    assert torch.isfinite(ent).all() and torch.isfinite(lp).all()
    torch.testing.assert_close(ent.cpu().double(), rent, rtol=1e-5, atol=2e-5)
    ones = torch.ones(3, device=triton_device)
    grad = tk.logprob_bwd(x, ids, lse, ones, ent, ones, 1.0)
    assert torch.isfinite(grad).all()
    assert (grad[:, 10:20] == 0).all()


@triton_runs
def test_triton_bad_input_is_rejected():
    x, ids = make_logits(2, 10, torch.float32, triton_device)
    with pytest.raises(ValueError, match="temperature"):
        tk.logprob_fwd(x, ids, 0.0, False)
    with pytest.raises(ValueError, match="'ids' must have shape"):
        tk.logprob_fwd(x, ids[:1], 1.0, False)
    with pytest.raises(TypeError, match="'ids'"):
        tk.logprob_fwd(x, ids.float(), 1.0, False)
    with pytest.raises(TypeError, match="'logits'"):
        tk.logprob_fwd(x.long(), ids, 1.0, False)
    lp, lse, ent = tk.logprob_fwd(x, ids, 1.0, True)
    with pytest.raises(ValueError, match="'entropy'"):
        tk.logprob_bwd(x, ids, lse, torch.ones(2), None, torch.ones(2), 1.0)
    with pytest.raises(ValueError, match="'grad_logp'"):
        tk.logprob_bwd(x, ids, lse, torch.ones(3), None, None, 1.0)
    with pytest.raises(ValueError, match="'out'"):
        tk.logprob_bwd(x, ids, lse, torch.ones(2), None, None, 1.0, out=torch.empty(2, 11))


@triton_runs
def test_triton_torch_ops_and_compile():
    x, ids = make_logits(4, 37, torch.float32, triton_device, seed=9)
    lp, lse, ent = torch.ops.medix.logprob_fwd_triton(x, ids, 0.8, True)
    rlp, rlse, rent, _ = reference(x.cpu(), ids.cpu(), 0.8)
    torch.testing.assert_close(lp.cpu().double(), rlp, rtol=1e-5, atol=2e-5)
    g = torch.full((4,), 0.5, device=triton_device)
    grad = torch.ops.medix.logprob_bwd_triton(x, ids, lse, g, ent, g, 0.8)
    buf = x.clone()
    assert torch.ops.medix.logprob_bwd_triton_(buf, ids, lse, g, ent, g, 0.8) is None
    assert torch.equal(buf, grad)

    def step(logits, tok):
        logp, lse_, ent_ = torch.ops.medix.logprob_fwd_triton(logits, tok, 0.8, True)
        d = torch.ops.medix.logprob_bwd_triton(logits, tok, lse_, torch.ones_like(logp), ent_,
                                               torch.ones_like(ent_), 0.8)
        return logp.sum() + ent_.sum(), d

    loss_c, d_c = torch.compile(step, fullgraph=True)(x, ids)
    loss_e, d_e = step(x, ids)
    torch.testing.assert_close(loss_c, loss_e)
    torch.testing.assert_close(d_c, d_e)


# --- CUDA (compiled ops and Triton on a real GPU); skipped on this CPU-only machine --------------

cuda_only = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (none on this machine)")


def _cuda_ops():
    import medix_kernels  # noqa: F401  (loads medix_kernels._C, registering torch.ops.medix)
    from medix_kernels import _backend
    if not _backend.has_cuda_extension():
        pytest.skip("medix_kernels._C was built without the CUDA kernels")
    return torch.ops.medix


@cuda_only
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("v", [1, 7, 1000, 4099, 152_064])
@pytest.mark.parametrize("t", [1, 3, 17])
def test_cuda_ops_match_reference(t, v, dtype):
    ops = _cuda_ops()
    x, ids = make_logits(t, v, dtype, "cuda", seed=11)
    g_lp = torch.randn(t, device="cuda")
    g_ent = torch.randn(t, device="cuda")
    for temperature, with_ent in ((1.0, False), (0.7, True)):
        lp, lse, ent = ops.logprob_fwd(x, ids, temperature, with_ent)
        rlp, rlse, rent, rgrad = reference(x.cpu(), ids.cpu(), temperature, g_lp.cpu(),
                                           g_ent.cpu() if with_ent else None)
        # The CUDA kernels use __expf (ex2.approx): a little looser than the interpreter's exact exp.
        tol = dict(rtol=2e-5, atol=1e-4) if v < 100_000 else dict(rtol=2e-5, atol=3e-4)
        torch.testing.assert_close(lp.cpu().double(), rlp, **tol)
        torch.testing.assert_close(lse.cpu().double(), rlse, **tol)
        if with_ent:
            torch.testing.assert_close(ent.cpu().double(), rent, **tol)
        ent_arg, ge = (ent, g_ent) if with_ent else (None, None)
        grad = ops.logprob_bwd(x, ids, lse, g_lp, ent_arg, ge, temperature)
        assert grad.dtype == dtype
        torch.testing.assert_close(grad.cpu().double(), rgrad, **grad_tol(dtype, rgrad))
        buf = x.clone()
        ops.logprob_bwd_(buf, ids, lse, g_lp, ent_arg, ge, temperature)
        assert torch.equal(buf, grad)
        # The Triton kernels on the GPU agree with the CUDA ones.
        tlp, tlse, tent = tk.logprob_fwd(x, ids, temperature, with_ent)
        torch.testing.assert_close(tlp, lp, rtol=1e-5, atol=5e-5)
        tgrad = tk.logprob_bwd(x, ids, tlse, g_lp, tent if with_ent else None, ge, temperature)
        torch.testing.assert_close(tgrad.double(), grad.double(), **grad_tol(dtype, rgrad))


@cuda_only
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_cuda_many_rows_and_misaligned_rows(backend):
    # 131,072 rows: more than a 65,535-limited grid dimension could hold.
    t, v = 131_072, 40
    x, ids = make_logits(t, v, torch.bfloat16, "cuda", seed=13)
    if backend == "cuda":
        fwd = _cuda_ops().logprob_fwd
    else:
        fwd = tk.logprob_fwd
    lp, lse, ent = fwd(x, ids, 1.0, True)
    rlp, rlse, rent, _ = reference(x.cpu(), ids.cpu(), 1.0)
    torch.testing.assert_close(lp.cpu().double(), rlp, rtol=1e-5, atol=5e-5)
    torch.testing.assert_close(ent.cpu().double(), rent, rtol=1e-5, atol=5e-5)
    # Odd V and a row stride that breaks 16-byte alignment: the vector path must fall back.
    wide = torch.randn(33, 1003, device="cuda").to(torch.bfloat16)
    rows = wide[:, 1:1002]  # base pointer off by 2 bytes, V = 1001
    tok = torch.randint(0, 1001, (33,), device="cuda")
    lp2, lse2, _ = fwd(rows, tok, 1.0, False)
    torch.testing.assert_close(lp2.cpu().double(), reference(rows.cpu(), tok.cpu(), 1.0)[0], rtol=1e-5,
                               atol=5e-5)


@cuda_only
def test_cuda_ops_reject_bad_input():
    ops = _cuda_ops()
    x, ids = make_logits(2, 10, torch.float32, "cuda")
    with pytest.raises(ValueError):
        ops.logprob_fwd(x, ids[:1], 1.0, False)
    with pytest.raises(ValueError):
        ops.logprob_fwd(x, ids, 0.0, False)
    with pytest.raises((ValueError, TypeError)):
        ops.logprob_fwd(x, ids.float(), 1.0, False)
    with pytest.raises(ValueError):
        ops.logprob_fwd(x, ids.cpu(), 1.0, False)


# --- Build checks that need no GPU: nvcc register/spill report, syntax of the CUDA glue ---------

def _nvcc():
    import shutil
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
    if nvcc is None:
        pytest.skip("nvcc not found")
    return nvcc


def test_cuda_kernels_compile_for_sm80_sm90a_without_spills(tmp_path):
    cmd = [_nvcc(), "-gencode=arch=compute_80,code=sm_80", "-gencode=arch=compute_90a,code=sm_90a", "-Xptxas", "-v",
           "-std=c++17", "-O3", "-c", os.path.join(ROOT, "csrc", "cuda", "logprob.cu"), "-o", str(tmp_path / "lp.o")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = {}
    kernel = None
    for line in proc.stderr.splitlines():
        if "Compiling entry function" in line:
            name = line.split("'")[1]
            kernel = (name, line.split("'")[3]) if "logprob" in name else None
        elif kernel and "spill stores" in line:
            report.setdefault(kernel, {})["spills"] = line.strip()
        elif kernel and "Used" in line and "registers" in line:
            report.setdefault(kernel, {})["regs"] = int(line.split("Used")[1].split("registers")[0])
    # fwd and bwd x 3 dtypes x entropy on/off, for both architectures
    assert len(report) == 24, sorted(report)
    for (name, arch), info in report.items():
        assert info["spills"].startswith("0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads"), (name, info)
        assert info["regs"] <= 64, (name, arch, info)  # 512-thread blocks keep >= 2 blocks per SM


STUB_HEADERS = {  # CUDA library headers that a CPU torch's ATen/cuda headers include, reduced to the types used
    "cusparse.h": "typedef struct cusparseContext* cusparseHandle_t;\ntypedef int cusparseStatus_t;\n",
    "cublas_v2.h": "typedef struct cublasContext* cublasHandle_t;\ntypedef int cublasStatus_t;\n",
    "cublasLt.h": "typedef struct cublasLtContext* cublasLtHandle_t;\n",
    "cusolverDn.h": "typedef struct cusolverDnContext* cusolverDnHandle_t;\ntypedef int cusolverStatus_t;\n",
    "cusolver_common.h": "",
    "c10/cuda/impl/cuda_cmake_macros.h": "",
}


def test_cuda_glue_passes_a_syntax_check(tmp_path):
    # cuda_loss_ops.cpp is only compiled by a CUDA build of torch; check its C++ here against the CPU torch's
    # headers plus the CUDA runtime headers (the CUDA math-library headers are stubbed).
    import shutil

    from torch.utils import cpp_extension
    cuda_include = "/usr/local/cuda/include"
    if shutil.which("g++") is None or not os.path.exists(os.path.join(cuda_include, "cuda_runtime.h")):
        pytest.skip("needs g++ and the CUDA toolkit headers")
    for rel, text in STUB_HEADERS.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#pragma once\n" + text)
    cmd = (["g++", "-std=c++17", "-fsyntax-only", "-DMEDIX_WITH_CUDA"]
           + [f"-I{p}" for p in cpp_extension.include_paths()]
           + [f"-I{cuda_include}", f"-I{tmp_path}", os.path.join(ROOT, "csrc", "torch", "cuda_loss_ops.cpp")])
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]


def test_gpu_benchmark_script_dry_run_on_cpu(tmp_path):
    # benchmarks/bench_policy_loss_gpu.py: every code path on tiny CPU shapes (Triton interpreter).
    import csv
    script = os.path.join(ROOT, "benchmarks", "bench_policy_loss_gpu.py")
    out = tmp_path / "bench.csv"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, script, "--dry-run-cpu", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = list(csv.DictReader(out.open()))
    impls = {r["impl"] for r in rows}
    assert {"medix-triton", "medix-triton kernels", "trl selective_log_softmax+entropy_from_logits"} <= impls, impls
    assert all(float(r["ms"]) > 0 and r["device"] == "cpu (dry run)" for r in rows)
    if not HAS_CUDA:  # without --dry-run-cpu and without a GPU it says so and exits cleanly
        proc = subprocess.run([sys.executable, script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0 and "no CUDA GPU" in proc.stdout, proc.stdout + proc.stderr
