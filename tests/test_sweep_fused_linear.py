"""The fused-linear GPU sweep's dry run (tiny shapes on the CPU): its rows, as benchmarks/gpu/sweep.py
receives them."""
import math

import torch

from benchmarks.gpu import sweep_fused_linear as sweep
from tests.tolerances import tol


def test_dry_run_rows():
    rows = sweep.run("cpu", dry_run=True, budget_s=30)
    assert rows and all(tuple(r) == sweep.KEYS for r in rows)
    by_variant = {}
    for r in rows:
        by_variant.setdefault(r["variant"], []).append(r)
        assert r["op"] == "fused_linear_grpo_loss" and r["shape"] == "T=64 V=257 H=32" and r["dtype"] == "float32"
        if r["time_ms"] is None:  # a peer that cannot run here says why
            assert r["note"].startswith(("skipped:", "error:")), r
    assert {"medix-cpu-12mb", "medix-weight-x1", "medix-gpu-32mb-temp", "medix-chunk16", "plain", "cce"} <= set(
        by_variant)
    ours = [r for r in rows if r["variant"].startswith("medix-") or r["variant"] == "plain"]
    ours += [r for r in by_variant.get("liger", []) if r["time_ms"] is not None]
    for r in ours:
        for k in ("time_ms", "wall_ms", "rate", "pct_ceiling", "peak_mem_mb"):
            assert isinstance(r[k], float) and math.isfinite(r[k]) and r[k] > 0, (k, r)
        assert r["rate_unit"] == "TFLOP/s"
        assert 0 <= r["max_err"] < tol("fused_linear", torch.float32)["rtol"], r
    assert "16 tokens x 4 chunks" in by_variant["medix-chunk16"][0]["note"]
    assert "d W accumulation: upcast" in by_variant["medix-weight-x1"][0]["note"]
    assert by_variant["cce"][0]["note"].startswith("skipped:")  # its Triton kernels need a GPU
