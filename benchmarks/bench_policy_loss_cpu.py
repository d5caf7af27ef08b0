"""CPU policy loss (grpo_loss and fused_linear_grpo_loss, forward + backward): a wrapper over the
suite (``python -m benchmarks``). Without options it measures the shape this script always used,
fp32 4 x 1024 tokens x 49,152 vocabulary (SmolLM2) with H = 576, and writes
benchmarks/results/policy_loss_cpu.csv (+ .meta.json) and policy_loss_cpu.png; ``--quick`` runs
the suite's quick sweep instead (its own CSV name).

Implementations (benchmarks/ops/loss.py): grpo_loss on the C++ backend (``medix-cpu``, and
``medix-cpu-inplace``: d logits written over the logits) against the eager reference and
torch.compile of it (and TRL / verl's formulas); fused_linear_grpo_loss (``medix-cpu``: chunked,
no full logits) against the full-logits path (``medix-cpu-unfused``: ``h @ W^T``, then grpo_loss
with inplace_backward=True) and the peers. Time: interleaved rounds (A B C, B C A, ...), median;
each row has the 1-minute load average at the start and end of its case.

Peak extra memory (``peak_mem_MB``), one definition for every implementation and both ops: the
growth of the process's peak RSS (VmHWM) during one steady-state call (after a warm-up call at
the same shape) beyond the RSS before it, measured in the suite's memory worker process, where
every malloc block of 64 KiB or more is its own mapping (MALLOC_MMAP_THRESHOLD_=65536,
MALLOC_TRIM_THRESHOLD_=0) so memory freed by an earlier call cannot hide this one's. It includes
what the call returns: the gradients (d logits for grpo_loss, none new for the in-place variants
whose gradient is the logits' own storage; d hidden and the [V, H] d weight for the fused-linear
op, which every implementation returns alike). This script adds ``outputs_MB`` (the returned
gradients' bytes) and ``peak_mem_no_outputs_MB`` = peak_mem_MB - outputs_MB, and the definition
itself in ``peak_mem_definition``, to every row of the CSV, and prints the issue targets.

    python benchmarks/bench_policy_loss_cpu.py [--quick] [--report] [other python -m benchmarks options]
    python benchmarks/bench_policy_loss_cpu.py --fair     # the fair in-place protocol (below)

The committed CSV was written with ``--peers eager,compile --mem-budget-gb 5.5`` (the shared
machine's default budget, 40% of the available RAM, skipped both cases at the time).

``--report`` also runs the suite's report (per-op plots, and the README table when writing to
benchmarks/results); by default only this script's CSV and PNG are written.

``--fair`` (grpo_loss only): the fair protocol for the in-place backward. In the suite every row
reuses one leaf tensor across its timed calls; ``medix-cpu-inplace``'s leaf is a private copy
that its backward overwrites with d logits, so it never allocates a gradient buffer while the
other rows allocate a fresh [T, V] one per call. Here every implementation alike gets a fresh
copy of the logits inside each timed call (``benchmarks.ops.loss.logits_leaf``), the copy alone
is timed as its own row (``logits-copy``) in the same interleaved rounds, and each row's
``net_median_us`` is the median over rounds of (its sample - that round's copy sample). The
suite's own protocol (``reused-leaf``) is measured in the same rounds, side by side:

    python benchmarks/bench_policy_loss_cpu.py --fair [--shape tokens=4096,vocab=49152]
        [--peers eager,compile,trl] [--rounds 8] [--budget-s 0] [--out PATH]

writes benchmarks/results/policy_loss_cpu_fair.csv (+ .meta.json).
"""
import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.__main__ import main

SHAPE = "tokens=4096,vocab=49152,hidden=576"
NAME = "policy_loss_cpu"
PEAK_DEFINITION = ("peak RSS growth of one steady-state call beyond the RSS before it (suite memory worker, "
                   "malloc blocks >= 64 KiB mmapped); includes the returned gradients; same for every row")
IN_PLACE = ("medix-cpu-inplace", "liger-triton")  # their gradient is the logits' own storage


