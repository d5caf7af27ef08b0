"""The policy loss, forward + backward: grpo_loss (from logits), fused_linear_grpo_loss (from
hidden states and the LM head) and fused_linear_selective_log_softmax (forward, no gradient).

Config everywhere: MediX-R1's GRPO (``LossConfig.preset("grpo")``: PPO clip 0.2, k3 KL to the
reference with beta 1e-2, token-mean), old and reference log-probs close to the current policy.
``medix-<backend>-tis`` rows: the same call with the rollout engine's log-probs and the project's
GPU recipes' correction (``rollout_correction="token_truncate"``, cap 2), weights and stats
included: what the correction costs, side by side with the row without it.
Gradients are taken with ``torch.autograd.grad`` (logits, or hidden states and LM head).

grpo_loss implementations: medix backends (and ``-inplace``: the backward writes d logits over
the logits, on one private copy of the logits that every timed call reuses, so it allocates no
gradient buffer where the others allocate one per call: see ``INPLACE_NOTE`` and the fair protocol
of bench_policy_loss_cpu.py --fair); eager = ``medix_kernels.reference.grpo_loss``
(materialised log-softmax) and torch.compile of it; TRL (its ``selective_log_softmax`` + the
GRPOTrainer loss formula); verl's formulas (clamps, dual clip 3, low_var_kl); Liger's Triton
``triton_grpo_loss`` (GPU, in place). Bytes moved: the logits read twice (forward, backward) and
their gradient written once.

fused_linear_grpo_loss: medix backends (chunked, no full logits; ``-unfused``: ``h @ W^T`` then
grpo_loss in place); eager = ``reference.fused_linear_grpo_loss`` (full fp32 logits) and
torch.compile of it; TRL (full logits, its ``selective_log_softmax``, the loss formula); Liger's
``LigerFusedLinearGRPOLoss``. Compute-bound: 6 T V H FLOPs (forward matmul, d hidden, d weight;
recomputing logits in the backward is extra work not counted).

fused_linear_selective_log_softmax: medix backends; eager full logits + log_softmax/gather and
its torch.compile; TRL (full logits + its selective_log_softmax); Liger's chunked log-prob helper.
2 T V H FLOPs.
"""
from __future__ import annotations

import torch

from ..peers import liger_peer, trl_peer, verl_formulas
from .base import Impl, OpSpec, compiled, generator, medix_backends
from .logprob import VOCABS, batch_seq, label, liger_logits, no_grad, token_vocab_cases

BETA, CLIP = 1e-2, 0.2


def config():
    import medix_kernels as mk
    return mk.LossConfig.preset("grpo")


def _policy_inputs(b, l, logp0, g, device, x):
    x["mask"] = torch.rand(b, l, generator=g, device=device) > 0.1
    x["adv"] = torch.randn(b, generator=g, device=device)
    x["old"] = logp0 + 0.05 * torch.randn(b, l, generator=g, device=device)
    x["ref"] = logp0 + 0.05 * torch.randn(b, l, generator=g, device=device)
    x["roll"] = logp0 + 0.05 * torch.randn(b, l, generator=g, device=device)  # the rollout engine's
    return x


TIS_NOTE = "rollout_correction=token_truncate (cap 2) with rollout_logp: the correction's weights and stats on"


def tis_config():
    return config().replace(rollout_correction="token_truncate", rollout_is_cap=2.0)


# ----------------------------------------------------------------------------- grpo_loss

def _grpo_inputs(p, dtype, device):
    import medix_kernels as mk
    g = generator(device)
    b, l = batch_seq(p["tokens"])
    logits = (torch.randn(b, l, p["vocab"], generator=g, device=device) * 2).to(dtype)
    ids = torch.randint(0, p["vocab"], (b, l), generator=g, device=device)
    with torch.no_grad():
        logp0 = mk.selective_log_softmax(logits, ids)
    return _policy_inputs(b, l, logp0, g, device, {"logits": logits, "ids": ids})


def _grad_step(x_leaf, loss_fn):
    loss = loss_fn(x_leaf)
    loss = loss[0] if isinstance(loss, tuple) else loss
    return torch.autograd.grad(loss, x_leaf)


INPLACE_NOTE = ("inplace_backward=True on ONE private copy of the logits reused by every timed call: from the "
                "second call on its backward overwrites the logits it reads with d logits and allocates no "
                "[T, V] buffer, while every other row writes its gradient into a fresh one; not the cost of a "
                "training step (bench_policy_loss_cpu.py --fair: a fresh copy per call for every row)")


