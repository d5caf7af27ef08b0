"""The GPU check's testing phases: correctness, sanitizer and pytest, each a subprocess it reads back.

- correctness: ``benchmarks.gpu.correctness`` (cuda and triton vs the reference, fp32 + bf16) writes
  correctness.csv; a crash is reported with the case it was running (its ``START`` lines).
- sanitizer: ``compute-sanitizer --tool memcheck`` over ``benchmarks.gpu.sanitize`` (each CUDA kernel
  once at awkward sizes); the verdict is its ``ERROR SUMMARY`` line and the workload's end marker.
  Dry run: the workload runs on the CPU backend, no sanitizer.
- pytest: ``-m gpu`` over tests/ and the cuda / triton / gpu tests of the kernel test files
  (``TEST_FILES``, ``TEST_K``). Dry run: the same selections with ``--collect-only``.
"""
from __future__ import annotations

import glob
import re
import shutil
import subprocess
import time
from pathlib import Path

from .check_build import VERIFY_PY
from .check_common import last_json, read_csv

TEST_FILES = ("tests/test_logprob_gpu_kernels.py", "tests/test_group_advantages.py", "tests/test_cosine_rewards.py",
              "tests/test_policy_loss.py", "tests/test_fused_linear.py")
# the cuda / triton / gpu tests of those files, less the ones that only build or re-run the CPU interpreter
TEST_K = ("(cuda or triton or gpu) and not compile_for_sm80 and not glue_passes and not dry_run_on_cpu "
          "and not under_interpreter")


def phase_correctness(check, limit):
    csv_path = check.work / "correctness.csv"
    cmd = [check.py, "-m", "benchmarks.gpu.correctness", "--out", str(csv_path), "--seed", str(check.seed)]
    res = check.sh(cmd + (["--dry-run"] if check.dry else []), check.logs / "correctness.log", timeout=limit)
    rows = read_csv(csv_path)
    if csv_path.exists():
        shutil.copy(csv_path, check.out / "correctness.csv")
    bad = [r for r in rows if r["ok"] not in ("ok", "skipped")]
    skipped = sorted({f"{r['backend']}" for r in rows if r["ok"] == "skipped"})
    note = f"{sum(r['ok'] == 'ok' for r in rows)} outputs ok, {len(bad)} failing"
    if skipped:
        note += f", backend(s) skipped: {', '.join(skipped)}"
    if res["timed_out"]:
        return "timeout", note + f" (killed at {limit:.0f} s)"
    if res["rc"] not in (0, 1):
        started = [ln[6:] for ln in (check.logs / "correctness.log").read_text(errors="replace").splitlines()
                   if ln.startswith("START ")]
        return "failed", note + f"; exited {res['rc']} during {started[-1] if started else '?'}"
    return ("ok" if not bad and rows else "failed"), note



def phase_sanitizer(check, limit):
    log = check.logs / "sanitizer.log"
    installed = glob.glob("/usr/local/cuda*/bin/compute-sanitizer")
    tool = shutil.which("compute-sanitizer") or next(iter(installed), None)
    cmd = [tool or "compute-sanitizer", "--tool", "memcheck", "--leak-check", "no", "--error-exitcode", "3",
           "--print-limit", "100", check.py, "-m", "benchmarks.gpu.sanitize"]
    if check.dry:
        res = check.sh([check.py, "-m", "benchmarks.gpu.sanitize", "--backend", "cpu"], log, timeout=limit)
        ok = res["rc"] == 0 and "SANITIZE-WORKLOAD-OK" in log.read_text(errors="replace")
        return ("skipped" if ok else "failed"), ("dry run: no GPU, sanitizer not run (the real run: "
                                                 f"PYTORCH_NO_CUDA_MEMORY_CACHING=1 {' '.join(cmd[:-3])} "
                                                 "python -m benchmarks.gpu.sanitize); the workload ran on the "
                                                 f"cpu backend: {'ok' if ok else 'FAILED'}")
    if tool is None:
        return "skipped", "compute-sanitizer not found"
    if "extension" not in check.info:  # no build phase in this call (a carried or earlier build): probe it
        check.sh([check.py, "-c", VERIFY_PY], log, timeout=60)
        check.info["extension"] = last_json(log)
    if "cuda" not in (check.info.get("extension") or {}).get("backends", []):
        return "skipped", "no cuda backend (build failed or skipped)"
    res = check.sh(cmd, log, timeout=limit, env=check.env(PYTORCH_NO_CUDA_MEMORY_CACHING=1))
    text = log.read_text(errors="replace")
    m = re.findall(r"ERROR SUMMARY: (\d+) error", text)
    summary = f"ERROR SUMMARY: {m[-1]} errors" if m else "no ERROR SUMMARY line"
    if res["timed_out"]:
        return "timeout", summary + f" (killed at {limit:.0f} s)"
    if "SANITIZE-WORKLOAD-OK" not in text:
        return "failed", summary + f"; the workload did not finish (exit {res['rc']})"
    return ("ok" if res["rc"] == 0 and m and m[-1] == "0" else "failed"), summary



def phase_pytest(check, limit):
    base = [check.py, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider"]
    if check.dry:
        base.append("--collect-only")
    else:
        base += ["-o", "addopts=", "--timeout", "120"] if _has_module(check.py, "pytest_timeout") else []
    t_end = time.monotonic() + limit
    out = []
    res_a = check.sh(base + ["-m", "gpu", "tests"], check.logs / "pytest-gpu-marker.log",
                     timeout=max(5, min(limit / 2, t_end - time.monotonic())))
    line_a = _pytest_line(check.logs / "pytest-gpu-marker.log")
    if res_a["rc"] == 5:
        line_a = "no test is marked gpu yet (" + (line_a or "exit 5") + ")"
    out.append(("-m gpu", res_a, line_a))
    res_b = check.sh(base + list(TEST_FILES) + ["-k", TEST_K], check.logs / "pytest-kernels.log",
                     timeout=max(5, t_end - time.monotonic()))
    out.append(("kernel tests (-k cuda/triton/gpu)", res_b, _pytest_line(check.logs / "pytest-kernels.log")))
    check.info["pytest"] = [{"selection": s, **r, "summary": line} for s, r, line in out]
    ok = all(r["rc"] in (0, 5) and not r["timed_out"] for _, r, _ in out)
    note = "; ".join(f"{s}: {line or 'exit ' + str(r['rc'])}" + (" (timed out)" if r["timed_out"] else "")
                     for s, r, line in out)
    if check.dry:
        note = "dry run: collected only (no GPU); " + note
    return ("ok" if ok else "failed"), note



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

