"""The GPU check's outputs: OUT's files, rewritten after every phase (a run stopped from outside still
leaves what was done), and summary.md, section by section.

OUT: summary.md, bench.csv, targets.csv, correctness.csv, ptxas.txt, env.txt, logs.tar.gz (every log,
the suite's meta files, the auto table, ceilings.json, check.json).
"""
from __future__ import annotations

import datetime
import json
import shutil
import tarfile

from . import ptxas, targets
from .check_bench import bench_rows, bench_tables
from .check_common import OUT_FILES, PHASES, as_float, read_csv, read_json, write_csv

FILES_NOTE = ("summary.md (this), bench.csv (every row: the suite's columns), targets.csv, correctness.csv, ptxas.txt, "
              "env.txt (nvidia-smi, versions), logs.tar.gz (build, tests, sanitizer, bench logs and meta, auto "
              "table, ceilings.json, check.json).")


def write_outputs(check) -> None:
    """Every output file from what the phases left so far; a failure here is logged, never raised."""
    try:
        _write_outputs(check)
    except Exception as exc:
        import traceback
        (check.logs / "write-outputs-error.log").write_text(traceback.format_exc())
        print(f"writing the outputs failed: {exc}", flush=True)


def _write_outputs(check) -> None:
    rows, meta = bench_rows(check.work)
    ceil = read_json(check.work / "bench" / "ceilings.json")
    results = targets.evaluate(rows, ceil, meta) if rows else []
    if rows:
        cols = list(rows[0].keys())
        write_csv(check.out / "bench.csv", rows, cols)
        write_csv(check.out / "targets.csv", results, targets.COLUMNS)
        write_csv(check.logs / "auto.csv", [r for r in results if r["target"] == "auto_choice"], targets.COLUMNS)
    if getattr(check, "ptxas_rows", None) is not None:
        (check.out / "ptxas.txt").write_text(ptxas.report(check.ptxas_rows, check.ptxas_source))
    if (check.work / "env.txt").exists():
        shutil.copy(check.work / "env.txt", check.out / "env.txt")
    check.info.update({"phases": check.phases, "elapsed_s": round(check.elapsed(), 1), "seed": check.seed})
    (check.logs / "check.json").write_text(json.dumps(check.info, indent=1, default=str) + "\n")
    (check.out / "summary.md").write_text(summary(check, rows, meta, ceil, results))
    with tarfile.open(check.out / "logs.tar.gz", "w:gz") as tar:
        tar.add(check.logs, arcname="logs")
        bench = check.work / "bench"
        if bench.exists():
            for p in sorted(bench.iterdir()):
                tar.add(p, arcname=f"logs/bench/{p.name}")
    extra = sorted(p.name for p in check.out.iterdir() if p.name not in OUT_FILES)
    if extra:
        print(f"note: OUT holds files besides the check's own: {extra} (only 8 files come back)", flush=True)


def summary(check, rows, meta, ceil, results) -> str:
    L = header(check) + phases_table(check) + ceilings_and_targets(ceil, results)
    L += ["## Benchmark rows", ""]
    L += bench_tables(rows, ceil)
    if meta.get("skipped") or meta.get("errors"):
        L += ["", "Skipped or failed implementations (not faked):", ""]
        L += [f"- {k}: {r}" for k, r in (meta.get("skipped") or {}).items()]
        L += [f"- {e}" for e in meta.get("errors") or []]
    L += correctness_section(read_csv(check.work / "correctness.csv"))
    L += tests_section(check)
    L += ["", "## Files", "", FILES_NOTE]
    return "\n".join(L) + "\n"