def logits_leaf(x: dict, private: bool = False, src=None):
    """A zero-argument callable giving the tensor one timed call differentiates.

    Default (the suite): one leaf made here and reused by every call: the logits themselves, or a private
    copy for a backward that writes over its input (``private``). With ``x["fresh_logits"]`` (the fair
    protocol of bench_policy_loss_cpu.py --fair) every call of every implementation alike gets a fresh
    copy of the logits; the copy's own time is measured on its own (``copy_logits``) and subtracted."""
    src = x["logits"] if src is None else src
    if x.get("fresh_logits"):
        return lambda: src.detach().clone().requires_grad_(True)
    leaf = (src.detach().clone() if private else src.detach()).requires_grad_(True)
    return lambda: leaf


def copy_logits(x: dict, src=None):
    """What the fair protocol adds to every call: the fresh copy alone (timed as its own row)."""
    src = x["logits"] if src is None else src
    return lambda: src.detach().clone().requires_grad_(True)


def _grpo_impls(device):
    import medix_kernels as mk
    from medix_kernels import reference
    cfg = config()
    out = []
    for b in medix_backends(device):
        def build(x, b=b):
            leaf = logits_leaf(x)
            return lambda: _grad_step(leaf(), lambda t: mk.grpo_loss(
                t, x["ids"], x["mask"], x["adv"], old_logp=x["old"], ref_logp=x["ref"], config=cfg, backend=b))
        out.append(Impl(f"medix-{b}", "medix", b, build, auto_candidate=True))

        def build_tis(x, b=b):
            leaf, tis = logits_leaf(x), tis_config()
            return lambda: _grad_step(leaf(), lambda t: mk.grpo_loss(
                t, x["ids"], x["mask"], x["adv"], old_logp=x["old"], ref_logp=x["ref"], rollout_logp=x["roll"],
                config=tis, backend=b))
        out.append(Impl(f"medix-{b}-tis", "medix", b, build_tis, note=TIS_NOTE))
        if b != "torch":
            def build_inplace(x, b=b):
                leaf = logits_leaf(x, private=True)  # the backward writes d logits over it
                return lambda: _grad_step(leaf(), lambda t: mk.grpo_loss(
                    t, x["ids"], x["mask"], x["adv"], old_logp=x["old"], ref_logp=x["ref"], config=cfg,
                    inplace_backward=True, backend=b))
            out.append(Impl(f"medix-{b}-inplace", "medix", b, build_inplace, note=INPLACE_NOTE))

    def ref_build(fn):
        def build(x):
            leaf = logits_leaf(x)
            return lambda: _grad_step(leaf(), lambda t: fn(t, x["ids"], x["mask"], x["adv"], old_logp=x["old"],
                                                           ref_logp=x["ref"], config=cfg))
        return build
    out.append(Impl("torch-eager", "eager", "eager", ref_build(reference.grpo_loss),
                    note="medix_kernels.reference.grpo_loss (materialised log-softmax)"))
    out.append(Impl("torch-compile", "compile", "inductor",
                    lambda x: ref_build(compiled(reference.grpo_loss))(x)))

    def trl_build(x):
        u = trl_peer.utils()
        leaf = logits_leaf(x)
        return lambda: _grad_step(leaf(), lambda t: trl_peer.grpo_token_loss(
            u.selective_log_softmax(t, x["ids"]), x["old"], x["ref"], x["adv"], x["mask"], beta=BETA,
            eps_low=CLIP, eps_high=CLIP))
    out.append(Impl("trl", "trl", "triton" if device == "cuda" else "eager", trl_build,
                    note="trl selective_log_softmax + GRPOTrainer loss formula (bnpo)"))

    def verl_build(x):
        leaf = logits_leaf(x)
        return lambda: _grad_step(leaf(), lambda t: verl_formulas.grpo_loss(t, x["ids"], x["mask"], x["adv"], x["old"],
                                                                            x["ref"], beta=BETA))
    out.append(Impl("verl-formula", "verl", "eager", verl_build, note=verl_formulas.LABEL))

    def liger_build(x):
        fn = liger_peer.triton_grpo_loss(device)
        leaf = logits_leaf(x, private=True, src=liger_logits(x))  # written in place by its backward
        return lambda: _grad_step(leaf(), lambda t: fn(t, x["old"], x["ref"], x["ids"], x["adv"], x["mask"],
                                                       temperature=1.0, beta=BETA, eps_low=CLIP, eps_high=CLIP,
                                                       inplace=True, loss_type="bnpo", reduce=True))
    out.append(Impl("liger-triton", "liger", "triton", liger_build,
                    note="liger_kernel triton_grpo_loss (in place on one private copy reused by every call, "
                         "as medix-*-inplace; bnpo = token-mean)"))
    return out


