"""Reward-side ops: group_advantages, composite_advantages, cosine_rewards.

Implementations: every medix backend usable on the device; eager PyTorch (what a trainer writes)
and torch.compile of it; TRL's formulation around its ``nanstd``; verl's advantage formula
(written from its semantics, verl is not installed); sentence-transformers' ``pairwise_cos_sim``
for the cosine reward. Bytes moved (the minimum): rewards read once, advantages written once
(composite: components read, total and advantages written; cosine: both batches read, one
float per row written). Inputs stay float32 whatever ``--dtype`` says (rewards are float32 in
every trainer); the cosine reward takes embeddings in ``--dtype``.
"""
from __future__ import annotations

import torch

from ..peers import eager, st_peer, trl_peer, verl_formulas
from .base import Impl, OpSpec, compiled, generator, medix_backends

WEIGHTS = [0.5175, 0.3375, 0.045, 0.1]  # MediX-R1's total: 0.9 * (0.575, 0.375, 0.05) and 0.1


# ----------------------------------------------------------------------------- group_advantages

def _adv_cases(profile, device):
    if profile == "smoke":
        return [dict(n=64, group=8)]
    if profile == "quick":
        return [dict(n=1024, group=8), dict(n=65536, group=8), dict(n=65536, group=64)]
    if profile == "medium":
        return [dict(n=n, group=g) for n in (1024, 65536, 524288) for g in (4, 8, 64)]
    return [dict(n=n, group=g) for n in (1024, 8192, 65536, 524288, 4194304) for g in (4, 8, 16, 64)]


def _adv_inputs(p, dtype, device):
    return {"r": torch.rand(p["n"], generator=generator(device), device=device), "g": p["group"]}


def _adv_impls(device):
    import medix_kernels as mk
    out = []
    for b in medix_backends(device):
        out.append(Impl(f"medix-{b}", "medix", b, lambda x, b=b: (lambda: mk.group_advantages(x["r"], x["g"],
                                                                                             backend=b)),
                        auto_candidate=True))
    out.append(Impl("torch-eager", "eager", "eager", lambda x: (lambda: eager.group_advantages(x["r"], x["g"]))))
    out.append(Impl("torch-compile", "compile", "inductor",
                    lambda x: (lambda f=compiled(eager.group_advantages): f(x["r"], x["g"]))))

    def trl_build(x):
        nanstd = trl_peer.utils().nanstd
        return lambda: trl_peer.group_advantages(x["r"], x["g"], nanstd)
    out.append(Impl("trl", "trl", "eager", trl_build, note="TRL's nanstd + GRPOTrainer's formula (eps 1e-4)"))
    out.append(Impl("verl-formula", "verl", "eager",
                    lambda x: (lambda: verl_formulas.grpo_advantages(x["r"], x["g"])), note=verl_formulas.LABEL))
    return out


GROUP_ADVANTAGES = OpSpec(
    name="group_advantages", axis="n", description="GRPO advantages (r - mean) / (std + eps) over groups of G",
    cases=_adv_cases, make_inputs=_adv_inputs, impls=_adv_impls,
    bytes_moved=lambda p, e: 2 * p["n"] * 4, footprint=lambda p, e: 8 * p["n"] * 4,
    label=lambda p: f"N={p['n']} G={p['group']}")


# ----------------------------------------------------------------------------- composite_advantages

def _comp_cases(profile, device):
    if profile == "smoke":
        return [dict(n=64, k=4, group=8)]
    if profile == "quick":
        return [dict(n=1024, k=4, group=8), dict(n=65536, k=4, group=8)]
    sizes = [1024, 65536, 524288] + ([8192, 4194304] if profile == "full" else [])
    return [dict(n=n, k=4, group=g) for n in sorted(sizes) for g in (5, 8)]


def _comp_inputs(p, dtype, device):
    g = generator(device)
    return {"c": torch.rand(p["n"], p["k"], generator=g, device=device),
            "w": torch.tensor(WEIGHTS[:p["k"]], device=device), "g": p["group"]}


def _comp_impls(device):
    import medix_kernels as mk
    out = []
    for b in medix_backends(device):
        out.append(Impl(f"medix-{b}", "medix", b,
                        lambda x, b=b: (lambda: mk.composite_advantages(x["c"], x["w"], x["g"], backend=b)),
                        auto_candidate=True))
    out.append(Impl("torch-eager", "eager", "eager",
                    lambda x: (lambda: eager.composite_advantages(x["c"], x["w"], x["g"]))))
    out.append(Impl("torch-compile", "compile", "inductor",
                    lambda x: (lambda f=compiled(eager.composite_advantages): f(x["c"], x["w"], x["g"]))))

    def trl_build(x):
        nanstd = trl_peer.utils().nanstd
        return lambda: trl_peer.composite_advantages(x["c"], x["w"], x["g"], nanstd)
    out.append(Impl("trl", "trl", "eager", trl_build, note="TRL sum_then_normalize: weighted nansum, nanstd"))
    return out


COMPOSITE_ADVANTAGES = OpSpec(
    name="composite_advantages", axis="n", description="weighted total of K reward components + its group advantages",
    cases=_comp_cases, make_inputs=_comp_inputs, impls=_comp_impls,
    bytes_moved=lambda p, e: p["n"] * p["k"] * 4 + 2 * p["n"] * 4, footprint=lambda p, e: 12 * p["n"] * 4,
    label=lambda p: f"N={p['n']} K={p['k']} G={p['group']}")


# ----------------------------------------------------------------------------- cosine_rewards

def _cos_cases(profile, device):
    if profile == "smoke":
        return [dict(n=32, dim=384)]
    if profile == "quick":
        return [dict(n=256, dim=384), dict(n=4096, dim=1024)]
    sizes = [256, 8192] + ([2048, 65536] if profile == "full" else [])
    return [dict(n=n, dim=d) for n in sorted(sizes) for d in (384, 1024)]


def _cos_inputs(p, dtype, device):
    g = generator(device)
    x = torch.randn(p["n"], p["dim"], generator=g, device=device)
    y = x + 0.7 * torch.randn(p["n"], p["dim"], generator=g, device=device)  # about half above 0.8
    return {"x": x.to(dtype), "y": y.to(dtype)}


def _cos_impls(device):
    import medix_kernels as mk
    out = []
    for b in medix_backends(device):
        out.append(Impl(f"medix-{b}", "medix", b,
                        lambda x, b=b: (lambda: mk.cosine_rewards(x["x"], x["y"], threshold=0.8, backend=b)),
                        auto_candidate=True))
    out.append(Impl("torch-eager", "eager", "eager", lambda x: (lambda: eager.cosine_rewards(x["x"], x["y"]))))
    out.append(Impl("torch-compile", "compile", "inductor",
                    lambda x: (lambda f=compiled(eager.cosine_rewards): f(x["x"], x["y"]))))

    def st_build(x):
        fn = st_peer.pairwise_cos_sim()
        return lambda: (fn(x["x"], x["y"]) >= 0.8).float()
    out.append(Impl("sentence-transformers", "st", "eager", st_build, note="util.pairwise_cos_sim >= 0.8"))
    return out


COSINE_REWARDS = OpSpec(
    name="cosine_rewards", axis="n", description="row-wise cosine similarity >= 0.8 of two [B, D] embedding batches",
    cases=_cos_cases, make_inputs=_cos_inputs, impls=_cos_impls,
    bytes_moved=lambda p, e: 2 * p["n"] * p["dim"] * e + p["n"] * 4,
    footprint=lambda p, e: 8 * p["n"] * p["dim"] * 4, label=lambda p: f"B={p['n']} D={p['dim']}")
