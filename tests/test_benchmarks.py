"""The benchmark suite (python -m benchmarks): a smoke run on tiny shapes, the CSV it writes, the
speed-ups computed from the measured medians, peers that cannot run skipped with a message, the
memory method, the trainer profile, and backend="auto" following the committed measured table.
CPU timing numbers are never asserted."""
import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT))

from benchmarks import hardware, suite  # noqa: E402
from benchmarks.hardware import table_peak  # noqa: E402


def _env():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(ROOT)
    return env


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    readme_before = (ROOT / "benchmarks" / "README.md").read_text()
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--smoke", "--ops", "group_advantages,grpo_loss",
                           "--peers", "eager,verl,liger", "--memory", "worker", "--out-dir", str(out)],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (ROOT / "benchmarks" / "README.md").read_text() == readme_before  # only a run into results/ edits it
    csvs = sorted(out.glob("*.csv"))
    main = [p for p in csvs if not p.name.endswith(".auto.csv")]
    assert len(main) == 1, csvs
    return main[0], proc.stdout


def test_smoke_run_writes_csv_with_every_column(smoke_run):
    path, _ = smoke_run
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == suite.COLUMNS
        rows = list(reader)
    assert {r["op"] for r in rows} == {"group_advantages", "grpo_loss"}
    impls = {(r["op"], r["impl"]) for r in rows}
    assert {("group_advantages", "medix-cpu"), ("group_advantages", "medix-torch"), ("group_advantages", "torch-eager"),
            ("group_advantages", "verl-formula"), ("grpo_loss", "medix-cpu"), ("grpo_loss", "medix-cpu-inplace"),
            ("grpo_loss", "torch-eager"), ("grpo_loss", "verl-formula")} <= impls, impls
    for r in rows:
        assert float(r["median_us"]) > 0 and float(r["p10_us"]) <= float(r["median_us"]) <= float(r["p90_us"])
        assert int(r["n_samples"]) >= 3
        assert r["peak_mem_MB"] != "" and float(r["peak_mem_MB"]) >= 0 and r["mem_method"] == "worker"
        assert float(r["GBps"]) > 0 and float(r["frac_peak"]) > 0 and float(r["peak_GBps"]) > 0
        assert r["load_1m_start"] != "" and r["device_name"].startswith("CPU") and r["torch"] == torch.__version__
        assert r["medix"].startswith("0.1.0") and r["triton"] and r["driver"] == "-" and r["date"]
        assert r["cpu_level"] == hardware.kernel_level() and r["cpu_vector_ext"] == hardware.cpu_vector_extensions()
    fused = [r for r in rows if r["op"] == "grpo_loss"]
    assert all(r["bound"] == "memory" for r in fused)


def test_the_kernel_level_in_effect_is_recorded():
    """MEDIX_CPU_LEVEL caps the level the C++ kernels pick: the recorded level (and the device name's
    ISA) is the capped one, the vector extensions stay the CPU's."""
    code = "from benchmarks import common, hardware; print(hardware.kernel_level()); print(common.cpu_isa())"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**_env(), "MEDIX_CPU_LEVEL": "0"},
                         capture_output=True, text=True, timeout=120, check=True).stdout.split("\n")
    assert out[:2] == ["0 base (MEDIX_CPU_LEVEL=0)", "base"], out
    if "avx2" in hardware.cpu_vector_extensions().split():
        assert hardware.kernel_level().split()[0] in ("1", "2")


def test_speedups_are_ratios_of_the_measured_medians(smoke_run):
    path, _ = smoke_run
    rows = list(csv.DictReader(open(path, newline="")))
    checked = 0
    for r in rows:
        case = [c for c in rows if c["op"] == r["op"] and c["shape"] == r["shape"]]
        for fam in suite.PEER_FAMILIES:
            peers = [float(c["median_us"]) for c in case if c["family"] == fam]
            if not peers:
                assert r[f"x_vs_{fam}"] == ""
                continue
            assert float(r[f"x_vs_{fam}"]) == pytest.approx(min(peers) / float(r["median_us"]), rel=2e-3, abs=2e-3)
            checked += 1
        best = min((c for c in case if c["role"] == "peer"), key=lambda c: float(c["median_us"]))
        assert r["best_peer"] == best["impl"]
        assert float(r["x_vs_best_peer"]) == pytest.approx(float(best["median_us"]) / float(r["median_us"]), rel=2e-3,
                                                            abs=2e-3)
    assert checked >= 10


