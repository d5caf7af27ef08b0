"""cosine_rewards on every backend vs torch.nn.functional.cosine_similarity and the reference."""
import pytest
import torch
import torch.nn.functional as F

import medix_kernels as mk
from tests.kernel_backends import CPU_BACKENDS, gpu_backends, needs_cuda
from tests.tolerances import tol


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("b,d", [(1, 1), (3, 7), (64, 384), (257, 1024), (5, 4099)])
def test_matches_torch_cosine_similarity(backend, dtype, b, d):
    gen = torch.Generator().manual_seed(b * d)
    x = torch.randn(b, d, generator=gen).to(dtype)
    y = (x.float() + 0.5 * torch.randn(b, d, generator=gen)).to(dtype)
    x[0] = 0  # a zero vector: 0, not NaN
    got = mk.cosine_rewards(x, y, backend=backend)
    want = F.cosine_similarity(x.float(), y.float(), dim=1, eps=1e-8)
    assert got.dtype == torch.float32 and not got.isnan().any()
    torch.testing.assert_close(got, want, **tol("cosine", dtype))
    assert got[0].item() == 0.0


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_threshold_and_eps(backend):
    x = torch.tensor([[1.0, 0.0], [1.0, 1.0], [1e-9, 0.0]])
    y = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1e-9, 0.0]])
    torch.testing.assert_close(mk.cosine_rewards(x, y, threshold=0.8, backend=backend), torch.tensor([1.0, 0.0, 0.0]))
    # tiny vectors: each norm is clamped to eps separately, exactly as torch does
    torch.testing.assert_close(mk.cosine_rewards(x, y, backend=backend), F.cosine_similarity(x, y, eps=1e-8))
    torch.testing.assert_close(mk.cosine_rewards(x, y, eps=1e-3, backend=backend), F.cosine_similarity(x, y, eps=1e-3))


def test_non_contiguous_rows():
    x = torch.randn(10, 32)[:, :16]
    y = torch.randn(10, 16)
    torch.testing.assert_close(mk.cosine_rewards(x, y), F.cosine_similarity(x, y))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d", [1, 4, 33, 384])
def test_huge_entries_match_the_reference(backend, dtype, d):
    """Entries near 1e30 overflowed the fp32 sums of squares (NaN on the cpu backend, 1.0 on
    torch); rows whose sums overflow are redone scaled by their largest magnitude."""
    gen = torch.Generator().manual_seed(d)
    x = torch.rand(6, d, generator=gen) * 2 - 1
    y = 0.7 * x + 0.3 * (torch.rand(6, d, generator=gen) * 2 - 1)  # |entries| <= 1
    scale = torch.tensor([1e30, 1e30, 3e38, 1e20, 1.0, 1e30])[:, None]
    x, y = (x * scale).to(dtype), (y * scale).to(dtype)
    y[0] = -x[0]  # cos = -1
    y[1] = 0.0  # a zero vector against a huge one: 0
    x[5, : d // 2 + 1] = 1e-3  # a huge row mixed with small entries
    got = mk.cosine_rewards(x, y, backend=backend)
    want = F.cosine_similarity(x.double(), y.double(), dim=1).float()
    assert not got.isnan().any(), got
    torch.testing.assert_close(got, want, **tol("cosine", dtype))
    assert got[0].item() == pytest.approx(-1.0, abs=1e-6) and got[1].item() == 0.0
    hit = mk.cosine_rewards(x, y, threshold=0.5, backend=backend)
    assert hit.tolist() == (want >= 0.5).float().tolist()


def test_cosine_rewards_are_detached():
    x = torch.randn(3, 8, requires_grad=True)
    for backend in CPU_BACKENDS:
        got = mk.cosine_rewards(x, torch.randn(3, 8), backend=backend)
        assert not got.requires_grad


@pytest.mark.parametrize("call,exc,match", [
    (lambda: mk.cosine_rewards(torch.ones(3), torch.ones(3)), ValueError, r"'pred' must be 2-D \[B, D\]"),
    (lambda: mk.cosine_rewards(torch.ones(2, 3), torch.ones(2, 4)), ValueError, "same shape"),
    (lambda: mk.cosine_rewards(torch.ones(2, 0), torch.ones(2, 0)), ValueError, "D >= 1"),
    (lambda: mk.cosine_rewards(torch.ones(2, 3, dtype=torch.int32), torch.ones(2, 3)), TypeError, "floating-point"),
    (lambda: mk.cosine_rewards(torch.ones(2, 3), torch.ones(2, 3).half()), TypeError, "same dtype"),
    (lambda: mk.cosine_rewards(torch.ones(2, 3), torch.ones(2, 3), eps=0.0), ValueError, "'eps' must be"),
])
def test_bad_input(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_opcheck_cosine():
    x, y = torch.randn(6, 10), torch.randn(6, 10)
    torch.library.opcheck(torch.ops.medix.cosine_rewards.default, (x, y, 1e-8, None))
    torch.library.opcheck(torch.ops.medix.cosine_rewards.default, (x.bfloat16(), y.bfloat16(), 1e-8, 0.5))


@needs_cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_gpu_backends(dtype):
    x = torch.randn(1000, 1024, device="cuda").to(dtype)
    y = torch.randn(1000, 1024, device="cuda").to(dtype)
    for backend in gpu_backends():
        got = mk.cosine_rewards(x, y, backend=backend)
        torch.testing.assert_close(got, F.cosine_similarity(x.float(), y.float()), **tol("cosine", dtype))


def test_cuda_cosine_kernel_reads_16_byte_vectors_without_spills(tmp_path):
    """csrc/cuda/reward_kernels.cu compiled for sm_90a (no GPU needed): the cosine kernels load
    aligned rows 16 bytes at a time (ld.global.cs.v4, streaming) and spill nothing."""
    import os
    import re
    import shutil
    import subprocess
    nvcc = shutil.which("nvcc") or ("/usr/local/cuda/bin/nvcc" if os.path.exists("/usr/local/cuda/bin/nvcc") else None)
    if nvcc is None:
        pytest.skip("nvcc not found")
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "csrc", "cuda", "reward_kernels.cu")
    ptx = tmp_path / "rk.ptx"
    proc = subprocess.run([nvcc, "-O3", "--use_fast_math", "-std=c++17", "-arch=compute_90a", "-ptx", src, "-o",
                           str(ptx)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    text = ptx.read_text()
    entries = re.findall(r"\.entry (\S*cosine_kernel\S*)\((.*?)\n}\n", text, flags=re.S)
    assert len(entries) == 3, [e[0] for e in entries]  # fp32, bf16, fp16
    for name, body in entries:
        assert "ld.global.cs.v4" in body, name
    proc = subprocess.run([nvcc, "-O3", "--use_fast_math", "-std=c++17", "-gencode=arch=compute_90a,code=sm_90a",
                           "-Xptxas", "-v", "-c", src, "-o", str(tmp_path / "rk.o")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    blocks = proc.stderr.split("Compiling entry function")[1:]
    cosine = [b for b in blocks if "cosine_kernel" in b.split("'")[1]]
    assert len(cosine) == 3 and all("0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads" in b
                                    for b in cosine), cosine
