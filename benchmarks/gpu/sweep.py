"""The GPU sweep: every variant of each op timed side by side in one process, one CSV.

    python -m benchmarks.gpu.sweep OUT [--dry-run] [--budget-s N] [--ops a,b] [--ptxas FILE]
    python -m benchmarks.gpu.sweep --print-defaults OUT/sweep.csv

Ops (bf16, the shapes of issue 25; sweep_cases.py / sweep_rewards.py say what each variant is):
logprob_fwd (log-probs + entropy, T = 8,192 = 8 x 1,024, V = 152,064), logprob_bwd, grpo_loss
(forward + backward, MediX GRPO, 10% of the tokens masked), cosine_rewards [65,536, 1,024],
group_advantages and composite_advantages at N = 1M and 512 x 8, and
fused_linear_grpo_loss when ``benchmarks/gpu/sweep_fused_linear.py`` exists (its ``run``).
Variants: every named configuration of the Triton kernels (medix_kernels/triton_kernels/configs.py),
grpo_loss's lean path with each forward and backward configuration, its single-pass path with each
forward configuration, the composed path, the public API with value checks on and off, the CUDA
backend where built, and the peers (Liger's ``triton_grpo_loss``, TRL's Triton log-prob/entropy
kernel, eager PyTorch for the reward ops). The copy bandwidth and the bf16 matmul rate are
measured first (the ceilings).

OUT receives: ``sweep.csv`` (columns below), ``sweep.meta.json`` (GPU, versions, date, ceilings,
what was skipped and why), ``winners.md`` (fastest correct variant per op and shape, the issue's
targets met or not) and ``defaults.py.txt`` (the medix_kernels/_defaults.py table this CSV implies).

Columns: op, variant, backend (a medix backend: triton / cuda / torch, or the peer), shape,
dtype; time_ms (median of CUDA-event samples, L2 flushed before each), wall_ms (host wall time
per call, synchronised), device_ms (torch.profiler: summed device time of the call's kernels,
copies and memsets; ``small`` ops and grpo_loss only; the note gives the launches per call);
rate and rate_unit (GB/s: the op's minimum bytes over time_ms), pct_ceiling (rate over the
measured copy bandwidth, %); registers and spills (Triton: the launched kernel's n_regs /
n_spills; CUDA: the build's ptxas report when --ptxas is given, the largest over the op's
instantiations); max_err (the largest error over the outputs as a fraction of its bar, <= 1 is
correct: sweep_cases.py); peak_mem_mb (allocator peak of one call above what was allocated
before it); note.

``--dry-run``: the same code on this CPU (Triton interpreted, tiny shapes, one sample): the
numbers mean nothing; tests/test_gpu_sweep.py runs it.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import math
import os
import statistics
import sys
import time
from pathlib import Path

COLUMNS = ["op", "variant", "backend", "shape", "dtype", "time_ms", "wall_ms", "device_ms", "rate", "rate_unit",
           "pct_ceiling", "registers", "spills", "max_err", "peak_mem_mb", "note"]
OPS = ("logprob_fwd", "grpo_loss", "logprob_bwd", "cosine_rewards", "group_advantages", "composite_advantages",
       "fused_linear_grpo_loss")
VARIANT_S = 0.4   # timing per variant after its warm-up (GPU)


def _cases(op: str, device: str, dry: bool) -> list:
    from . import sweep_cases as sc
    from . import sweep_rewards as sr
    make = {"logprob_fwd": sc.logprob_fwd_case, "logprob_bwd": sc.logprob_bwd_case, "grpo_loss": sc.grpo_case,
            "cosine_rewards": sr.cosine_case}
    if op in make:
        return [make[op](device, dry)]
    return [c for c in sr.advantages_cases(device, dry) if c.op == op]


# ----------------------------------------------------------------------------- measuring one variant

def _sync(device: str) -> None:
    import torch
    if device == "cuda":
        torch.cuda.synchronize()


def _wall(fn, device: str, k: int, reps: int) -> float:
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(k):
            fn()
        _sync(device)
        out.append((time.perf_counter() - t0) / k)
    return statistics.median(out)


def _profile(fn, device: str, calls: int = 3) -> tuple[float, float]:
    """(device ms per call, device activities per call) from torch.profiler."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            fn()
        torch.cuda.synchronize()
    evs = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]
    us = sum(getattr(e, "device_time_total", None) or getattr(e, "cuda_time_total", 0.0) for e in evs)
    return us / 1e3 / calls, len(evs) / calls


