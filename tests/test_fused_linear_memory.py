"""The peak memory of fused_linear_grpo_loss (forward + backward) against its documented formula
(_fused_linear_chunks.peak_bytes), measured on the CPU with the allocator tracker of
benchmarks/memory.py (the profiler's allocation events: every tensor, exact to the byte)."""
import pytest
import torch

import medix_kernels as mk
from benchmarks.memory import allocator_peak_extra
from medix_kernels._fused_linear_chunks import peak_bytes
from medix_kernels.fused_linear import _resolve_chunk, default_chunk_size
from tests.test_fused_linear import batch

# oneDNN's scratch while a chunk's logits are computed (measured 26-260 KB), not in the formula
SCRATCH = 64 << 10
B, L, H, V = 4, 80, 64, 4099


@pytest.mark.parametrize("dtype,chunk,bias,preset", [
    (torch.float32, 16, False, "grpo"),       # 20 chunks
    (torch.float32, 7, True, "gspo"),         # 46 chunks, a tail, the GSPO pre-pass, d bias
    (torch.bfloat16, 16, False, "dapo"),      # bf16: fp32 copies of the chunk, the bf16 copy of d W
    (torch.bfloat16, 100, True, "grpo"),      # the cast in the backward vs a larger chunk
    (torch.float32, None, False, "grpo"),     # the CPU default (one chunk at this T)
    (torch.bfloat16, "weight-x1", True, "grpo"),  # the GPU default's budget, run on the CPU
])
def test_peak_memory_matches_formula(dtype, chunk, bias, preset):
    hidden, weight, b, ids, mask, adv, old, ref_lp = batch(b=B, l=L, h=H, v=V, dtype=dtype, seed=4)
    h, w = hidden.requires_grad_(True), weight.requires_grad_(True)
    cfg = mk.LossConfig.preset(preset)

    def step():
        loss, _ = mk.fused_linear_grpo_loss(h, w, ids, mask, adv, lm_head_bias=b if bias else None, old_logp=old,
                                            ref_logp=ref_lp, config=cfg, chunk_size=chunk, backend="cpu")
        return torch.autograd.grad(loss, (h, w))

    step()  # warm-up: oneDNN primitives, thread pools
    measured, grads = allocator_peak_extra(step)
    assert grads[1].dtype == dtype
    rows, _ = _resolve_chunk(chunk, B * L, w, dtype, "cpu")
    want = peak_bytes(B * L, V, H, dtype, rows, device="cpu", accumulate="upcast", bias=bias)
    # every term of the formula is allocated; what it leaves out is O(T) vectors and oneDNN's scratch
    assert want["peak"] <= measured <= want["peak"] + want["per_token_max"] + SCRATCH, (measured, want)


def test_peak_memory_grows_with_the_chunk_not_the_tokens():
    """Doubling the tokens at a fixed chunk adds d hidden (T H s) and O(T), not logits."""
    def peak(b):
        hidden, weight, _, ids, mask, adv, old, _ = batch(b=b, l=L, h=H, v=V, seed=5)
        h, w = hidden.requires_grad_(True), weight.requires_grad_(True)

        def step():
            loss, _ = mk.fused_linear_grpo_loss(h, w, ids, mask, adv, old_logp=old, chunk_size=16, backend="cpu")
            return torch.autograd.grad(loss, (h, w))
        step()
        return allocator_peak_extra(step)[0]
    grown = peak(8) - peak(4)
    assert 4 * L * H * 4 <= grown <= 4 * L * H * 4 + 64 * 4 * L + SCRATCH, grown


def test_formula_reproduces_the_h200_measurement():
    """The old GPU configuration (96-token chunks, a fp32 [V, H] temporary per chunk) as measured by
    the allocator on the H200 (benchmarks/results/h200-2026-12-04.csv), and what the new default
    needs at the same shape (below Liger's 4,832 MB measured there)."""
    import csv
    from pathlib import Path
    path = Path(__file__).resolve().parents[1] / "benchmarks/results/h200-2026-12-04.csv"
    with open(path, newline="") as fh:
        rows = {r["impl"]: r for r in csv.DictReader(fh) if r["op"] == "fused_linear_grpo_loss"}
    t, v, h = 8192, 152064, 4096
    old = peak_bytes(t, v, h, torch.bfloat16, 96, device="cuda", accumulate="temp")
    assert abs(old["peak"] / 2**20 - float(rows["medix-triton"]["peak_mem_MB"])) < 2
    new = peak_bytes(t, v, h, torch.bfloat16, default_chunk_size(v, h, torch.bfloat16, "cuda", tokens=t),
                     device="cuda", accumulate="in-gemm")
    assert new["peak"] / 2**20 < 0.8 * float(rows["liger-chunked"]["peak_mem_MB"])