GRPO_LOSS = OpSpec(
    name="grpo_loss", axis="tokens", description="GRPO loss from logits, forward + backward",
    cases=token_vocab_cases, make_inputs=_grpo_inputs, impls=_grpo_impls,
    bytes_moved=lambda p, e: 3 * p["tokens"] * p["vocab"] * e,
    footprint=lambda p, e: p["tokens"] * p["vocab"] * (3 * e + 4 * 4), label=label)


# ----------------------------------------------------------------------------- fused linear

def fused_cases(profile: str, device: str) -> list[dict]:
    if profile == "smoke":
        return [dict(tokens=64, vocab=512, hidden=32)]
    gpu = device == "cuda"
    if profile == "quick":
        trip = [(8192, 152064, 3584), (32768, 152064, 3584)] if gpu else [(256, 49152, 576), (512, 49152, 576)]
    elif profile == "medium":
        trip = ([(t, 152064, 3584) for t in (2048, 8192, 32768)] + [(8192, v, 3584) for v in (32768, 128256)]
                + [(8192, 152064, h) for h in (576, 8192)]) if gpu else \
               ([(t, 32768, 576) for t in (256, 512, 1024)] + [(256, v, 576) for v in (49152, 128256)]
                + [(256, 32768, 2048)])
    else:
        trip = [(t, v, h) for t in (1024, 4096, 16384, 65536, 131072) for v in VOCABS for h in (576, 2048, 3584, 8192)]
    return [dict(tokens=t, vocab=v, hidden=h) for t, v, h in trip]


def _fused_inputs(p, dtype, device, with_policy=True):
    import medix_kernels as mk
    g = generator(device)
    b, l = batch_seq(p["tokens"])
    h = (torch.randn(b, l, p["hidden"], generator=g, device=device) * 0.5).to(dtype)
    w = (torch.randn(p["vocab"], p["hidden"], generator=g, device=device) * p["hidden"] ** -0.5).to(dtype)
    ids = torch.randint(0, p["vocab"], (b, l), generator=g, device=device)
    x = {"hidden": h, "weight": w, "ids": ids}
    if not with_policy:
        return x
    logp0 = mk.fused_linear_selective_log_softmax(h, w, ids)
    return _policy_inputs(b, l, logp0, g, device, x)


def _grad_hw(h, w, loss_fn):
    loss = loss_fn(h, w)
    loss = loss[0] if isinstance(loss, tuple) else loss
    return torch.autograd.grad(loss, (h, w))


def _fused_impls(device):
    import medix_kernels as mk
    from medix_kernels import reference
    cfg = config()
    out = []

    def leaves(x):
        return x["hidden"].detach().requires_grad_(True), x["weight"].detach().requires_grad_(True)

    for b in medix_backends(device):
        def build(x, b=b):
            h, w = leaves(x)
            return lambda: _grad_hw(h, w, lambda h, w: mk.fused_linear_grpo_loss(
                h, w, x["ids"], x["mask"], x["adv"], old_logp=x["old"], ref_logp=x["ref"], config=cfg, backend=b))
        out.append(Impl(f"medix-{b}", "medix", b, build, auto_candidate=True))

        def build_tis(x, b=b):
            h, w = leaves(x)
            tis = tis_config()
            return lambda: _grad_hw(h, w, lambda h, w: mk.fused_linear_grpo_loss(
                h, w, x["ids"], x["mask"], x["adv"], old_logp=x["old"], ref_logp=x["ref"], rollout_logp=x["roll"],
                config=tis, backend=b))
        out.append(Impl(f"medix-{b}-tis", "medix", b, build_tis, note=TIS_NOTE))
        if b != "torch":
            def build_unfused(x, b=b):
                h, w = leaves(x)
                return lambda: _grad_hw(h, w, lambda h, w: mk.grpo_loss(
                    h @ w.t(), x["ids"], x["mask"], x["adv"], old_logp=x["old"], ref_logp=x["ref"], config=cfg,
                    inplace_backward=True, backend=b))
            out.append(Impl(f"medix-{b}-unfused", "medix", b, build_unfused,
                            note="full logits h @ W^T, then grpo_loss(inplace_backward=True)"))

    def ref_build(fn):
        def build(x):
            h, w = leaves(x)
            return lambda: _grad_hw(h, w, lambda h, w: fn(h, w, x["ids"], x["mask"], x["adv"], old_logp=x["old"],
                                                          ref_logp=x["ref"], config=cfg))
        return build
    out.append(Impl("torch-eager", "eager", "eager", ref_build(reference.fused_linear_grpo_loss),
                    note="reference.fused_linear_grpo_loss (full fp32 logits)"))
    out.append(Impl("torch-compile", "compile", "inductor",
                    lambda x: ref_build(compiled(reference.fused_linear_grpo_loss))(x)))

    def trl_build(x):
        u = trl_peer.utils()
        h, w = leaves(x)
        return lambda: _grad_hw(h, w, lambda h, w: trl_peer.grpo_token_loss(
            u.selective_log_softmax(h @ w.t(), x["ids"]), x["old"], x["ref"], x["adv"], x["mask"], beta=BETA,
            eps_low=CLIP, eps_high=CLIP))
    out.append(Impl("trl", "trl", "eager", trl_build, note="full logits + trl selective_log_softmax + loss formula"))

    def liger_build(x):
        cls = liger_peer.fused_linear_grpo_loss_cls()
        loss_mod = cls(beta=BETA, epsilon_low=CLIP, epsilon_high=CLIP, loss_type="bnpo", use_ref_model=True)
        h, w = leaves(x)
        return lambda: _grad_hw(h, w, lambda h, w: loss_mod(h, w, x["ids"], x["mask"], x["adv"],
                                                            ref_per_token_logps=x["ref"],
                                                            old_per_token_logps=x["old"]))
    out.append(Impl("liger-chunked", "liger", "torch (loss math compiled)", liger_build,
                    note="LigerFusedLinearGRPOLoss defaults (chunk_size=1, compiled=True), bnpo"))
    return out


