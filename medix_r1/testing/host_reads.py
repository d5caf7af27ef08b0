"""Count the calls that make the host wait for the device, on any device (the CPU included).

On a GPU these block the host until the queue drains: reading a value (``.item()``, ``float()``,
``bool()``, ``.tolist()``, ``.numpy()``), a copy to the host, and ops whose output shape depends on
the data (``nonzero``, ``unique``, boolean-mask indexing, ``masked_select``). A CPU run calls the same
ops, so counting them here tells what a GPU run would wait for, without a GPU. The ops are seen
through a TorchDispatchMode (the dispatcher sees every op, whatever its caller); ``tolist`` and
``numpy`` read memory without an op, so they are counted by wrapping the methods.
"""
from __future__ import annotations

import contextlib
import traceback

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
# value reads and data-dependent shapes: each waits for the device
SYNC_OPS = {aten._local_scalar_dense.default, aten.nonzero.default, aten._unique2.default,
            aten.unique_dim.default, aten.unique_consecutive.default, aten.masked_select.default,
            aten.repeat_interleave.Tensor}


def _bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in indices or ())


class HostReads(TorchDispatchMode):
    """``with HostReads() as reads: ...``; ``reads.where``: per read, (what, the file and line of the
    innermost caller outside torch, a short stack); ``reads.by(folder)`` the reads made from a folder."""

    def __init__(self):
        super().__init__()
        self.where: list[tuple[str, str, str]] = []

    @property
    def count(self) -> int:
        return len(self.where)

    def by(self, folder: str) -> list[tuple[str, str, str]]:
        return [w for w in self.where if f"/{folder}/" in w[1]]

    def record(self, what: str) -> None:
        frames = [f for f in traceback.extract_stack()[:-2] if "/torch/" not in f.filename
                  and "host_reads.py" not in f.filename]
        stack = " < ".join(f"{f.filename.split('/')[-1]}:{f.lineno}" for f in reversed(frames[-4:]))
        self.where.append((what, f"{frames[-1].filename}:{frames[-1].lineno}" if frames else "?", stack))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in SYNC_OPS or (func is aten.index.Tensor and _bool_index(args)):
            self.record(str(func))
        return func(*args, **(kwargs or {}))

    def __enter__(self):
        self._saved = torch.Tensor.tolist, torch.Tensor.numpy
        mode, (tolist, numpy) = self, self._saved

        def counted_tolist(t, *a, **k):
            mode.record("tolist")
            return tolist(t, *a, **k)

        def counted_numpy(t, *a, **k):
            mode.record("numpy")
            return numpy(t, *a, **k)
        torch.Tensor.tolist, torch.Tensor.numpy = counted_tolist, counted_numpy
        return super().__enter__()

    def __exit__(self, *exc):
        torch.Tensor.tolist, torch.Tensor.numpy = self._saved
        return super().__exit__(*exc)


@contextlib.contextmanager
def no_counting(mode: HostReads):
    """Reads inside the block are not counted (a test's own set-up)."""
    saved = list(mode.where)
    yield
    mode.where[:] = saved


class CudaSyncs:
    """The synchronising CUDA calls inside ``with CudaSyncs() as syncs:`` as PyTorch's own sync debug
    mode reports them (``torch.cuda.set_sync_debug_mode("warn")``: one warning per call that waits for
    the device, copies to the host included); ``syncs.where`` as :class:`HostReads` has it."""

    def __init__(self):
        self.where: list[tuple[str, str, str]] = []

    def by(self, folder: str) -> list[tuple[str, str, str]]:
        return [w for w in self.where if f"/{folder}/" in w[1]]

    def __enter__(self):
        import warnings
        self._catch = warnings.catch_warnings(record=True)
        self._records = self._catch.__enter__()
        warnings.simplefilter("always")
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        return self

    def __exit__(self, *exc):
        torch.cuda.set_sync_debug_mode("default")
        self._catch.__exit__(*exc)
        for w in self._records:
            text = str(w.message)
            if "synchroniz" in text:
                self.where.append((text.split("\n")[0][:80], f"{w.filename}:{w.lineno}", ""))
        return False


def device_waits(device):
    """What waits for ``device`` inside a block: PyTorch's sync debug mode on a GPU, else the ops that
    would wait there (:class:`HostReads`)."""
    return CudaSyncs() if torch.device(device).type == "cuda" else HostReads()