def header(check) -> list[str]:
    """The title (the GPU, the date, DRY RUN) and the versions, budget and seed the numbers come from."""
    v = check.info.get("versions", {})
    gpu = v.get("gpu", {})
    date = datetime.date.today().isoformat()
    head = "GPU check" + (" -- DRY RUN (CPU, Triton interpreted, tiny fp32 shapes, torch.compile disabled so "
                          "the compile peers ran eagerly: every number is meaningless)" if check.dry else "")
    return [f"# {head}: {gpu.get('name', 'no GPU')}, {date}", "",
            f"Commit `{v.get('commit', '?')}`, source tree sha256 `{str(v.get('source_tree_sha256', '?'))[:16]}`; "
            f"torch {v.get('torch', '?')} (CUDA {v.get('torch_cuda', '?')}), triton {v.get('triton', '?')}, "
            f"Liger {v.get('liger_kernel') or 'missing'}, TRL {v.get('trl') or 'missing'}, python "
            f"{v.get('python', '?')}; driver {gpu.get('driver', '?')}. Budget {check.budget:.0f} s, elapsed "
            f"{check.elapsed():.0f} s, seed {check.seed}. Produced by `bash benchmarks/gpu/check.sh"
            f"{' --dry-run' if check.dry else ''}` (benchmarks/gpu/README.md)."]


def phases_table(check) -> list[str]:
    L = ["", "## Phases", "", "| phase | status | wall s | note |", "| --- | --- | --- | --- |"]
    for name in PHASES:
        p = check.phases.get(name)
        if p is None:
            L.append(f"| {name} | {'not selected' if name not in check.selected else 'not run (yet)'} | | |")
        else:
            L.append(f"| {name} | {p['status']} | {p['wall_s']} | {p['note'].replace('|', '/')} |")
    return L


def ceilings_and_targets(ceil: dict, results: list[dict]) -> list[str]:
    L = ["", "## Ceilings (measured first, this run)", ""]
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
    return L


def correctness_section(corr: list[dict]) -> list[str]:
    """The counts, the failing outputs in a table, and the passing output closest to its bar."""
    L = ["", "## Correctness (cuda / triton vs reference, ||out - ref|| / ||ref||)", ""]
    if not corr:
        return L + ["(not run)"]
    bad = [r for r in corr if r["ok"] not in ("ok", "skipped")]
    L.append(f"{sum(r['ok'] == 'ok' for r in corr)} outputs ok, {len(bad)} failing, "
             f"{sum(r['ok'] == 'skipped' for r in corr)} case(s) skipped (correctness.csv).")
    worst = {}
    for r in corr:
        if r["ok"] == "ok":
            key = (r["case"], r["backend"], r["dtype"])
            e = as_float(r["rel_err"]) / max(as_float(r["bar"]), 1e-30) if as_float(r["bar"]) > 0 else 0.0
            worst[key] = max(worst.get(key, 0.0), e)
    if bad:
        L += ["", "| case | backend | dtype | output | rel err | bar | result |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
        L += [f"| {r['case']} | {r['backend']} | {r['dtype']} | {r['output']} | {r['rel_err']} | {r['bar']} | "
              f"{r['ok']} {r.get('error', '')} |" for r in bad]
    if worst:
        k, e = max(worst.items(), key=lambda kv: kv[1])
        L.append(f"Closest to its bar: {' '.join(k)} at {e:.2f} of the bar.")
    return L


def tests_section(check) -> list[str]:
    """The pytest selections' summary lines, the sanitizer and build verdicts, the ptxas register range."""
    L = ["", "## Tests, sanitizer, build", ""]
    for p in check.info.get("pytest", []):
        L.append(f"- pytest {p['selection']}: {p['summary'] or 'exit ' + str(p['rc'])}")
    for name in ("sanitizer", "build"):
        if name in check.phases:
            L.append(f"- {name}: {check.phases[name]['status']}: {check.phases[name]['note']}")
    pr = getattr(check, "ptxas_rows", None)
    if pr:
        regs = [r["registers"] for r in pr if r["registers"] is not None]
        sp = ptxas.spilling(pr)
        L.append(f"- ptxas: {len(pr)} kernel entries ({check.ptxas_source}); registers {min(regs)}-{max(regs)}; "
                 f"{len(sp)} with a stack frame or spills" + (": " + ", ".join(r["kernel"][:60] for r in sp[:5])
                                                             if sp else "") + " (ptxas.txt)")
    return L
