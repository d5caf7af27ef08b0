"""Which backends exist, and which one an op runs on.

Backends: ``"torch"`` (the pure-PyTorch reference), ``"cpu"`` (the compiled C++ kernels in
``medix_kernels._C``), ``"triton"`` (Triton kernels: on CUDA tensors, or on CPU tensors under
``TRITON_INTERPRET=1``), ``"cuda"`` (the compiled CUDA kernels). ``"auto"`` runs the first usable
backend of the op's rule in ``medix_kernels._defaults.AUTO_BACKENDS`` (per device type, op and
size: today cuda > triton > torch on a GPU, cpu > torch on the CPU).
"""
from __future__ import annotations

import glob
import importlib.util
import os
import re
import warnings

import torch

from . import _defaults

BACKENDS = ("torch", "cpu", "triton", "cuda")
_NAMES = BACKENDS + ("auto",)


# Probed once at import (not per call): torch.compile traces the ops' Python wrappers, and
# import machinery inside a traced function would break the graph.
def _built_with_torch() -> str | None:
    """The torch version a present but unloadable _C was compiled against (a marker in the file)."""
    for path in glob.glob(os.path.join(os.path.dirname(__file__), "_C*.so")) + \
            glob.glob(os.path.join(os.path.dirname(__file__), "_C*.pyd")):
        with open(path, "rb") as f:
            found = re.search(rb"medix-built-with-torch ([0-9A-Za-z.+_-]+)", f.read())
        if found:
            return found.group(1).decode()
    return None


try:
    from . import _C as _EXT
    _EXT_ERROR = ""
except ImportError as exc:  # shown in errors so a broken build is not silent
    _EXT, _EXT_ERROR = None, str(exc)
    _BUILT_WITH = _built_with_torch()
    if _BUILT_WITH is not None:  # a build exists but does not load: say why once, not only when 'cpu' is asked for
        if _BUILT_WITH.split("+")[0] != torch.__version__.split("+")[0]:
            _EXT_ERROR = (f"medix_kernels._C was built against torch {_BUILT_WITH} but torch {torch.__version__} "
                          f"is installed ({exc})")
        warnings.warn(f"{_EXT_ERROR or exc}; the 'cpu' (and 'cuda') backends are off and ops run on 'torch' or "
                      "'triton'. Rebuild the extension against this torch: `pip install --no-build-isolation "
                      "--no-deps -e .` in the source tree (or `bash .ci/setup`)", RuntimeWarning, stacklevel=2)
_CUDA_COMPILED = _EXT is not None and _EXT.cuda_compiled()
_HAS_TRITON = importlib.util.find_spec("triton") is not None
_CPU_FIRST = _defaults.cpu_always_first()


def extension():
    """The compiled module ``medix_kernels._C`` (importing it registers torch.ops.medix), or None."""
    return _EXT


def extension_error() -> str:
    return _EXT_ERROR


def has_cpu_extension() -> bool:
    return _EXT is not None


def has_cuda_extension() -> bool:
    return _CUDA_COMPILED and torch.cuda.is_available()


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def has_triton() -> bool:
    return _HAS_TRITON


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


def usable(backend: str, device: torch.device) -> bool:
    """Whether ``backend`` can run on tensors of ``device`` here."""
    if backend == "torch":
        return True
    if backend == "cpu":
        return device.type == "cpu" and has_cpu_extension()
    if backend == "cuda":
        return device.type == "cuda" and has_cuda_extension()
    return backend == "triton" and triton_usable(device)


def auto_backend(op: str, tensor: torch.Tensor) -> str:
    """What ``backend="auto"`` runs for ``op`` on ``tensor`` (its device and size): the defaults table."""
    n = tensor.numel()
    for rule in _defaults.auto_rules(tensor.device.type, op):
        if rule.max_numel is None or n <= rule.max_numel:
            for b in rule.order:
                if usable(b, tensor.device):
                    return b
    return "torch"


def resolve_backend(backend: str, tensor: torch.Tensor, op: str) -> str:
    """Validate a backend name for ``tensor``'s device, resolving ``"auto"``."""
    if backend == "auto" and _CPU_FIRST and _EXT is not None and tensor.device.type == "cpu":
        return "cpu"  # the common case first (this runs on every call of every op)
    if backend not in _NAMES:
        raise ValueError(f"{op}: backend must be one of {_NAMES}, got {backend!r}")
    device = tensor.device
    if backend == "auto":
        return auto_backend(op, tensor)
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
    elif backend == "triton" and not triton_usable(device):
        raise RuntimeError(f"{op}: backend 'triton' needs CUDA tensors, or TRITON_INTERPRET=1 "
                           f"for CPU tensors (got a tensor on {device})")
    return backend
