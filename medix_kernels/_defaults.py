"""The one table of defaults: which backend ``backend="auto"`` runs, per device, op and size, and
which named configuration each Triton kernel launches with.

Every entry says what justifies it: the GPU sweep's CSV (``python -m benchmarks.gpu.sweep OUT``
writes it; ``python -m benchmarks.gpu.sweep --print-defaults OUT/sweep.csv`` prints the table that
CSV implies, to paste here), or ``PENDING``: no GPU measurement chose it yet, and it keeps the
behaviour measured on the H200 on 2026-12-04 (benchmarks/results/h200-2026-12-04.md) or, where
that measured nothing, the choice reasoned in its comment.

Names only (no imports of the kernels), so importing this never loads Triton.
"""
from __future__ import annotations

from dataclasses import dataclass

PENDING = "pending GPU sweep"


@dataclass(frozen=True)
class Choice:
    value: object
    source: str = PENDING


@dataclass(frozen=True)
class AutoRule:
    """Backends in order of preference (the first one usable here runs) for calls whose main input
    has at most ``max_numel`` elements (None: any size)."""
    order: tuple
    max_numel: int | None = None


# Triton kernel -> the name of its configuration (medix_kernels/triton_kernels/configs.py).
KERNEL_CONFIGS = {
    "logprob_fwd": Choice("v1_baseline"),
    "logprob_bwd": Choice("v1_baseline"),
    "cosine": Choice("v1_baseline"),
    # grpo_loss on the triton backend: "lean" (the per-token objective in two Triton kernels and
    # the loss's gradient applied inside the log-prob backward: 3 launches forward, 1 backward, no
    # [B, L] PyTorch graph), "single_pass" (each row's forward and backward in one program: the
    # logits read once from HBM) or "composed" (selective_log_softmax + the objective in PyTorch,
    # ~85 launches, as measured on the H200). Lean is chosen by reasoning: the same [T, V]
    # kernels as measured, fewer launches and bytes around them, masked rows skipped in both
    # passes; single_pass is the faster design on paper but computes the gradient in the forward
    # (in place, the logits hold it from then on), so it waits for the sweep.
    "grpo_loss_triton": Choice("lean"),
}

# (device type, op) -> rules, first match wins; "*" is any op of that device type.
AUTO_BACKENDS = {
    ("cuda", "*"): Choice((AutoRule(("cuda", "triton", "torch")),)),
    ("cpu", "*"): Choice((AutoRule(("cpu", "torch")),)),
}


def kernel_config(kernel: str) -> str:
    """The configured name for ``kernel`` ("logprob_fwd", "logprob_bwd", "cosine", "grpo_loss_triton")."""
    return KERNEL_CONFIGS[kernel].value


def auto_rules(device_type: str, op: str) -> tuple:
    """The AutoRules of ``op`` on ``device_type`` (the op's own entry, else the device's "*" entry;
    devices without an entry run the torch reference)."""
    choice = AUTO_BACKENDS.get((device_type, op)) or AUTO_BACKENDS.get((device_type, "*"))
    return choice.value if choice is not None else (AutoRule(("torch",)),)


def cpu_always_first() -> bool:
    """Whether every CPU rule puts the compiled "cpu" backend first (then resolve_backend may skip the lookup)."""
    return all(rule.order[0] == "cpu" for (dev, _), c in AUTO_BACKENDS.items() if dev == "cpu" for rule in c.value)
