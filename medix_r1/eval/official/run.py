"""``python -m medix_r1.eval --protocol official``: MediX-R1's official evaluation, end to end.

Generation as the official ``generate`` (eval/utils.py): the task's question as the only user turn
(images first), no system prompt, greedy, at most 2048 new tokens. Judging as the official
``evaluate`` (:mod:`medix_r1.eval.official.judge`). Score per task: the mean verdict (for MIMIC-CXR
the 0-5 means over 5); overall: the unweighted mean over the tasks run.

Files in the output folder: ``run.json``, ``generations.jsonl`` (shared with the project
protocol's resume logic), ``official_items.jsonl`` (one line per judged item: the text the judge
saw, every reply, the round scores, the verdict), ``official_summary.md`` and
``official_summary.json`` (scores, and per task the source, the rows read, those skipped and the
PubMedQA items left out because the bundled training set holds them). A rerun with the same
arguments skips whatever is on disk.
"""
from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

from medix_r1.eval.benchmarks import record_key
from medix_r1.eval.generation import GenerationConfig, make_generator
from medix_r1.eval.runner import check_run_info, generate_missing
from medix_r1.utils.jsonl import JsonlWriter, read_jsonl

from .judge import MAX_TOKENS, ROUNDS, after_thinking, judge_item
from .tasks import TASKS, load_task

MAX_NEW_TOKENS = 2048   # eval/utils.py generate: max_tokens=2048, temperature=0.0, top_p=1.0


def parse_named(items: list[str], flag: str) -> dict[str, str]:
    """NAME=VALUE pairs (NAME an official task) as a dict; ValueError naming the flag."""
    out = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not value or name not in TASKS:
            raise ValueError(f"{flag} expects TASK=VALUE with an official task name ({', '.join(TASKS)}), "
                             f"got {item!r}")
        out[name] = value
    return out


def parse_tasks(text: str) -> list[str]:
    """'paper' / 'all' = the 17 tasks; 'llm' / 'vlm' = a group; else comma-separated names."""
    if text in ("paper", "all"):
        return list(TASKS)
    if text in ("llm", "vlm"):
        return [n for n, t in TASKS.items() if t.group == text]
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in TASKS]
    if not names or unknown:
        raise ValueError(f"--benchmarks: unknown official task(s) {unknown or text!r}; known: {', '.join(TASKS)} "
                         f"(or paper, llm, vlm)")
    return list(dict.fromkeys(names))


def make_official_judge(args, cache_path: Path):
    """(name, factory): an OpenAI-compatible judge (the official Qwen3-14B behind vLLM) or, for
    trying the pipeline without a server, the in-process judge. No chat-template switches are
    sent: the prompt's " /no_think" turns Qwen3's thinking off, as in the official code."""
    common = {"concurrency": args.judge_concurrency, "timeout_s": args.judge_timeout,
              "max_retries": args.judge_max_retries, "cache_path": cache_path}
    if (args.judge or ("http" if args.judge_url else "local")) == "http":
        if not args.judge_url or not args.judge_model:
            raise ValueError("--protocol official with --judge http needs --judge-url URL and --judge-model NAME "
                             "(the official judge is Qwen/Qwen3-14B)")

        def make():
            from medix_r1.rewards import JudgeClient
            return JudgeClient(args.judge_url, args.judge_model, api_key_env=args.judge_api_key_env,
                               chat_template_kwargs={}, **common)
        return f"{args.judge_model}@{args.judge_url}", make

    def make():
        from medix_r1.rewards import LocalJudge
        return LocalJudge(args.judge_model_dir, **common)
    return f"local:{args.judge_model_dir or 'SmolLM2-135M-Instruct'}", make


async def judge_all(items, responses, make_judge, output_dir: Path, concurrency: int, attempts: int) -> None:
    """Judge every item not yet in official_items.jsonl (at most ``concurrency`` at once)."""
    path = output_dir / "official_items.jsonl"
    done = {row["key"] for row in read_jsonl(path)}
    todo = [r for r in items if record_key(r) not in done]
    if not todo:
        return
    judge, sem = make_judge(), asyncio.Semaphore(concurrency)
    try:
        with JsonlWriter(path) as out:
            async def one(record):
                async with sem:
                    response = responses[record_key(record)]
                    result = await judge_item(judge, record["benchmark"], record["question"], record["reference"],
                                              response, attempts=attempts)
                out.write({"key": record_key(record), "task": record["benchmark"], "id": record["id"],
                           "question": record["question"], "reference": record["reference"], "response": response,
                           "judged_text": after_thinking(response), **result})
            await asyncio.gather(*(one(r) for r in todo))
    finally:
        if callable(getattr(judge, "aclose", None)):
            await judge.aclose()


