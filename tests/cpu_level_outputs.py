"""The cpu backend's outputs on a fixed set of inputs, and the reference's, for tests/test_cpu_levels.py.

``python -m tests.cpu_level_outputs OUT.pt`` computes every case with the compiled CPU kernels and
saves the outputs; the test runs it once per ISA level (MEDIX_CPU_LEVEL=0/1/2 caps the level the
C++ kernels pick, csrc/cpu/isa.h) and compares each level with ``reference_outputs()``, computed
in its own process by medix_kernels.reference on the same inputs (fixed seeds).
"""
from __future__ import annotations

import sys

import torch

import medix_kernels as mk
from medix_kernels import reference as ref

WEIGHTS = [0.5175, 0.3375, 0.045, 0.1]  # MediX-R1's composite weights
# every fixed size with an AVX kernel (trees: 2, 4, 8k / 16k; gathers: 3..15), a few without
FIXED_SIZES = (2, 3, 4, 5, 7, 8, 12, 16, 17, 24, 32, 48, 64, 100)
LOSS_SHAPES = ((2, 5, 1000), (1, 3, 4099), (3, 4, 17))  # V: blocks, a partial block, below a vector
LOSS_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _rewards(n: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, generator=gen) * 3).round(decimals=1).to(dtype)  # ties: degenerate groups


