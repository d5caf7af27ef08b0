"""Which compiled backends the tests can exercise here."""
import os

import pytest
import torch

import medix_kernels
from medix_kernels import _backend

CPU_BACKENDS = ["torch", "cpu"]  # compiled C++ is required: a broken build must fail the tests
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")


def triton_interpreter_available() -> bool:
    return _backend.has_triton() and os.environ.get("TRITON_INTERPRET") == "1"


def gpu_backends() -> list[str]:
    found = medix_kernels.backends()
    return [b for b in ("triton", "cuda") if b in found]
