"""The GPU sweep (benchmarks/gpu/sweep.py) in its dry run on this CPU machine: every named kernel
configuration runs (Triton interpreted) and matches the reference, the CSV has exactly the
issue's columns, winners.md and the implied defaults table are written and parse."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["op", "variant", "backend", "shape", "dtype", "time_ms", "wall_ms", "device_ms", "rate", "rate_unit",
           "pct_ceiling", "registers", "spills", "max_err", "peak_mem_mb", "note"]


def _sweep(*args, timeout=600):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "benchmarks.gpu.sweep", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    res = _sweep(str(out), "--dry-run")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out


def test_sweep_dry_run_csv(dry_run):
    pytest.importorskip("triton")
    from medix_kernels.triton_kernels import configs
    with open(dry_run / "sweep.csv", newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == COLUMNS
        rows = list(reader)
    by_op = {}
    for r in rows:
        by_op.setdefault(r["op"], {})[r["variant"]] = r
    for op, table in (("logprob_fwd", configs.LOGPROB_FWD_CONFIGS), ("logprob_bwd", configs.LOGPROB_BWD_CONFIGS),
                      ("cosine_rewards", configs.COSINE_CONFIGS)):
        for name in table:  # every configuration ran, on the triton backend, within its error bar
            r = by_op[op][name]
            assert r["backend"] == "triton" and 0 <= float(r["max_err"]) <= 1, r
            assert float(r["time_ms"]) > 0 and float(r["rate"]) > 0 and r["rate_unit"] == "GB/s", r
    for name in configs.LOGPROB_FWD_CONFIGS:
        assert float(by_op["grpo_loss"][f"lean fwd={name}"]["max_err"]) <= 1
    for v in ("composed", "api-triton-checked", "api-triton-unchecked"):
        assert float(by_op["grpo_loss"][v]["max_err"]) <= 1, by_op["grpo_loss"][v]
    assert {"api-triton-checked", "api-triton-unchecked"} <= set(by_op["logprob_fwd"])
    for op in ("group_advantages", "composite_advantages"):
        shapes = {r["shape"] for r in rows if r["op"] == op}
        assert len(shapes) == 2 and all(float(r["max_err"]) <= 1 for r in rows if r["op"] == op and
                                        r["backend"] != "eager")
    assert not [r for r in rows if r["note"].startswith("ERROR")]


def test_sweep_dry_run_reports(dry_run):
    meta = json.loads((dry_run / "sweep.meta.json").read_text())
    assert meta["dry_run"] is True and meta["versions"]["torch"] and meta["versions"]["date"]
    assert meta["ceilings"]["copy_GBps"] > 0
    winners = (dry_run / "winners.md").read_text()
    assert "## Fastest correct variant per op and shape" in winners and "## Targets (issue 25)" in winners
    assert "| logprob_fwd |" in winners and "DRY RUN" in winners
    # the implied defaults table is Python that names registered configurations
    from medix_kernels import _defaults
    from medix_kernels.triton_kernels import configs
    ns = {"Choice": _defaults.Choice, "AutoRule": _defaults.AutoRule}
    exec((dry_run / "defaults.py.txt").read_text(), ns)
    for kernel in ("logprob_fwd", "logprob_bwd", "cosine"):
        assert ns["KERNEL_CONFIGS"][kernel].value in configs.REGISTRIES[kernel]
    assert ns["KERNEL_CONFIGS"]["grpo_loss_triton"].value in ("lean", "composed")
    assert ("cuda", "*") in ns["AUTO_BACKENDS"]
    printed = _sweep("--print-defaults", str(dry_run / "sweep.csv"), timeout=120)
    assert printed.returncode == 0 and "KERNEL_CONFIGS = {" in printed.stdout, printed.stderr[-2000:]


def test_sweep_rejects_unknown_ops(tmp_path):
    res = _sweep(str(tmp_path), "--dry-run", "--ops", "logprob_fwd,nope", timeout=120)
    assert res.returncode == 2 and "unknown ['nope']" in res.stderr


@pytest.mark.slow
def test_sweep_run_dry_run(tmp_path):
    """benchmarks/gpu/sweep_run.sh, the one device call (build, sweep, sanitizer; the GPU tests skipped here)."""
    out = tmp_path / "out"
    env = dict(os.environ, PYTHON=sys.executable, PYTHONPATH=str(ROOT), B_TEST="0", B_BUILD="120")
    res = subprocess.run(["bash", "benchmarks/gpu/sweep_run.sh", str(out), "--dry-run"], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["all.tar.gz", "defaults.py.txt", "summary.md", "sweep.csv",
                                                     "sweep.meta.json", "winners.md"]
    summary = (out / "summary.md").read_text()
    assert "| build | exit 0 |" in summary and "| sweep | exit 0 |" in summary and "| sanitizer | exit 0 |" in summary
