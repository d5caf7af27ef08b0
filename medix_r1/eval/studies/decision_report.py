"""The report of ``python -m medix_r1.eval.studies decision-eval``: statistics over the scored items and the files.

Accuracy and balanced accuracy with paired percentile-bootstrap intervals (:func:`paired_bootstrap`),
one row per model (:func:`model_row`), the sentences that say what the intervals show, and the three
output files (:func:`write_outputs`: Markdown, CSV, per-item JSON lines). What is measured and how is
described in :mod:`medix_r1.eval.studies.decision_eval`.
"""
from __future__ import annotations

import csv
import json
import shlex
from collections import Counter
from pathlib import Path

import numpy as np

DECISIONS = ("yes", "no", "maybe")

COLUMNS = ["label", "model", "items", "accuracy", "accuracy_ci_low", "accuracy_ci_high", "diff_vs_baseline",
           "diff_ci_low", "diff_ci_high", "balanced_accuracy", "balanced_ci_low", "balanced_ci_high",
           "balanced_diff", "balanced_diff_ci_low", "balanced_diff_ci_high", "better_items", "worse_items",
           "answer_tag_rate", "format_ok_rate",
           "no_decision_rate", *[f"predicted_{d}" for d in DECISIONS], *[f"right_on_gold_{d}" for d in DECISIONS],
           "seconds", "items_per_s"]


# ----------------------------------------------------------------------------- statistics