def _fused_label(p):
    return label(p)


FUSED_LINEAR_GRPO_LOSS = OpSpec(
    name="fused_linear_grpo_loss", axis="tokens",
    description="GRPO loss from hidden states + LM head, forward + backward",
    cases=fused_cases, make_inputs=_fused_inputs, impls=_fused_impls,
    bytes_moved=lambda p, e: (2 * p["vocab"] * p["hidden"] + 2 * p["tokens"] * p["hidden"]) * e,
    flops=lambda p: 6 * p["tokens"] * p["vocab"] * p["hidden"], bound="compute",
    footprint=lambda p, e: p["tokens"] * p["vocab"] * 4 * 5 + 4 * p["vocab"] * p["hidden"] * 4, label=_fused_label)


# ----------------------------------------------------------------------------- fused linear log-probs

def _fl_logp_impls(device):
    import medix_kernels as mk
    from medix_kernels import reference
    out = []
    for b in medix_backends(device):
        out.append(Impl(f"medix-{b}", "medix", b,
                        lambda x, b=b: (lambda: mk.fused_linear_selective_log_softmax(x["hidden"], x["weight"],
                                                                                      x["ids"], backend=b)),
                        auto_candidate=True))

    def full(h, w, ids):
        return reference.selective_log_softmax(h.float() @ w.float().t(), ids)
    out.append(Impl("torch-eager", "eager", "eager",
                    lambda x: (lambda: full(x["hidden"], x["weight"], x["ids"])),
                    note="full fp32 logits, log_softmax, gather"))
    out.append(Impl("torch-compile", "compile", "inductor",
                    lambda x: (lambda f=compiled(full): f(x["hidden"], x["weight"], x["ids"]))))

    def trl_build(x):
        u = trl_peer.utils()
        return lambda: u.selective_log_softmax(x["hidden"] @ x["weight"].t(), x["ids"])
    out.append(Impl("trl", "trl", "eager", trl_build, note="full logits + trl selective_log_softmax"))

    def liger_build(x):
        fn = liger_peer.chunked_logprob_forward()
        h, ids = x["hidden"], x["ids"]
        return lambda: fn(h.reshape(-1, h.shape[-1]), x["weight"], ids.reshape(-1))[0]
    out.append(Impl("liger-chunked", "liger", "torch", liger_build,
                    note="liger chunked_loss.fused_linear_ppo._selective_logprob_forward (private helper)"))
    return out


FUSED_LINEAR_SELECTIVE_LOG_SOFTMAX = OpSpec(
    name="fused_linear_selective_log_softmax", axis="tokens",
    description="per-token log-probs from hidden states + LM head (forward, no gradient)",
    cases=fused_cases, make_inputs=lambda p, d, dev: _fused_inputs(p, d, dev, with_policy=False),
    impls=no_grad(_fl_logp_impls),
    bytes_moved=lambda p, e: (p["vocab"] * p["hidden"] + p["tokens"] * p["hidden"]) * e + p["tokens"] * 12,
    flops=lambda p: 2 * p["tokens"] * p["vocab"] * p["hidden"], bound="compute",
    footprint=lambda p, e: p["tokens"] * p["vocab"] * 4 * 3 + p["vocab"] * p["hidden"] * 4, label=_fused_label)
