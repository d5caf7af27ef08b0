"""What an op of the suite is: its shapes, inputs, the implementations compared, bytes and FLOPs.

An ``OpSpec`` is pure description: ``cases(profile, device)`` gives the parameter dicts of its
sweep, ``make_inputs`` builds one case's tensors (seeded, so the memory worker rebuilds exactly
the same case), ``impls(device)`` lists the implementations, each with a ``build(inputs)`` that
returns a zero-argument callable running the measured work once (a forward, or a forward +
backward). A peer that is not installed or cannot run on the device raises ``Unavailable`` from
``build`` with the reason; the suite prints it and writes no row (nothing is faked).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

PROFILES = ("smoke", "quick", "medium", "full")


class Unavailable(Exception):
    """This implementation cannot run here (peer not installed, needs a GPU, ...)."""


@dataclass
class Impl:
    name: str            # unique within the op, e.g. "medix-cpu", "torch-compile", "trl"
    family: str          # "medix" (ours) or a peer: "eager", "compile", "trl", "verl", "liger", "st"
    backend: str         # what runs it: a medix backend, "eager", "inductor", "triton", ...
    build: Callable      # build(inputs: dict) -> callable()
    note: str = ""
    auto_candidate: bool = False  # a plain medix backend (what backend="auto" chooses among)

    @property
    def role(self) -> str:
        return "ours" if self.family == "medix" else "peer"


@dataclass
class OpSpec:
    name: str
    axis: str                          # the x-axis of the plots: "tokens" or "n"
    description: str
    cases: Callable                    # cases(profile, device) -> list[dict]
    make_inputs: Callable              # make_inputs(params, dtype, device) -> dict
    impls: Callable                    # impls(device) -> list[Impl]
    bytes_moved: Callable              # bytes_moved(params, elem_size) -> int (the minimum traffic)
    flops: Callable = lambda p: 0      # minimal FLOPs (0: memory-bound op)
    footprint: Callable = lambda p, e: 0  # bytes the timing process holds for one case (for skipping)
    label: Callable = lambda p: ",".join(f"{k}={v}" for k, v in p.items())
    bound: str = "memory"              # which peak "fraction of peak" uses: "memory" or "compute"
    extra: dict = field(default_factory=dict)


def generator(device: str, seed: int = 0) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def medix_backends(device: str) -> list[str]:
    """The medix backends that run tensors of ``device`` here (triton on the CPU only when the
    interpreter is on: the dry run)."""
    import medix_kernels as mk
    from medix_kernels import _backend
    out = []
    for b in mk.backends():
        if b == "cpu" and device != "cpu":
            continue
        if b == "cuda" and device != "cuda":
            continue
        if b == "triton" and not _backend.triton_usable(torch.device(device)):
            continue
        out.append(b)
    return out


def compiled(fn):
    """torch.compile(fn, dynamic=False) (one graph per shape, as a trainer with fixed shapes has)."""
    import torch._dynamo
    for knob in ("recompile_limit", "cache_size_limit"):
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, 256)
    return torch.compile(fn, dynamic=False)
