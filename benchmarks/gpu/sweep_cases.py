"""What the GPU sweep times: one ``Case`` per (op, shape), each with its variants (every named
configuration of the medix kernel, the public API with value checks on and off, the CUDA backend
where built, the peers), a reference and an error measure. Runner: benchmarks/gpu/sweep.py.

Error (``max_err``): for every output the relative error ||out - ref|| / ||ref|| (the measure and
bars of benchmarks/gpu/correctness.py: fp32 outputs 1e-4, outputs stored in bf16 1e-2) divided
by its bar; the row's max_err is the largest over its outputs, so <= 1 is correct. References:
float64 on the first rows (log-probs, entropy, d logits), the fp32 PyTorch reference over the
whole batch for grpo_loss (its loss and the first rows of its gradient).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..ops.base import Unavailable
from .correctness import bar, rel_err

REF_ROWS = 256  # rows of [T, V] outputs compared with the float64 reference


@dataclass
class Variant:
    name: str
    backend: str                 # a medix backend (triton, cuda, torch) or the peer's name
    build: Callable              # build(inputs, state) -> fn() -> {output: tensor}; may set state["handle"]
    note: str = ""


@dataclass
class Case:
    op: str
    shape: str
    dtype: torch.dtype
    make: Callable               # make() -> inputs
    reference: Callable          # reference(inputs) -> {output: (tensor, bar)}
    variants: list = field(default_factory=list)
    bytes: int = 0               # the op's minimum traffic (rate = bytes / time)
    small: bool = False          # profile device time and launches (reward ops, grpo_loss)
    size_tensor: str = ""        # the input auto's rule sees (its numel picks the rule)


def errors(out: dict, ref: dict) -> float:
    """max over outputs of rel_err / bar (<= 1: correct)."""
    worst = 0.0
    for name, (want, limit) in ref.items():
        got = out[name]
        e = rel_err(got[: want.shape[0]] if got.dim() and want.dim() else got, want)
        if e != e:  # NaN where the reference is finite
            return float("nan")
        worst = max(worst, e / limit)
    return worst


def _usable(backend: str, device: str) -> bool:
    from medix_kernels import _backend
    return _backend.usable(backend, torch.device(device))


def _need(backend: str, device: str) -> None:
    if not _usable(backend, device):
        raise Unavailable(f"the {backend} backend is not usable here")


# ----------------------------------------------------------------------------- log-prob forward

def _logits(t, v, dtype, device):
    g = torch.Generator(device=device).manual_seed(0)
    x = (torch.randn(t, v, generator=g, device=device) * 2).to(dtype)
    return x, torch.randint(0, v, (t,), generator=g, device=device)


def _ref_rows(x, ids, g_lp=None):
    """float64 logp, entropy (and d logits for the upstream g_lp) of the first REF_ROWS rows."""
    r = min(REF_ROWS, x.shape[0])
    xr = x[:r].double().requires_grad_(g_lp is not None)
    lse = torch.logsumexp(xr, -1)
    logp = xr.gather(-1, ids[:r, None]).squeeze(-1) - lse
    p = torch.softmax(xr, -1)
    ent = lse - (p * xr).sum(-1)
    grad = torch.autograd.grad((logp * g_lp[:r].double()).sum(), xr)[0] if g_lp is not None else None
    return logp.detach(), ent.detach(), grad


def logprob_fwd_case(device: str, dry: bool) -> Case:
    from medix_kernels import selective_log_softmax
    from medix_kernels.triton_kernels import configs
    from medix_kernels.triton_kernels import logprob as tk

    from ..peers import trl_peer
    b, l, v = (2, 3, 257) if dry else (8, 1024, 152064)
    t, dtype = b * l, torch.bfloat16

    def reference(x):
        logp, ent, _ = _ref_rows(x["x"], x["ids"])
        return {"logp": (logp, bar("fp32", dtype)), "entropy": (ent, bar("fp32", dtype))}

    def kernel(cfg):
        def build(x, state):
            f32 = dict(dtype=torch.float32, device=device)
            logp, lse, ent = torch.empty(t, **f32), torch.empty(t, **f32), torch.empty(t, **f32)

            def run():
                state["handle"] = tk.launch_fwd(x["x"], x["ids"], logp, lse, ent, 1.0, True, cfg)
                return {"logp": logp, "entropy": ent}
            return run
        return build

    def api(backend, validate):
        def build(x, state):
            _need(backend, device)
            x3, i2 = x["x"].view(b, l, v), x["ids"].view(b, l)

            def run():
                with torch.no_grad():
                    lp, ent = selective_log_softmax(x3, i2, return_entropy=True, validate=validate, backend=backend)
                return {"logp": lp.view(-1), "entropy": ent.view(-1)}
            return run
        return build

    def cuda_op(x, state):
        _need("cuda", device)
        return lambda: dict(zip(("logp", "lse", "entropy"), torch.ops.medix.logprob_fwd(x["x"], x["ids"], 1.0, True)))

    def trl(x, state):
        u = trl_peer.utils()
        x3, i2 = x["x"].view(b, l, v), x["ids"].view(b, l)

        def run():
            lp, ent = u.selective_log_softmax_and_entropy(x3, i2, entropy_requires_grad=False)
            return {"logp": lp.reshape(-1), "entropy": ent.reshape(-1)}
        return run

    variants = [Variant(name, "triton", kernel(cfg), "raw kernel launch")
                for name, cfg in configs.LOGPROB_FWD_CONFIGS.items()]
    variants += [Variant(f"api-{b_}-{'checked' if val else 'unchecked'}", b_, api(b_, val),
                         f"selective_log_softmax(return_entropy=True, validate={val})")
                 for b_ in ("triton", "cuda") for val in (True, False)]
    variants += [Variant("cuda-op", "cuda", cuda_op, "torch.ops.medix.logprob_fwd"),
                 Variant("trl", "trl", trl, "trl selective_log_softmax_and_entropy (its Triton kernel on CUDA)")]
    return Case("logprob_fwd", f"T={t} ({b}x{l}) V={v}", dtype, lambda: dict(zip(("x", "ids"), _logits(t, v, dtype,
                                                                                                   device))),
                reference, variants, bytes=t * v * 2 + t * 16, size_tensor="x")


# ----------------------------------------------------------------------------- log-prob backward

def logprob_bwd_case(device: str, dry: bool) -> Case:
    from medix_kernels.triton_kernels import configs
    from medix_kernels.triton_kernels import logprob as tk
    b, l, v = (2, 3, 257) if dry else (8, 1024, 152064)
    t, dtype = b * l, torch.bfloat16

    def make():
        x, ids = _logits(t, v, dtype, device)
        _, lse, _ = tk.logprob_fwd(x, ids, 1.0, False)
        g = torch.Generator(device=device).manual_seed(1)
        return {"x": x, "ids": ids, "lse": lse, "glp": torch.randn(t, generator=g, device=device)}

    def reference(x):
        _, _, grad = _ref_rows(x["x"], x["ids"], x["glp"])
        return {"grad": (grad, bar("stored", dtype))}

    def kernel(cfg):
        def build(x, state):
            out = torch.empty_like(x["x"])

            def run():
                state["handle"] = tk.launch_bwd(x["x"], out, x["ids"], x["lse"], x["glp"], None, None, 1.0, cfg)
                return {"grad": out}
            return run
        return build

    def cuda_op(x, state):
        _need("cuda", device)
        return lambda: {"grad": torch.ops.medix.logprob_bwd(x["x"], x["ids"], x["lse"], x["glp"], None, None, 1.0)}

    variants = [Variant(name, "triton", kernel(cfg), "raw kernel launch into a preallocated buffer")
                for name, cfg in configs.LOGPROB_BWD_CONFIGS.items()]
    variants.append(Variant("cuda-op", "cuda", cuda_op, "torch.ops.medix.logprob_bwd (allocates d logits)"))
    return Case("logprob_bwd", f"T={t} ({b}x{l}) V={v}", dtype, make, reference, variants, bytes=2 * t * v * 2,
                size_tensor="x")


# ----------------------------------------------------------------------------- grpo_loss (forward + backward)

def grpo_case(device: str, dry: bool) -> Case:
    """MediX GRPO (clip 0.2, k3 KL, beta 1e-2, token-mean), 10% of the tokens masked. Every medix
    variant runs in place on one private copy of the logits that all its timed calls reuse (as
    Liger's kernel does): no [T, V] gradient buffer is allocated per call."""
    import medix_kernels as mk
    b, l, v = (2, 3, 257) if dry else (8, 1024, 152064)
    t, dtype = b * l, torch.bfloat16
    cfg = mk.LossConfig.preset("grpo")
    variants = (_grpo_kernel_variants(cfg, device, t, v) + _grpo_autograd_variants(cfg, device, t, v)
                + [_grpo_liger_variant(l, t, v, device)])
    return Case("grpo_loss", f"T={t} ({b}x{l}) V={v}", dtype, _grpo_inputs(b, l, v, dtype, device),
                _grpo_reference(cfg, t, v, dtype), variants, bytes=3 * t * v * 2, small=True, size_tensor="logits")


def _grpo_inputs(b, l, v, dtype, device) -> Callable:
    """make() -> logits [B, L, V], sampled ids, and the policy inputs around their log-probs."""
    import medix_kernels as mk

    from ..ops.loss import _policy_inputs

    def make():
        g = torch.Generator(device=device).manual_seed(0)
        logits = (torch.randn(b, l, v, generator=g, device=device) * 2).to(dtype)
        ids = torch.randint(0, v, (b, l), generator=g, device=device)
        with torch.no_grad():
            logp0 = mk.selective_log_softmax(logits, ids)
        return _policy_inputs(b, l, logp0, g, device, {"logits": logits, "ids": ids})
    return make


def _grpo_reference(cfg, t, v, dtype) -> Callable:
    """The fp32 PyTorch reference over the whole batch: its loss and the first rows of d logits."""
    from medix_kernels import reference as mref

    def reference(x):
        xr = x["logits"].float().requires_grad_(True)
        loss, _ = mref.grpo_loss(xr, x["ids"], x["mask"], x["adv"], old_logp=x["old"], ref_logp=x["ref"], config=cfg)
        (grad,) = torch.autograd.grad(loss, xr)
        r = min(REF_ROWS, t)
        return {"loss": (loss.detach(), bar("fp32", dtype)),
                "grad": (grad.view(t, v)[:r].clone(), bar("stored", dtype))}
    return reference


def _private(x, src=None):
    """The variant's own copy of the logits, which its in-place backward overwrites with d logits."""
    return (x["logits"] if src is None else src).detach().clone()


def _grpo_kernel_variants(cfg, device, t, v) -> list[Variant]:
    """The raw Triton launches, one variant per named config: the lean forward + backward kernels and
    the single-pass kernel (forward and d logits in one pass)."""
    from medix_kernels._defaults import kernel_config
    from medix_kernels.triton_kernels import configs
    from medix_kernels.triton_kernels import grpo as tg
    from medix_kernels.triton_kernels import single_pass as sp

    def lean_kernels(fwd, bwd):
        def build(x, state):
            buf = _private(x)
            one_hot = torch.zeros(6, device=device)
            one_hot[0] = 1.0

            def run():
                out, lse, dlt, coef = tg.policy_fwd(buf, x["ids"], x["mask"], x["adv"], x["old"], x["ref"], 1.0,
                                                    cfg.loss_type, cfg.clip_low, cfg.clip_high, cfg.dual_clip, cfg.kl,
                                                    cfg.beta, cfg.aggregation, cfg.max_len, False, fwd_cfg=fwd)
                grad = tg.policy_bwd(buf, x["ids"], lse, dlt, coef, one_hot, 1.0, out=buf, bwd_cfg=bwd)
                return {"loss": out[0], "grad": grad.view(t, v)}
            return run
        return build

    def single_kernels(fwd):
        def build(x, state):
            buf = _private(x)

            def run():  # forward + d logits (for an upstream gradient of 1) in one pass, over buf
                out, grad = sp.single_pass_fwd(buf, x["ids"], x["mask"], x["adv"], x["old"], x["ref"], 1.0,
                                               cfg.loss_type, cfg.clip_low, cfg.clip_high, cfg.dual_clip, cfg.kl,
                                               cfg.beta, cfg.aggregation, cfg.max_len, False, out=buf, fwd_cfg=fwd)
                return {"loss": out[0], "grad": grad.view(t, v)}
            return run
        return build

    variants = [Variant(f"lean fwd={name}", "triton", lean_kernels(name, None), "lean kernels, bwd default")
                for name in configs.LOGPROB_FWD_CONFIGS]
    variants += [Variant(f"lean bwd={name}", "triton", lean_kernels(None, name), "lean kernels, fwd default")
                 for name in configs.LOGPROB_BWD_CONFIGS if name != kernel_config("logprob_bwd")]
    variants += [Variant(f"single fwd={name}", "triton", single_kernels(name), "single-pass kernels (one row per "
                         "program: the config's rows ignored)")
                 for name, c in configs.LOGPROB_FWD_CONFIGS.items() if c.rows == 1]
    return variants


def _grpo_autograd_variants(cfg, device, t, v) -> list[Variant]:
    """grpo_loss through autograd, in place: its two Triton paths by name, then the public API per
    backend with value checks on and off."""
    import importlib

    import medix_kernels as mk
    gl = importlib.import_module("medix_kernels.grpo_loss")

    def autograd_call(fn):
        def build(x, state):
            buf = _private(x)  # one private copy: the in-place backward writes d logits over it

            def run():
                leaf = buf.requires_grad_(True)
                loss, _ = fn(leaf)
                (grad,) = torch.autograd.grad(loss, leaf)
                buf.requires_grad_(False)
                return {"loss": loss.detach(), "grad": grad.view(t, v)}
            return run
        return build

    def api(backend, validate):
        def build(x, state):
            _need(backend, device)
            return autograd_call(lambda leaf: mk.grpo_loss(
                leaf, x["ids"], x["mask"], x["adv"], old_logp=x["old"], ref_logp=x["ref"], config=cfg,
                inplace_backward=True, validate=validate, backend=backend))(x, state)
        return build

    def path(name):  # grpo_loss's triton path by name, in place, through autograd
        def build(x, state):
            return autograd_call(lambda leaf: gl.TRITON_PATHS[name](
                leaf, x["ids"], x["mask"], x["adv"], x["old"], x["ref"], cfg, True, False, "triton"))(x, state)
        return build

    variants = [Variant("single_pass", "triton", path("single_pass"),
                        "the single_pass path with autograd (its backward: the scale-unless-one kernel)"),
                Variant("composed", "triton", path("composed"), "selective_log_softmax + the objective in PyTorch")]
    variants += [Variant(f"api-{b_}-{'checked' if val else 'unchecked'}", b_, api(b_, val),
                         f"grpo_loss(inplace_backward=True, validate={val}) + autograd.grad")
                 for b_ in ("triton", "cuda") for val in (True, False)]
    return variants


def _grpo_liger_variant(l, t, v, device) -> Variant:
    """Liger-Kernel's Triton GRPO loss in place (its bnpo aggregation), with the same clip and beta."""
    from ..ops.logprob import liger_logits
    from ..ops.loss import BETA, CLIP
    from ..peers import liger_peer

    def liger(x, state):
        fn = liger_peer.triton_grpo_loss(device)
        buf = _private(x, liger_logits(x))  # [B, L + 1, V]: Liger drops the last position

        def run():
            leaf = buf.requires_grad_(True)
            loss = fn(leaf, x["old"], x["ref"], x["ids"], x["adv"], x["mask"], temperature=1.0, beta=BETA,
                      eps_low=CLIP, eps_high=CLIP, inplace=True, loss_type="bnpo", reduce=True)
            loss = loss[0] if isinstance(loss, tuple) else loss
            (grad,) = torch.autograd.grad(loss, leaf)
            buf.requires_grad_(False)
            return {"loss": loss.detach(), "grad": grad[:, :l].reshape(t, v)}
        return run
    return Variant("liger-triton", "liger", liger, "liger_kernel triton_grpo_loss (in place, bnpo)")
