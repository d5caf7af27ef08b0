"""Which backends exist, and which one an op runs on.

Backends: ``"torch"`` (the pure-PyTorch reference), ``"cpu"`` (the compiled C++ kernels in
``medix_kernels._C``), ``"triton"`` (Triton kernels: on CUDA tensors, or on CPU tensors under
``TRITON_INTERPRET=1``), ``"cuda"`` (the compiled CUDA kernels). ``"auto"`` picks the fastest
available for the tensor's device: cuda > triton > torch on a GPU, cpu > torch on the CPU.
"""
from __future__ import annotations

import functools
import importlib
import os

import torch

BACKENDS = ("torch", "cpu", "triton", "cuda")


@functools.lru_cache(maxsize=None)
def extension():
    """The compiled module ``medix_kernels._C`` (importing it registers torch.ops.medix), or None."""
    try:
        return importlib.import_module("medix_kernels._C")
    except ImportError:
        return None


def extension_error() -> str:
    try:
        importlib.import_module("medix_kernels._C")
        return ""
    except ImportError as exc:  # shown in errors so a broken build is not silent
        return str(exc)


def has_cpu_extension() -> bool:
    return extension() is not None


def has_cuda_extension() -> bool:
    ext = extension()
    return ext is not None and ext.cuda_compiled() and torch.cuda.is_available()


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


@functools.lru_cache(maxsize=None)
def has_triton() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def triton_usable(device: torch.device) -> bool:
    if not has_triton():
        return False
    return device.type == "cuda" or (device.type == "cpu" and triton_interpreting())


def backends() -> list[str]:
    """The backends usable on this machine, e.g. ``['torch', 'cpu']``."""
    found = ["torch"]
    if has_cpu_extension():
        found.append("cpu")
    if has_triton() and (torch.cuda.is_available() or triton_interpreting()):
        found.append("triton")
    if has_cuda_extension():
        found.append("cuda")
    return found


def resolve_backend(backend: str, tensor: torch.Tensor, op: str) -> str:
    """Validate a backend name for ``tensor``'s device, resolving ``"auto"``."""
    if backend not in BACKENDS + ("auto",):
        raise ValueError(f"{op}: backend must be one of {BACKENDS + ('auto',)}, got {backend!r}")
    device = tensor.device
    if backend == "auto":
        if device.type == "cuda":
            if has_cuda_extension():
                return "cuda"
            return "triton" if triton_usable(device) else "torch"
        if device.type == "cpu" and has_cpu_extension():
            return "cpu"
        return "torch"
    if backend == "cpu":
        if device.type != "cpu":
            raise ValueError(f"{op}: backend 'cpu' needs CPU tensors, got a tensor on {device}")
        if not has_cpu_extension():
            raise RuntimeError(f"{op}: the compiled extension medix_kernels._C is not available "
                               f"({extension_error()}); build it with `bash .ci/setup`")
    elif backend == "cuda":
        if device.type != "cuda":
            raise ValueError(f"{op}: backend 'cuda' needs CUDA tensors, got a tensor on {device}")
        if not has_cuda_extension():
            raise RuntimeError(f"{op}: medix_kernels._C was built without CUDA kernels "
                               "(rebuild with a CUDA torch and nvcc on the PATH)")
    elif backend == "triton":
        if not triton_usable(device):
            raise RuntimeError(f"{op}: backend 'triton' needs CUDA tensors, or TRITON_INTERPRET=1 "
                               f"for CPU tensors (got a tensor on {device})")
    return backend
