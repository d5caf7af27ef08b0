"""The suite runner: every selected op at its sweep of shapes, every implementation side by side.

Per case (an op at one shape): build the inputs once, build each implementation (a peer that
cannot run here is skipped with its reason, printed and listed in the run's meta file), time them
interleaved (``common.interleaved``), then measure each one's peak extra memory (``memory``),
and write one row per implementation. Speed-ups are computed afterwards from the measured
medians of the same case: ``x_vs_<peer>`` = peer median / this row's median (> 1: this row is
faster).
"""
from __future__ import annotations

import gc
import json
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import common, hardware
from .memory import MemoryWorker, cuda_peak_extra
from .ops import OPS, Unavailable

PEER_FAMILIES = ("eager", "compile", "trl", "verl", "liger", "st")
PARAM_COLUMNS = ("tokens", "vocab", "hidden", "n", "group", "k", "dim")
COLUMNS = (["op", "shape", *PARAM_COLUMNS, "dtype", "device", "impl", "role", "family", "backend",
            "median_us", "p10_us", "p90_us", "n_samples", "calls_per_sample", "first_call_ms",
            "peak_mem_MB", "mem_method", "bytes_moved", "flops", "GBps", "TFLOPs", "bound", "frac_peak",
            "peak_GBps", "peak_TFLOPs", "peak_source"]
           + [f"x_vs_{f}" for f in PEER_FAMILIES]
           + ["best_peer", "x_vs_best_peer", "load_1m_start", "load_1m_end", "load_5m", "threads", "profile",
              "note", "device_name", "cpu_vector_ext", "cpu_level", "medix", "torch", "triton", "driver",
              "trl_version", "liger_version", "date"])


@dataclass
class Settings:
    profile: str = "quick"
    device: str = "cpu"
    dtype: str = "float32"
    ops: tuple = tuple(OPS)
    peers: tuple | None = None       # families to run besides medix (None: all)
    memory: str = "auto"             # auto | worker | isolated | none
    mem_budget_gb: float | None = None
    out_dir: str = str(common.RESULTS)
    name: str | None = None
    rounds_min: int | None = None
    budget_s: float | None = None
    dry_run: bool = False
    shape: dict | None = None        # one custom shape instead of the profile's sweep
    specs: dict | None = None        # {op name: OpSpec} used instead of benchmarks.ops.OPS[op] (benchmarks/gpu)


def cases_for(spec, s: Settings) -> list[dict]:
    default = spec.cases(s.profile, s.device)
    if not s.shape:
        return default
    keys = set(default[0])
    missing = keys - set(s.shape)
    custom = {k: v for k, v in s.shape.items() if k in keys}
    if missing:  # the op's other parameters from its first default case
        custom = {**{k: default[0][k] for k in missing}, **custom}
    return [custom]


TIMING = {  # profile: (rounds_min, budget_s per case, min_sample_s, warm-up calls)
    "smoke": (3, 0.0, 2e-4, 1),
    "quick": (5, 2.0, 2e-3, 2),
    "medium": (5, 4.0, 2e-3, 2),
    "full": (10, 6.0, 2e-3, 3),
}


def mem_budget_bytes(s: Settings) -> int:
    if s.mem_budget_gb is not None:
        return int(s.mem_budget_gb * 2**30)
    if s.device == "cuda":
        free, _ = torch.cuda.mem_get_info()
        return int(0.8 * free)
    try:
        with open("/proc/meminfo") as fh:
            avail = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        avail = 8 * 2**30
    return int(0.4 * avail)  # the machine is shared: leave most of it to the others


def csv_path(s: Settings, env: dict) -> Path:
    if s.name:
        return Path(s.out_dir) / (s.name if s.name.endswith(".csv") else s.name + ".csv")
    # One current result per device and profile (the date is in every row and the meta file; git keeps
    # the earlier runs).
    dev = "cpu-dryrun" if s.dry_run else s.device
    return Path(s.out_dir) / f"{dev}-{s.profile}.csv"


def _fmt(x, nd=3):
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return ""
    return round(x, nd)