def test_peers_that_cannot_run_here_are_skipped_with_a_message(smoke_run):
    path, stdout = smoke_run
    rows = list(csv.DictReader(open(path, newline="")))
    meta = json.loads(path.with_suffix(".meta.json").read_text())
    if not torch.cuda.is_available():  # Liger's Triton GRPO loss needs a GPU
        assert not any(r["family"] == "liger" for r in rows)
        assert ("skipped grpo_loss / liger-triton: Liger's triton_grpo_loss is a Triton kernel: "
                "needs a CUDA GPU") in stdout
        assert "needs a CUDA GPU" in meta["skipped"]["grpo_loss / liger-triton"]
    assert not any(r["family"] in ("trl", "compile", "st") for r in rows)  # not asked for (--peers)


def test_smoke_run_writes_plots_table_and_auto_table(smoke_run):
    path, _ = smoke_run
    for op in ("group_advantages", "grpo_loss"):
        png = path.with_name(f"{path.stem}-{op}.png")
        assert png.exists() and png.read_bytes()[:4] == b"\x89PNG"
    md = path.with_suffix(".md").read_text()
    assert "| op | shape | fastest medix |" in md and "Skipped (not faked)" in md
    auto = list(csv.DictReader(open(path.with_suffix(".auto.csv"), newline="")))
    assert {r["op"] for r in auto} == {"group_advantages", "grpo_loss"}
    assert all(r["fastest_backend"] in ("torch", "cpu") for r in auto)


def test_a_peer_whose_package_is_missing_is_skipped_not_faked(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "trl", None)  # import trl -> ImportError
    monkeypatch.setitem(sys.modules, "trl.trainer", None)
    lines = []
    s = suite.Settings(profile="smoke", ops=("group_advantages",), peers=("trl", "eager"), memory="none",
                       out_dir=str(tmp_path), rounds_min=3, budget_s=0.0)
    path, rows, meta = suite.run(s, log=lines.append)
    assert "trl" not in {r["family"] for r in rows} and "torch-eager" in {r["impl"] for r in rows}
    assert "trl is not importable" in meta["skipped"]["group_advantages / trl"]
    assert any("skipped group_advantages / trl: trl is not importable" in line for line in lines)


def test_add_ratios_uses_each_family_fastest_row():
    rows = [dict(op="o", shape="s", dtype="f", device="cpu", impl=n, role=ro, family=f, median_us=t)
            for n, ro, f, t in (("medix-cpu", "ours", "medix", 10.0), ("torch-eager", "peer", "eager", 40.0),
                                ("liger-a", "peer", "liger", 30.0), ("liger-b", "peer", "liger", 20.0))]
    suite.add_ratios(rows)
    assert rows[0]["x_vs_eager"] == 4.0 and rows[0]["x_vs_liger"] == 2.0 and rows[0]["x_vs_trl"] == ""
    assert rows[0]["best_peer"] == "liger-b" and rows[0]["x_vs_best_peer"] == 2.0
    assert rows[1]["x_vs_eager"] == 1.0


def test_memory_worker_method_sees_a_known_allocation(tmp_path):
    # The worker's allocator settings (every block >= 64 KiB its own mapping) and VmHWM reset:
    # a 64 MiB tensor allocated after a bigger one was freed must still show as ~64 MiB.
    code = ("import torch\nfrom benchmarks.memory import cpu_peak_extra\n"
            "big = torch.ones(100 * 2**20 // 4); del big\n"
            "print(cpu_peak_extra(lambda: torch.ones(64 * 2**20 // 4)) / 2**20)\n")
    from benchmarks.memory import WORKER_ENV
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**_env(), **WORKER_ENV}, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert 63 < float(proc.stdout.strip().splitlines()[-1]) < 70


