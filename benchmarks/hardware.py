"""The peaks that 'fraction of peak' is measured against.

GPU: vendor datasheet figures (HBM bandwidth; dense tensor-core FLOP/s without sparsity for
bf16/fp16, plain FP32 FLOP/s for fp32, since torch's fp32 matmul does not use TF32 by default),
matched on the device name. An unknown GPU, and the CPU, get peaks measured at the start of the
run: the bandwidth of a large ``copy_`` (bytes read + bytes written) and the FLOP/s of a square
matmul in the benchmark's dtype, best of a few repeats. On a shared machine the measured peak is
what the machine gives at that moment, so it moves with the load (recorded next to it).
"""
from __future__ import annotations

import os
import time

import torch

# The CPU flags that decide which vector code runs (x86: /proc/cpuinfo "flags"; Arm: "Features").
VECTOR_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_bf16",
                "avx512_vnni", "amx_tile", "amx_bf16", "asimd", "sve", "sve2")
KERNEL_LEVELS = {0: "base", 1: "avx2", 2: "avx512"}  # csrc/cpu/isa.h


def cpu_vector_extensions() -> str:
    """The CPU's vector extensions among VECTOR_FLAGS, space-separated ("?" if unknown)."""
    try:
        with open("/proc/cpuinfo") as fh:
            line = next((ln for ln in fh if ln.startswith(("flags", "Features"))), "")
    except OSError:
        return "?"
    flags = set(line.split(":", 1)[1].split()) if ":" in line else set()
    return " ".join(f for f in VECTOR_FLAGS if f in flags) or "?"


def kernel_level() -> str:
    """The vector level the medix C++ CPU kernels run at in this process (medix_kernels._C.cpu_level():
    the widest the CPU has, capped by MEDIX_CPU_LEVEL), e.g. "1 avx2 (MEDIX_CPU_LEVEL=1)"."""
    from medix_kernels import _backend
    ext = _backend.extension()
    cap = os.environ.get("MEDIX_CPU_LEVEL")
    level = f"{ext.cpu_level()} {KERNEL_LEVELS[ext.cpu_level()]}" if ext is not None else "- (no extension)"
    return level + (f" (MEDIX_CPU_LEVEL={cap})" if cap is not None else "")


# (name substrings, all required; HBM bytes/s; {dtype: FLOP/s}); the first match wins.
GPU_PEAKS = [
    (("H200",), 4.8e12, {"bfloat16": 989e12, "float16": 989e12, "float32": 67e12}),
    (("H100", "PCIe"), 2.0e12, {"bfloat16": 756e12, "float16": 756e12, "float32": 51e12}),
    (("H100", "NVL"), 3.9e12, {"bfloat16": 835e12, "float16": 835e12, "float32": 60e12}),
    (("H100",), 3.35e12, {"bfloat16": 989e12, "float16": 989e12, "float32": 67e12}),  # SXM (HBM3)
    (("A100", "80GB", "PCIe"), 1.935e12, {"bfloat16": 312e12, "float16": 312e12, "float32": 19.5e12}),
    (("A100", "80GB"), 2.039e12, {"bfloat16": 312e12, "float16": 312e12, "float32": 19.5e12}),
    (("A100",), 1.555e12, {"bfloat16": 312e12, "float16": 312e12, "float32": 19.5e12}),  # 40 GB
]


def table_peak(name: str, dtype: str):
    """(bytes/s, FLOP/s, source) from the datasheet table, or None for an unknown device."""
    for keys, bw, flops in GPU_PEAKS:
        if all(k.lower() in name.lower() for k in keys):
            return bw, flops.get(dtype, flops["float32"]), f"datasheet {' '.join(keys)}"
    return None


def measure_bandwidth(device: str, nbytes: int = 256 * 2**20, repeats: int = 8) -> float:
    src = torch.ones(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        dst.copy_(src)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * nbytes / best


def measure_flops(device: str, dtype: torch.dtype, n: int = 1536, repeats: int = 4) -> float:
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return 2 * n ** 3 / best


def peaks(device: str, dtype: torch.dtype, name: str) -> dict:
    """{"peak_GBps", "peak_TFLOPs", "peak_source"} for this device and dtype."""
    dt = str(dtype).replace("torch.", "")
    if device == "cuda":
        hit = table_peak(name, dt)
        if hit is not None:
            bw, fl, src = hit
            return {"peak_GBps": bw / 1e9, "peak_TFLOPs": fl / 1e12, "peak_source": src}
    bw = measure_bandwidth(device)
    fl = measure_flops(device, dtype)
    return {"peak_GBps": round(bw / 1e9, 2), "peak_TFLOPs": round(fl / 1e12, 4),
            "peak_source": f"measured at start: copy_ of 256 MiB (read+write) and a 1536^3 {dt} matmul, best of 5"}