def outputs_bytes(row: dict) -> int:
    """Bytes of the gradients one call returns (new memory that the peak includes)."""
    e = 2 if row["dtype"] in ("bfloat16", "float16") else 4
    t = int(row["tokens"] or 0)
    if row["op"] == "grpo_loss":
        return 0 if row["impl"] in IN_PLACE else t * int(row["vocab"]) * e
    if row["op"] == "fused_linear_grpo_loss":
        return (t + int(row["vocab"])) * int(row["hidden"]) * e
    return 0


def annotate(path: str) -> list[dict]:
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        rows, fields = list(reader), list(reader.fieldnames)
    for r in rows:
        out_mb = outputs_bytes(r) / 2**20
        r["outputs_MB"] = round(out_mb, 1)
        r["peak_mem_no_outputs_MB"] = round(float(r["peak_mem_MB"]) - out_mb, 1) if r["peak_mem_MB"] else ""
        r["peak_mem_definition"] = PEAK_DEFINITION
    extra = [c for c in ("outputs_MB", "peak_mem_no_outputs_MB", "peak_mem_definition") if c not in fields]
    i = fields.index("mem_method") + 1 if "mem_method" in fields else len(fields)
    fields = fields[:i] + extra + fields[i:]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    return rows


def targets(rows: list[dict]) -> list[str]:
    """The issue targets, from the rows of one case each."""
    by = {(r["op"], r["shape"], r["impl"]): r for r in rows}
    lines = []
    for (op, shape, impl), r in by.items():
        if op == "fused_linear_grpo_loss" and impl == "medix-cpu":
            full = by.get((op, shape, "medix-cpu-unfused"))
            if full and r["peak_mem_MB"] and full["peak_mem_MB"]:
                mem = float(r["peak_mem_MB"]) / float(full["peak_mem_MB"])
                mem_no = float(r["peak_mem_no_outputs_MB"]) / float(full["peak_mem_no_outputs_MB"])
                tim = float(r["median_us"]) / float(full["median_us"])
                lines.append(f"fused_linear_grpo_loss {shape}: peak {r['peak_mem_MB']} MB vs full logits "
                             f"{full['peak_mem_MB']} MB = {mem:.1%} "
                             f"(target <= 15%: {'met' if mem <= 0.15 else 'MISSED'}); "
                             f"without the returned gradients {r['peak_mem_no_outputs_MB']} vs "
                             f"{full['peak_mem_no_outputs_MB']} MB = {mem_no:.1%}; time {tim:.2f}x the full-logits "
                             f"path (target <= 1.3x: {'met' if tim <= 1.3 else 'MISSED'}); "
                             f"load {r['load_1m_start']} -> {r['load_1m_end']}")
        if op == "grpo_loss" and impl == "medix-cpu":
            logits_mb = int(r["tokens"]) * int(r["vocab"]) * 4 / 2**20
            mem = float(r["peak_mem_MB"]) / logits_mb if r["peak_mem_MB"] else float("nan")
            xe, xc = float(r["x_vs_eager"] or "nan"), float(r["x_vs_compile"] or "nan")
            lines.append(f"grpo_loss {shape}: {xe:.2f}x eager (target >= 2.5x: {'met' if xe >= 2.5 else 'MISSED'}), "
                         f"{xc:.2f}x compile (target >= 1.3x: {'met' if xc >= 1.3 else 'MISSED'}), peak "
                         f"{mem:.2f}x the logits (target <= 1.25x: {'met' if mem <= 1.25 else 'MISSED'}); "
                         f"load {r['load_1m_start']} -> {r['load_1m_end']}")
    return lines


