"""The train check's report: its environment, the issue's targets judged on the measured figures, the
summary (markdown) and one CSV row per measurement (benchmarks/gpu/train_check.py writes them)."""
from __future__ import annotations

import csv
import datetime
import math
import platform
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BF16_RTOL, BF16_ATOL = 1e-2, 1e-3  # one loss computed with bf16 weights vs fp32 masters cast to bf16


def environment() -> dict:
    """Date, commit, Python, torch / CUDA / transformers / Triton versions and the GPU, when known."""
    env = {"date": datetime.date.today().isoformat(), "python": platform.python_version(), "host": platform.node()}
    try:
        env["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                                       text=True, timeout=10).stdout.strip() or "?"
    except (OSError, subprocess.SubprocessError):
        env["commit"] = "?"
    try:
        import torch
        env.update(torch=torch.__version__, cuda=torch.version.cuda,
                   gpu=torch.cuda.get_device_name() if torch.cuda.is_available() else "none")
    except ImportError:
        pass
    for lib in ("transformers", "triton"):
        try:
            env[lib] = __import__(lib).__version__
        except ImportError:
            env[lib] = "-"
    return env


def _config(res: dict, response: int, gc: bool, impl: str) -> dict:
    for c in res.get("update", {}).get("configs", []):
        if (c["response"], c["gradient_checkpointing"], c["impl"]) == (response, gc, impl):
            return c
    return {}


def _target(name: str, figure: str, required: str, met) -> dict:
    return {"target": name, "figure": figure, "required": required, "met": met}


def targets(res: dict) -> list[dict]:
    """The issue's targets (met True / False, or None when not measured), each with its figure."""
    out = []
    r = res.get("rollout")
    out.append(_target("rollouts batched vs per-prompt", (
        f"x{r['speedup']:.2f} ({r['per_prompt']['s']:.2f} s -> {r['batched']['s']:.2f} s at {r['prompts']} prompts x "
        f"{r['n']} x {r['max_tokens']} tokens; same responses {r['same_responses']:.0%})") if r else "not measured",
        ">= x8", r["speedup"] >= 8 if r else None))
    lengths = sorted({c["response"] for c in res.get("update", {}).get("configs", [])})
    first = lengths[0] if lengths else None
    for gc in (False, True):
        f, p = _config(res, first, gc, "fused"), _config(res, first, gc, "plain")
        label = f"{first} tokens, checkpointing {'on' if gc else 'off'}"
        if "peak_gb" in f and "peak_gb" in p:
            mem = f["peak_gb"] / p["peak_gb"]
            out.append(_target(f"fused-linear update peak memory ({label})", (
                f"{f['peak_gb']:.2f} / {p['peak_gb']:.2f} GiB = {mem:.2f} (above the resident weights and optimizer: "
                f"{f['transient_gb']:.2f} / {p['transient_gb']:.2f} GiB = "
                f"{f['transient_gb'] / max(p['transient_gb'], 1e-9):.2f})"), "<= 0.5x plain", mem <= 0.5))
        else:
            out.append(_target(f"fused-linear update peak memory ({label})", _why(f, p), "<= 0.5x plain", None))
        if "s" in f and "s" in p:
            ratio = f["s"] / p["s"]
            out.append(_target(f"fused-linear update time ({label})", f"{f['s']:.2f} / {p['s']:.2f} s = {ratio:.2f}",
                               "<= 1.1x plain", ratio <= 1.1))
        else:
            out.append(_target(f"fused-linear update time ({label})", _why(f, p), "<= 1.1x plain", None))
    b = res.get("breakdown")
    if b:
        v = b["impls"]["fused"]
        out.append(_target("loss + advantage kernels' share of the update (fused)", (
            f"{v['kernels_share']:.1%} ({b['micro_batches']} micro-batches of {b['rows']} x {b['tokens_per_row']} "
            f"tokens; without the LM head's matmuls {v['kernels_share_without_head']:.1%}; plain "
            f"{b['impls']['plain']['kernels_share']:.1%})"), "< 10%", v["kernels_share"] < 0.10))
    else:
        out.append(_target("loss + advantage kernels' share of the update (fused)", "not measured", "< 10%", None))
    out.append(_parity_target(res))
    run, steps = res.get("runs", {}).get("torchrun"), res.get("steps", 3)
    if run:
        losses = run["summary"].get("losses", [])
        ok = len(losses) >= steps and all(math.isfinite(x) for x in losses) and run.get("rc") == 0
        out.append(_target("torchrun trainer run (NCCL, FSDP2)", f"{len(losses)} steps, losses {losses}",
                           f"{steps} steps, finite", ok))
    else:
        out.append(_target("torchrun trainer run (NCCL, FSDP2)", "not run", f"{steps} steps, finite", None))
    w = res.get("parity", {}).get("single", {}).get("waits")
    if w:
        per = w["medix_r1"] / w["optimizer_steps"]
        out.append(_target("device waits in the update from medix_r1 (per optimizer step)", (
            f"{per:g} ({w['kind']}; all waits {w['count']} in {w['optimizer_steps']} optimizer steps: "
            + ", ".join(f"{k} {v}" for k, v in sorted(w["by_file"].items())) + ")"), "<= 1", per <= 1))
    return out


def _why(f: dict, p: dict) -> str:
    if f.get("oom") or p.get("oom"):
        return "out of memory: " + ", ".join(n for n, c in (("fused", f), ("plain", p)) if c.get("oom"))
    return "not measured"


def _parity_target(res: dict) -> dict:
    par = res.get("parity", {})
    single, ranked = par.get("single"), par.get("torchrun")
    required = f"3 steps finite, |step-1 loss difference| <= {BF16_RTOL:g} x |loss| + {BF16_ATOL:g}"
    if not single or not ranked:
        return _target("torchrun step-1 loss vs one process", "not measured", required, None)
    a, b = single["steps"][0]["loss"], ranked["steps"][0]["loss"]
    ok = ranked["finite"] and len(ranked["steps"]) >= 3 and abs(a - b) <= BF16_RTOL * abs(a) + BF16_ATOL
    return _target("torchrun step-1 loss vs one process", (
        f"{b:.6g} vs {a:.6g} (difference {abs(a - b):.2e}); gradient norms {ranked['steps'][0]['grad_norm']:.4g} vs "
        f"{single['steps'][0]['grad_norm']:.4g}; torchrun steps finite: {ranked['finite']}"), required, ok)


def rows(res: dict) -> list[dict]:
    """Every measurement as (phase, variant, metric, value, unit)."""
    out = []

    def add(phase, variant, metric, value, unit=""):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append({"phase": phase, "variant": variant, "metric": metric, "value": value, "unit": unit})

    r = res.get("rollout")
    if r:
        for v in ("per_prompt", "batched"):
            add("rollout", v, "time", r[v]["s"], "s")
            add("rollout", v, "tokens_per_s", r[v]["tokens_per_s"], "tok/s")
            add("rollout", v, "peak", r[v].get("peak_gb"), "GiB")
        add("rollout", "batched", "speedup", r["speedup"], "x")
    for c in res.get("update", {}).get("configs", []):
        v = f"{c['impl']} R={c['response']} gc={'on' if c['gradient_checkpointing'] else 'off'}"
        for k, unit in (("s", "s"), ("peak_gb", "GiB"), ("transient_gb", "GiB"), ("resident_gb", "GiB")):
            add("update", v, k, c.get(k), unit)
    b = res.get("breakdown")
    if b:
        for impl, v in b["impls"].items():
            for k in ("model_ms", "loss_ms"):
                add("breakdown", impl, k, v[k], "ms")
            add("breakdown", impl, "kernels_share", v["kernels_share"])
        for k in ("head_ms", "opt_ms", "adv_ms"):
            add("breakdown", "-", k, b[k], "ms")
    for who, p in res.get("parity", {}).items():
        for i, st in enumerate(p["steps"], 1):
            add("parity", who, f"step{i}_loss", st["loss"])
            add("parity", who, f"step{i}_grad_norm", st["grad_norm"])
            add("parity", who, f"step{i}_time", st["s"], "s")
    for name, run in res.get("runs", {}).items():
        for k, v in run["summary"].items():
            add(f"trainer_{name}", run["impl"], k, v)
    return out


def write_csv(path: Path, res: dict) -> None:
    env = res.get("env", {})
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["phase", "variant", "metric", "value", "unit", "gpu", "torch", "date"])
        w.writeheader()
        for row in rows(res):
            w.writerow({**row, "gpu": env.get("gpu", ""), "torch": env.get("torch", ""), "date": env.get("date", "")})


