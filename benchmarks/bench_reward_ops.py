"""Benchmark of the reward-side ops: group advantages, composite advantages, cosine rewards.

Each backend available here (cpu; cuda and triton on a GPU) against a plain PyTorch
implementation run side by side in one process, eager and under torch.compile. Reports median
time, effective GB/s (bytes that must move: read rewards once, write advantages once) and the
speed-up over eager PyTorch.

    python benchmarks/bench_reward_ops.py [--quick] [--out benchmarks/results/reward_ops_cpu.csv]
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import medix_kernels as mk  # noqa: E402
from common import bench, environment, write_csv  # noqa: E402


def eager_group_advantages(r: torch.Tensor, g: int, eps: float = 1e-6) -> torch.Tensor:
    """What a trainer writes in plain PyTorch (TRL's formulation)."""
    grouped = r.view(-1, g)
    mean = grouped.mean(dim=1).repeat_interleave(g)
    std = grouped.std(dim=1).repeat_interleave(g)
    return (r - mean) / (std + eps)


def eager_composite(c: torch.Tensor, w: torch.Tensor, g: int) -> tuple[torch.Tensor, torch.Tensor]:
    total = c @ w
    return total, eager_group_advantages(total, g)


def eager_cosine(x, y, threshold=0.8):
    return (F.cosine_similarity(x, y, dim=1) >= threshold).float()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer sizes (a smoke run)")
    ap.add_argument("--out", default=None, help="CSV path (default benchmarks/results/reward_ops_<device>.csv)")
    args = ap.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = args.out or os.path.join(os.path.dirname(__file__), "results", f"reward_ops_{device}.csv")
    backends = [b for b in mk.backends() if b != "torch" and (b != "triton" or device == "cuda")]
    sizes = [1024, 65536] if args.quick else [1024, 16384, 65536, 262144, 1048576]
    groups = [8] if args.quick else [5, 8, 16, 64]
    torch._dynamo.config.recompile_limit = 64  # one graph per (size, group size), as a trainer would have
    compiled_adv = torch.compile(eager_group_advantages, dynamic=False)
    compiled_comp = torch.compile(eager_composite, dynamic=False)
    compiled_cos = torch.compile(eager_cosine, dynamic=False)
    rows = []

    def record(op, shape, group, impl, seconds, nbytes, eager_s):
        rows.append({"op": op, "shape": shape, "group_size": group, "impl": impl, "time_us": round(seconds * 1e6, 2),
                     "GB_per_s": round(nbytes / seconds / 1e9, 2), "speedup_vs_eager": round(eager_s / seconds, 2)})
        print(f"{op:22s} {shape:>12s} g={group!s:>3s} {impl:16s} {seconds * 1e6:10.1f} us  "
              f"{nbytes / seconds / 1e9:7.2f} GB/s  x{eager_s / seconds:6.2f} vs eager", flush=True)

    for n in sizes:
        for g in groups:
            n_g = n - n % g  # a whole number of groups
            r = torch.rand(n_g, device=device)
            nbytes = 2 * r.numel() * 4
            eager_s = bench(lambda: eager_group_advantages(r, g))
            record("group_advantages", str(n_g), g, "torch-eager", eager_s, nbytes, eager_s)
            record("group_advantages", str(n_g), g, "torch-compile", bench(lambda: compiled_adv(r, g)), nbytes, eager_s)
            for b in backends:
                record("group_advantages", str(n_g), g, f"medix-{b}",
                       bench(lambda: mk.group_advantages(r, g, backend=b)), nbytes, eager_s)
            if g == 8:
                c, w = torch.rand(n_g, 4, device=device), torch.tensor([0.5175, 0.3375, 0.045, 0.1], device=device)
                nbytes_c = c.numel() * 4 + 2 * n_g * 4
                eager_c = bench(lambda: eager_composite(c, w, g))
                record("composite_advantages", f"{n_g}x4", g, "torch-eager", eager_c, nbytes_c, eager_c)
                record("composite_advantages", f"{n_g}x4", g, "torch-compile", bench(lambda: compiled_comp(c, w, g)),
                       nbytes_c, eager_c)
                for b in backends:
                    record("composite_advantages", f"{n_g}x4", g, f"medix-{b}",
                           bench(lambda: mk.composite_advantages(c, w, g, backend=b)), nbytes_c, eager_c)
    for bsz, d in ([(256, 384)] if args.quick else [(256, 384), (1024, 1024), (8192, 1024)]):
        x, y = torch.randn(bsz, d, device=device), torch.randn(bsz, d, device=device)
        nbytes = 2 * x.numel() * 4 + bsz * 4
        eager_s = bench(lambda: eager_cosine(x, y))
        record("cosine_rewards", f"{bsz}x{d}", "-", "torch-eager", eager_s, nbytes, eager_s)
        record("cosine_rewards", f"{bsz}x{d}", "-", "torch-compile", bench(lambda: compiled_cos(x, y)), nbytes, eager_s)
        for b in backends:
            record("cosine_rewards", f"{bsz}x{d}", "-", f"medix-{b}",
                   bench(lambda: mk.cosine_rewards(x, y, threshold=0.8, backend=b)), nbytes, eager_s)
    write_csv(out, rows)
    print(f"\n{environment()}\nwrote {out}")


if __name__ == "__main__":
    main()