def _ragged_ids(n_groups: int, max_size: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    sizes = torch.randint(1, max_size + 1, (n_groups,), generator=gen)
    return torch.repeat_interleave(torch.arange(n_groups) * 2, sizes)


def advantage_cases() -> dict:
    """name -> (values, layout (group_size or group_index), keyword arguments); values [N, 4] are
    components with WEIGHTS."""
    cases = {}
    for g in FIXED_SIZES:
        r = _rewards(16 * g * 5 + 3 * g, g)  # whole tiles of 16 and 8 groups and a remainder
        cases[f"fixed{g}"] = (r, g, {})
        cases[f"fixed{g}-rloo-batch"] = (r, g, dict(mode="rloo", scale="batch"))
        cases[f"fixed{g}-dr_grpo"] = (r, g, dict(mode="dr_grpo", scale="none"))
    r = _rewards(4096, 1)
    r[[5, 100, 4000]] = torch.tensor([float("nan"), float("inf"), -float("inf")])
    cases["nan-to-zero"] = (r, 8, dict(nan_policy="zero"))
    cases["bf16"] = (_rewards(8 * 64, 2, torch.bfloat16), 8, {})
    for max_size in (20, 70):
        ids = _ragged_ids(300, max_size, max_size)
        rr = _rewards(ids.numel(), max_size)
        cases[f"ragged{max_size}"] = (rr, ids, {})
        cases[f"ragged{max_size}-verl"] = (rr, ids, dict(singleton="verl"))
        cases[f"ragged{max_size}-rloo"] = (rr, ids, dict(mode="rloo", scale="none"))
    gen = torch.Generator().manual_seed(3)
    comp = (torch.rand(6000, 4, generator=gen) > 0.5).float()
    ids = _ragged_ids(300, 20, 4)
    cases["composite8"] = (comp[:3048], 8, {})
    cases["composite5-rloo"] = (comp[:3045], 5, dict(mode="rloo"))
    cases["composite-ragged"] = (comp[:ids.numel()], ids, {})
    return cases


def _advantages_cpu(values, layout, kw) -> dict:
    lay = dict(group_index=layout) if isinstance(layout, torch.Tensor) else dict(group_size=layout)
    if values.dim() == 2:
        total, adv = mk.composite_advantages(values, WEIGHTS, backend="cpu", **lay, **kw)
        stats = mk.group_stats(total, backend="cpu", **lay)
    else:
        adv = mk.group_advantages(values, backend="cpu", **lay, **kw)
        total = None
        stats = mk.group_stats(values, backend="cpu", **lay, nan_policy=kw.get("nan_policy", "raise"))
    return {"adv": adv.float(), "total": total, "mean": stats.mean, "std": stats.std, "degenerate": stats.degenerate}


def _advantages_reference(values, layout, kw) -> dict:
    lay = dict(group_index=layout) if isinstance(layout, torch.Tensor) else dict(group_size=layout)
    kw = dict(kw)
    if kw.pop("nan_policy", "raise") == "zero":
        values = torch.nan_to_num(values, nan=0.0, posinf=0.0, neginf=0.0)
    total = ref.composite_rewards(values, torch.tensor(WEIGHTS)) if values.dim() == 2 else values.float()
    mean, std, degenerate = ref.group_stats(total, **lay)
    adv = ref.group_advantages(total, **lay, **kw).to(values.dtype).float()
    return {"adv": adv, "total": total if values.dim() == 2 else None, "mean": mean, "std": std,
            "degenerate": degenerate}


def loss_batch(b: int, l: int, v: int, dtype, seed: int):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(b, l, v, generator=gen) * 2).to(dtype)
    logits[0, 0, : v // 3] = -float("inf")  # masked words: zero probability, zero gradient
    ids = torch.randint(v // 3, v, (b, l), generator=gen)
    mask = torch.rand(b, l, generator=gen) > 0.2
    adv = torch.randn(b, generator=gen)
    old = -5 + 0.3 * torch.randn(b, l, generator=gen)
    ref_lp = -5 + 0.3 * torch.randn(b, l, generator=gen)
    return logits, ids, mask, adv, old, ref_lp


def _logprobs(shape, dtype, slsm) -> dict:
    logits, ids, *_ = loss_batch(*shape, dtype, seed=shape[2])
    x = logits.clone().requires_grad_(True)
    logp, ent = slsm(x, ids)
    g = torch.linspace(-1, 1, logp.numel()).view_as(logp)
    (logp * g + ent * g.flip(-1)).sum().backward()
    return {"logp": logp.detach().float(), "entropy": ent.detach().float(), "grad": x.grad.float()}


def _loss(shape, dtype, loss_fn) -> dict:
    logits, ids, mask, adv, old, ref_lp = loss_batch(*shape, dtype, seed=shape[2])
    x = logits.clone().requires_grad_(True)
    value, stats = loss_fn(x * 1.0, ids, mask, adv, old, ref_lp)  # x * 1.0: a buffer an in-place backward may take
    value.backward()
    return {"loss": value.detach().float(), "entropy_mean": stats["entropy_mean"].float(), "grad": x.grad.float()}


def loss_cases() -> dict:
    """name -> (shape, dtype, what: "logprob" | "loss" | "loss-inplace")."""
    return {f"{what}-{'x'.join(map(str, s))}-{str(d)[6:]}": (s, d, what)
            for s in LOSS_SHAPES for d in LOSS_DTYPES for what in ("logprob", "loss", "loss-inplace")}


def _loss_case_cpu(shape, dtype, what) -> dict:
    if what == "logprob":
        return _logprobs(shape, dtype, lambda x, ids: mk.selective_log_softmax(x, ids, temperature=0.7,
                                                                               return_entropy=True, backend="cpu"))
    cfg = mk.LossConfig.preset("grpo")
    return _loss(shape, dtype, lambda x, ids, m, a, o, r: mk.grpo_loss(
        x, ids, m, a, old_logp=o, ref_logp=r, config=cfg, return_entropy=True, inplace_backward=what == "loss-inplace",
        backend="cpu"))


def _loss_case_reference(shape, dtype, what) -> dict:
    """The float64 reference on the same logits (upcast exactly); the gradient rounded to the logits' dtype."""
    cfg = mk.LossConfig.preset("grpo")
    if what == "logprob":
        out = _logprobs(shape, dtype, lambda x, ids: ref.selective_log_softmax(x.double(), ids, temperature=0.7,
                                                                               return_entropy=True))
    else:
        out = _loss(shape, dtype, lambda x, ids, m, a, o, r: ref.grpo_loss(
            x.double(), ids, m, a, old_logp=o, ref_logp=r, config=cfg, return_entropy=True))
    out["grad"] = out["grad"].to(dtype).float()
    return out


def exp_probe_inputs() -> torch.Tensor:
    """x in [-87, -17]: rows [0, x] have S = 1 + e^x = 1 in float32, so lse = 0 exactly and the
    gradient of -logp at x is the kernels' e^x itself."""
    gen = torch.Generator().manual_seed(6)
    return torch.cat([torch.linspace(-87.0, -17.0, 1 << 16), -17.0 - 70.0 * torch.rand(1 << 16, generator=gen)])


def exp_probe_cpu() -> torch.Tensor:
    x = exp_probe_inputs()
    logits = torch.stack([torch.zeros_like(x), x], dim=1).requires_grad_(True)
    logp = mk.selective_log_softmax(logits, torch.zeros(x.numel(), dtype=torch.long), backend="cpu")
    (-logp.sum()).backward()
    return logits.grad[:, 1]


def cpu_outputs() -> dict:
    out = {name: _advantages_cpu(*case) for name, case in advantage_cases().items()}
    out["exp"] = exp_probe_cpu()
    out.update({name: _loss_case_cpu(*case) for name, case in loss_cases().items()})
    return out


def reference_outputs() -> dict:
    out = {name: _advantages_reference(*case) for name, case in advantage_cases().items()}
    out.update({name: _loss_case_reference(*case) for name, case in loss_cases().items()})
    return out


if __name__ == "__main__":
    torch.save(cpu_outputs(), sys.argv[1])