def plot(rows: list[dict], png: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    labels = [f"{r['op'].replace('_grpo_loss', '').replace('grpo_loss', 'grpo')}\n{r['impl']}" for r in rows]
    colors = ["tab:blue" if r["role"] == "ours" else "tab:gray" for r in rows]
    axes[0].bar(labels, [float(r["median_us"]) / 1e3 for r in rows], color=colors)
    axes[0].set_ylabel("forward + backward, median (ms)")
    axes[1].bar(labels, [float(r["peak_mem_MB"] or 0) for r in rows], color=colors)
    axes[1].set_ylabel("peak extra memory incl. returned gradients (MB)")
    for ax in axes:
        ax.tick_params(axis="x", labelsize=6, rotation=60)
    fig.suptitle(f"policy loss, CPU {rows[0]['dtype']} {rows[0]['shape']} ({rows[0]['device_name']}); "
                 f"load {rows[0]['load_1m_start']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


FAIR_NAME = "policy_loss_cpu_fair"
FAIR_COLUMNS = ["op", "shape", "tokens", "vocab", "dtype", "device", "protocol", "impl", "family", "median_us",
                "p10_us", "p90_us", "copy_median_us", "net_median_us", "net_p10_us", "net_p90_us", "n_samples",
                "minor_faults", "fresh_buffer_MB", "x_vs_eager", "x_vs_compile", "x_vs_trl", "first_call_ms",
                "load_1m_start", "load_1m_end", "threads",
                "note", "device_name", "medix", "torch", "trl_version", "date"]
FAIR_IMPLS = {"medix-cpu", "medix-cpu-inplace", "torch-eager", "torch-compile", "trl"}
REUSED_IMPLS = ("medix-cpu", "medix-cpu-inplace", "torch-eager", "torch-compile")


def fair(argv: list[str]) -> int:
    import json
    import time
    args = fair_args(argv)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as the suite (before torch loads libgomp)
    import torch

    from benchmarks import common
    from benchmarks.ops import loss
    params = {k: int(v) for k, v in (kv.split("=") for kv in args.shape.split(","))}
    params = {"tokens": params.get("tokens", 4096), "vocab": params.get("vocab", 49152)}
    t_start = time.perf_counter()
    env = common.environment("cpu")
    x = loss._grpo_inputs(params, torch.float32, "cpu")
    fns, meta_impls, skipped = fair_callables(x, {"eager", *args.peers.split(",")})
    load0 = common.load_avg()
    print(f"{loss.label(params)} fp32, {len(fns)} callables, load {load0[0]:.2f}", flush=True)
    res = common.interleaved(fns, device="cpu", rounds_min=args.rounds, rounds_max=args.rounds if not args.budget_s
                             else 50, budget_s=args.budget_s, min_sample_s=0.0, warmup=2)
    load1 = common.load_avg()
    faults = page_faults(fns, res)
    copy = res["fresh-copy/logits-copy"]["samples"]
    common_cols = {"op": "grpo_loss", "shape": loss.label(params), **params, "dtype": "float32", "device": "cpu"}
    tail_cols = {"load_1m_start": round(load0[0], 2), "load_1m_end": round(load1[0], 2),
                 "threads": torch.get_num_threads()}
    rows = [fair_row(key, info, copy, faults[key], meta_impls, common_cols, tail_cols, env)
            for key, info in res.items()]
    add_peer_ratios(rows)
    common.write_csv(args.out, rows, FAIR_COLUMNS)
    meta = {"command": "python benchmarks/bench_policy_loss_cpu.py --fair " + " ".join(argv), "params": params,
            "env": env, "skipped": skipped, "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "load_avg_start": load0, "load_avg_end": load1, "wall_s": round(time.perf_counter() - t_start, 1),
            "rounds": len(copy)}
    with open(os.path.splitext(args.out)[0] + ".meta.json", "w") as fh:
        fh.write(json.dumps(meta, indent=1) + "\n")
    for r in sorted(rows, key=lambda r: (r["protocol"], r["net_median_us"])):
        print(f"{r['protocol']:12s} {r['impl']:18s} raw {r['median_us'] / 1e3:8.1f} ms  "
              f"net {r['net_median_us'] / 1e3:8.1f} ms [{r['net_p10_us'] / 1e3:.1f}, {r['net_p90_us'] / 1e3:.1f}]  "
              f"x eager {r['x_vs_eager']}  "
              f"x compile {r['x_vs_compile']}  x trl {r['x_vs_trl']}  faults {r['minor_faults']}")
    print(f"wrote {args.out} (load {load0[0]:.2f} -> {load1[0]:.2f}, {meta['wall_s']} s)")
    fair_report(args.out)
    return 0


def fair_args(argv: list[str]):
    import argparse
    ap = argparse.ArgumentParser(prog="bench_policy_loss_cpu.py --fair")
    ap.add_argument("--shape", default="tokens=4096,vocab=49152")
    ap.add_argument("--peers", default="eager,compile,trl", help="peer families besides eager (always run)")
    ap.add_argument("--rounds", type=int, default=8)
    ap.add_argument("--budget-s", type=float, default=0.0, help="more rounds while this budget lasts")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                  FAIR_NAME + ".csv"))
    return ap.parse_args(argv)


