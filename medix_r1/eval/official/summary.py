"""The official protocol's summary: scores per task, the overall mean over eval.py's tasks, and what
produced them (the sampling settings and where each came from, the engine's context, what was left out)."""
from __future__ import annotations

import json
from pathlib import Path

from medix_r1.eval.benchmarks import record_key
from medix_r1.utils.jsonl import read_jsonl

from .tasks import EVAL_PY_TASKS, TASKS

GROUP_NAMES = {"eval_py": "eval.py tasks", "mmmu": "mmmu_medical"}


def _listed(ids: list, limit: int = 20) -> str:
    return ", ".join(ids[:limit]) + (" ..." if len(ids) > limit else "")


def summarize(items, output_dir: Path, tasks: list[str], notes: list[dict], settings: dict, plan=None) -> dict:
    """Scores per task (percent) and the unweighted mean of eval.py's tasks; written as JSON and Markdown."""
    keys = {record_key(r) for r in items}
    rows = [row for row in read_jsonl(output_dir / "official_items.jsonl") if row["key"] in keys]
    per_task = {}
    for task in tasks:
        scores = [row["score"] for row in rows if row["task"] == task]
        per_task[task] = {"n": len(scores), "score": 100.0 * sum(scores) / len(scores) if scores else float("nan"),
                          "judge_failed": sum(row["judge_failed"] for row in rows if row["task"] == task)}
    scored = [v["score"] for t, v in per_task.items() if v["n"] and t in EVAL_PY_TASKS]
    groups = dict.fromkeys(TASKS[t].sampling for t in tasks)
    context = None if plan is None else {
        "max_model_len": plan.max_model_len, "model_limit": plan.model_limit,
        "longest_prompt": max(plan.lengths.values(), default=0), "too_long": len(plan.too_long),
        "uncounted_image_items": plan.uncounted}
    summary = {"tasks": per_task, "overall": sum(scored) / len(scored) if scored else float("nan"),
               "overall_tasks": [t for t, v in per_task.items() if v["n"] and t in EVAL_PY_TASKS],
               "sampling": {g: settings[g] for g in groups}, "context": context, "notes": notes}
    (output_dir / "official_summary.json").write_text(json.dumps(summary, indent=1))
    (output_dir / "official_summary.md").write_text(markdown(summary) + "\n")
    return summary


def markdown(summary: dict) -> str:
    lines = ["| task | n | score (%) | judge failed |", "|---|---:|---:|---:|"]
    for task, v in summary["tasks"].items():
        name = task if task in EVAL_PY_TASKS else f"{task} (rule-scored, not in the overall)"
        lines.append(f"| {name} | {v['n']} | {v['score']:.2f} | {v['judge_failed']} |")
    lines.append(f"| **overall** (unweighted mean of {len(summary['overall_tasks'])} eval.py tasks) | | "
                 f"**{summary['overall']:.2f}** | |")
    lines += ["", "Sampling (greedy: top_p, top_k and min_p do not matter; the penalties do):", ""]
    for group, settings in summary["sampling"].items():
        lines.append(f"- {GROUP_NAMES[group]}: " + "; ".join(f"{k} {v['value']} ({v['from']})"
                                                             for k, v in settings.items()))
    context = summary["context"]
    if context is not None:
        lines += ["", f"Engine context: {context['max_model_len']} tokens (the longest prompt, "
                      f"{context['longest_prompt']} tokens, plus its new tokens; the model's context: "
                      f"{context['model_limit']}); {context['too_long']} item(s) left out as longer than the model's "
                      f"context" + (f"; {context['uncounted_image_items']} image item(s) not counted (no Qwen-VL "
                                    f"preprocessor config): the engine got the model's whole context"
                                    if context["uncounted_image_items"] else "")]
    for note in summary["notes"]:
        excluded, too_long = note["excluded_training_overlap"], note.get("too_long_for_context", [])
        line = f"\n{note['task']}: {note['source']}, {note['rows']} rows read, {note['skipped_rows']} skipped"
        if excluded:
            line += f", {len(excluded)} left out as in the bundled training set: {_listed(excluded)}"
        if too_long:
            line += f", {len(too_long)} left out as longer than the model's context: {_listed(too_long)}"
        lines.append(line)
    return "\n".join(lines)
