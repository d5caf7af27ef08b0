"""The sweep's reward cases (runner: benchmarks/gpu/sweep.py, the Case type: sweep_cases.py):
cosine_rewards [65,536, 1,024] bf16 with every named configuration of the Triton kernel, and
group / composite advantages at N = 1M and at the trainer's 512 x 8, each with the medix
backends and eager PyTorch; device time and launches are profiled next to wall time (small=True)."""
from __future__ import annotations

import torch

from .correctness import bar
from .sweep_cases import Case, Variant, _need


def cosine_case(device: str, dry: bool) -> Case:
    import torch.nn.functional as F

    import medix_kernels as mk
    from medix_kernels.triton_kernels import configs
    from medix_kernels.triton_kernels import cosine as tc
    n, d = (9, 100) if dry else (65536, 1024)
    dtype = torch.bfloat16

    def make():
        g = torch.Generator(device=device).manual_seed(0)
        x = torch.randn(n, d, generator=g, device=device)
        y = x + 0.7 * torch.randn(n, d, generator=g, device=device)
        return {"x": x.to(dtype), "y": y.to(dtype)}

    def reference(x):
        return {"cos": (F.cosine_similarity(x["x"].double(), x["y"].double()), bar("fp32", dtype))}

    def kernel(cfg):
        def build(x, state):
            out = torch.empty(n, dtype=torch.float32, device=device)

            def run():
                state["handle"] = tc.launch(x["x"], x["y"], out, 1e-8, None, cfg)
                return {"cos": out}
            return run
        return build

    def api(backend):
        def build(x, state):
            _need(backend, device)
            return lambda: {"cos": mk.cosine_rewards(x["x"], x["y"], backend=backend)}
        return build

    variants = [Variant(name, "triton", kernel(cfg), "raw kernel launch")
                for name, cfg in configs.COSINE_CONFIGS.items()]
    variants += [Variant(f"api-{b}", b, api(b), "cosine_rewards") for b in ("triton", "cuda")]
    variants.append(Variant("torch-eager", "eager", lambda x, s: (lambda: {"cos": F.cosine_similarity(
        x["x"].float(), x["y"].float())}), "F.cosine_similarity in fp32"))
    return Case("cosine_rewards", f"B={n} D={d}", dtype, make, reference, variants, bytes=2 * n * d * 2 + n * 4,
                small=True, size_tensor="x")


def _adv_variants(call, eager_fn):
    """The medix backends through the public function, and eager PyTorch."""
    def api(backend):
        def build(x, state):
            _need(backend, x["device"])
            return lambda: call(x, backend)
        return build
    out = [Variant(f"api-{b}", b, api(b), "public function") for b in ("triton", "cuda", "torch")]
    out.append(Variant("torch-eager", "eager", lambda x, s: (lambda: eager_fn(x)), "benchmarks.peers.eager"))
    return out


def advantages_cases(device: str, dry: bool) -> list[Case]:
    import medix_kernels as mk
    from medix_kernels import reference as mref

    from ..ops.rewards import WEIGHTS
    from ..peers import eager
    sizes = ((64, 16), (16, 8)) if dry else ((1 << 20, 16), (512 * 8, 8))
    f32 = torch.float32
    cases = []
    for n, g in sizes:
        def make(n=n, g=g):
            gen = torch.Generator(device=device).manual_seed(0)
            return {"r": torch.rand(n, generator=gen, device=device), "g": g, "device": device,
                    "c": torch.rand(n, 4, generator=gen, device=device), "w": torch.tensor(WEIGHTS, device=device)}

        cases.append(Case(
            "group_advantages", f"N={n} G={g}", f32, make,
            lambda x: {"adv": (mref.group_advantages(x["r"].double(), x["g"]).float(), bar("fp32", f32))},
            _adv_variants(lambda x, b: {"adv": mk.group_advantages(x["r"], x["g"], backend=b)},
                          lambda x: {"adv": eager.group_advantages(x["r"], x["g"])}),
            bytes=2 * n * 4, small=True, size_tensor="r"))
        cases.append(Case(
            "composite_advantages", f"N={n} K=4 G={g}", f32, make,
            lambda x: {"adv": (mk.composite_advantages(x["c"].double(), x["w"].double(), x["g"], backend="torch")[1],
                               bar("fp32", f32))},
            _adv_variants(lambda x, b: {"adv": mk.composite_advantages(x["c"], x["w"], x["g"], backend=b)[1]},
                          lambda x: {"adv": eager.composite_advantages(x["c"], x["w"], x["g"])[1]}),
            bytes=n * 4 * 4 + 2 * n * 4, small=True, size_tensor="c"))
    return cases
