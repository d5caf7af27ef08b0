"""``python -m medix_r1.eval --protocol official``: MediX-R1's official evaluation, end to end.

Generation as the official ``generate`` (eval/utils.py): the task's question as the only user turn
(images first, re-encoded as JPEG as the official client does), no system prompt, greedy, at most
2048 new tokens, and the checkpoint's ``generation_config.json`` defaults that ``vllm serve``
applies (:mod:`.sampling`); MMMU's medical subsets with MedEvalKit's settings (:mod:`.mmmu`). The
engine is sized from the model and the prompts (:mod:`.context`): nothing is cut, an item that
does not fit the model's context is left out and listed. Judging as the official ``evaluate``
(:mod:`medix_r1.eval.official.judge`); MMMU by its rules. Score per task: the mean verdict (for
MIMIC-CXR the 0-5 means over 5); overall: the unweighted mean over eval.py's tasks run (MMMU is
reported beside it, as the leaderboard runs it separately).

Files in the output folder: ``run.json``, ``generations.jsonl`` (shared with the project
protocol's resume logic), ``official_items.jsonl`` (one line per scored item: the text the judge
saw, every reply, the round scores, the verdict; for MMMU the letter read), ``official_summary.md``
and ``official_summary.json`` (scores; per task the source, the rows read, those skipped, the
PubMedQA items left out because the bundled training set holds them, the items too long for the
model; the sampling settings and where each came from; the engine's context). A rerun with the same
arguments skips whatever is on disk.
"""
from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

from medix_r1.eval.benchmarks import record_key
from medix_r1.eval.generation import GenerationConfig, make_generator
from medix_r1.eval.runner import check_run_info, generate_missing
from medix_r1.utils.jsonl import JsonlWriter, read_jsonl

from .context import plan_context
from .judge import MAX_TOKENS, ROUNDS, after_thinking, judge_item
from .sampling import EVAL_PY_REQUEST, mmmu_sampling, served_sampling, values
from .summary import summarize
from .tasks import TASKS, load_task

MAX_NEW_TOKENS = EVAL_PY_REQUEST["max_tokens"]   # eval/utils.py generate: max_tokens=2048, temperature=0.0, top_p=1.0


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
    """'paper' / 'all' = the 18 tasks; 'llm' / 'vlm' / 'mmmu' = a group; else comma-separated names."""
    if text in ("paper", "all"):
        return list(TASKS)
    if text in ("llm", "vlm", "mmmu"):
        return [n for n, t in TASKS.items() if t.group == text]
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in TASKS]
    if not names or unknown:
        raise ValueError(f"--benchmarks: unknown official task(s) {unknown or text!r}; known: {', '.join(TASKS)} "
                         f"(or paper, llm, vlm, mmmu)")
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
    """Score every item not yet in official_items.jsonl: by its task's rules (MMMU), else by the
    official judge (at most ``concurrency`` at once; the judge is built only when an item needs it)."""
    path = output_dir / "official_items.jsonl"
    done = {row["key"] for row in read_jsonl(path)}
    todo = [r for r in items if record_key(r) not in done]
    if not todo:
        return
    judged = [r for r in todo if TASKS[r["benchmark"]].scorer is None]
    judge, sem = (make_judge() if judged else None), asyncio.Semaphore(concurrency)
    try:
        with JsonlWriter(path) as out:
            async def one(record):
                response = responses[record_key(record)]
                scorer = TASKS[record["benchmark"]].scorer
                if scorer is not None:
                    result = {"round_scores": [], "replies": [], "attempts": 0, "judge_failed": False,
                              "decided_by": "rules", **scorer(record, response)}
                else:
                    async with sem:
                        result = await judge_item(judge, record["benchmark"], record["question"],
                                                  record["reference"], response, attempts=attempts)
                out.write({"key": record_key(record), "task": record["benchmark"], "id": record["id"],
                           "question": record["question"], "reference": record["reference"], "response": response,
                           "judged_text": after_thinking(response), **result})
            await asyncio.gather(*(one(r) for r in todo))
    finally:
        if callable(getattr(judge, "aclose", None)):
            await judge.aclose()


def sampling_settings(args, model_dir) -> dict:
    """{sampling group: {setting: {"value", "from"}}}: eval.py's tasks as ``vllm serve`` samples them for
    the official request (the checkpoint's defaults read from ``model_dir``; none with --generator
    openai, whose server adds its own), MMMU with MedEvalKit's settings."""
    return {"eval_py": served_sampling(model_dir if args.generator != "openai" else None),
            "mmmu": mmmu_sampling()}