def fair_callables(x: dict, peers: set) -> tuple[dict, dict, dict]:
    """The timed callables by ``protocol/impl``: the logits copy alone, every implementation on a fresh copy
    and, for those in REUSED_IMPLS, on the suite's reused leaf too; with the implementations and the skipped."""
    from benchmarks.ops import loss
    from benchmarks.ops.base import Unavailable
    fresh = {**x, "fresh_logits": True}
    fns, meta_impls, skipped = {"fresh-copy/logits-copy": loss.copy_logits(x)}, {}, {}
    for imp in loss._grpo_impls("cpu"):
        if imp.name not in FAIR_IMPLS or (imp.role == "peer" and imp.family not in peers):
            continue
        try:
            fns[f"fresh-copy/{imp.name}"] = imp.build(fresh)
            if imp.name in REUSED_IMPLS:
                fns[f"reused-leaf/{imp.name}"] = imp.build(x)
        except Unavailable as exc:
            skipped[imp.name] = str(exc)
            print(f"skipped {imp.name}: {exc}")
            continue
        meta_impls[imp.name] = imp
    return fns, meta_impls, skipped


def page_faults(fns: dict, keys) -> dict:
    """Minor page faults of one more call each: the fresh [T, V] buffers it touches."""
    import resource
    faults = {}
    for key in keys:
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        fns[key]()
        faults[key] = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0
    return faults


def fair_row(key: str, info: dict, copy: list, faults: int, meta_impls: dict, head: dict, tail: dict,
             env: dict) -> dict:
    """One CSV row: raw times, and net times (each sample minus its round's copy sample) for fresh-copy rows."""
    import resource
    import statistics

    from benchmarks import common
    protocol, name = key.split("/", 1)
    samples = info["samples"]
    st = common.summarize(samples)
    net = [a - c for a, c in zip(samples, copy)] if protocol == "fresh-copy" and name != "logits-copy" else samples
    nt = common.summarize(net)
    imp = meta_impls.get(name)
    if name == "logits-copy":
        note = ("the fresh copy alone (logits.detach().clone().requires_grad_()): subtracted from every "
                "fresh-copy row")
    elif protocol == "fresh-copy":
        note = "a fresh copy of the logits made inside every timed call; net = sample - the round's copy sample"
    else:
        note = "the suite's protocol: one leaf reused by every call" + (
            " (a private copy the in-place backward overwrites)" if name.endswith("-inplace") else "")
    return {**head, "protocol": protocol, "impl": name, "family": imp.family if imp else "copy",
            "median_us": round(st["median_s"] * 1e6, 1), "p10_us": round(st["p10_s"] * 1e6, 1),
            "p90_us": round(st["p90_s"] * 1e6, 1),
            "copy_median_us": round(statistics.median(copy) * 1e6, 1) if protocol == "fresh-copy" else "",
            "net_median_us": round(nt["median_s"] * 1e6, 1), "net_p10_us": round(nt["p10_s"] * 1e6, 1),
            "net_p90_us": round(nt["p90_s"] * 1e6, 1), "n_samples": st["n_samples"],
            "first_call_ms": round(info["first_call_s"] * 1e3, 1), "minor_faults": faults,
            "fresh_buffer_MB": round(faults * resource.getpagesize() / 2**20), **tail, "note": note, **env}


def add_peer_ratios(rows: list[dict]) -> None:
    """x_vs_<peer>: the peer's net median over the row's, within one protocol."""
    for r in rows:
        for fam, impl in (("eager", "torch-eager"), ("compile", "torch-compile"), ("trl", "trl")):
            peer = next((p for p in rows if p["protocol"] == r["protocol"] and p["impl"] == impl), None)
            ok = peer is not None and r["impl"] != "logits-copy" and r["net_median_us"] > 0
            r[f"x_vs_{fam}"] = round(peer["net_median_us"] / r["net_median_us"], 3) if ok else ""