def test_gpu_peak_table():
    assert table_peak("NVIDIA H100 80GB HBM3", "bfloat16")[0] == 3.35e12
    assert table_peak("NVIDIA H100 PCIe", "bfloat16")[0] == 2.0e12
    assert table_peak("NVIDIA H200", "bfloat16")[1] == 989e12
    assert table_peak("NVIDIA A100-SXM4-80GB", "float32")[1] == 19.5e12
    assert table_peak("NVIDIA A100-SXM4-40GB", "bfloat16")[0] == 1.555e12
    assert table_peak("Some Future GPU", "bfloat16") is None


def test_trainer_profile_from_a_metrics_file(tmp_path):
    from benchmarks import trainer_profile
    metrics = tmp_path / "metrics.jsonl"
    recs = [{"step": i, "time/rollout": 2.0, "time/reward_wait": 1.0, "time/logp": 0.5, "time/update": 6.0,
             "time/sync": 0.25, "time/step": 10.0, "perf/tokens_per_s": 50.0} for i in (1, 2)]
    metrics.write_text("\n".join(json.dumps(r) for r in recs) + '\n{"step": 3, "time/rol')  # torn last line
    assert trainer_profile.main(["--metrics", str(metrics), "--out-dir", str(tmp_path), "--tag", "t"]) == 0
    prof = trainer_profile.profile(trainer_profile.load(metrics))
    assert prof["share"]["update"] == pytest.approx(0.6) and prof["share"]["other"] == pytest.approx(0.025)
    assert sum(prof["share"].values()) == pytest.approx(1.0)
    md = (tmp_path / "trainer_profile-t.md").read_text()
    assert "| update | 6.00 | 60.0% |" in md
    assert (tmp_path / "trainer_profile-t.png").read_bytes()[:4] == b"\x89PNG"


def _auto_tables():
    return sorted(RESULTS.glob("*.auto.csv"))


def _auto_cases():
    out = []
    for table in _auto_tables():
        rows = list(csv.DictReader(open(table, newline="")))
        for op in dict.fromkeys(r["op"] for r in rows):
            out.append(pytest.param(table, op, id=f"{table.name}::{op}"))
    return out


def test_a_measured_cpu_auto_table_is_committed():
    assert any("cpu" in p.name and "dryrun" not in p.name for p in _auto_tables()), list(RESULTS.iterdir())


@pytest.mark.parametrize("table,op", _auto_cases())
def test_auto_backend_follows_the_measured_table(table, op):
    """backend="auto" (medix_kernels._backend.resolve_backend) must pick the backend measured fastest
    wherever the measured difference is beyond the noise (auto's p10 above the winner's p90, > 5%)."""
    from medix_kernels import _backend
    rows = [r for r in csv.DictReader(open(table, newline="")) if r["op"] == op]
    assert rows
    for r in rows:
        if r["device"] == "cuda" and not torch.cuda.is_available():
            pytest.skip("a GPU table: needs a CUDA GPU")
        auto = _backend.resolve_backend("auto", torch.empty(0, device=r["device"]), r["op"])
        assert f"{auto}=" in r["candidates"], (r, auto)  # auto's choice was measured
        if r["significant"] == "1" or auto == r["fastest_backend"]:
            assert auto == r["fastest_backend"], (f"{r['op']} {r['shape']}: auto picks {auto}, measured "
                                                  f"{r['candidates']} (us)")


def test_one_result_file_per_device_and_profile(tmp_path):
    env = {"date": "2026-12-03"}
    assert suite.csv_path(suite.Settings(profile="quick", out_dir=str(tmp_path)), env).name == "cpu-quick.csv"
    assert suite.csv_path(suite.Settings(profile="medium", device="cuda", out_dir=str(tmp_path)), env).name == \
        "cuda-medium.csv"
    assert suite.csv_path(suite.Settings(profile="smoke", dry_run=True, out_dir=str(tmp_path)), env).name == \
        "cpu-dryrun-smoke.csv"


