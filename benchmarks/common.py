"""Shared benchmark helpers: timing (median of repeats), machine/version stamps, CSV writing."""
from __future__ import annotations

import csv
import datetime
import os
import platform
import statistics
import time

import torch


def environment() -> dict:
    if torch.cuda.is_available():
        device = torch.cuda.get_device_name()
    else:
        device = f"CPU {platform.processor() or platform.machine()} x{os.cpu_count()} (torch threads {torch.get_num_threads()})"
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = "-"
    return {"device": device, "torch": torch.__version__, "triton": triton_version,
            "date": datetime.date.today().isoformat()}


def bench(fn, *, warmup: int = 3, min_time_s: float = 0.2, max_reps: int = 2000) -> float:
    """Median wall time of fn() in seconds (CUDA: synchronised around each call)."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    for _ in range(warmup):
        fn()
    sync()
    times, start = [], time.perf_counter()
    while len(times) < max_reps and (time.perf_counter() - start < min_time_s or len(times) < 5):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def write_csv(path: str, rows: list[dict]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    env = environment()
    rows = [{**r, **env} for r in rows]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0].keys()))
        writer.writeheader()
        writer.writerows(rows)