def _handle_regs(state: dict) -> tuple:
    h = state.get("handle")
    return getattr(h, "n_regs", ""), getattr(h, "n_spills", "")


def measure(case, variant, x, ref, ctx) -> dict | None:
    """One CSV row for ``variant`` of ``case`` (None when it cannot run here: ctx["skipped"])."""
    import torch

    from ..ops.base import Unavailable
    from .sweep_cases import errors
    device, dry = ctx["device"], ctx["dry"]
    row = {"op": case.op, "variant": variant.name, "backend": variant.backend, "shape": case.shape,
           "dtype": str(case.dtype).replace("torch.", ""), "rate_unit": "GB/s", "note": variant.note}
    state = {}
    try:
        fn = variant.build(x, state)
        t0 = time.perf_counter()
        out = fn()
        _sync(device)
        first = time.perf_counter() - t0
    except Unavailable as exc:
        ctx["skipped"][f"{case.op} {case.shape} {variant.name}"] = str(exc)
        return None
    except Exception as exc:  # a variant that fails is a finding: a row with the error, no numbers
        row["note"] = f"ERROR {type(exc).__name__}: {str(exc)[:200]}"
        ctx["errors"].append(f"{case.op} {variant.name}: {type(exc).__name__}: {exc}"[:400])
        return row
    row["max_err"] = f"{errors(out, ref):.3g}"
    row["registers"], row["spills"] = _handle_regs(state)
    if variant.backend == "cuda" and ctx.get("ptxas"):
        row["registers"], row["spills"] = ctx["ptxas"].get(case.op, ("", ""))
    timer = ctx["timer"]
    if dry:  # interpreted: no compilation in the first call, whose time is the one sample (one call per variant)
        one = first
        samples, k = [one], 1
    else:
        one = timer.sample(fn, 1)
        k = max(1, min(200, math.ceil(2e-3 / max(one, 1e-7))))
        n = max(5, min(30, int(VARIANT_S / max(k * one, 1e-7))))
        samples = [timer.sample(fn, k) for _ in range(n)]
    t = statistics.median(samples)
    row["time_ms"] = f"{t * 1e3:.5g}"
    # the dry run times on the host anyway: its one sample is the wall time too (one call fewer)
    row["wall_ms"] = f"{(one if dry else _wall(fn, device, k, 5)) * 1e3:.5g}"
    rate = case.bytes / t / 1e9
    row["rate"] = f"{rate:.5g}"
    if ctx["copy_GBps"]:
        row["pct_ceiling"] = f"{100 * rate / ctx['copy_GBps']:.3g}"
    if device == "cuda":
        if case.small:
            try:
                dev_ms, launches = _profile(fn, device)
                row["device_ms"] = f"{dev_ms:.5g}"
                row["note"] = f"{row['note']}; {launches:g} device activities per call"
            except Exception as exc:
                row["note"] = f"{row['note']}; profiler failed: {type(exc).__name__}"
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        _sync(device)
        row["peak_mem_mb"] = f"{(torch.cuda.max_memory_allocated() - base) / 2**20:.4g}"
    return row


# ----------------------------------------------------------------------------- the run