def percentile_ci(samples: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(samples, [2.5, 97.5])
    return float(lo), float(hi)


def paired_bootstrap(scores: np.ndarray, resamples: int, seed: int, groups=None) -> dict:
    """``scores``: (models, items) of 0/1. Per model the accuracy and its 95% percentile interval; per
    model after the first, the difference to the first and its interval, all over the same resampled
    items (paired: an item that is hard for both models moves both accuracies together).

    With ``groups`` (one label per item, the gold decisions) every accuracy is the balanced accuracy:
    the mean over the labels present of the accuracy on that label's items, recomputed on each
    resample's own items, so that any constant answer scores exactly 1 / (labels present)."""
    scores = np.asarray(scores, dtype=np.float64)
    idx = np.random.default_rng(seed).integers(0, scores.shape[1], size=(resamples, scores.shape[1]))
    if groups is None:
        def mean(x, rows=None):
            return x.mean(axis=-1)
    else:
        codes = np.unique(np.asarray(groups), return_inverse=True)[1].reshape(-1)

        def mean(x, rows=None):  # each item weighs 1 / (its label's count among the items), summed per label
            g = codes if rows is None else codes[rows]
            counts = np.stack([(g == c).sum(axis=-1) for c in range(codes.max() + 1)], axis=-1)
            w = 1.0 / np.take_along_axis(counts, g, axis=-1)
            return (x * w).sum(axis=-1) / (counts > 0).sum(axis=-1)
    out = {"accuracy": [], "accuracy_ci": [], "diff": [None], "diff_ci": [None]}
    for k, row in enumerate(scores):
        out["accuracy"].append(float(mean(row)))
        out["accuracy_ci"].append(percentile_ci(mean(row[idx], idx)))
        if k:
            d = row - scores[0]
            out["diff"].append(float(mean(d)))
            out["diff_ci"].append(percentile_ci(mean(d[idx], idx)))
    return out


def model_row(label: str, model: str, reads: list[dict], gold: list[str], seconds: float) -> dict:
    n, decided = len(gold), [r["decision"] for r in reads]
    predicted = Counter(decided)
    row = {"label": label, "model": model, "items": n,
           "answer_tag_rate": sum(r["answer_tag"] for r in reads) / n,
           "format_ok_rate": sum(r["format_ok"] for r in reads) / n,
           "no_decision_rate": predicted[None] / n,
           **{f"predicted_{d}": predicted[d] / n for d in DECISIONS}, "seconds": round(seconds, 1),
           "items_per_s": round(n / seconds, 3) if seconds > 0 else None}
    for d in DECISIONS:  # the share of the gold-d items this model got right (None: no such item)
        of_d = [p == d for p, g in zip(decided, gold) if g == d]
        row[f"right_on_gold_{d}"] = sum(of_d) / len(of_d) if of_d else None
    return row


def interval_sentence(label: str, base: str, diff: float, lo: float, hi: float, n: int) -> str:
    """What the paired interval says, in words, from the numbers."""
    pts = f"{100 * diff:+.1f} points, 95% interval [{100 * lo:+.1f}, {100 * hi:+.1f}]"
    if lo > 0:
        return (f"{label} vs {base}: {pts}. The interval lies above zero: on these {n} items {label} is ahead by more "
                f"than resampling the items would explain.")
    if hi < 0:
        return (f"{label} vs {base}: {pts}. The interval lies below zero: on these {n} items {label} is behind by "
                f"more than resampling the items would explain.")
    return (f"{label} vs {base}: {pts}. The interval includes zero: these {n} items do not separate the two "
            f"models; any true difference between {100 * lo:+.1f} and {100 * hi:+.1f} points fits them.")


def versus_majority(row: dict, majority: float) -> str:
    """Where one model's accuracy interval lies against the majority-class accuracy."""
    lo, hi = row["accuracy_ci_low"], row["accuracy_ci_high"]
    where = "above" if lo > majority else "below" if hi < majority else "not separable from"
    return f"{row['label']}: {fmt(row['accuracy'])} [{fmt(lo)}, {fmt(hi)}], {where} it."


# ----------------------------------------------------------------------------- outputs

def output_paths(out_dir: Path, name: str) -> list[Path]:
    return [out_dir / f"{name}.md", out_dir / f"{name}.csv", out_dir / f"{name}-items.jsonl"]


def fmt(value, pct=True) -> str:
    if value is None:
        return "-"
    return f"{100 * value:.1f}%" if pct else f"{value:g}"


def write_outputs(out_dir: Path, name: str, rows: list[dict], items: list[dict], reads: list[list[dict]],
                  responses: list[list[str]], header: list[str], limits: list[str]) -> None:
    md_path, csv_path, items_path = output_paths(out_dir, name)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(csv_path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{r[k]:.4f}" if isinstance(r.get(k), float) and k not in ("seconds", "items_per_s")
                            else ("" if r.get(k) is None else r[k])) for k in COLUMNS})
    with open(items_path, "w") as fh:
        for i, item in enumerate(items):
            models = {r["label"]: {"decision": reads[k][i]["decision"],
                                   "correct": reads[k][i]["decision"] == item["gold"],
                                   "answer_tag": reads[k][i]["answer_tag"], "response": responses[k][i]}
                      for k, r in enumerate(rows)}
            fh.write(json.dumps({"id": item["id"], "gold": item["gold"], "models": models}) + "\n")
    base = rows[0]["label"]
    lines = [*header, "",
             "| model | accuracy | 95% interval | balanced accuracy | 95% interval | answer tag | full format | "
             "no decision | predicted yes / no / maybe | right on gold yes / no / maybe | items/s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['label']} | {fmt(r['accuracy'])} | [{fmt(r['accuracy_ci_low'])}, "
                     f"{fmt(r['accuracy_ci_high'])}] | {fmt(r['balanced_accuracy'])} | [{fmt(r['balanced_ci_low'])}, "
                     f"{fmt(r['balanced_ci_high'])}] | {fmt(r['answer_tag_rate'])} | {fmt(r['format_ok_rate'])} | "
                     f"{fmt(r['no_decision_rate'])} | "
                     + " / ".join(fmt(r[f"predicted_{d}"]) for d in DECISIONS) + " | "
                     + " / ".join(fmt(r[f"right_on_gold_{d}"]) for d in DECISIONS)
                     + f" | {fmt(r['items_per_s'], pct=False)} |")
    lines += ["", f"## Difference to the baseline ({base}), paired bootstrap", "",
              "| model - baseline | difference | 95% interval | balanced accuracy difference | 95% interval | items "
              "only it gets right | items only the baseline gets right |", "|---|---|---|---|---|---|---|"]
    for r in rows[1:]:
        lines.append(f"| {r['label']} - {base} | {100 * r['diff_vs_baseline']:+.1f} points | "
                     f"[{100 * r['diff_ci_low']:+.1f}, {100 * r['diff_ci_high']:+.1f}] | "
                     f"{100 * r['balanced_diff']:+.1f} points | [{100 * r['balanced_diff_ci_low']:+.1f}, "
                     f"{100 * r['balanced_diff_ci_high']:+.1f}] | {r['better_items']} | {r['worse_items']} |")
    lines += [""] + [interval_sentence(r["label"], base, r["diff_vs_baseline"], r["diff_ci_low"], r["diff_ci_high"],
                                       r["items"]) for r in rows[1:]]
    lines += [""] + ["Balanced accuracy, " + interval_sentence(r["label"], base, r["balanced_diff"],
                                                               r["balanced_diff_ci_low"], r["balanced_diff_ci_high"],
                                                               r["items"]) for r in rows[1:]]
    lines += ["", "## What limits this", "", *limits, ""]
    md_path.write_text("\n".join(lines))