def summary_markdown(res: dict) -> str:
    env = res.get("env", {})
    where = "the CPU (dry run: tiny shapes, the targets do not apply)" if res["dry_run"] else "the GPU"
    lines = [f"# Trainer on {where}: {res['started']}", "",
             "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()), ""]
    if "model" in res:
        m = res["model"]
        lines += [f"Model: {m.get('name')} ({m['params'] / 1e9:.3f} B parameters, vocab {m['vocab']}); "
                  f"device {m.get('device')}", ""]
    lines += ["## Targets", "", "| target | measured | required | met |", "| --- | --- | --- | --- |"]
    for t in res.get("targets", []):
        met = {True: "met", False: "**MISSED**", None: "n/a"}[t["met"]]
        lines.append(f"| {t['target']} | {t['figure']} | {t['required']} | {met} |")
    lines += ["", "## Phases", "", "| phase | status | s | note |", "| --- | --- | --- | --- |"]
    for name, p in res["phases"].items():
        note = (p.get("note") or "").splitlines()[0] if p.get("note") else ""
        lines.append(f"| {name} | {p['status']} | {p.get('wall_s', '')} | {note} |")
    lines += _update_table(res) + _breakdown_table(res) + _runs_table(res)
    return "\n".join(lines) + "\n"


def _update_table(res: dict) -> list[str]:
    u = res.get("update")
    if not u:
        return []
    lines = ["", f"## The update ({u['rows']} rows, prompt {u['prompt']} tokens, micro-batches of {u['micro']}, "
                 "one optimizer step)", "", "| response | checkpointing | impl | s | peak GiB | resident GiB | "
                 "transient GiB |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for c in u["configs"]:
        if "s" in c:
            lines.append(f"| {c['response']} | {'on' if c['gradient_checkpointing'] else 'off'} | {c['impl']} | "
                         f"{c['s']:.2f} | {c.get('peak_gb', math.nan):.2f} | {c.get('resident_gb', math.nan):.2f} | "
                         f"{c.get('transient_gb', math.nan):.2f} |")
        else:
            lines.append(f"| {c['response']} | {'on' if c['gradient_checkpointing'] else 'off'} | {c['impl']} | "
                         f"{'out of memory' if c.get('oom') else '-'} | | | |")
    return lines


def _breakdown_table(res: dict) -> list[str]:
    b = res.get("breakdown")
    if not b:
        return []
    lines = ["", f"## One micro-batch ({b['rows']} rows x {b['tokens_per_row']} tokens), median of {b['repeats']}, ms",
             "", "| impl | model fwd+bwd | loss fwd+bwd | loss share | kernels' share of a step | peak GiB |",
             "| --- | --- | --- | --- | --- | --- |"]
    for impl, v in b["impls"].items():
        lines.append(f"| {impl} | {v['model_ms']:.1f} | {v['loss_ms']:.1f} | {v['loss_share']:.1%} | "
                     f"{v['kernels_share']:.1%} | {v.get('peak_gb', float('nan')):.2f} |")
    lines.append(f"\nLM head matmuls (forward + backward) {b['head_ms']:.1f} ms; optimizer step {b['opt_ms']:.1f} ms; "
                 f"group_advantages on {b['adv_rows']} rewards {b['adv_ms']:.3f} ms; a step = {b['micro_batches']} "
                 "micro-batches + the optimizer step")
    return lines


def _runs_table(res: dict) -> list[str]:
    if not res.get("runs"):
        return []
    lines = ["", "## Trainer runs: mean per step (steps after the first)", "",
             "| run | kernels | steps | step s | rollout s | logp s | update s | sync s | tokens/s | update peak GiB | "
             "losses |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in res["runs"].items():
        s = r["summary"]

        def f(k, fmt="{:.2f}"):
            return fmt.format(s[k]) if k in s else "-"
        losses = ", ".join(f"{x:.4g}" for x in s.get("losses", []))
        lines.append(f"| {name} | {r.get('backends', '')} | {r['steps']} | {f('time/step')} | {f('time/rollout')} | "
                     f"{f('time/logp')} | {f('time/update')} | {f('time/sync', '{:.3f}')} | "
                     f"{f('perf/tokens_per_s', '{:.0f}')} | {f('max_update_peak_gb')} | {losses} |")
    return lines