def test_every_link_to_a_results_file_resolves():
    import re
    docs = {ROOT / "benchmarks" / "README.md": ROOT / "benchmarks", ROOT / "README.md": ROOT}
    docs.update({p: p.parent for p in RESULTS.glob("*.md")})
    checked = 0
    for doc, base in docs.items():
        for target in re.findall(r"\]\(([^)#\s]+)\)", doc.read_text()):
            if "results/" in target or base == RESULTS and not target.startswith("http"):
                assert (base / target).exists(), f"{doc.relative_to(ROOT)} links to a missing {target}"
                checked += 1
    assert checked >= 10


def test_fair_protocol_gives_every_call_a_fresh_copy():
    from benchmarks.ops import loss
    x = {"logits": torch.randn(2, 3, 5)}
    reused = loss.logits_leaf(x)
    assert reused() is reused() and reused().data_ptr() == x["logits"].data_ptr()
    private = loss.logits_leaf(x, private=True)
    assert private() is private() and private().data_ptr() != x["logits"].data_ptr()
    fresh = loss.logits_leaf({**x, "fresh_logits": True}, private=True)
    a, b = fresh(), fresh()
    assert a is not b and a.requires_grad and torch.equal(a, x["logits"]) and a.data_ptr() != x["logits"].data_ptr()


def test_fair_policy_loss_run_writes_net_times_and_ratios(tmp_path):
    out = tmp_path / "fair.csv"
    proc = subprocess.run([sys.executable, "benchmarks/bench_policy_loss_cpu.py", "--fair", "--shape",
                           "tokens=64,vocab=512", "--peers", "eager", "--rounds", "3", "--out", str(out)],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = list(csv.DictReader(open(out, newline="")))
    got = {(r["protocol"], r["impl"]) for r in rows}
    assert got == {("fresh-copy", "logits-copy"), ("fresh-copy", "medix-cpu"), ("fresh-copy", "medix-cpu-inplace"),
                   ("fresh-copy", "torch-eager"), ("reused-leaf", "medix-cpu"), ("reused-leaf", "medix-cpu-inplace"),
                   ("reused-leaf", "torch-eager")}, got
    for r in rows:
        assert int(r["n_samples"]) == 3 and float(r["median_us"]) > 0
        if r["impl"] != "logits-copy":
            eager = next(e for e in rows if e["protocol"] == r["protocol"] and e["impl"] == "torch-eager")
            assert float(r["x_vs_eager"]) == pytest.approx(float(eager["net_median_us"]) / float(r["net_median_us"]),
                                                           rel=2e-3, abs=2e-3)
        if r["protocol"] == "reused-leaf":
            assert r["net_median_us"] == r["median_us"] and r["copy_median_us"] == ""
    md = out.with_suffix(".md").read_text()
    assert "| fresh-copy | logits-copy |" in md and "fair.csv" in md


def test_dry_run_exercises_the_gpu_code_paths_on_the_cpu(tmp_path):
    # --dry-run-cpu: TRITON_INTERPRET=1, so the medix triton backend and Liger's Triton kernels run (interpreted)
    # through the same builders the GPU run uses; CUDA events and allocator counters are not exercised here.
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--dry-run-cpu",
                           "--ops", "selective_log_softmax,grpo_loss", "--peers", "liger", "--memory", "none",
                           "--out-dir", str(tmp_path)],
                          cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    path = next(p for p in tmp_path.glob("cpu-dryrun-*.csv") if not p.name.endswith(".auto.csv"))
    rows = list(csv.DictReader(open(path, newline="")))
    impls = {(r["op"], r["impl"]): r for r in rows}
    for key in [("selective_log_softmax", "medix-triton"), ("selective_log_softmax", "liger-triton"),
                ("grpo_loss", "medix-triton"), ("grpo_loss", "medix-triton-inplace"), ("grpo_loss", "liger-triton")]:
        assert key in impls, sorted(impls)
        assert impls[key]["backend"] == "triton (interpreted)" and float(impls[key]["median_us"]) > 0
    assert all("dry run" in r["device_name"] for r in rows)
