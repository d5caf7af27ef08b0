"""Shared benchmark machinery: environment stamps, load average, interleaved timing and CSV.

Timing (``interleaved``): every implementation of one case is warmed up, then measured in rounds
A B C, B C A, C A B, ... (one sample of each per round, the order rotated), so a change in the
machine's load while the case runs hits all of them alike. A sample is ``k`` back-to-back calls
(``k`` calibrated so that a sample lasts at least ``min_sample_s``) and reports seconds per
call; the row gets the median and the 10th/90th percentiles of the samples. On the CPU a sample
is wall-clock time (``time.perf_counter``); on a GPU it is a pair of CUDA events around the
``k`` calls, with the L2 cache flushed (a 256 MiB memset) before each sample and a
synchronisation after it.
"""
from __future__ import annotations

import csv
import datetime
import functools
import importlib.metadata as md
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"


# ----------------------------------------------------------------------------- environment

def load_avg() -> tuple[float, float, float]:
    try:
        return os.getloadavg()
    except OSError:
        return (float("nan"),) * 3


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_isa() -> str:
    """The vector ISA the medix C++ kernels pick here (csrc/cpu/isa.h): avx512, avx2 or base, as
    capped by MEDIX_CPU_LEVEL. Machines lent under the same CPU model name differ in it, and the
    kernels' speed with it."""
    from medix_kernels import _backend
    if _backend.extension() is not None:
        return {2: "avx512", 1: "avx2", 0: "base"}[_backend.extension().cpu_level()]
    try:
        with open("/proc/cpuinfo") as fh:
            flags = next((line.split(":", 1)[1].split() for line in fh if line.startswith("flags")), [])
    except OSError:
        return "?"
    if {"avx512bw", "avx512vl", "avx512dq"} <= set(flags):
        return "avx512"
    return "avx2" if {"avx2", "fma", "f16c"} <= set(flags) else "base"


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"CPU {cpu_model()} x{os.cpu_count()} {cpu_isa()} (torch threads {torch.get_num_threads()})"


def _version(dist: str) -> str:
    for name in (dist, dist.replace("_", "-")):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            continue
    return "-"


@functools.cache
def lib_version() -> str:
    """medix (the distribution holding medix_kernels) version + the commit of medix_kernels/ and
    csrc/, with '-dirty' when those folders have uncommitted changes."""
    version = _version("medix")
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "medix_kernels", "csrc"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        if sha:
            version += f"+g{sha}" + ("-dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        pass
    return version


@functools.cache
def driver_version(device: str) -> str:
    if device != "cuda":
        return "-"
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.strip().splitlines()
        return (out[0] if out else "?") + f" (CUDA {torch.version.cuda})"
    except (OSError, subprocess.TimeoutExpired):
        return f"? (CUDA {torch.version.cuda})"


def environment(device: str = "cpu") -> dict:
    """Columns stamped on every CSV row: device, library/torch/triton/driver versions, date."""
    return {"device_name": device_name(device), "medix": lib_version(), "torch": torch.__version__,
            "triton": _version("triton"), "driver": driver_version(device), "trl_version": _version("trl"),
            "liger_version": _version("liger_kernel"), "date": datetime.date.today().isoformat()}


# ----------------------------------------------------------------------------- timing

class Timer:
    """Seconds per call of ``fn`` over ``k`` back-to-back calls, on one device."""

    def __init__(self, device: str, flush_l2: bool = True):
        self.device = device
        self._flush = None
        if device == "cuda":
            if flush_l2:
                self._flush = torch.empty(256 * 2**20, dtype=torch.uint8, device="cuda")
            self._events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def sample(self, fn, k: int = 1) -> float:
        if self.device == "cuda":
            if self._flush is not None:
                self._flush.zero_()  # outside the events: the kernels start with a cold L2
            start, end = self._events
            start.record()
            for _ in range(k):
                fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) * 1e-3 / k
        t0 = time.perf_counter()
        for _ in range(k):
            fn()
        return (time.perf_counter() - t0) / k


def quantile(values: list[float], q: float) -> float:
    """Linear-interpolation quantile (q in [0, 1]) of a non-empty list."""
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    pos = q * (len(xs) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def summarize(samples: list[float]) -> dict:
    return {"median_s": statistics.median(samples), "p10_s": quantile(samples, 0.1),
            "p90_s": quantile(samples, 0.9), "n_samples": len(samples)}


def interleaved(fns: dict, *, device: str, rounds_min: int = 5, rounds_max: int = 50, budget_s: float = 5.0,
                min_sample_s: float = 2e-3, warmup: int = 2, timer: Timer | None = None,
                on_error=None) -> dict:
    """Time every callable of ``fns`` ({name: fn}) in interleaved rounds.

    Returns {name: {"samples": [...seconds per call], "calls_per_sample": k, "first_call_s": s}};
    a callable that raises during warm-up is dropped and reported to ``on_error(name, exc)``.
    """
    timer = timer or Timer(device)
    info, live = {}, {}
    for name, fn in list(fns.items()):
        try:
            t0 = time.perf_counter()
            fn()
            timer.sync()
            first = time.perf_counter() - t0
            # the last warm-up call (or, with one warm-up, an extra call) calibrates k
            one = first
            for _ in range(max(1, warmup - 1)):
                one = timer.sample(fn, 1)
            k = max(1, min(10_000, int(min_sample_s / max(one, 1e-9)) + 1)) if one < min_sample_s else 1
        except Exception as exc:  # a peer that cannot run this shape (OOM, unsupported): reported, not faked
            if on_error is None:
                raise
            on_error(name, exc)
            continue
        live[name] = fn
        info[name] = {"samples": [], "calls_per_sample": k, "first_call_s": first}
    names = list(live)
    start = time.perf_counter()
    rounds = 0
    while names and (rounds < rounds_min or (rounds < rounds_max and time.perf_counter() - start < budget_s)):
        r = rounds % len(names)
        for name in names[r:] + names[:r]:
            info[name]["samples"].append(timer.sample(live[name], info[name]["calls_per_sample"]))
        rounds += 1
    return info


def bench(fn, *, warmup: int = 3, min_time_s: float = 0.2, max_reps: int = 2000) -> float:
    """Median wall time of fn() in seconds (one implementation alone; kept for small scripts)."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    res = interleaved({"fn": fn}, device=device, rounds_min=5, rounds_max=max_reps, budget_s=min_time_s,
                      warmup=warmup)
    return statistics.median(res["fn"]["samples"])


# ----------------------------------------------------------------------------- CSV

def write_csv(path, rows: list[dict], columns: list[str] | None = None) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if columns is None:
        columns = []
        for r in rows:
            columns += [k for k in r if k not in columns]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: r.get(k, "") for k in columns})


def read_csv(path) -> list[dict]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))
