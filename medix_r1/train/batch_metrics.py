"""The per-step metrics a GRPO user reads first, beyond the means of :func:`metrics.step_metrics`.

How the rewards spread (the within-group std and the share of groups whose rewards are all equal: such
a group has advantage 0 and teaches nothing), the advantages, every reward component's min and max,
response and prompt lengths (the mean length of the responses that ended, not cut at max_tokens),
tokens and samples seen so far, the judge's latency, retries and cache hits, and memory (CPU RSS;
on a GPU the allocator's reserved peak and the update's model-FLOPs utilisation).

Under torchrun every rank holds its rows: sums go through one ``sum_floats`` and the extremes through
one ``all_gather`` per step (the rewards of the global batch are on every rank already, in
``rows.rewards``).
"""
from __future__ import annotations

import os
import resource
import sys

import torch

from medix_kernels import group_stats
from medix_r1.parallel import collectives as dist

COMPONENTS = ("total", "format", "modality", "judge", "embedding")
JUDGE_COUNTS = ("retries", "cache_hits", "calls")
JUDGE_LATENCIES = ("latency_p50_s", "latency_p90_s")
# dense bf16 tensor-core FLOP/s per GPU (datasheets, no sparsity), matched on the device name; MFU is
# left out on a GPU not listed here
GPU_BF16_PEAKS = ((("H200",), 989e12), (("H100", "PCIe"), 756e12), (("H100",), 989e12), (("A100",), 312e12))


def _spread(values: list[float]) -> tuple[float, float, float, int]:
    return (min(values), max(values), float(sum(values)), len(values)) if values else \
        (float("inf"), float("-inf"), 0.0, 0)


def batch_metrics(r, results, adv, rows, n: int, function_names=()) -> dict:
    """Spread metrics of the step's batch (this rank's rollouts ``r``, rewards ``results``, advantages
    ``adv`` of its rows; ``rows`` the global layout, ``n`` the group size)."""
    m = {}
    if rows.rewards:
        stats = group_stats(torch.tensor(rows.rewards, dtype=torch.float32), n)
        m["reward/std"] = float(stats.std.mean())               # mean within-group std
        m["reward/zero_std_frac"] = float(stats.degenerate.float().mean())
    parts = {f"reward/{c}": [float(getattr(x, c)) for x in results] for c in COMPONENTS}
    for name in function_names:
        parts[f"reward/fn/{name}"] = [float(getattr(x, "functions", {}).get(name, 0.0)) for x in results]
    parts["adv"] = adv.float().tolist() if len(results) else []  # one read of this rank's advantages
    parts["rollout/response_len"] = [float(len(x)) for x in r.response_ids]
    parts["rollout/terminated_len"] = [float(len(x)) for x, cut in zip(r.response_ids, r.truncated) if not cut]
    parts["rollout/prompt_len"] = [float(len(x)) for x in r.prompt_ids]
    local = {k: _spread(v) for k, v in parts.items()}
    gathered = dist.all_gather(local)
    for key in parts:
        lo = min(g[key][0] for g in gathered)
        hi = max(g[key][1] for g in gathered)
        total, count = sum(g[key][2] for g in gathered), sum(g[key][3] for g in gathered)
        if not count:
            continue
        sep = "/" if key == "adv" else "_"  # adv/min, adv/max, adv/mean; reward/total_min, ...
        m[f"{key}{sep}min"], m[f"{key}{sep}max"] = lo, hi
        if key in ("adv", "rollout/terminated_len", "rollout/prompt_len"):  # the other means are logged already
            m["adv/mean" if key == "adv" else key] = total / count
    return m


def seen_so_far(counters: dict, r) -> dict:
    """Response tokens and samples trained on since step 1 (kept in the checkpointed ``counters``)."""
    tokens, samples = dist.sum_floats([float(sum(len(x) for x in r.response_ids)), float(len(r))])
    counters["tokens_seen"] = counters.get("tokens_seen", 0) + int(tokens)
    counters["samples_seen"] = counters.get("samples_seen", 0) + int(samples)
    return {"rollout/tokens_seen": counters["tokens_seen"], "rollout/samples_seen": counters["samples_seen"]}


def judge_metrics(worker) -> dict:
    """The judge's cumulative retries, cache hits and calls (summed over the ranks' workers) and its
    latency percentiles over its latest paid calls (the slowest rank's), from ``RewardWorker.stats()``."""
    stats = worker.stats() if hasattr(worker, "stats") else {}
    counts = [float(stats.get(f"judge_{k}") or 0.0) for k in JUDGE_COUNTS]
    latencies = [stats.get(f"judge_{k}") for k in JUDGE_LATENCIES]
    if not dist.any_true(any(f"judge_{k}" in stats for k in JUDGE_COUNTS)):  # no rank has a judge (yet)
        return {}
    counts = dist.sum_floats(counts)
    latencies = [max((x for x in g if x is not None), default=None)
                 for g in zip(*dist.all_gather(latencies))]
    out = {f"judge/{k}": int(v) for k, v in zip(JUDGE_COUNTS, counts)}
    out.update({f"judge/{k}": v for k, v in zip(JUDGE_LATENCIES, latencies) if v is not None})
    return out


def cpu_rss_gb() -> float:
    """This process's resident set now (Linux), else its peak (``ru_maxrss``), in GiB."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30
    except (OSError, ValueError, IndexError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return peak / (2**30 if sys.platform == "darwin" else 2**20)


def memory_metrics() -> dict:
    """CPU RSS and, on a GPU, what PyTorch's caching allocator holds reserved (GiB; the largest rank's).
    The allocator keeps what it reserved, so the reserved memory now is the most the run has needed."""
    here = [cpu_rss_gb() or 0.0]
    if dist.device().type == "cuda":
        here.append(torch.cuda.memory_reserved() / 2**30)
    worst = [max(g[i] for g in dist.all_gather(here)) for i in range(len(here))]
    out = {"memory/cpu_rss_gb": worst[0]}
    if len(worst) > 1:
        out["memory/gpu_reserved_gb"] = worst[1]
    return out


def gpu_peak_flops(name: str) -> float | None:
    for keys, peak in GPU_BF16_PEAKS:
        if all(k.lower() in name.lower() for k in keys):
            return peak
    return None


def update_mfu(n_params: int, tokens: int, passes: int, seconds: float, peak_flops: float | None,
               world: int = 1) -> dict:
    """Model FLOPs of the update (6 per parameter per token per pass: forward and backward) per second,
    and their share of the GPUs' peak when it is known (``world`` GPUs)."""
    if seconds <= 0:
        return {}
    flops = 6.0 * n_params * tokens * passes / seconds
    out = {"perf/update_tflops": flops / 1e12}
    if peak_flops:
        out["perf/mfu"] = flops / (peak_flops * world)
    return out
