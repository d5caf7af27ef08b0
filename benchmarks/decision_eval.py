"""Is the trained checkpoint better than the base model? Scored by decision on the bundled PubMedQA test items.

    python -m benchmarks decision-eval --model BASE --model CHECKPOINT [--model ...] [--labels a,b,...]
                                       [--recipe cpu_smollm2] [--limit N] [--max-tokens 112]
                                       [--resamples 10000] [--seed 0] [--out-dir benchmarks/results]
                                       [--name decision_eval_cpu] [--overwrite]

The first ``--model`` is the baseline; each model is what ``python -m medix_r1.eval --model`` takes
(``smollm2``, a Hugging Face folder, a trainer checkpoint such as ``runs/x/step_000030``).

Items: the 500 bundled PubMedQA test records (``medix_r1/data/pubmedqa/test.jsonl``, the eval's
``pubmedqa_bundled`` benchmark; none of them is a training record), read with the trainer's record
loader so that ``question`` and ``contexts`` stay separate. The gold decision is the one the solution
opens with (``"Yes. <conclusion>"``).

Prompts: exactly the trainer's, built by :func:`medix_r1.data.prompts.prompt_token_ids` under the
recipe's data section (system prompt, one-shot example, context cut, prompt token budget) with
each model's own tokenizer. A checkpoint was trained on those prompts; scoring it on another
prompt would mix what training changed with how the model copes with a new format.

Generation: greedy (temperature 0), ``--max-tokens`` new tokens (default the recipe's
rollout.max_tokens), vLLM with the trainer's engine settings (:mod:`medix_r1.rollout.vllm_engine`,
max_model_len and KV cache from the recipe), one model at a time.

Scoring, lenient: the text inside the first ``<answer>...</answer>`` (the reward's parser), else
the whole response; the decision is the FIRST of the words yes / no / maybe in it (whole words, any
case), so "No acute findings" reads as "no" and "yes or no? ... no" as "yes". The first word is
where a decision usually stands ("Yes. Because ..."); a later "no" is more often part of the
reasoning ("no difference was found") than the verdict. No such word: no decision, counted wrong.
A correct format alone therefore earns nothing, and a right decision without the format counts.

Statistics: accuracy per model with a 95% percentile bootstrap interval, and each model minus the
baseline on the same resampled items (paired), ``--resamples`` times, seeded. Also the rate of
responses with an answer tag, with the full format, without a decision, the predicted decisions
next to the gold ones, and the majority-class accuracy (always the commonest gold decision). The
same for the balanced accuracy (the mean of the per-decision accuracies, so that always answering
the commonest decision scores 1/3, not its share of the items), recomputed on each resample.

Writes ``<name>.md`` (command, machine, tables, what the intervals say, what limits them),
``<name>.csv`` (one row per model) and ``<name>-items.jsonl`` (per item: id, gold, each model's
decision, correctness and response); existing files are refused unless ``--overwrite``.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import re
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

DECISIONS = ("yes", "no", "maybe")
_DECISION_WORD = re.compile(r"\b(yes|no|maybe)\b", re.IGNORECASE)
COLUMNS = ["label", "model", "items", "accuracy", "accuracy_ci_low", "accuracy_ci_high", "diff_vs_baseline",
           "diff_ci_low", "diff_ci_high", "balanced_accuracy", "balanced_ci_low", "balanced_ci_high",
           "balanced_diff", "balanced_diff_ci_low", "balanced_diff_ci_high", "better_items", "worse_items",
           "answer_tag_rate", "format_ok_rate",
           "no_decision_rate", *[f"predicted_{d}" for d in DECISIONS], *[f"right_on_gold_{d}" for d in DECISIONS],
           "seconds", "items_per_s"]


# ----------------------------------------------------------------------------- scoring one response

def read_response(response: str) -> dict:
    """The decision of one response (see the module docstring), whether it has a closed answer tag
    and whether it has the full MediX-R1 format."""
    from medix_r1.rewards import parse_response
    parsed = parse_response(response)  # its answer: the first <answer> block, else the whole text
    text = parsed.normalized
    start = text.find("<answer>")
    found = _DECISION_WORD.search(parsed.answer)
    return {"decision": found.group(1).lower() if found else None,
            "answer_tag": start >= 0 and text.find("</answer>", start) >= 0, "format_ok": parsed.format_ok}


# ----------------------------------------------------------------------------- items and prompts

def load_items(limit: int | None = None) -> list[dict]:
    """The bundled PubMedQA test records (first ``limit``), each with its gold decision in ``gold``."""
    from medix_r1.data.records import load_records
    from medix_r1.eval.benchmarks import BUNDLED_PUBMEDQA, bundled_training_ids
    from medix_r1.rewards import parse_solution
    from medix_r1.rewards.decision import leading_decision
    records, _ = load_records(str(BUNDLED_PUBMEDQA))
    trained = {r["id"] for r in records} & bundled_training_ids()
    if trained:  # the comparison is only fair on items no model was trained on
        raise ValueError(f"{BUNDLED_PUBMEDQA}: {len(trained)} item(s) are also training records, e.g. {min(trained)}")
    for r in records:
        r["gold"] = leading_decision(parse_solution(r["solution"])[1])
        if r["gold"] is None:
            raise ValueError(f"{BUNDLED_PUBMEDQA}: item {r['id']}'s solution opens with no yes/no/maybe decision")
    return records[:limit] if limit else records


def build_prompts(model_dir, records: list[dict], data) -> list[list[int]]:
    """The trainer's prompt token ids of ``records`` under the config's data section, with the model's tokenizer."""
    from transformers import AutoTokenizer

    from medix_r1.data.prompts import OverlongPrompt, prompt_token_ids
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    try:
        return [prompt_token_ids(tokenizer, r, data) for r in records]
    except OverlongPrompt as e:  # the trainer skips such a record; a paired comparison needs every item
        raise ValueError(f"--recipe: {e}; use a recipe with data.overlong=cut") from None


