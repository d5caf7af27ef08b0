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
"""
from __future__ import annotations

import argparse
import csv
import datetime
import glob
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from . import ptxas, targets

ROOT = Path(__file__).resolve().parents[2]
PHASES = ("env", "build", "correctness", "sanitizer", "bench", "pytest")
CAPS = {"env": 40, "build": 280, "correctness": 90, "sanitizer": 100, "bench": 220, "pytest": 100}
DRY_CAPS = {"env": 40, "build": 60, "correctness": 90, "sanitizer": 60, "bench": 120, "pytest": 130}
RESERVE_S = 8.0  # kept back for writing the outputs
OUT_FILES = ("summary.md", "bench.csv", "targets.csv", "correctness.csv", "ptxas.txt", "env.txt", "logs.tar.gz")
NVCC_FLAGS = ["-O3", "--use_fast_math", "-lineinfo", "-std=c++17"]  # setup.py's, for the dry run's compile
TEST_FILES = ("tests/test_logprob_gpu_kernels.py", "tests/test_group_advantages.py", "tests/test_cosine_rewards.py",
              "tests/test_policy_loss.py", "tests/test_fused_linear.py")
# the cuda / triton / gpu tests of those files, less the ones that only build or re-run the CPU interpreter
TEST_K = ("(cuda or triton or gpu) and not compile_for_sm80 and not glue_passes and not dry_run_on_cpu "
          "and not under_interpreter")


def now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


class Check:
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

    # ------------------------------------------------------------------ plumbing
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
            status, note = fn(limit)
        except Exception as exc:
            import traceback
            (self.logs / f"{name}-check-error.log").write_text(traceback.format_exc())
            status, note = "error", f"{type(exc).__name__}: {exc}"
        self.phases[name] = {"status": status, "wall_s": round(time.monotonic() - t, 1), "note": note}
        self.say(f"{name}: {status} ({self.phases[name]['wall_s']} s) {note}")
        self.write_outputs()

    # ------------------------------------------------------------------ phases
    def phase_env(self, limit):
        env_txt = [f"# GPU check environment ({'DRY RUN on ' if self.dry else ''}{os.uname().nodename}, {now()})", ""]
        smi = self.capture(["nvidia-smi"], timeout=30)
        env_txt += ["## nvidia-smi", smi, ""]
        (self.logs / "nvidia-smi-q.txt").write_text(self.capture(["nvidia-smi", "-q"], timeout=30) + "\n")
        for tool in (["nvcc", "--version"], ["compute-sanitizer", "--version"], ["uname", "-a"]):
            env_txt += [f"## {' '.join(tool)}", self.capture(tool, timeout=30), ""]
        probe = self.capture([self.py, "-c", VERSIONS_PY], timeout=max(10, limit - 20))
        try:
            versions = json.loads(probe.strip().splitlines()[-1])
        except (ValueError, IndexError):
            versions = {"error": probe[-2000:]}
        versions["source_tree_sha256"] = tree_hash()
        versions["commit"] = os.environ.get("MEDIX_COMMIT") or self.capture(["git", "rev-parse", "HEAD"], timeout=10)
        self.info["versions"] = versions
        env_txt += ["## versions", json.dumps(versions, indent=1), ""]
        (self.work / "env.txt").write_text("\n".join(env_txt) + "\n")
        shutil.copy(self.work / "env.txt", self.logs / "env.txt")
        missing = [k for k in ("liger_kernel", "trl") if not str(versions.get(k, "-")).strip("-")]
        gpu = versions.get("gpu", {}).get("name", "no GPU")
        note = f"{gpu}; torch {versions.get('torch')} (CUDA {versions.get('torch_cuda')})"
        if missing:
            note += f"; NOT importable: {', '.join(missing)} (bash benchmarks/gpu/wheels.sh, carry .whl)"
        return "ok", note

    def phase_build(self, limit):
        log = self.logs / "build.log"
        arch = self.args.arch
        if self.dry:
            res = self.sh([self.py, "-c", VERIFY_PY], log, timeout=min(60, limit))
            ext = _last_json(log)
            rcs = self.nvcc_report(log, limit - res["wall_s"] - 5)
            if rcs is None:
                return ("ok" if res["rc"] == 0 else "failed"), "extension checked; nvcc not found (no sm_90a compile)"
            ok = res["rc"] == 0 and ext.get("cpu") and all(rc == 0 for rc in rcs)
            note = (f"dry run: extension not rebuilt (CPU build checked: backends {ext.get('backends')}); "
                    f"{len(rcs)} .cu compiled for sm_{arch} (rc {rcs}), {len(self.ptxas_rows)} kernels in the report")
            return ("ok" if ok else "failed"), note
        build_dir = self.work / "build"
        flags = (os.environ.get("NVCC_APPEND_FLAGS", "") + " -Xptxas=-v").strip()
        env = self.env(MAX_JOBS=self.args.jobs, MEDIX_CUDA_ARCHS=arch, NVCC_APPEND_FLAGS=flags,
                       TORCH_CUDA_ARCH_LIST=f"{arch[0]}.{arch[1:]}")  # 90a -> 9.0a
        res = self.sh([self.py, "setup.py", "build_ext", "--inplace", "-t", str(build_dir)], log,
                      timeout=max(5, limit - 20), env=env)
        text = log.read_text(errors="replace")
        self.ptxas_rows = ptxas.parse(text)
        self.ptxas_source = f"the build's nvcc (-gencode=arch=compute_{arch},code=sm_{arch}, -Xptxas=-v)"
        if not self.ptxas_rows:  # the build printed no ptxas lines: compile the kernels alone for the report
            self.nvcc_report(log, min(60, self.remaining()))
        self.sh([self.py, "-c", VERIFY_PY], log, timeout=60, append=True)
        ext = _last_json(log)
        self.info["extension"] = ext
        if res["timed_out"]:
            return "timeout", f"build killed after {res['wall_s']} s (see build.log)"
        if res["rc"] != 0:
            return "failed", f"setup.py build_ext exited {res['rc']} (see build.log); Triton rows still run"
        if not ext.get("cuda"):
            return "failed", f"built, but the cuda backend is not usable: {ext}"
        return "ok", (f"built in {res['wall_s']} s; backends {ext.get('backends')}; {len(self.ptxas_rows)} kernels in "
                      f"the ptxas report ({len(ptxas.spilling(self.ptxas_rows))} spilling)")

    def nvcc_report(self, log: Path, limit: float):
        """nvcc -c of csrc/cuda/*.cu for the architecture with -Xptxas=-v (setup.py's flags), in parallel; sets
        the ptxas report; returns the exit codes (None: no nvcc)."""
        arch = self.args.arch
        nvcc = shutil.which("nvcc") or next(iter(glob.glob("/usr/local/cuda*/bin/nvcc")), None)
        if nvcc is None:
            self.ptxas_rows, self.ptxas_source = [], "nvcc not found: no report"
            return None
        procs = []
        for src in sorted((ROOT / "csrc" / "cuda").glob("*.cu")):
            cmd = [nvcc, *NVCC_FLAGS, f"-gencode=arch=compute_{arch},code=sm_{arch}", "-Xptxas=-v", "-c", str(src),
                   "-o", str(self.work / (src.stem + ".o"))]
            procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        text, rcs = "", []
        for p in procs:
            try:
                o, _ = p.communicate(timeout=max(5, limit))
            except subprocess.TimeoutExpired:
                p.kill()
                o, _ = p.communicate()
            text += " ".join(p.args) + "\n" + (o or "") + "\n"
            rcs.append(p.returncode)
        with open(log, "a") as fh:
            fh.write(f"\n# compile-only nvcc of csrc/cuda for sm_{arch} (the register / spill report)\n" + text)
        self.ptxas_rows = ptxas.parse(text)
        self.ptxas_source = f"nvcc -c csrc/cuda/*.cu for sm_{arch} ({' '.join(NVCC_FLAGS)}), compile only"
        return rcs

    def phase_correctness(self, limit):
        csv_path = self.work / "correctness.csv"
        cmd = [self.py, "-m", "benchmarks.gpu.correctness", "--out", str(csv_path), "--seed", str(self.seed)]
        res = self.sh(cmd + (["--dry-run"] if self.dry else []), self.logs / "correctness.log", timeout=limit)
        rows = _read_csv(csv_path)
        if csv_path.exists():
            shutil.copy(csv_path, self.out / "correctness.csv")
        bad = [r for r in rows if r["ok"] not in ("ok", "skipped")]
        skipped = sorted({f"{r['backend']}" for r in rows if r["ok"] == "skipped"})
        note = f"{sum(r['ok'] == 'ok' for r in rows)} outputs ok, {len(bad)} failing"
        if skipped:
            note += f", backend(s) skipped: {', '.join(skipped)}"
        if res["timed_out"]:
            return "timeout", note + f" (killed at {limit:.0f} s)"
        if res["rc"] not in (0, 1):
            started = [ln[6:] for ln in (self.logs / "correctness.log").read_text(errors="replace").splitlines()
                       if ln.startswith("START ")]
            return "failed", note + f"; exited {res['rc']} during {started[-1] if started else '?'}"
        return ("ok" if not bad and rows else "failed"), note

    def phase_sanitizer(self, limit):
        log = self.logs / "sanitizer.log"
        installed = glob.glob("/usr/local/cuda*/bin/compute-sanitizer")
        tool = shutil.which("compute-sanitizer") or next(iter(installed), None)
        cmd = [tool or "compute-sanitizer", "--tool", "memcheck", "--leak-check", "no", "--error-exitcode", "3",
               "--print-limit", "100", self.py, "-m", "benchmarks.gpu.sanitize"]
        if self.dry:
            res = self.sh([self.py, "-m", "benchmarks.gpu.sanitize", "--backend", "cpu"], log, timeout=limit)
            ok = res["rc"] == 0 and "SANITIZE-WORKLOAD-OK" in log.read_text(errors="replace")
            return ("skipped" if ok else "failed"), ("dry run: no GPU, sanitizer not run (the real run: "
                                                     f"PYTORCH_NO_CUDA_MEMORY_CACHING=1 {' '.join(cmd[:-3])} "
                                                     "python -m benchmarks.gpu.sanitize); the workload ran on the "
                                                     f"cpu backend: {'ok' if ok else 'FAILED'}")
        if tool is None:
            return "skipped", "compute-sanitizer not found"
        if "extension" not in self.info:  # no build phase in this call (a carried or earlier build): probe it
            self.sh([self.py, "-c", VERIFY_PY], log, timeout=60)
            self.info["extension"] = _last_json(log)
        if "cuda" not in (self.info.get("extension") or {}).get("backends", []):
            return "skipped", "no cuda backend (build failed or skipped)"
        res = self.sh(cmd, log, timeout=limit, env=self.env(PYTORCH_NO_CUDA_MEMORY_CACHING=1))
        text = log.read_text(errors="replace")
        m = re.findall(r"ERROR SUMMARY: (\d+) error", text)
        summary = f"ERROR SUMMARY: {m[-1]} errors" if m else "no ERROR SUMMARY line"
        if res["timed_out"]:
            return "timeout", summary + f" (killed at {limit:.0f} s)"
        if "SANITIZE-WORKLOAD-OK" not in text:
            return "failed", summary + f"; the workload did not finish (exit {res['rc']})"
        return ("ok" if res["rc"] == 0 and m and m[-1] == "0" else "failed"), summary

    def phase_bench(self, limit):
        from .rows import OPS
        bench_dir = self.work / "bench"
        bench_dir.mkdir(exist_ok=True)
        remaining, part, notes, t_end = list(OPS), 0, [], time.monotonic() + limit
        while remaining:
            left = t_end - time.monotonic()
            if left < 10:
                notes.append(f"no time for {','.join(remaining)}")
                break
            name = f"bench-part{part}"
            cmd = [self.py, "-m", "benchmarks.gpu.rows", "--out-dir", str(bench_dir), "--name", name,
                   "--ops", ",".join(remaining)]
            if not (bench_dir / "ceilings.json").exists():
                cmd.append("--ceilings")
            if self.dry:
                cmd.append("--dry-run")
            res = self.sh(cmd, self.logs / f"{name}.log", timeout=left)
            got = _read_csv(bench_dir / f"{name}.csv") or _read_csv(bench_dir / f"{name}.partial.csv")
            done = {r["op"] for r in got}
            if res["rc"] == 0 and not res["timed_out"]:
                break
            pending = [o for o in remaining if o not in done]
            if not pending:
                break
            why = "killed at the time limit" if res["timed_out"] else f"exited {res['rc']}"
            notes.append(f"{pending[0]}: {why} (log {name}.log)")
            if res["timed_out"]:
                break
            remaining = pending[1:]  # the row that took its process down is not retried
            part += 1
        rows, meta = self.bench_rows()
        ceil = _read_json(bench_dir / "ceilings.json")
        if not rows:
            return "failed", "; ".join(notes) or "no rows"
        ops = sorted({r["op"] for r in rows})
        status = "ok" if not notes else "partial"
        note = (f"{len(rows)} rows over {len(ops)} ops; copy {ceil.get('copy_GBps', '?')} GB/s, bf16 matmul "
                f"{ceil.get('matmul_TFLOPs', '?')} TFLOP/s")
        if meta.get("errors"):
            note += f"; {len(meta['errors'])} implementation error(s)"
        return status, note + ("; " + "; ".join(notes) if notes else "")

    def phase_pytest(self, limit):
        base = [self.py, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider"]
        if self.dry:
            base.append("--collect-only")
        else:
            base += ["-o", "addopts=", "--timeout", "120"] if _has_module(self.py, "pytest_timeout") else []
        t_end = time.monotonic() + limit
        out = []
        res_a = self.sh(base + ["-m", "gpu", "tests"], self.logs / "pytest-gpu-marker.log",
                        timeout=max(5, min(limit / 2, t_end - time.monotonic())))
        line_a = _pytest_line(self.logs / "pytest-gpu-marker.log")
        if res_a["rc"] == 5:
            line_a = "no test is marked gpu yet (" + (line_a or "exit 5") + ")"
        out.append(("-m gpu", res_a, line_a))
        res_b = self.sh(base + list(TEST_FILES) + ["-k", TEST_K], self.logs / "pytest-kernels.log",
                        timeout=max(5, t_end - time.monotonic()))
        out.append(("kernel tests (-k cuda/triton/gpu)", res_b, _pytest_line(self.logs / "pytest-kernels.log")))
        self.info["pytest"] = [{"selection": s, **r, "summary": line} for s, r, line in out]
        ok = all(r["rc"] in (0, 5) and not r["timed_out"] for _, r, _ in out)
        note = "; ".join(f"{s}: {line or 'exit ' + str(r['rc'])}" + (" (timed out)" if r["timed_out"] else "")
                         for s, r, line in out)
        if self.dry:
            note = "dry run: collected only (no GPU); " + note
        return ("ok" if ok else "failed"), note

    # ------------------------------------------------------------------ outputs
    def bench_rows(self):
        rows, meta = [], {"skipped": {}, "errors": []}
        for path in sorted((self.work / "bench").glob("bench-part*.csv")):
            if path.name.endswith(".partial.csv") and path.with_name(path.name.replace(".partial", "")).exists():
                continue
            rows += _read_csv(path)
            m = _read_json(path.with_suffix(".meta.json"))
            meta["skipped"].update(m.get("skipped") or {})
            meta["errors"] += m.get("errors") or []
        return rows, meta

    def write_outputs(self) -> None:
        try:
            self._write_outputs()
        except Exception as exc:
            import traceback
            (self.logs / "write-outputs-error.log").write_text(traceback.format_exc())
            print(f"writing the outputs failed: {exc}", flush=True)

    def _write_outputs(self) -> None:
        rows, meta = self.bench_rows()
        ceil = _read_json(self.work / "bench" / "ceilings.json")
        results = targets.evaluate(rows, ceil, meta) if rows else []
        if rows:
            cols = list(rows[0].keys())
            _write_csv(self.out / "bench.csv", rows, cols)
            _write_csv(self.out / "targets.csv", results, targets.COLUMNS)
            _write_csv(self.logs / "auto.csv", [r for r in results if r["target"] == "auto_choice"], targets.COLUMNS)
        if getattr(self, "ptxas_rows", None) is not None:
            (self.out / "ptxas.txt").write_text(ptxas.report(self.ptxas_rows, self.ptxas_source))
        if (self.work / "env.txt").exists():
            shutil.copy(self.work / "env.txt", self.out / "env.txt")
        self.info.update({"phases": self.phases, "elapsed_s": round(self.elapsed(), 1), "seed": self.seed})
        (self.logs / "check.json").write_text(json.dumps(self.info, indent=1, default=str) + "\n")
        summary = self.summary(rows, meta, ceil, results)
        (self.out / "summary.md").write_text(summary)
        with tarfile.open(self.out / "logs.tar.gz", "w:gz") as tar:
            tar.add(self.logs, arcname="logs")
            bench = self.work / "bench"
            if bench.exists():
                for p in sorted(bench.iterdir()):
                    tar.add(p, arcname=f"logs/bench/{p.name}")
        extra = sorted(p.name for p in self.out.iterdir() if p.name not in OUT_FILES)
        if extra:
            print(f"note: OUT holds files besides the check's own: {extra} (only 8 files come back)", flush=True)

    def summary(self, rows, meta, ceil, results) -> str:
        v = self.info.get("versions", {})
        gpu = v.get("gpu", {})
        date = datetime.date.today().isoformat()
        head = "GPU check" + (" -- DRY RUN (CPU, Triton interpreted, tiny fp32 shapes, torch.compile disabled so "
                              "the compile peers ran eagerly: every number is meaningless)" if self.dry else "")
        L = [f"# {head}: {gpu.get('name', 'no GPU')}, {date}", ""]
        L.append(f"Commit `{v.get('commit', '?')}`, source tree sha256 `{str(v.get('source_tree_sha256', '?'))[:16]}`; "
                 f"torch {v.get('torch', '?')} (CUDA {v.get('torch_cuda', '?')}), triton {v.get('triton', '?')}, "
                 f"Liger {v.get('liger_kernel') or 'missing'}, TRL {v.get('trl') or 'missing'}, python "
                 f"{v.get('python', '?')}; driver {gpu.get('driver', '?')}. Budget {self.budget:.0f} s, elapsed "
                 f"{self.elapsed():.0f} s, seed {self.seed}. Produced by `bash benchmarks/gpu/check.sh"
                 f"{' --dry-run' if self.dry else ''}` (benchmarks/gpu/README.md).")
        L += ["", "## Phases", "", "| phase | status | wall s | note |", "| --- | --- | --- | --- |"]
        for name in PHASES:
            p = self.phases.get(name)
            if p is None:
                L.append(f"| {name} | {'not selected' if name not in self.selected else 'not run (yet)'} | | |")
            else:
                L.append(f"| {name} | {p['status']} | {p['wall_s']} | {p['note'].replace('|', '/')} |")
        L += ["", "## Ceilings (measured first, this run)", ""]
        if ceil:
            L.append(f"- copy bandwidth: **{ceil['copy_GBps']} GB/s** (bytes read + written; {ceil['method']})")
            L.append(f"- bf16 matrix rate: **{ceil['matmul_TFLOPs']} TFLOP/s**")
        else:
            L.append("- not measured (the bench phase did not get that far)")
        c = targets.counts(results)
        L += ["", f"## Targets: {c['met']} met, {c['missed']} missed, {c['n/a']} n/a", ""]
        L.append("Bandwidth floors: the op's minimum bytes (benchmarks/ops) over the copy bandwidth above. Ratio: how "
                 "far past the bar (>= 1 met). Each target is judged per medix backend (best of plain and in-place "
                 "where both exist).")
        L += ["", targets.markdown(results) if results else "(no benchmark rows)", ""]
        L += ["## Benchmark rows", ""]
        L += bench_tables(rows, ceil)
        if meta.get("skipped") or meta.get("errors"):
            L += ["", "Skipped or failed implementations (not faked):", ""]
            L += [f"- {k}: {r}" for k, r in (meta.get("skipped") or {}).items()]
            L += [f"- {e}" for e in meta.get("errors") or []]
        L += ["", "## Correctness (cuda / triton vs reference, ||out - ref|| / ||ref||)", ""]
        corr = _read_csv(self.work / "correctness.csv")
        if corr:
            bad = [r for r in corr if r["ok"] not in ("ok", "skipped")]
            L.append(f"{sum(r['ok'] == 'ok' for r in corr)} outputs ok, {len(bad)} failing, "
                     f"{sum(r['ok'] == 'skipped' for r in corr)} case(s) skipped (correctness.csv).")
            worst = {}
            for r in corr:
                if r["ok"] == "ok":
                    key = (r["case"], r["backend"], r["dtype"])
                    e = _f(r["rel_err"]) / max(_f(r["bar"]), 1e-30) if _f(r["bar"]) > 0 else 0.0
                    worst[key] = max(worst.get(key, 0.0), e)
            if bad:
                L += ["", "| case | backend | dtype | output | rel err | bar | result |",
                      "| --- | --- | --- | --- | --- | --- | --- |"]
                L += [f"| {r['case']} | {r['backend']} | {r['dtype']} | {r['output']} | {r['rel_err']} | {r['bar']} | "
                      f"{r['ok']} {r.get('error', '')} |" for r in bad]
            if worst:
                k, e = max(worst.items(), key=lambda kv: kv[1])
                L.append(f"Closest to its bar: {' '.join(k)} at {e:.2f} of the bar.")
        else:
            L.append("(not run)")
        L += ["", "## Tests, sanitizer, build", ""]
        for p in self.info.get("pytest", []):
            L.append(f"- pytest {p['selection']}: {p['summary'] or 'exit ' + str(p['rc'])}")
        for name in ("sanitizer", "build"):
            if name in self.phases:
                L.append(f"- {name}: {self.phases[name]['status']}: {self.phases[name]['note']}")
        pr = getattr(self, "ptxas_rows", None)
        if pr:
            regs = [r["registers"] for r in pr if r["registers"] is not None]
            sp = ptxas.spilling(pr)
            L.append(f"- ptxas: {len(pr)} kernel entries ({self.ptxas_source}); registers {min(regs)}-{max(regs)}; "
                     f"{len(sp)} with a stack frame or spills" + (": " + ", ".join(r["kernel"][:60] for r in sp[:5])
                                                                 if sp else "") + " (ptxas.txt)")
        L += ["", "## Files", "",
              "summary.md (this), bench.csv (every row: the suite's columns), targets.csv, correctness.csv, ptxas.txt, "
              "env.txt (nvidia-smi, versions), logs.tar.gz (build, tests, sanitizer, bench logs and meta, auto "
              "table, ceilings.json, check.json)."]
        return "\n".join(L) + "\n"

    # ------------------------------------------------------------------ main
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
                self.run_phase(name, getattr(self, f"phase_{name}"))
        self.write_outputs()
        print("\n" + (self.out / "summary.md").read_text(), flush=True)
        bad = [n for n, p in self.phases.items() if p["status"] in ("failed", "error", "timeout")]
        self.say(f"done: {len(self.phases)} phase(s), {'problems in ' + ', '.join(bad) if bad else 'no failures'}; "
                 f"outputs in {self.out}")
        return 1 if bad else 0


# ----------------------------------------------------------------------------- helpers

VERSIONS_PY = r"""
import importlib.metadata as md, json, platform, sys
out = {"python": platform.python_version()}
def ver(name):
    for n in (name, name.replace("_", "-")):
        try:
            return md.version(n)
        except md.PackageNotFoundError:
            pass
    return ""
try:
    import torch
    out.update(torch=torch.__version__, torch_cuda=torch.version.cuda or "-")
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out["gpu"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "sms": p.multi_processor_count,
                      "memory_GiB": round(p.total_memory / 2**30, 1),
                      "l2_MB": round(getattr(p, "L2_cache_size", 0) / 2**20, 1)}
        try:
            import subprocess
            out["gpu"]["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                                  capture_output=True, text=True, timeout=20).stdout.strip()
        except Exception as e:
            out["gpu"]["driver"] = f"? ({e})"
except Exception as e:
    out["torch_error"] = repr(e)
for name in ("triton", "liger_kernel", "trl", "transformers", "datasets", "sentence_transformers", "numpy"):
    out[name] = ver(name)
imports = {}
for mod in ("liger_kernel.transformers.grpo_loss", "liger_kernel.chunked_loss", "trl.trainer.utils",
            "sentence_transformers.util"):
    try:
        __import__(mod)
        imports[mod] = "ok"
    except Exception as e:
        imports[mod] = f"{type(e).__name__}: {e}"[:300]
out["imports"] = imports
if imports.get("trl.trainer.utils") != "ok":
    out["trl"] = ""
if not all(imports.get(m) == "ok" for m in ("liger_kernel.transformers.grpo_loss", "liger_kernel.chunked_loss")):
    out["liger_kernel"] = ""
print(json.dumps(out))
"""

VERIFY_PY = r"""
import json
import medix_kernels as mk
from medix_kernels import _backend
ext = _backend.extension()
print(json.dumps({"backends": mk.backends(), "cpu": _backend.has_cpu_extension(),
                  "cuda": _backend.has_cuda_extension(), "cuda_compiled": bool(ext is not None and ext.cuda_compiled()),
                  "error": _backend.extension_error(), "path": getattr(ext, "__file__", None)}))
"""


def tree_hash() -> str:
    h = hashlib.sha256()
    for top in ("medix_kernels", "csrc", "benchmarks", "setup.py", "CMakeLists.txt"):
        p = ROOT / top
        files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file())
        for f in files:
            if "__pycache__" in f.parts or f.suffix in (".so", ".pyc", ".o") or "results" in f.parts:
                continue
            h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def bench_tables(rows: list[dict], ceil: dict) -> list[str]:
    if not rows:
        return ["(no rows)"]
    copy = _f(ceil.get("copy_GBps"))
    mm = _f(ceil.get("matmul_TFLOPs"))
    L = []
    for op in dict.fromkeys(r["op"] for r in rows):
        for shape in dict.fromkeys(r["shape"] for r in rows if r["op"] == op):
            case = sorted((r for r in rows if r["op"] == op and r["shape"] == shape), key=lambda r: _f(r["median_us"]))
            compute = case[0]["bound"] == "compute"
            L += [f"**{op}** {shape} {case[0]['dtype']}", "",
                  "| impl | backend | median ms | p10-p90 ms | "
                  + ("TFLOP/s | % matmul" if compute else "GB/s | % copy")
                  + " | peak MB | vs fastest |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
            best = _f(case[0]["median_us"])
            for r in case:
                med = _f(r["median_us"])
                if compute:
                    rate = _f(r["flops"]) / (med * 1e-6) / 1e12
                    frac = rate / mm if mm > 0 else float("nan")
                else:
                    rate = _f(r["bytes_moved"]) / (med * 1e-6) / 1e9
                    frac = rate / copy if copy > 0 else float("nan")
                L.append(f"| {r['impl']} | {r['backend']} | {med / 1e3:.4g} | {_f(r['p10_us']) / 1e3:.4g}-"
                         f"{_f(r['p90_us']) / 1e3:.4g} | {rate:.4g} | {frac:.1%} | {r['peak_mem_MB'] or '-'} | "
                         f"x{med / best:.2f} |")
            L.append("")
    return L


def _f(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def _read_csv(path) -> list[dict]:
    try:
        with open(path, newline="") as fh:
            return list(csv.DictReader(fh))
    except OSError:
        return []


def _write_csv(path, rows, cols) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=cols, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in cols})


def _read_json(path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}


def _last_json(log: Path) -> dict:
    for line in reversed(log.read_text(errors="replace").splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return {}


def _has_module(py: str, name: str) -> bool:
    return subprocess.run([py, "-c", f"import {name}"], capture_output=True).returncode == 0


def _pytest_line(log: Path) -> str:
    text = log.read_text(errors="replace") if log.exists() else ""
    pats = (r"^=*\s*(\d+ (?:passed|failed|error|skipped|deselected|xfailed|xpassed|warnings?|errors)\b.*?)\s*=*$",
            r"^(\d+(?:/\d+)? tests? collected.*?)\s*$", r"^(no tests ran.*?)\s*=*$")
    for line in reversed(text.splitlines()):
        line = line.strip()
        for pat in pats:
            m = re.match(pat, line)
            if m:
                return m.group(1).strip("= ")
    return ""


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
