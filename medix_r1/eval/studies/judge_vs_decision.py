"""Does the training reward's judge move with correctness? The judge on real policy responses.

    python -m medix_r1.eval.studies judge-vs-decision ITEMS.jsonl [--recipe cpu_smollm2]
        [--out-dir benchmarks/results] [--name judge_vs_decision_cpu] [--resamples 10000] [--seed 0]

(``python -m benchmarks judge-vs-decision ...`` runs the same.)

Reads the per-item file of ``decision-eval`` (``<name>-items.jsonl``: every model's greedy response
to the 500 bundled PubMedQA test items and whether its yes / no / maybe decision is right), scores
every response with the recipe's reward exactly as the trainer does (``RewardWorker`` with the
recipe's ``reward`` section: for the CPU recipe the local SmolLM2 judge behind the decision and
topic gates, and the MiniLM embedding reward) and reports, per model, the judge reward's mean on
responses whose decision is right and on those whose decision is wrong, with a 95% bootstrap
interval of the gap. The judge sees the response's answer tag and the reference
conclusion, not the gold label, so a gap is the judge telling right from wrong on text a policy
really writes (the labelled pairs of ``judge-pairs`` are built by rule).

Writes ``<name>.md`` and ``<name>.csv`` (one row per model); refuses to replace them without
``--overwrite``.
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np

from medix_r1.utils.cli import command_name

from . import RESULTS

COLUMNS = ["model", "responses", "decision_right", "judge_right", "judge_wrong", "gap", "gap_ci_low", "gap_ci_high",
           "judge_gated_share", "embedding_right", "embedding_wrong", "format", "seconds"]


def read_items(path: Path) -> list[dict]:
    if not path.is_file():
        raise ValueError(f"ITEMS {path}: no such file (the -items.jsonl of `python -m benchmarks decision-eval`)")
    items = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not items or not all("id" in it and isinstance(it.get("models"), dict) for it in items):
        raise ValueError(f"ITEMS {path}: not a decision-eval items file (each line needs 'id' and 'models')")
    return items


def gap_interval(judge: np.ndarray, right: np.ndarray, resamples: int, seed: int) -> tuple[float, float, float]:
    """Mean judge reward on right minus on wrong decisions, and its 95% percentile bootstrap interval
    (responses resampled; a resample without one of the two classes is drawn again)."""
    if right.all() or not right.any():
        return float("nan"), float("nan"), float("nan")
    gap = float(judge[right].mean() - judge[~right].mean())
    rng, gaps = np.random.default_rng(seed), []
    while len(gaps) < resamples:
        idx = rng.integers(0, len(judge), len(judge))
        r, j = right[idx], judge[idx]
        if r.any() and not r.all():
            gaps.append(j[r].mean() - j[~r].mean())
    lo, hi = np.percentile(gaps, [2.5, 97.5])
    return gap, float(lo), float(hi)


def score(worker, cfg, records: dict, items: list[dict], label: str):
    """RewardResults of ``label``'s responses, scored by the recipe's reward (the trainer's problem text),
    and how many of them a gate answered without the judge model."""
    from medix_r1.data.prompts import problem_text
    problems = [problem_text(records[it["id"]], cfg.data.context_chars) for it in items]
    solutions = [records[it["id"]]["solution"] for it in items]
    responses = [it["models"][label]["response"] for it in items]
    before = worker.stats().get("judge_gated", 0)
    results = worker.submit(problems, responses, solutions).result()
    return results, worker.stats().get("judge_gated", 0) - before


def run(args) -> list[dict]:
    from medix_r1.config import load_config

    from .decision_eval import load_items
    items = read_items(Path(args.items))
    cfg = load_config(args.recipe)
    records = {r["id"]: r for r in load_items()}
    missing = [it["id"] for it in items if it["id"] not in records]
    if missing:
        raise ValueError(f"ITEMS {args.items}: {len(missing)} id(s) are not bundled PubMedQA test items, "
                         f"e.g. {missing[0]}")
    from medix_r1.rewards import RewardWorker
    rows = []
    with RewardWorker(cfg.reward) as worker:  # one judge and embedding model for every model's responses
        for label in items[0]["models"]:
            rows.append(score_model(worker, cfg, records, items, label, args))
    return rows


def score_model(worker, cfg, records: dict, items: list[dict], label: str, args) -> dict:
    """One model's row: the judge's YES rate on right and on wrong decisions and the gap's interval."""
    t0 = time.perf_counter()
    results, gated = score(worker, cfg, records, items, label)
    judge = np.array([r.judge for r in results])
    emb = np.array([r.embedding for r in results])
    right = np.array([bool(it["models"][label]["correct"]) for it in items])
    gap, lo, hi = gap_interval(judge, right, args.resamples, args.seed)
    mean = (lambda v, m: float(v[m].mean()) if m.any() else float("nan"))
    row = {"model": label, "responses": len(items), "decision_right": int(right.sum()),
           "judge_right": mean(judge, right), "judge_wrong": mean(judge, ~right), "gap": gap,
           "gap_ci_low": lo, "gap_ci_high": hi, "judge_gated_share": gated / len(items),
           "embedding_right": mean(emb, right), "embedding_wrong": mean(emb, ~right),
           "format": float(np.mean([r.format for r in results])), "seconds": round(time.perf_counter() - t0, 1)}
    print(json.dumps(row), flush=True)
    return row


def write(rows: list[dict], args, command: str) -> None:
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / f"{args.name}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        w.writerows(rows)
    pct = (lambda v: "-" if v != v else f"{100 * v:.1f}%")
    lines = [f"# The training judge on real responses, by decision ({args.name})", "", f"Command: `{command}`", "",
             f"Responses: `{args.items}`; reward: recipe `{args.recipe}`'s reward section, scored as the trainer "
             "scores (judge reward 1 = YES). Interval: 95% percentile bootstrap over responses, "
             f"{args.resamples} resamples, seed {args.seed}.", "",
             "| model | responses | decision right | judge YES when right | judge YES when wrong | gap | 95% interval "
             "| answered by a gate | embedding reward right / wrong | format |", "|---" * 10 + "|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['responses']} | {r['decision_right']} | {pct(r['judge_right'])} | "
                     f"{pct(r['judge_wrong'])} | {pct(r['gap'])} | [{pct(r['gap_ci_low'])}, {pct(r['gap_ci_high'])}] "
                     f"| {pct(r['judge_gated_share'])} | {pct(r['embedding_right'])} / {pct(r['embedding_wrong'])} "
                     f"| {pct(r['format'])} |")
    lines.append("")
    for r in rows:
        if r["gap"] != r["gap"]:
            lines.append(f"{r['model']}: every decision is right or every one is wrong; no gap to measure.")
        elif r["gap_ci_low"] > 0:
            lines.append(f"{r['model']}: the judge says YES more often when the decision is right "
                         f"(+{100 * r['gap']:.1f} points, interval above zero).")
        else:
            lines.append(f"{r['model']}: the interval of the gap includes or is below zero: on these responses the "
                         "judge does not separate right from wrong decisions.")
    (out / f"{args.name}.md").write_text("\n".join(lines) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog=command_name("medix_r1.eval.studies") + " judge-vs-decision", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("items", help="the -items.jsonl of `python -m benchmarks decision-eval`")
    p.add_argument("--recipe", default=None, help="recipe whose reward section scores (default: the CPU default)")
    p.add_argument("--out-dir", default=str(RESULTS))
    p.add_argument("--name", default="judge_vs_decision_cpu")
    p.add_argument("--resamples", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    if args.resamples < 100:
        raise ValueError(f"--resamples must be >= 100, got {args.resamples}")
    if args.recipe is None:
        from medix_r1.config import DEFAULT_RECIPE
        args.recipe = DEFAULT_RECIPE
    existing = [f for f in (Path(args.out_dir) / f"{args.name}.md", Path(args.out_dir) / f"{args.name}.csv")
                if f.exists()]
    if existing and not args.overwrite:
        raise ValueError(f"--name {args.name}: {existing[0]} exists (pass --overwrite to replace it)")
    rows = run(args)
    write(rows, args, "python -m benchmarks judge-vs-decision " + " ".join(argv if argv is not None else sys.argv[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
