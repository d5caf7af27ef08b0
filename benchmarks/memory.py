"""Peak memory of one call, beyond what was alive before it ("peak extra").

GPU: in the timing process, from the caching allocator's counters: ``max_memory_allocated()``
after ``reset_peak_memory_stats()`` minus ``memory_allocated()`` before the call (exact; counts
tensors, not the allocator's cached blocks).

CPU: torch keeps no allocation statistics for the CPU, and in-process RSS growth is noise
(memory that an earlier implementation freed stays in malloc's heap and gets reused), so peaks
are measured in a separate worker process (``python -m benchmarks.memory --worker``) that
rebuilds each case from its seed. For every implementation the worker makes one warm-up call
(compilation, thread pools, allocator warm: the steady state every training step sees), then
reads RSS, resets the kernel's peak-RSS mark (``/proc/self/clear_refs`` <- 5 resets VmHWM),
makes the measured call and reads VmHWM: peak extra = VmHWM - RSS before. The worker runs with
``MALLOC_MMAP_THRESHOLD_=65536`` (which also turns off glibc's adaptive threshold) and
``MALLOC_TRIM_THRESHOLD_=0``: every block of 64 KiB or more is its own mapping, returned to the
kernel when freed, so what one implementation freed cannot hide the next one's allocations, and
implementations and cases can share one worker. ``--memory isolated`` instead measures every
(case, implementation) in its own fresh process with the default allocator (slower; the
cross-check described in benchmarks/README.md). Resolution: pages (4 KiB); memory allocated
outside malloc's large blocks (small tensors below 64 KiB) is counted only once the heap grows.
"""
from __future__ import annotations

import gc
import json
import os
import subprocess
import sys

PREFIX = "@@MEM "
WORKER_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


# ----------------------------------------------------------------------------- in-process primitives

def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")


def hwm_bytes() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def cpu_peak_extra(fn) -> int:
    """Steady-state peak RSS growth of one call of fn (after one warm-up call)."""
    out = fn()
    del out
    gc.collect()
    before = rss_bytes()
    reset_peak()
    out = fn()
    peak = hwm_bytes()
    del out
    return max(0, peak - before)


def cuda_peak_extra(fn) -> int:
    import torch
    out = fn()
    del out
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - before
    del out
    return max(0, peak)


def allocator_peak_extra(fn, device: str = "cpu") -> tuple[int, object]:
    """(peak bytes of tensors allocated by ``fn()`` beyond what was alive when it started, its
    result), in this process, exact to the byte: the profiler's allocator events (every tensor
    allocation and free through the device's c10 allocator, temporaries inside C++ ops
    included; not memory a library allocates behind torch's back, such as oneDNN's own scratch).
    For the CPU, which keeps no allocation statistics; tests use it to check a peak-memory formula."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    kind = torch.device(device).type
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == "[memory]" and e.device_type().name.lower() == kind]
    live = peak = 0
    for e in sorted(events, key=lambda e: e.start_ns()):  # a stable sort: same-time events keep their order
        live += e.nbytes()
        peak = max(peak, live)
    return peak, out


# ----------------------------------------------------------------------------- worker

def _measure_case(req: dict) -> list[dict]:
    import torch

    from .ops import OPS, Unavailable
    spec = OPS[req["op"]]
    dtype = getattr(torch, req["dtype"])
    inputs = spec.make_inputs(req["params"], dtype, req["device"])
    impls = {i.name: i for i in spec.impls(req["device"])}
    results = []
    for name in req["impls"]:
        try:
            fn = impls[name].build(inputs)
            peak = cuda_peak_extra(fn) if req["device"] == "cuda" else cpu_peak_extra(fn)
            results.append({"impl": name, "peak_bytes": peak})
        except Unavailable as exc:
            results.append({"impl": name, "error": f"unavailable: {exc}"})
        except Exception as exc:
            results.append({"impl": name, "error": f"{type(exc).__name__}: {exc}"[:300]})
        finally:
            fn = None
            gc.collect()
    return results


def worker_main() -> int:
    import torch  # noqa: F401  (before the ops import it, so a failing import shows here)
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        for res in _measure_case(req):
            print(PREFIX + json.dumps(res), flush=True)
        print(PREFIX + json.dumps({"done": True}), flush=True)
    return 0


class MemoryWorker:
    """A persistent worker process (see the module docstring); restarted after a crash."""

    def __init__(self, env_extra: dict | None = None, isolated: bool = False, log_path: str | None = None):
        self.env = {**os.environ, **({} if isolated else WORKER_ENV), **(env_extra or {})}
        self.isolated = isolated
        self.log_path = log_path or os.devnull
        self.proc = None

    def _start(self):
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.memory", "--worker"], cwd=root, env=self.env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=open(self.log_path, "a"), text=True, bufsize=1)

    def measure(self, op: str, params: dict, dtype: str, device: str, impl_names: list[str]) -> dict:
        """{impl: peak bytes (int) or an error string}."""
        if self.isolated:
            out = {}
            for name in impl_names:
                out.update(self._run([name], op, params, dtype, device))
                self.close()  # a fresh process for every (case, implementation)
            return out
        return self._run(impl_names, op, params, dtype, device)

    def _run(self, names, op, params, dtype, device) -> dict:
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        req = {"op": op, "params": params, "dtype": dtype, "device": device, "impls": names}
        out = {}
        try:
            self.proc.stdin.write(json.dumps(req) + "\n")
            self.proc.stdin.flush()
            for line in self.proc.stdout:
                if not line.startswith(PREFIX):
                    continue
                msg = json.loads(line[len(PREFIX):])
                if msg.get("done"):
                    return out
                out[msg["impl"]] = msg.get("peak_bytes", msg.get("error"))
        except (BrokenPipeError, OSError):
            pass
        code = self.proc.wait()
        self.proc = None
        for name in names:  # the worker died (e.g. killed for memory): say so for what is left
            out.setdefault(name, f"memory worker exited with code {code} (log: {self.log_path})")
        return out

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


if __name__ == "__main__":
    if "--worker" in sys.argv:
        sys.exit(worker_main())
    print(__doc__)
