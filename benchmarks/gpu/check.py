"""The GPU check's orchestrator (``bash benchmarks/gpu/check.sh OUT [options]`` calls it).

    python -m benchmarks.gpu.check OUT [--dry-run] [--budget-s S] [--phases env,build,...]

Phases, in order, each a subprocess with its own time limit inside one overall budget (a phase
that fails or runs out of time is recorded and the next one still runs):

- env: ``nvidia-smi``, versions (python, torch + CUDA, triton, nvcc, compute-sanitizer, Liger,
  TRL), the GPU's properties, whether the peers import.
- build: ``setup.py build_ext --inplace -t WORK/build`` against this machine's torch with
  MAX_JOBS and MEDIX_CUDA_ARCHS=90a, ``-Xptxas=-v`` appended through NVCC_APPEND_FLAGS (the
  register / spill report), then an import check that the cuda backend is there. Dry run: the
  already-built extension is checked and csrc/cuda/*.cu are compiled for sm_90a with nvcc
  (compile only, the same flags) for the report.
- correctness: ``benchmarks.gpu.correctness`` (cuda and triton vs the reference, fp32 + bf16).
- sanitizer: ``compute-sanitizer --tool memcheck`` over ``benchmarks.gpu.sanitize`` (each CUDA
  kernel once at awkward sizes). Dry run: the workload runs on the CPU backend, no sanitizer.
- bench: the ceilings, then ``benchmarks.gpu.rows`` (restarted for the remaining rows if a row
  kills its process).
- pytest: ``-m gpu`` over tests/ and the cuda / triton / gpu tests of the kernel test files.
  Dry run: the same selections with ``--collect-only``.

OUT receives at most 8 files, rewritten after every phase (a run stopped from outside still
leaves what was done): summary.md, bench.csv, targets.csv, correctness.csv, ptxas.txt, env.txt,
logs.tar.gz (every log, the suite's meta files, the auto table, ceilings.json, check.json).

Modules, one job each: ``check`` (this: the command line, the time budget, the phase loop),
``check_build`` (env, build), ``check_tests`` (correctness, sanitizer, pytest), ``check_bench``
(the benchmark rows), ``check_report`` (OUT's files and summary.md), ``check_common`` (shared names
and file helpers).
"""
from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import check_bench, check_build, check_report, check_tests
from .check_common import OUT_FILES, PHASES, ROOT, now

CAPS = {"env": 40, "build": 280, "correctness": 90, "sanitizer": 100, "bench": 220, "pytest": 100}
DRY_CAPS = {"env": 40, "build": 60, "correctness": 90, "sanitizer": 60, "bench": 120, "pytest": 130}
RESERVE_S = 8.0  # kept back for writing the outputs
# each phase: fn(check, limit_s) -> (status, note), run in PHASES order
PHASE_RUNNERS = {"env": check_build.phase_env, "build": check_build.phase_build,
                 "correctness": check_tests.phase_correctness, "sanitizer": check_tests.phase_sanitizer,
                 "bench": check_bench.phase_bench, "pytest": check_tests.phase_pytest}


