"""End-to-end step profile of the trainer from its metrics.jsonl.

    python -m benchmarks profile-trainer --metrics runs/x/metrics.jsonl [--out-dir DIR] [--skip-first N]
    python -m benchmarks profile-trainer                  # runs `medix_r1.train --max-steps 3` first

medix_r1.train logs per step ``time/rollout`` (generation), ``time/reward_wait`` (time blocked on
the asynchronous reward worker; its scoring overlaps the log-prob phase, so only the wait shows),
``time/logp`` (reference / old-policy log-probs), ``time/update`` (forward + backward + optimizer),
``time/sync`` (weight sync to the rollout engine) and ``time/step`` (wall time of the step). The
remainder ``other`` = step - the five phases (batching, advantages, metrics, checkpoints).
Writes ``trainer_profile-<tag>.md`` (per-step table, mean seconds and share of the step) and
``trainer_profile-<tag>.png`` (stacked seconds per step and the mean shares). Step 1 includes
one-time warm-up costs (compilation, first allocations); ``--skip-first`` leaves steps out of
the mean.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from . import common

PHASES = ("rollout", "reward_wait", "logp", "update", "sync")


def load(path) -> list[dict]:
    recs = []
    with open(path) as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line of a killed run
            if isinstance(rec.get("time/step"), (int, float)):
                recs.append(rec)
    return recs


def profile(recs: list[dict], skip_first: int = 0) -> dict:
    steps = []
    for r in recs:
        row = {"step": r.get("step"), "step_s": float(r["time/step"])}
        for ph in PHASES:
            row[ph] = float(r.get(f"time/{ph}", 0.0) or 0.0)
        row["other"] = max(0.0, row["step_s"] - sum(row[ph] for ph in PHASES))
        row["tokens_per_s"] = r.get("perf/tokens_per_s")
        steps.append(row)
    used = steps[skip_first:] or steps
    total = sum(s["step_s"] for s in used)
    mean = {k: sum(s[k] for s in used) / len(used) for k in (*PHASES, "other", "step_s")}
    share = {k: (sum(s[k] for s in used) / total if total > 0 else float("nan")) for k in (*PHASES, "other")}
    return {"steps": steps, "used_steps": len(used), "mean": mean, "share": share}


def markdown(prof: dict, source: str, skip_first: int, note: str = "", per_step: bool = True) -> str:
    cols = (*PHASES, "other")
    out = [f"Trainer step profile from `{source}` ({len(prof['steps'])} steps; mean over {prof['used_steps']}"
           + (f", first {skip_first} left out" if skip_first else "") + ")." + (f" {note}" if note else ""), "",
           "| phase | mean s / step | share of step |", "|---|---|---|"]
    for k in cols:
        out.append(f"| {k} | {prof['mean'][k]:.2f} | {100 * prof['share'][k]:.1f}% |")
    out.append(f"| **step** | **{prof['mean']['step_s']:.2f}** | 100% |")
    if not per_step:
        return "\n".join(out)
    out += ["", "| step | " + " | ".join(cols) + " | step s | tokens/s |", "|" + "---|" * (len(cols) + 3)]
    for s in prof["steps"]:
        tps = s["tokens_per_s"]
        tps = f"{tps:.0f}" if isinstance(tps, (int, float)) else "-"
        out.append(f"| {s['step']} | " + " | ".join(f"{s[k]:.2f}" for k in cols) + f" | {s['step_s']:.2f} | {tps} |")
    return "\n".join(out)


def plot(prof: dict, path: Path, title: str) -> Path | None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    cols = (*PHASES, "other")
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 1]})
    xs = [s["step"] for s in prof["steps"]]
    bottom = [0.0] * len(xs)
    for k in cols:
        vals = [s[k] for s in prof["steps"]]
        ax1.bar(xs, vals, bottom=bottom, label=k)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax1.set_xlabel("step")
    ax1.set_ylabel("seconds")
    ax1.legend(fontsize=8)
    ax1.set_title("time per step by phase")
    shares = [100 * prof["share"][k] for k in cols]
    ax2.barh(list(cols), shares, color=[f"C{i}" for i in range(len(cols))])
    for i, v in enumerate(shares):
        ax2.text(v, i, f" {v:.1f}%", va="center", fontsize=8)
    ax2.set_xlim(0, max(shares + [1]) * 1.3)
    ax2.set_xlabel("% of step time")
    ax2.invert_yaxis()
    ax2.set_title("mean share")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def run_short_training(out_dir: str, steps: int) -> Path:
    cmd = [sys.executable, "-m", "medix_r1.train", "--max-steps", str(steps), "--output-dir", out_dir]
    print("running:", " ".join(cmd), flush=True)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=common.ROOT)
    print(f"training finished in {time.perf_counter() - t0:.0f} s (exit {proc.returncode})", flush=True)
    path = Path(out_dir) / "metrics.jsonl"
    if not path.exists():
        raise SystemExit(f"profile-trainer: the run wrote no {path} (exit code {proc.returncode})")
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks profile-trainer", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--metrics", default=None, help="metrics.jsonl of a run (default: run a short training first)")
    p.add_argument("--steps", type=int, default=3, help="steps of the short run when --metrics is not given")
    p.add_argument("--out-dir", default=str(common.RESULTS))
    p.add_argument("--tag", default=None, help="file-name tag: trainer_profile-<tag>.md (default: cpu)")
    p.add_argument("--skip-first", type=int, default=0, help="steps left out of the mean (warm-up)")
    p.add_argument("--note", default="", help="provenance text for the table's header (machine, recipe, load)")
    args = p.parse_args(argv)
    note = args.note
    if args.metrics:
        metrics = Path(args.metrics)
    else:
        load0 = common.load_avg()[0]
        metrics = run_short_training(tempfile.mkdtemp(prefix="medix-profile-"), args.steps)
        note = (f"A {args.steps}-step run of the embedded recipe made by profile-trainer on "
                f"{common.device_name('cpu')}; load average {load0:.2f} before, {common.load_avg()[0]:.2f} after. "
                + note).strip()
    recs = load(metrics)
    if not recs:
        print(f"profile-trainer: no step records with time/step in {metrics}", file=sys.stderr)
        return 1
    prof = profile(recs, args.skip_first)
    tag = args.tag or "cpu"  # one current profile per machine (git keeps the earlier ones)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    source = str(metrics.resolve())
    if source.startswith(str(common.ROOT) + os.sep):
        source = os.path.relpath(source, common.ROOT)
    text = markdown(prof, source, args.skip_first, note)
    md_path = out / f"trainer_profile-{tag}.md"
    png = plot(prof, out / f"trainer_profile-{tag}.png", f"medix_r1.train step profile ({len(recs)} steps)")
    md_path.write_text(text + (f"\n\n![shares]({png.name})\n" if png else "\n"))
    if out.resolve() == common.RESULTS.resolve():  # the committed profile also goes into benchmarks/README.md
        from .report import update_readme
        short = markdown(prof, source, args.skip_first, note, per_step=False)
        update_readme("trainer-profile", short + f"\n\nPer step: [results/{md_path.name}](results/{md_path.name})"
                      + (f"; plot: [results/{png.name}](results/{png.name})." if png else "."))
    print(text)
    print(f"wrote {md_path}" + (f" and {png}" if png else ""))
    return 0