def size_engine(items, notes, model_dir, settings):
    """(the items that fit, the engine's context plan): every prompt counted, too-long items left out and
    listed in their task's notes (see official/context.py)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    plan = plan_context(items, model_dir, tokenizer, key=record_key,
                        new_tokens=lambda r: settings[TASKS[r["benchmark"]].sampling]["max_tokens"]["value"])
    out = {record_key(r) for r in plan.too_long}
    for note in notes:
        note["too_long_for_context"] = [r["id"] for r in plan.too_long if r["benchmark"] == note["task"]]
    return [r for r in items if record_key(r) not in out], plan


def generate_all(args, items, model, settings, output_dir: Path, max_model_len: int, make_generate=None) -> dict:
    """Every item's response, one engine for all tasks, each sampling group with its own settings."""
    engine = {}

    def shared():
        if "generate" not in engine:
            if make_generate is not None:
                engine["generate"] = make_generate()
            else:
                cfg = GenerationConfig(max_new_tokens=MAX_NEW_TOKENS, temperature=0.0, batch_size=args.batch_size,
                                       max_model_len=max_model_len, kv_cache_memory_bytes=args.kv_cache_bytes,
                                       seed=args.seed, api_key=os.environ.get(args.api_key_env) or None,
                                       base_url=args.base_url, cut_long_prompts=False)
                engine["generate"] = make_generator(args.generator, model, cfg)
        return engine["generate"]

    responses = {}
    for group in dict.fromkeys(TASKS[r["benchmark"]].sampling for r in items):
        chosen = values(settings[group])

        def make(chosen=chosen):
            generate = shared()
            return lambda batch: generate(batch, chosen)
        responses.update(generate_missing([r for r in items if TASKS[r["benchmark"]].sampling == group], make,
                                          output_dir, batch_size=args.batch_size, prompt_style="official",
                                          progress=not args.no_progress))
    return responses


def run_official(args, make_generate=None, make_judge=None) -> int:
    """The official protocol for the CLI's ``args``; ``make_generate`` / ``make_judge`` override the
    generator and judge factories (tests; the engine is then not sized)."""
    tasks = parse_tasks(args.benchmarks or "paper")
    data_files, image_dirs = parse_named(args.data_files, "--data-files"), parse_named(args.image_dir, "--image-dir")
    model = args.model or ""
    if not model and make_generate is None:
        raise ValueError("--protocol official needs --model (a model folder, or the served name with "
                         "--generator openai)")
    model_dir = None
    if make_generate is None and args.generator != "openai":
        from medix_r1.models import resolve_model_dir
        model_dir = resolve_model_dir(model, "--model")
    output_dir = Path(args.output_dir or f"eval_runs/{Path(model).name or 'model'}-official")
    items, notes = [], []
    for name in tasks:
        got, note = load_task(name, data_files=data_files.get(name) and data_files[name].split(","),
                              image_dir=image_dirs.get(name), limit=args.limit)
        items += got
        notes.append(note)
    if not items:
        raise ValueError("the selected official tasks have no items")
    settings = sampling_settings(args, model_dir)
    plan = None
    if model_dir is not None:
        items, plan = size_engine(items, notes, model_dir, settings)
        if not items:
            raise ValueError(f"no item of the selected tasks fits {model_dir}'s context ({plan.model_limit} tokens)")
    judge_name, default_judge = make_official_judge(args, output_dir / "judge_cache.jsonl")
    check_run_info(output_dir, {"model": model, "generator": args.generator, "label": args.label,
                                "prompt_style": "official", "max_new_tokens": MAX_NEW_TOKENS, "temperature": 0.0,
                                "judge": judge_name, "rounds": ROUNDS, "judge_max_tokens": MAX_TOKENS,
                                "protocol": "official", "benchmarks": tasks,
                                "started": time.strftime("%Y-%m-%d %H:%M:%S")})
    responses = generate_all(args, items, model, settings, output_dir,
                             plan.max_model_len if plan else max(args.max_model_len, 4 * MAX_NEW_TOKENS), make_generate)
    asyncio.run(judge_all(items, responses, make_judge or default_judge, output_dir, args.judge_concurrency,
                          1 + args.judge_retries))
    summary = summarize(items, output_dir, tasks, notes, settings, plan)
    print((output_dir / "official_summary.md").read_text())
    print(f"{len(items)} items; overall {summary['overall']:.2f}; wrote {output_dir}/official_summary.md")
    return 0
