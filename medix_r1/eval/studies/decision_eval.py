"""Is the trained checkpoint better than the base model? Scored by decision on the bundled PubMedQA test items.

    python -m medix_r1.eval.studies decision-eval --model BASE --model CHECKPOINT [--model ...]
        [--labels a,b,...] [--recipe cpu_smollm2] [--set KEY=VALUE] [--limit N] [--max-tokens 112]
        [--resamples 10000] [--seed 0] [--out-dir benchmarks/results] [--name decision_eval_cpu] [--overwrite]

(``python -m benchmarks decision-eval ...`` runs the same.)

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
import json
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

from medix_r1.utils.cli import command_name

from . import RESULTS
from .decision_report import (
    COLUMNS,
    describe,
    model_row,
    output_paths,
    paired_bootstrap,
    write_outputs,
)

_DECISION_WORD = re.compile(r"\b(yes|no|maybe)\b", re.IGNORECASE)

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


# ----------------------------------------------------------------------------- command line

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=command_name("medix_r1.eval.studies") + " decision-eval", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", default=[],
                   help="a model, repeated (two or more; the first is the baseline): 'smollm2', a Hugging Face "
                        "folder or a trainer checkpoint folder, as python -m medix_r1.eval --model takes")
    p.add_argument("--labels", default=None, help="comma-separated names of the models (default: --model as given)")
    p.add_argument("--recipe", default=None, help="the training recipe whose prompts are used (default cpu_smollm2)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a field of the recipe, as python -m medix_r1.train --set takes (repeatable), "
                        "e.g. the one-shot example a run was trained with")
    p.add_argument("--limit", type=int, default=None, help="only the first N test items (default all 500)")
    p.add_argument("--max-tokens", type=int, default=None, help="new tokens per response (default: the recipe's "
                                                                "rollout.max_tokens)")
    p.add_argument("--resamples", type=int, default=10000, help="bootstrap resamples")
    p.add_argument("--seed", type=int, default=0, help="bootstrap and engine seed")
    p.add_argument("--out-dir", default=str(RESULTS))
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
        cfg = load_config(args.recipe or DEFAULT_RECIPE, args.overrides)
    except (ValueError, TypeError) as e:
        raise ValueError(f"--recipe/--set: {e}") from None
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