class Check:
    """One run of the check: its arguments, folders, budget and phase results, and the subprocess plumbing
    the phases share (``sh``: a command with a time limit into a log; ``capture``: a short command's text)."""

    def __init__(self, args):
        self.args = args
        self.dry = args.dry_run
        self.out = Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(args.work or tempfile.mkdtemp(prefix="medix-gpu-check-")).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.logs = self.work / "logs"
        self.logs.mkdir(exist_ok=True)
        self.py = args.python or sys.executable
        self.t0 = time.monotonic()
        self.budget = args.budget_s if args.budget_s is not None else (360.0 if self.dry else 450.0)
        self.caps = DRY_CAPS if self.dry else CAPS
        self.phases = {}      # name: {status, wall_s, note}
        self.info = {"started": now(), "dry_run": self.dry, "budget_s": self.budget, "root": str(ROOT),
                     "python": self.py, "argv": sys.argv[1:]}
        self.seed = args.seed if args.seed is not None else int(time.time()) % 1_000_000

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    def remaining(self) -> float:
        return self.budget - self.elapsed() - RESERVE_S

    def say(self, msg: str) -> None:
        print(f"[{self.elapsed():6.1f}s] {msg}", flush=True)

    def env(self, **extra) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        env.setdefault("PYTHONUNBUFFERED", "1")
        env.pop("TRITON_INTERPRET", None)  # the dry-run workers set it themselves
        env.update({k: str(v) for k, v in extra.items()})
        return env

    def sh(self, cmd: list[str], log: Path, timeout: float, env: dict | None = None, append=False) -> dict:
        """Run cmd (its own process group) with output to log; kill the group at the timeout."""
        t = time.monotonic()
        with open(log, "a" if append else "w") as fh:
            fh.write(f"$ {' '.join(shlex.quote(c) for c in cmd)}\n# {now()}, limit {timeout:.0f} s\n")
            fh.flush()
            try:
                proc = subprocess.Popen(cmd, cwd=ROOT, env=env or self.env(), stdout=fh, stderr=subprocess.STDOUT,
                                        start_new_session=True)
            except OSError as exc:
                fh.write(f"# could not start: {exc}\n")
                return {"rc": None, "timed_out": False, "wall_s": 0.0, "error": str(exc)}
            try:
                rc = proc.wait(timeout=max(1.0, timeout))
                timed_out = False
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                rc = proc.wait()
                timed_out = True
            wall = time.monotonic() - t
            fh.write(f"\n# exit {rc}{' (killed at the time limit)' if timed_out else ''} after {wall:.1f} s\n")
        return {"rc": rc, "timed_out": timed_out, "wall_s": round(wall, 1)}

    def capture(self, cmd: list[str], timeout: float = 60, env: dict | None = None) -> str:
        try:
            p = subprocess.run(cmd, cwd=ROOT, env=env or self.env(), capture_output=True, text=True, timeout=timeout)
            return (p.stdout + p.stderr).strip()
        except FileNotFoundError:
            return f"({cmd[0]}: not found)"
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"({cmd[0]}: {type(exc).__name__}: {exc})"

    def run_phase(self, name: str, fn) -> None:
        limit = min(self.caps[name], self.remaining())
        if limit < 5:
            self.phases[name] = {"status": "skipped", "wall_s": 0, "note": "no time left in the budget"}
            self.say(f"{name}: skipped (no time left)")
            return
        self.say(f"{name}: start (limit {limit:.0f} s)")
        t = time.monotonic()
        try:
            status, note = fn(self, limit)
        except Exception as exc:
            import traceback
            (self.logs / f"{name}-check-error.log").write_text(traceback.format_exc())
            status, note = "error", f"{type(exc).__name__}: {exc}"
        self.phases[name] = {"status": status, "wall_s": round(time.monotonic() - t, 1), "note": note}
        self.say(f"{name}: {status} ({self.phases[name]['wall_s']} s) {note}")
        self.write_outputs()

    def write_outputs(self) -> None:
        check_report.write_outputs(self)

    def run(self) -> int:
        self.selected = [p for p in (self.args.phases or ",".join(PHASES)).split(",") if p]
        unknown = [p for p in self.selected if p not in PHASES]
        if unknown:
            print(f"unknown phase(s) {unknown}; choose from {PHASES}", file=sys.stderr)
            return 2
        self.say(f"GPU check{' (dry run)' if self.dry else ''}: out {self.out}, work {self.work}, budget "
                 f"{self.budget:.0f} s, phases {','.join(self.selected)}")
        for stale in OUT_FILES:
            (self.out / stale).unlink(missing_ok=True)
        self.ptxas_rows = None
        self.write_outputs()
        for name in PHASES:
            if name in self.selected:
                self.run_phase(name, PHASE_RUNNERS[name])
        self.write_outputs()
        print("\n" + (self.out / "summary.md").read_text(), flush=True)
        bad = [n for n, p in self.phases.items() if p["status"] in ("failed", "error", "timeout")]
        self.say(f"done: {len(self.phases)} phase(s), {'problems in ' + ', '.join(bad) if bad else 'no failures'}; "
                 f"outputs in {self.out}")
        return 1 if bad else 0


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu.check", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out", help="output folder (at most 8 files are written there)")
    p.add_argument("--dry-run", action="store_true", help="this CPU machine: Triton interpreted, tiny shapes")
    p.add_argument("--budget-s", type=float, default=None, help="overall limit (default 450; dry run 360)")
    p.add_argument("--phases", default=None, help=f"comma-separated subset of {','.join(PHASES)}")
    p.add_argument("--work", default=None, help="scratch folder (default: a new temporary folder)")
    p.add_argument("--python", default=None, help="the interpreter of the phases (default: this one)")
    p.add_argument("--jobs", type=int, default=16, help="MAX_JOBS of the build")
    p.add_argument("--arch", default="90a", help="MEDIX_CUDA_ARCHS of the build (one architecture)")
    p.add_argument("--seed", type=int, default=None)
    return p.parse_args(argv)


def main(argv=None) -> int:
    return Check(parse_args(argv)).run()


if __name__ == "__main__":
    sys.exit(main())
