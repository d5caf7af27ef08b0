"""The one tolerance table of the library's tests: (rtol, atol) per op family and dtype.

fp32 kernels accumulate in a different order than the float64 references; bf16/fp16 outputs
carry one rounding of the output type (bf16 has 8 bits of mantissa: ~4e-3 relative).
"""
import torch

TOLERANCES = {
    # op family: {dtype: (rtol, atol)}
    "advantages": {torch.float32: (1e-5, 2e-5), torch.bfloat16: (1e-2, 1e-2), torch.float16: (2e-3, 2e-3)},
    "cosine": {torch.float32: (1e-5, 1e-6), torch.bfloat16: (1e-5, 1e-5), torch.float16: (1e-5, 1e-5)},
    # e^x (x <= 0) in the C++ CPU kernels: a degree-5 polynomial after range reduction. Its relative
    # error, measured on every fp32 input in [-87, 0]: 1.64e-7 (AVX2 / AVX-512), 1.85e-7 (baseline);
    # csrc/tests/test_logprob_cpu.cpp checks this bound (kExpBound) on every level the CPU runs.
    "exp": {torch.float32: (2e-7, 0.0)},
    # log-probs / entropy / losses (fp32 outputs; low-precision inputs are upcast exactly, so the
    # same tolerance holds: the exp's 2e-7 above plus float32 sums over the vocabulary)
    "logprob": {torch.float32: (1e-5, 2e-5), torch.bfloat16: (1e-5, 2e-5), torch.float16: (1e-5, 2e-5)},
    # d logits is written in the logits dtype: one rounding of that dtype
    "logprob_grad": {torch.float32: (1e-4, 1e-6), torch.bfloat16: (1.6e-2, 1e-5), torch.float16: (2e-3, 1e-6)},
    "loss": {torch.float32: (1e-5, 1e-6), torch.bfloat16: (1e-4, 1e-5), torch.float16: (1e-4, 1e-5)},
    # fused linear: matmuls in the input dtype (bf16 products are rounded to bf16 per chunk)
    "fused_linear": {torch.float32: (1e-4, 1e-5), torch.bfloat16: (3e-2, 3e-3)},
    # a whole model's log-probs recomputed another way (left-padded batch with a KV cache vs right-padded
    # rows without one): the same sums in another order through every layer
    "model_logprob": {torch.float32: (1e-5, 1e-4)},
}


def tol(family: str, dtype: torch.dtype) -> dict:
    rtol, atol = TOLERANCES[family][dtype]
    return {"rtol": rtol, "atol": atol}