# ----------------------------------------------------------------------------- the report's text

def describe(args, cfg, labels, models, items, prompts, rows, max_tokens, machine) -> tuple[list[str], list[str]]:
    """The Markdown header (command, machine, setting) and the limits, from the run's numbers."""
    from medix_r1.config import DEFAULT_RECIPE
    n, gold = len(items), Counter(it["gold"] for it in items)
    majority, majority_n = gold.most_common(1)[0]
    d = cfg.data
    command = shlex.join(["python", "-m", "benchmarks", "decision-eval", *args.argv])  # copy-pasteable, newlines kept
    changed = ", ".join(f"`{o.split('=', 1)[0]}`" for o in getattr(args, "overrides", []))  # --set fields
    same = all(p == prompts[0] for p in prompts[1:])
    half = 50 * np.mean([r["accuracy_ci_high"] - r["accuracy_ci_low"] for r in rows])
    header = [f"# Decision accuracy on the bundled PubMedQA test items ({args.name})", "",
              *(["Command:", "", "```sh", command, "```"] if "\n" in command else [f"Command: `{command}`"]), "",
              f"Machine: {machine}", "",
              "Models (the first is the baseline): " + "; ".join(f"{lb} = `{m}`" for lb, m in zip(labels, models)), "",
              f"Items: {n} of the 500 bundled test items, none of them a training record; gold "
              + ", ".join(f"{k} {gold[k]} ({100 * gold[k] / n:.1f}%)" for k in DECISIONS) + ". "
              f"Prompts: the trainer's under recipe `{args.recipe or DEFAULT_RECIPE}`"
              + (f" with {changed} set" if changed else "")
              + " (its system prompt"
              + (", the one-shot example" if d.example_question and d.example_answer else "")
              + (f", contexts cut to {d.context_chars} characters" if d.context_chars else "")
              + f", at most {d.max_prompt_tokens} prompt tokens), "
              + ("identical for every model" if same else "built with each model's own tokenizer; they differ")
              + f". Greedy, at most {max_tokens} new tokens. Decision: the first yes / no / maybe word of the "
              f"answer tag's text, else of the whole response; none = wrong. Intervals: 95% percentile bootstrap, "
              f"{args.resamples} resamples of the items, seed {args.seed}, paired for the differences.", "",
              f"Majority-class reference: always \"{majority}\" scores {100 * majority_n / n:.1f}%. "
              + " ".join(versus_majority(r, majority_n / n) for r in rows), "",
              f"Balanced accuracy (the mean over the gold decisions of the share right on each) does not reward "
              f"the commonest decision: any constant answer scores {100 / len(gold):.1f}%. "
              + " ".join(versus_majority({**r, "accuracy": r["balanced_accuracy"],
                                          "accuracy_ci_low": r["balanced_ci_low"],
                                          "accuracy_ci_high": r["balanced_ci_high"]}, 1 / len(gold)) for r in rows)]
    limits = [f"- {n} items: an accuracy's 95% interval spans about +-{half:.1f} points here; a difference is "
              f"resolved only where the models disagree on enough items.",
              "- One greedy response per item and model, and one checkpoint of one training run: the intervals cover "
              "the choice of items, not sampling at a temperature nor another training seed.",
              "- The decision is read leniently from the first yes / no / maybe word; the conclusion after it is not "
              "scored, and a response that states its decision without those words counts as wrong.",
              "- The prompts are the training recipe's, not the paper's evaluation protocol: the accuracies are not "
              "comparable with published PubMedQA numbers.",
              f"- The commonest gold decision, {majority}, is {100 * majority_n / n:.0f}% of the items: compare with "
              f"the majority-class line and the predicted-decision columns before reading a gain as understanding."]
    return header, limits