def run_case(case, ctx, rows: list) -> None:
    import torch
    t0 = time.monotonic()
    x = case.make()
    ref = case.reference(x)
    _sync(ctx["device"])
    size = x[case.size_tensor] if case.size_tensor else None
    if size is not None:
        from medix_kernels import _backend
        auto_op = {"logprob_fwd": "selective_log_softmax"}.get(case.op, case.op)
        ctx["auto"][f"{case.op} {case.shape}"] = _backend.resolve_backend("auto", size, auto_op)
        ctx["auto_sizes"][f"{case.op} {case.shape}"] = size.numel()
    for v in case.variants:
        if time.monotonic() > ctx["deadline"]:
            ctx["skipped"][f"{case.op} {case.shape} {v.name}"] = "out of the time budget"
            continue
        row = measure(case, v, x, ref, ctx)
        if row is not None:
            rows.append(row)
            print(f"  {case.op:22s} {v.name:34s} {row.get('time_ms', '-'):>10} ms  err {row.get('max_err', '-')}"
                  f"  {row['note'][:60] if row['note'].startswith('ERROR') else ''}", flush=True)
        if ctx["device"] == "cuda":
            torch.cuda.empty_cache()
    del x, ref
    print(f"{case.op} {case.shape}: {time.monotonic() - t0:.1f} s", flush=True)


def _fused_linear_rows(ctx) -> list[dict]:
    """Rows of benchmarks/gpu/sweep_fused_linear.py (another module) when it exists."""
    if importlib.util.find_spec("benchmarks.gpu.sweep_fused_linear") is None:
        ctx["skipped"]["fused_linear_grpo_loss"] = "benchmarks/gpu/sweep_fused_linear.py is not in this checkout"
        return []
    from . import sweep_fused_linear
    left = max(10.0, ctx["deadline"] - time.monotonic())
    got = sweep_fused_linear.run(ctx["device"], ctx["dry"], left)
    return [{k: r.get(k, "") for k in COLUMNS} for r in got]


def versions(device: str) -> dict:
    import torch

    from .. import common
    out = {"torch": torch.__version__, "cuda": torch.version.cuda or "-", "python": sys.version.split()[0],
           "device": common.device_name(device), "date": datetime.date.today().isoformat(),
           "started": datetime.datetime.now().isoformat(timespec="seconds")}
    for mod in ("triton", "liger_kernel", "trl"):
        out[mod] = common._version(mod)
    if device == "cuda":
        p = torch.cuda.get_device_properties(0)
        out["gpu"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "sms": p.multi_processor_count,
                      "memory_GiB": round(p.total_memory / 2**30, 1)}
    out["commit"] = os.environ.get("MEDIX_COMMIT", "")
    return out


def sweep(out_dir: Path, ops: list[str], dry: bool, budget_s: float, ptxas_file: str | None) -> int:
    import torch

    from medix_kernels import _backend

    from .. import common
    from . import sweep_report
    from .rows import ceilings
    device = "cpu" if dry else "cuda"
    t0 = time.monotonic()
    ctx = {"device": device, "dry": dry, "deadline": t0 + budget_s, "skipped": {}, "errors": [], "auto": {},
           "auto_sizes": {}, "timer": common.Timer(device, flush_l2=not dry), "ptxas": _ptxas_regs(ptxas_file)}
    meta = {"versions": versions(device), "dry_run": dry, "budget_s": budget_s, "columns": COLUMNS,
            "doc": __doc__.split("Columns:")[1].split("``--dry-run``")[0].strip()}
    ceil = ceilings(device, dry)
    ctx["copy_GBps"] = ceil["copy_GBps"]
    meta["ceilings"] = ceil
    meta["cuda_backend"] = _backend.usable("cuda", torch.device(device))
    print(f"ceilings: copy {ceil['copy_GBps']} GB/s, bf16 matmul {ceil['matmul_TFLOPs']} TFLOP/s", flush=True)
    rows: list[dict] = []
    for op in ops:
        if op == "fused_linear_grpo_loss":
            rows += _fused_linear_rows(ctx)
            continue
        for case in _cases(op, device, dry):
            run_case(case, ctx, rows)
            _write(out_dir, rows, meta, ctx, t0)  # after every case: a run stopped from outside keeps its rows
    _write(out_dir, rows, meta, ctx, t0)
    (out_dir / "winners.md").write_text(sweep_report.winners(rows, meta))
    source = f"sweep.csv of {meta['versions'].get('date', '')} ({meta['versions'].get('device', '')})"
    (out_dir / "defaults.py.txt").write_text(sweep_report.implied_defaults(rows, source, meta))
    bad = [r for r in rows if r["note"].startswith("ERROR")]
    print(f"sweep: {len(rows)} rows, {len(bad)} errors, {len(ctx['skipped'])} skipped, "
          f"{time.monotonic() - t0:.0f} s; {out_dir}", flush=True)
    return 0