def make_vllm_generate(rollout, seed: int):
    """``generate(model_dir, prompt_ids, max_tokens) -> texts``: greedy vLLM with the trainer's engine
    settings (``rollout``: the recipe's rollout section); the engine is freed before it returns."""
    def generate(model_dir, prompt_ids: list[list[int]], max_tokens: int) -> list[str]:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        from medix_r1.rollout.vllm_engine import build_llm, engine_kwargs
        llm = build_llm(engine_kwargs(model_dir, max_model_len=rollout.max_model_len, seed=seed,
                                      kv_cache_gb=rollout.kv_cache_gb, enforce_eager=True,
                                      gpu_memory_utilization=rollout.gpu_memory_utilization))
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens, seed=seed)
        outs = llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompt_ids], params, use_tqdm=False)
        texts = [o.outputs[0].text for o in outs]
        del llm, outs  # one engine at a time: its weights, KV cache and process group go before the next
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory
        cleanup_dist_env_and_memory()  # what vLLM's own tests call between two engines in one process
        return texts
    return generate


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


# ----------------------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks decision-eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", default=[],
                   help="a model, repeated (two or more; the first is the baseline): 'smollm2', a Hugging Face "
                        "folder or a trainer checkpoint folder, as python -m medix_r1.eval --model takes")
    p.add_argument("--labels", default=None, help="comma-separated names of the models (default: --model as given)")
    p.add_argument("--recipe", default=None, help="the training recipe whose prompts are used (default cpu_smollm2)")
    p.add_argument("--limit", type=int, default=None, help="only the first N test items (default all 500)")
    p.add_argument("--max-tokens", type=int, default=None, help="new tokens per response (default: the recipe's "
                                                                "rollout.max_tokens)")
    p.add_argument("--resamples", type=int, default=10000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap and engine seed")
    p.add_argument("--out-dir", default=str(Path(__file__).resolve().parent / "results"))
    p.add_argument("--name", default="decision_eval_cpu", help="file names: NAME.md, NAME.csv, NAME-items.jsonl")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    return p


def check_args(args):
    """(model folders, labels, training config, max new tokens); a ValueError naming the flag, before
    any model or tokenizer loads."""
    if len(args.model) < 2:
        raise ValueError(f"--model: give at least two models (the first is the baseline), got {len(args.model)}")
    labels = [s.strip() for s in args.labels.split(",")] if args.labels else list(args.model)
    if len(labels) != len(args.model) or not all(labels):
        raise ValueError(f"--labels: {args.labels!r} gives {len(labels)} name(s) for {len(args.model)} --model(s)")
    if len(set(labels)) != len(labels):
        raise ValueError(f"--labels: the names must differ, got {labels}")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    if args.resamples < 100:
        raise ValueError(f"--resamples must be >= 100 (a 95% interval needs its tails), got {args.resamples}")
    if not args.name or Path(args.name).name != args.name:
        raise ValueError(f"--name must be a file name without folders, got {args.name!r}")
    existing = [str(p) for p in output_paths(Path(args.out_dir), args.name) if p.exists()]
    if existing and not args.overwrite:
        raise ValueError(f"--out-dir/--name: {', '.join(existing)} already exist(s); choose another --name or "
                         f"pass --overwrite")
    from medix_r1.config import DEFAULT_RECIPE, load_config
    try:
        cfg = load_config(args.recipe or DEFAULT_RECIPE)
    except (ValueError, TypeError) as e:
        raise ValueError(f"--recipe: {e}") from None
    max_tokens = cfg.rollout.max_tokens if args.max_tokens is None else args.max_tokens
    room = cfg.rollout.max_model_len - cfg.data.max_prompt_tokens
    if not 1 <= max_tokens <= room:
        raise ValueError(f"--max-tokens must be between 1 and {room} (the recipe's rollout.max_model_len "
                         f"{cfg.rollout.max_model_len} - data.max_prompt_tokens {cfg.data.max_prompt_tokens}), "
                         f"got {max_tokens}")
    from medix_r1.models import resolve_model_dir  # the eval CLI's resolver: same names, same errors
    models = [resolve_model_dir(m, "--model") for m in args.model]
    return models, labels, cfg, max_tokens


def machine_line(load: float, seconds: float) -> str:
    gpu = ""
    torch = sys.modules.get("torch")  # loaded by vLLM; not imported here for a fake generator
    if torch is not None and torch.cuda.is_available():
        gpu = f", GPU {torch.cuda.get_device_name(0)}"
    return f"{platform.machine()} {os.cpu_count()} cores{gpu}, load average {load:.2f} at the start, {seconds:.0f} s"


def run(args, generate=None) -> list[dict]:
    """Evaluate every model, write the three files, return the rows (one per model)."""
    models, labels, cfg, max_tokens = check_args(args)
    items = load_items(args.limit)
    gold = [it["gold"] for it in items]
    prompts = []
    for arg, model in zip(args.model, models):  # every tokenizer before the first engine
        try:
            prompts.append(build_prompts(model, items, cfg.data))
        except OSError as e:
            raise ValueError(f"--model {arg}: cannot load its tokenizer ({e})") from None
    generate = generate or make_vllm_generate(cfg.rollout, args.seed)
    load, t_start = os.getloadavg()[0], time.perf_counter()
    responses, reads, rows = [], [], []
    for label, model, ids in zip(labels, models, prompts):
        t0 = time.perf_counter()
        texts = list(generate(model, ids, max_tokens))
        seconds = time.perf_counter() - t0
        if len(texts) != len(items):
            raise RuntimeError(f"the generator returned {len(texts)} responses for {len(items)} prompts ({label})")
        print(f"decision-eval: {label}: {len(items)} items in {seconds:.1f} s "
              f"({len(items) / max(seconds, 1e-9):.2f} items/s)", flush=True)
        responses.append(texts)
        reads.append([read_response(t) for t in texts])
        rows.append(model_row(label, str(model), reads[-1], gold, seconds))
    scores = np.array([[r["decision"] == g for r, g in zip(model_reads, gold)] for model_reads in reads])
    stats = paired_bootstrap(scores, args.resamples, args.seed)
    balanced = paired_bootstrap(scores, args.resamples, args.seed, groups=gold)
    for k, r in enumerate(rows):
        r.update(accuracy=stats["accuracy"][k], accuracy_ci_low=stats["accuracy_ci"][k][0],
                 accuracy_ci_high=stats["accuracy_ci"][k][1], balanced_accuracy=balanced["accuracy"][k],
                 balanced_ci_low=balanced["accuracy_ci"][k][0], balanced_ci_high=balanced["accuracy_ci"][k][1])
        if k:
            r.update(diff_vs_baseline=stats["diff"][k], diff_ci_low=stats["diff_ci"][k][0],
                     diff_ci_high=stats["diff_ci"][k][1], better_items=int((scores[k] > scores[0]).sum()),
                     worse_items=int((scores[k] < scores[0]).sum()), balanced_diff=balanced["diff"][k],
                     balanced_diff_ci_low=balanced["diff_ci"][k][0], balanced_diff_ci_high=balanced["diff_ci"][k][1])
    header, limits = describe(args, cfg, labels, models, items, prompts, rows, max_tokens,
                              machine_line(load, time.perf_counter() - t_start))
    write_outputs(Path(args.out_dir), args.name, rows, items, reads, responses, header, limits)
    return rows


def describe(args, cfg, labels, models, items, prompts, rows, max_tokens, machine) -> tuple[list[str], list[str]]:
    """The Markdown header (command, machine, setting) and the limits, from the run's numbers."""
    from medix_r1.config import DEFAULT_RECIPE
    n, gold = len(items), Counter(it["gold"] for it in items)
    majority, majority_n = gold.most_common(1)[0]
    d = cfg.data
    command = "python -m benchmarks decision-eval " + " ".join(args.argv)
    same = all(p == prompts[0] for p in prompts[1:])
    half = 50 * np.mean([r["accuracy_ci_high"] - r["accuracy_ci_low"] for r in rows])
    header = [f"# Decision accuracy on the bundled PubMedQA test items ({args.name})", "",
              f"Command: `{command.strip()}`", "", f"Machine: {machine}", "",
              "Models (the first is the baseline): " + "; ".join(f"{lb} = `{m}`" for lb, m in zip(labels, models)), "",
              f"Items: {n} of the 500 bundled test items, none of them a training record; gold "
              + ", ".join(f"{k} {gold[k]} ({100 * gold[k] / n:.1f}%)" for k in DECISIONS) + ". "
              f"Prompts: the trainer's under recipe `{args.recipe or DEFAULT_RECIPE}` (its system prompt"
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


def main(argv=None, generate=None) -> int:
    """``generate(model_dir, prompt_ids, max_tokens) -> texts`` replaces vLLM (tests pass a scripted one)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    try:
        rows = run(args, generate)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for r in rows:
        print(json.dumps({k: r.get(k) for k in COLUMNS}))
    print(f"wrote {', '.join(str(p) for p in output_paths(Path(args.out_dir), args.name))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