def _ms(us) -> str:
    return f"{float(us) / 1e3:.0f}" if us not in ("", None) else "-"


def fair_report(path: str) -> str:
    """The fair run's table, from its CSV and meta file: ``<stem>.md`` next to the CSV and, for the committed
    CSV in benchmarks/results, the ``policy-loss-fair`` section of benchmarks/README.md.

        python benchmarks/bench_policy_loss_cpu.py --fair-report [CSV]"""
    import json

    from benchmarks import common, report
    rows = common.read_csv(path)
    meta_path = os.path.splitext(path)[0] + ".meta.json"
    meta = json.load(open(meta_path)) if os.path.exists(meta_path) else {}
    r0 = rows[0]
    buf_mib = int(r0["tokens"]) * int(r0["vocab"]) * 4 / 2**20
    buf_pages = int(buf_mib * 256)
    out = [f"`{meta.get('command', 'bench_policy_loss_cpu.py --fair')}` -> `{os.path.basename(path)}`: grpo_loss "
           f"forward + backward, {r0['dtype']} {r0['shape']}, {r0['device_name']}, medix {r0['medix']}, torch "
           f"{r0['torch']}, trl {r0['trl_version']}, {r0['date']}; {meta.get('rounds', '?')} interleaved rounds, "
           f"load average (1 min) {r0['load_1m_start']} -> {r0['load_1m_end']}, {meta.get('wall_s', '?')} s. "
           "Times in ms (median; net = median over rounds of the sample minus that round's `logits-copy` sample; "
           "p10-p90 of the net); ratios = peer net median / row net median, within one protocol; faults = minor "
           f"page faults of one call ({buf_pages:,} = one fresh {buf_mib:.0f} MiB [T, V] fp32 buffer in 4 KiB "
           "pages).", "",
           "| protocol | impl | median | net | net p10-p90 | x vs eager | x vs compile | x vs trl | faults |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["protocol"], float(r["net_median_us"]))):
        out.append(f"| {r['protocol']} | {r['impl']} | {_ms(r['median_us'])} | {_ms(r['net_median_us'])} | "
                   f"{_ms(r['net_p10_us'])}-{_ms(r['net_p90_us'])} | {r['x_vs_eager'] or '-'} | "
                   f"{r['x_vs_compile'] or '-'} | {r['x_vs_trl'] or '-'} | {r['minor_faults']} |")
    text = "\n".join(out)
    with open(os.path.splitext(path)[0] + ".md", "w") as fh:
        fh.write(text + "\n")
    if os.path.abspath(os.path.dirname(path)) == os.path.abspath(str(common.RESULTS)):
        report.update_readme("policy-loss-fair", text)
    return text


def run(argv: list[str]) -> int:
    if "--fair-report" in argv:
        rest = [a for a in argv if a != "--fair-report"]
        fair_report(rest[0] if rest else os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                                                      FAIR_NAME + ".csv"))
        return 0
    if "--fair" in argv:
        return fair([a for a in argv if a != "--fair"])
    report = "--report" in argv
    args = [a for a in argv if a != "--report"]
    custom = any(a in ("--quick", "--smoke", "--medium", "--full") or a.startswith("--shape") for a in args)
    if not custom:
        args = ["--shape", SHAPE, "--name", NAME, *args]
    if not report:
        args = ["--no-report", *args]
    code = main(["--device", "cpu", "--ops", "grpo_loss,fused_linear_grpo_loss", *args])
    if code or custom:
        return code
    out_dir = args[args.index("--out-dir") + 1] if "--out-dir" in args else os.path.join(os.path.dirname(
        os.path.abspath(__file__)), "results")
    path = os.path.join(out_dir, NAME + ".csv")
    rows = annotate(path)
    if not rows:
        print("no rows (cases skipped: see above; --mem-budget-gb raises the memory budget)")
        return 1
    plot(rows, path.replace(".csv", ".png"))
    for line in targets(rows):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
