"""selective_log_softmax (per-token log-probs of the sampled ids), with and without entropy,
forward only (no gradient: how the old-policy and reference log-probs are computed).

Implementations: every medix backend; eager PyTorch (log_softmax, gather; entropy from the
materialised log-probs) and torch.compile of it; TRL's ``selective_log_softmax`` /
``selective_log_softmax_and_entropy``; Liger's Triton ``fused_selective_log_softmax`` (GPU).
Bytes moved (the minimum): the logits once, the ids, one float per token out (two with entropy).
"""
from __future__ import annotations

import torch

from ..peers import eager, liger_peer, trl_peer
from .base import Impl, OpSpec, compiled, generator, medix_backends

VOCABS = (32768, 49152, 128256, 152064)  # Llama-2/Mistral, SmolLM2, Llama-3, Qwen2.5


def batch_seq(tokens: int) -> tuple[int, int]:
    seq = min(tokens, 1024)
    return tokens // seq, seq


def token_vocab_cases(profile: str, device: str) -> list[dict]:
    """(tokens, vocab) sweep: a tokens sweep at one vocabulary and a vocabulary sweep at one
    token count (enough for the scaling fits), the whole grid for 'full'."""
    if profile == "smoke":
        return [dict(tokens=64, vocab=512)]
    gpu = device == "cuda"
    if profile == "quick":
        pairs = [(4096, 152064), (16384, 152064), (16384, 32768)] if gpu else \
                [(1024, 32768), (2048, 32768), (1024, 49152)]
    elif profile == "medium":
        t_sweep = [1024, 4096, 16384, 65536] if gpu else [1024, 2048, 4096]
        t_fixed = 16384 if gpu else 1024
        v_fixed = 152064 if gpu else 32768
        pairs = [(t, v_fixed) for t in t_sweep] + [(t_fixed, v) for v in VOCABS]
    else:
        pairs = [(t, v) for t in (1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072) for v in VOCABS]
    out = []
    for t, v in pairs:
        if dict(tokens=t, vocab=v) not in out:
            out.append(dict(tokens=t, vocab=v))
    return out


def label(p: dict) -> str:
    b, l = batch_seq(p["tokens"])
    s = f"T={p['tokens']} ({b}x{l}) V={p['vocab']}"
    return s + (f" H={p['hidden']}" if "hidden" in p else "")


def _inputs(p, dtype, device):
    g = generator(device)
    b, l = batch_seq(p["tokens"])
    logits = (torch.randn(b, l, p["vocab"], generator=g, device=device) * 2).to(dtype)
    ids = torch.randint(0, p["vocab"], (b, l), generator=g, device=device)
    return {"logits": logits, "ids": ids}


def liger_logits(x: dict) -> torch.Tensor:
    """Liger's Triton kernels take [B, L + 1, V] logits and drop the last position."""
    if "logits_l1" not in x:
        lg = x["logits"]
        x["logits_l1"] = torch.cat([lg, lg[:, :1]], dim=1)
    return x["logits_l1"]


def _impls(entropy: bool):
    def impls(device):
        import medix_kernels as mk
        out = []
        for b in medix_backends(device):
            out.append(Impl(f"medix-{b}", "medix", b,
                            lambda x, b=b: (lambda: mk.selective_log_softmax(x["logits"], x["ids"],
                                                                             return_entropy=entropy, backend=b)),
                            auto_candidate=True))
        ref = eager.selective_log_softmax_entropy if entropy else eager.selective_log_softmax
        out.append(Impl("torch-eager", "eager", "eager", lambda x: (lambda: ref(x["logits"], x["ids"]))))
        out.append(Impl("torch-compile", "compile", "inductor",
                        lambda x: (lambda f=compiled(ref): f(x["logits"], x["ids"]))))

        def trl_build(x):
            u = trl_peer.utils()
            if entropy:
                return lambda: u.selective_log_softmax_and_entropy(x["logits"], x["ids"], entropy_requires_grad=False)
            return lambda: u.selective_log_softmax(x["logits"], x["ids"])
        out.append(Impl("trl", "trl", "triton" if device == "cuda" else "eager", trl_build,
                        note="trl.trainer.utils." + ("selective_log_softmax_and_entropy" if entropy
                                                     else "selective_log_softmax")))
        if not entropy:
            def liger_build(x):
                fn = liger_peer.fused_selective_log_softmax(device)
                lg = liger_logits(x)
                return lambda: fn(lg, x["ids"], temperature=1.0)
            out.append(Impl("liger-triton", "liger", "triton", liger_build,
                            note="liger_kernel.ops.grpo_loss.fused_selective_log_softmax"))
        return out
    return impls


def _footprint(p, e, device="cpu"):
    tv = p["tokens"] * p["vocab"]
    return tv * (2 * e + 3 * 4)  # logits (+ Liger's [B, L+1, V] copy on a GPU) + eager's fp32 temporaries


def no_grad(spec_impls):
    """Wrap an OpSpec ``impls`` function so every implementation runs under ``torch.no_grad()``
    (forward-only ops: no autograd graph is built or kept)."""
    def impls(device):
        out = spec_impls(device)
        for imp in out:
            build = imp.build

            def wrapped(x, build=build):
                fn = build(x)

                def run():
                    with torch.no_grad():
                        return fn()
                return run
            imp.build = wrapped
        return out
    return impls


SELECTIVE_LOG_SOFTMAX = OpSpec(
    name="selective_log_softmax", axis="tokens", description="per-token log-probs of the sampled ids (forward)",
    cases=token_vocab_cases, make_inputs=_inputs, impls=no_grad(_impls(False)),
    bytes_moved=lambda p, e: p["tokens"] * (p["vocab"] * e + 8 + 4), footprint=_footprint, label=label)

SELECTIVE_LOG_SOFTMAX_ENTROPY = OpSpec(
    name="selective_log_softmax_entropy", axis="tokens",
    description="per-token log-probs and entropy (forward)",
    cases=token_vocab_cases, make_inputs=_inputs, impls=no_grad(_impls(True)),
    bytes_moved=lambda p, e: p["tokens"] * (p["vocab"] * e + 8 + 8), footprint=_footprint, label=label)