def _f(x):
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def _sig(x, digits=4):
    """Rounded to significant digits (tiny throughputs of tiny shapes must not round to 0)."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return ""
    return float(f"{x:.{digits}g}")


def add_ratios(rows: list[dict]) -> None:
    """x_vs_<family> = median of that peer family's row in the same case / this row's median;
    best_peer: the fastest peer row of the case."""
    cases = {}
    for r in rows:
        cases.setdefault((r["op"], r["shape"], r["dtype"], r["device"]), []).append(r)
    for case_rows in cases.values():
        fam = {}
        for r in case_rows:
            if r["role"] == "peer":
                t = float(r["median_us"])
                if r["family"] not in fam or t < fam[r["family"]][0]:
                    fam[r["family"]] = (t, r["impl"])
        best = min(fam.values(), default=None)
        for r in case_rows:
            t = float(r["median_us"])
            for f in PEER_FAMILIES:
                r[f"x_vs_{f}"] = round(fam[f][0] / t, 3) if f in fam and t > 0 else ""
            r["best_peer"] = best[1] if best else ""
            r["x_vs_best_peer"] = round(best[0] / t, 3) if best and t > 0 else ""


@dataclass
class SuiteRun:
    """What the steps of one run share: the settings, the machine, the memory method and the rows so far."""
    s: Settings
    dtype: torch.dtype
    env: dict
    peaks: dict
    budget: int
    mem_method: str
    out_csv: Path
    timing: dict                     # common.interleaved's rounds_min, budget_s, min_sample_s, warmup
    timer: common.Timer
    log: Callable[[str], None]
    worker: MemoryWorker | None = None
    rows: list = field(default_factory=list)
    skipped: dict = field(default_factory=dict)
    errors: list = field(default_factory=list)

    def skip(self, op, impl, reason):
        key = f"{op} / {impl}"
        if key not in self.skipped:
            self.skipped[key] = reason
            self.log(f"  skipped {key}: {reason}")


def run(s: Settings, log=print) -> tuple[Path, list[dict], dict]:
    t_start = time.perf_counter()
    r = start_run(s, log)
    try:
        for op_name in s.ops:
            spec = (s.specs or {}).get(op_name) or OPS[op_name]
            log(f"== {op_name}: {spec.description}")
            for params in cases_for(spec, s):
                run_case(r, op_name, spec, params)
    finally:
        if r.worker is not None:
            r.worker.close()
    if s.device == "cpu" and r.rows:
        use_higher_cpu_peaks(r)
    add_ratios(r.rows)
    common.write_csv(r.out_csv, r.rows, COLUMNS)
    meta = {"settings": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(s).items() if k != "specs"},
            "env": r.env, "peaks": r.peaks, "mem_method": r.mem_method,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(unset)"),
            "mem_budget_GiB": round(r.budget / 2**30, 2),
            "skipped": r.skipped, "errors": r.errors, "wall_s": round(time.perf_counter() - t_start, 1),
            "csv": r.out_csv.name}
    r.out_csv.with_suffix(".meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    r.out_csv.with_suffix(".partial.csv").unlink(missing_ok=True)
    log(f"wrote {r.out_csv} ({len(r.rows)} rows, {meta['wall_s']} s)")
    return r.out_csv, r.rows, meta


def start_run(s: Settings, log) -> SuiteRun:
    """The machine (environment, peak throughputs), the timing and memory settings and the output file."""
    device, dtype = s.device, getattr(torch, s.dtype)
    rounds_min, budget_s, min_sample_s, warmup = TIMING[s.profile]
    timing = dict(rounds_min=s.rounds_min or rounds_min, budget_s=s.budget_s if s.budget_s is not None else budget_s,
                  min_sample_s=min_sample_s, warmup=max(warmup, 3) if device == "cuda" else warmup)
    env = common.environment(device)
    # Which vector code the C++ CPU kernels ran (the CPU's extensions, and the level they picked, which
    # MEDIX_CPU_LEVEL can cap to measure the AVX2 / baseline paths on a wider CPU): in every row.
    env.update(cpu_vector_ext=hardware.cpu_vector_extensions(), cpu_level=hardware.kernel_level())
    if s.dry_run:
        env["device_name"] += " [dry run: TRITON_INTERPRET=1, tiny shapes; timings meaningless]"
    peaks = hardware.peaks(device, dtype, env["device_name"])
    log(f"device: {env['device_name']}; CPU kernels at level {env['cpu_level']} ({env['cpu_vector_ext']}); "
        f"peaks: {peaks['peak_GBps']:.1f} GB/s, {peaks['peak_TFLOPs']:.3f} TFLOP/s "
        f"({peaks['peak_source']}); load {common.load_avg()[0]:.2f}")
    mem_method = s.memory
    if mem_method == "auto":
        mem_method = "cuda-allocator" if device == "cuda" else "worker"
    out_csv = csv_path(s, env)
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    r = SuiteRun(s=s, dtype=dtype, env=env, peaks=peaks, budget=mem_budget_bytes(s), mem_method=mem_method,
                 out_csv=out_csv, timing=timing, timer=common.Timer(device), log=log)
    if mem_method in ("worker", "isolated"):
        log_path = os.path.join(tempfile.gettempdir(), f"medix-bench-{out_csv.stem}.memlog")
        r.worker = MemoryWorker(isolated=mem_method == "isolated", log_path=log_path)
        log(f"memory: {mem_method} (worker stderr: {log_path})")
    return r


def run_case(r: SuiteRun, op_name: str, spec, params: dict) -> None:
    """One op at one shape: every implementation timed side by side, its memory measured, its rows
    written (to the partial CSV too, which survives an interrupted run)."""
    label = spec.label(params)
    need = spec.footprint(params, r.dtype.itemsize)
    # On a GPU an implementation that runs out of memory raises (reported as failed, the others go
    # on), so only hopeless cases are skipped; on the CPU it would be killed (or kill a neighbour).
    if need > (4 * r.budget if r.s.device == "cuda" else r.budget):
        r.skip(op_name, label, f"needs ~{need / 2**30:.1f} GiB, memory budget {r.budget / 2**30:.1f} GiB "
                               "(--mem-budget-gb)")
        return
    case = dict(op=op_name, spec=spec, params=params, label=label, nbytes=spec.bytes_moved(params, r.dtype.itemsize),
                flops=spec.flops(params), **measure_case(r, op_name, spec, params, label))
    r.rows += [case_row(r, case, name) for name in case["timings"]]
    case_rows = [row for row in r.rows if row["op"] == op_name and row["shape"] == label]
    add_ratios(case_rows)
    r.log(_case_table(label, case_rows, case["load0"][0]))
    common.write_csv(r.out_csv.with_suffix(".partial.csv"), r.rows, COLUMNS)


def measure_case(r: SuiteRun, op_name: str, spec, params: dict, label: str) -> dict:
    """Build the inputs and the implementations, time them interleaved, then measure each one's peak
    extra memory: {impls, timings, mem (per implementation), load0, load1 (the load before, after)}."""
    device = r.s.device
    inputs = spec.make_inputs(params, r.dtype, device)
    impls, fns = {}, {}
    for imp in spec.impls(device):
        if imp.role == "peer" and r.s.peers is not None and imp.family not in r.s.peers:
            continue
        try:
            fns[imp.name] = imp.build(inputs)
            impls[imp.name] = imp
        except Unavailable as exc:
            r.skip(op_name, imp.name, str(exc))

    def failed(name, exc):
        fns.pop(name, None)
        if device == "cuda":
            torch.cuda.empty_cache()
        msg = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        r.errors.append(f"{op_name} {label} {name}: {msg}")
        r.log(f"  {name} failed at {label}: {msg}")

    load0 = common.load_avg()
    res = common.interleaved(fns, device=device, timer=r.timer, on_error=failed, **r.timing)
    load1 = common.load_avg()
    mem = {}
    if r.mem_method == "cuda-allocator":
        for name in res:
            try:
                mem[name] = cuda_peak_extra(fns[name])
            except Exception as exc:
                mem[name] = f"{type(exc).__name__}: {exc}"
    fns = inputs = None  # the worker measures in its own process: free this one's tensors first
    gc.collect()
    if r.worker is not None and res:
        mem = r.worker.measure(op_name, params, r.s.dtype, device, list(res))
    return dict(impls=impls, timings=res, mem=mem, load0=load0, load1=load1)


def case_row(r: SuiteRun, case: dict, name: str) -> dict:
    """One implementation's row: its timing summary, throughput against the peaks, memory (bytes, or
    the reason it was not measured), the load and the environment."""
    s, peaks, spec, params, op_name = r.s, r.peaks, case["spec"], case["params"], case["op"]
    imp, info, m = case["impls"][name], case["timings"][name], case["mem"].get(name)
    nbytes, flops, load0, load1 = case["nbytes"], case["flops"], case["load0"], case["load1"]
    st = common.summarize(info["samples"])
    med = st["median_s"]
    gbps = nbytes / med / 1e9
    tflops = flops / med / 1e12 if flops else None
    frac = (tflops / peaks["peak_TFLOPs"]) if spec.bound == "compute" else gbps / peaks["peak_GBps"]
    note = imp.note
    if isinstance(m, str):
        note = (note + "; " if note else "") + f"memory not measured: {m}"
    return {
        "op": op_name, "shape": case["label"], **{k: params.get(k, "") for k in PARAM_COLUMNS},
        "dtype": s.dtype if op_name not in ("group_advantages", "composite_advantages") else "float32",
        "device": s.device, "impl": imp.name, "role": imp.role, "family": imp.family,
        "backend": imp.backend + (" (interpreted)" if s.dry_run and imp.backend == "triton" else ""),
        "median_us": _fmt(med * 1e6), "p10_us": _fmt(st["p10_s"] * 1e6),
        "p90_us": _fmt(st["p90_s"] * 1e6), "n_samples": st["n_samples"],
        "calls_per_sample": info["calls_per_sample"], "first_call_ms": _fmt(info["first_call_s"] * 1e3),
        "peak_mem_MB": _sig(m / 2**20) if isinstance(m, int) else "",
        "mem_method": r.mem_method if isinstance(m, int) else "",
        "bytes_moved": nbytes, "flops": flops or "", "GBps": _sig(gbps),
        "TFLOPs": _sig(tflops), "bound": spec.bound, "frac_peak": _sig(frac),
        "peak_GBps": peaks["peak_GBps"], "peak_TFLOPs": peaks["peak_TFLOPs"],
        "peak_source": peaks["peak_source"],
        "load_1m_start": round(load0[0], 2), "load_1m_end": round(load1[0], 2),
        "load_5m": round(load1[1], 2), "threads": torch.get_num_threads(), "profile": s.profile,
        "note": note, **r.env}


def use_higher_cpu_peaks(r: SuiteRun) -> None:
    """On a shared CPU the peak measured at the start depends on the load at that moment: measure again
    at the end and use the higher of the two for every row (both are in the meta file)."""
    end = hardware.peaks(r.s.device, r.dtype, r.env["device_name"])
    start_peaks = dict(r.peaks)
    peaks = {"peak_GBps": max(r.peaks["peak_GBps"], end["peak_GBps"]),
             "peak_TFLOPs": max(r.peaks["peak_TFLOPs"], end["peak_TFLOPs"]),
             "peak_source": end["peak_source"].replace("measured at start", "measured at start and end (higher)")}
    peaks["measured_start"], peaks["measured_end"] = start_peaks, end
    for row in r.rows:
        gb, tf = _f(row["GBps"]), _f(row["TFLOPs"])
        row["frac_peak"] = _sig(tf / peaks["peak_TFLOPs"] if row["bound"] == "compute" else gb / peaks["peak_GBps"])
        row.update({k: peaks[k] for k in ("peak_GBps", "peak_TFLOPs", "peak_source")})
    r.peaks = peaks


def _case_table(label, rows, load) -> str:
    lines = [f"  {label}  (load {load:.2f})"]
    for r in sorted(rows, key=lambda r: float(r["median_us"])):
        mem = f"{float(r['peak_mem_MB']):9.1f} MB" if r["peak_mem_MB"] != "" else "        - MB"
        ratios = " ".join(f"{f}x{r[f'x_vs_{f}']}" for f in PEER_FAMILIES if r[f"x_vs_{f}"] != "")
        lines.append(f"    {r['impl']:26s} {float(r['median_us']):12.1f} us [{float(r['p10_us']):.1f}, "
                     f"{float(r['p90_us']):.1f}] {mem}  {ratios}")
    return "\n".join(lines)


def dry_run_env() -> None:
    """The dry run: Triton kernels run in the interpreter on CPU tensors (set before triton loads)."""
    os.environ["TRITON_INTERPRET"] = "1"