def _write(out_dir: Path, rows, meta, ctx, t0) -> None:
    from .. import common
    common.write_csv(out_dir / "sweep.csv", rows, COLUMNS)
    meta.update({"elapsed_s": round(time.monotonic() - t0, 1), "skipped": ctx["skipped"], "errors": ctx["errors"],
                 "auto": ctx["auto"], "auto_sizes": ctx["auto_sizes"]})
    (out_dir / "sweep.meta.json").write_text(json.dumps(meta, indent=1, default=str) + "\n")


def _ptxas_regs(path: str | None) -> dict:
    """op -> (registers, spill bytes) of its CUDA kernels from a ptxas report (the largest instantiation)."""
    if not path or not os.path.exists(path):
        return {}
    from . import ptxas
    rows = ptxas.parse(Path(path).read_text(errors="replace"))
    names = ptxas.demangle(sorted({r["kernel"] for r in rows}))
    stems = {"logprob_fwd": "logprob_fwd", "logprob_bwd": "logprob_bwd", "cosine_rewards": "cosine_kernel",
             "group_advantages": "group_advantages_kernel", "composite_advantages": "group_advantages_kernel"}
    out = {}
    for op, stem in stems.items():
        hits = [r for r in rows if stem in names.get(r["kernel"], r["kernel"]) and r["registers"] is not None]
        if hits:
            out[op] = (max(r["registers"] for r in hits), max((r["spill_stores"] or 0) for r in hits))
    return out


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu.sweep", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", nargs="?", help="output folder")
    p.add_argument("--dry-run", action="store_true", help="this CPU machine: Triton interpreted, tiny shapes")
    p.add_argument("--budget-s", type=float, default=None, help="time budget (default 300; dry run 120)")
    p.add_argument("--ops", default=",".join(OPS), help=f"comma-separated subset of {','.join(OPS)}")
    p.add_argument("--ptxas", default=None, help="the CUDA build's ptxas report (registers / spills of cuda rows)")
    p.add_argument("--print-defaults", metavar="CSV", default=None,
                   help="print the medix_kernels/_defaults.py table a sweep CSV implies, and exit")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.print_defaults:
        from .. import common
        from . import sweep_report
        print(sweep_report.implied_defaults(common.read_csv(args.print_defaults), args.print_defaults))
        return 0
    if not args.out:
        print("usage: python -m benchmarks.gpu.sweep OUT [--dry-run] ...", file=sys.stderr)
        return 2
    ops = [o for o in args.ops.split(",") if o]
    unknown = [o for o in ops if o not in OPS]
    if unknown:
        print(f"--ops: unknown {unknown}; choose from {list(OPS)}", file=sys.stderr)
        return 2
    if args.dry_run:  # before torch / triton load
        os.environ["TRITON_INTERPRET"] = "1"
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch
    if not args.dry_run and not torch.cuda.is_available():
        print("benchmarks.gpu.sweep: no CUDA GPU here (--dry-run runs the same code on tiny CPU shapes)")
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    budget = args.budget_s if args.budget_s is not None else (120.0 if args.dry_run else 300.0)
    return sweep(out, ops, args.dry_run, budget, args.ptxas)


if __name__ == "__main__":
    sys.exit(main())