def summarize(items, output_dir: Path, tasks: list[str], notes: list[dict]) -> dict:
    """Scores per task (percent) and their unweighted mean; written as JSON and Markdown."""
    keys = {record_key(r) for r in items}
    rows = [row for row in read_jsonl(output_dir / "official_items.jsonl") if row["key"] in keys]
    per_task = {}
    for task in tasks:
        scores = [row["score"] for row in rows if row["task"] == task]
        per_task[task] = {"n": len(scores), "score": 100.0 * sum(scores) / len(scores) if scores else float("nan"),
                          "judge_failed": sum(row["judge_failed"] for row in rows if row["task"] == task)}
    scored = [v["score"] for v in per_task.values() if v["n"]]
    summary = {"tasks": per_task, "overall": sum(scored) / len(scored) if scored else float("nan"), "notes": notes}
    (output_dir / "official_summary.json").write_text(json.dumps(summary, indent=1))
    lines = ["| task | n | score (%) | judge failed |", "|---|---:|---:|---:|"]
    lines += [f"| {t} | {v['n']} | {v['score']:.2f} | {v['judge_failed']} |" for t, v in per_task.items()]
    lines.append(f"| **overall** (unweighted mean of {len(scored)} tasks) | | **{summary['overall']:.2f}** | |")
    for note in notes:
        excluded = note["excluded_training_overlap"]
        lines.append(f"\n{note['task']}: {note['source']}, {note['rows']} rows read, {note['skipped_rows']} skipped"
                     + (f", {len(excluded)} left out as in the bundled training set: {', '.join(excluded[:20])}"
                        + (" ..." if len(excluded) > 20 else "") if excluded else ""))
    (output_dir / "official_summary.md").write_text("\n".join(lines) + "\n")
    return summary


def run_official(args, make_generate=None, make_judge=None) -> int:
    """The official protocol for the CLI's ``args``; ``make_generate`` / ``make_judge`` override the
    generator and judge factories (tests)."""
    tasks = parse_tasks(args.benchmarks or "paper")
    data_files, image_dirs = parse_named(args.data_files, "--data-files"), parse_named(args.image_dir, "--image-dir")
    model = args.model or ""
    if not model and make_generate is None:
        raise ValueError("--protocol official needs --model (a model folder, or the served name with "
                         "--generator openai)")
    output_dir = Path(args.output_dir or f"eval_runs/{Path(model).name or 'model'}-official")
    items, notes = [], []
    for name in tasks:
        got, note = load_task(name, data_files=data_files.get(name) and data_files[name].split(","),
                              image_dir=image_dirs.get(name), limit=args.limit)
        items += got
        notes.append(note)
    if not items:
        raise ValueError("the selected official tasks have no items")
    judge_name, default_judge = make_official_judge(args, output_dir / "judge_cache.jsonl")
    make_judge = make_judge or default_judge
    check_run_info(output_dir, {"model": model, "generator": args.generator, "label": args.label,
                                "prompt_style": "official", "max_new_tokens": MAX_NEW_TOKENS, "temperature": 0.0,
                                "judge": judge_name, "rounds": ROUNDS, "judge_max_tokens": MAX_TOKENS,
                                "protocol": "official", "benchmarks": tasks,
                                "started": time.strftime("%Y-%m-%d %H:%M:%S")})
    if make_generate is None:
        cfg = GenerationConfig(max_new_tokens=MAX_NEW_TOKENS, temperature=0.0, batch_size=args.batch_size,
                               max_model_len=max(args.max_model_len, 4 * MAX_NEW_TOKENS),
                               kv_cache_memory_bytes=args.kv_cache_bytes, seed=args.seed,
                               api_key=os.environ.get(args.api_key_env) or None, base_url=args.base_url)
        def make_generate():
            return make_generator(args.generator, model, cfg)
    responses = generate_missing(items, make_generate, output_dir, batch_size=args.batch_size,
                                 prompt_style="official", progress=not args.no_progress)
    asyncio.run(judge_all(items, responses, make_judge, output_dir, args.judge_concurrency, 1 + args.judge_retries))
    summary = summarize(items, output_dir, tasks, notes)
    print((output_dir / "official_summary.md").read_text())
    print(f"{len(items)} items; overall {summary['overall']:.2f}; wrote {output_dir}/official_summary.md")
    return 0
