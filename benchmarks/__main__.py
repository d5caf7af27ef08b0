"""python -m benchmarks: every medix_kernels op against its peers, side by side.

    python -m benchmarks [--quick | --medium | --full | --smoke] [--ops a,b] [--device cpu|cuda]
                         [--dtype float32|bfloat16|float16] [--memory auto|worker|isolated|none]
                         [--peers eager,compile,trl,verl,liger,st] [--out-dir DIR] [--dry-run-cpu]
    python -m benchmarks report CSV [--readme]     # plots, tables, scaling, auto table from a CSV
    python -m benchmarks profile-trainer [--metrics PATH/metrics.jsonl] [--out-dir DIR]
    python -m benchmarks judge-pairs [--records 60] [--calibrate]  # the reward judge on labelled pairs
    python -m benchmarks decision-eval --model BASE --model CKPT   # trained vs base, PubMedQA test decisions
    python -m benchmarks judge-vs-decision ITEMS.jsonl   # the training judge on those responses, by decision
    python -m benchmarks run-curves A/metrics.jsonl B/metrics.jsonl --out X.png   # training runs side by side

The last four are the studies of a training run, ``python -m medix_r1.eval.studies NAME`` (forwarded).

The default profile is --medium (~20 min on the 2-core CPU); --quick (< 10 min) and --smoke
(tiny shapes, seconds: the test) are smaller, --full is the GPU sweep. Results go to
benchmarks/results/<device>-<date>[-<profile>].csv with a .meta.json (versions, peaks, skipped
peers), PNG plots and, when writing to benchmarks/results, the table in benchmarks/README.md.
``--ops trainer`` is the same as ``profile-trainer`` (a 3-step run of the trainer unless
``--metrics`` is given).
"""
from __future__ import annotations

import argparse
import os
import sys


def _suite_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    prof = p.add_mutually_exclusive_group()
    for name in ("smoke", "quick", "medium", "full"):
        prof.add_argument(f"--{name}", dest="profile", action="store_const", const=name)
    p.add_argument("--ops", default="all", help="comma-separated op names, 'all', or 'trainer'")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default=None,
                   help="logits/hidden dtype (default float32 on the CPU, bfloat16 on a GPU)")
    p.add_argument("--memory", choices=("auto", "worker", "isolated", "none"), default="auto",
                   help="peak-memory method (auto: a worker process on the CPU, allocator counters on a GPU)")
    p.add_argument("--peers", default=None, help="peer families to run (default all): eager,compile,trl,verl,liger,st")
    p.add_argument("--out-dir", default=None, help="default benchmarks/results")
    p.add_argument("--name", default=None, help="CSV file name (default <device>-<date>[-<profile>].csv)")
    p.add_argument("--mem-budget-gb", type=float, default=None,
                   help="skip cases whose inputs + temporaries would exceed this (default: 40%% of available RAM "
                        "on the CPU, 80%% of free GPU memory)")
    p.add_argument("--shape", default=None,
                   help="one custom shape instead of the profile's sweep, e.g. tokens=4096,vocab=49152,hidden=576 "
                        "(each op takes the keys it uses: tokens, vocab, hidden; n, group, k; n, dim)")
    p.add_argument("--rounds", type=int, default=None, help="minimum interleaved rounds per case")
    p.add_argument("--budget-s", type=float, default=None, help="timing budget per case (s)")
    p.add_argument("--dry-run-cpu", action="store_true",
                   help="the GPU code paths on the CPU: Triton kernels (medix and Liger) under TRITON_INTERPRET=1, "
                        "smoke shapes; timings are meaningless")
    p.add_argument("--no-report", action="store_true", help="CSV only: no plots, README table or auto table")
    p.add_argument("--omp-wait-policy", choices=("PASSIVE", "ACTIVE", "keep"), default="PASSIVE",
                   help="OMP_WAIT_POLICY for this run and the memory worker "
                        "(default PASSIVE; 'keep': the environment's)")
    p.add_argument("--metrics", default=None, help="with --ops trainer: a metrics.jsonl to profile")
    return p


# each subcommand is a module with main(argv); the studies of a training run live in medix_r1.eval.studies (the
# committed results name these commands, so they stay here as forwards)
SUBCOMMANDS = {"profile-trainer": ".trainer_profile", "report": ".report",
               **{name: f"medix_r1.eval.studies.{name.replace('-', '_')}"
                  for name in ("judge-pairs", "decision-eval", "judge-vs-decision", "run-curves")}}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:  # each subcommand is a module with main(argv)
        import importlib
        return importlib.import_module(SUBCOMMANDS[argv[0]], __package__).main(argv[1:])
    args = _suite_parser().parse_args(argv)
    if args.ops.strip() == "trainer":
        from .trainer_profile import main as profile_main
        extra = ["--metrics", args.metrics] if args.metrics else []
        return profile_main(extra + (["--out-dir", args.out_dir] if args.out_dir else []))
    if args.dry_run_cpu:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton (and medix_kernels) load
    if args.omp_wait_policy != "keep":
        # Before torch loads libgomp. PASSIVE (what medix_r1.train sets too): on a shared, loaded machine
        # busy-waiting OpenMP threads made a tiny matmul 28 ms instead of 0.1 ms (measured 2026-12-01).
        os.environ["OMP_WAIT_POLICY"] = args.omp_wait_policy
    import torch

    from . import common, suite
    from .ops import OPS
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.dry_run_cpu:
        device = "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        print("python -m benchmarks: --device cuda asked for, but there is no CUDA GPU here; nothing measured "
              "(--dry-run-cpu runs the GPU code paths on tiny CPU shapes)")
        return 0
    ops = list(OPS) if args.ops == "all" else [o.strip() for o in args.ops.split(",") if o.strip()]
    unknown = [o for o in ops if o not in OPS]
    if unknown:
        print(f"unknown op(s) {unknown}; choose from {list(OPS)} or 'trainer'", file=sys.stderr)
        return 2
    profile = args.profile or ("smoke" if args.dry_run_cpu else "medium")
    dtype = args.dtype or ("bfloat16" if device == "cuda" else "float32")
    s = suite.Settings(profile=profile, device=device, dtype=dtype,
                       ops=tuple(ops), peers=None if args.peers is None else tuple(args.peers.split(",")),
                       memory=args.memory, mem_budget_gb=args.mem_budget_gb,
                       out_dir=args.out_dir or str(common.RESULTS), name=args.name, rounds_min=args.rounds,
                       budget_s=args.budget_s, dry_run=args.dry_run_cpu)
    if args.shape:
        try:
            s.shape = {k.strip(): int(v) for k, v in (kv.split("=") for kv in args.shape.split(","))}
        except ValueError:
            print(f"--shape: expected k=v,k=v with integer values, got {args.shape!r}", file=sys.stderr)
            return 2
    out_csv, rows, meta = suite.run(s)
    if not args.no_report and rows:
        from . import report
        in_results = os.path.abspath(s.out_dir) == os.path.abspath(str(common.RESULTS))
        report.generate(out_csv, readme=in_results and not args.dry_run_cpu)
    return 0


if __name__ == "__main__":
    sys.exit(main())
