"""Command line of ``python -m medix_r1.eval`` (see README.md beside this file)."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

from medix_r1.utils.cli import command_name

from .benchmarks import PAPER_BENCHMARKS, REGISTRY, load_benchmark
from .generation import GENERATORS, PROMPT_STYLES, GenerationConfig, make_generator

DEFAULT_BENCHMARK = "pubmedqa_bundled"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=command_name("medix_r1.eval"),
        description="Reference-based LLM-as-judge evaluation of a model on medical benchmarks.",
        epilog=f"commands:\n  {command_name('medix_r1.eval')} compare RUN_DIR [RUN_DIR ...] [--output-dir DIR] "
               "[--overwrite]\n      compare finished runs side by side (its own --help lists the options)",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    g_what = p.add_argument_group("what to evaluate")
    g_what.add_argument("--protocol", choices=("project", "official"), default="project",
                        help="official: MediX-R1's own evaluation (the 17 tasks and sources of its eval.py, no system "
                             "prompt, greedy, 2048 new tokens with the checkpoint's generation_config.json defaults as "
                             "vllm serve applies them, its judge prompts, 3 rounds in one conversation; and MMMU's "
                             "medical subsets as MedEvalKit runs them; the engine sized from the prompts, nothing cut; "
                             "see medix_r1/eval/official/); the generation and judge settings below are then fixed")
    g_what.add_argument("--model", help="HF model folder, trainer checkpoint folder, hub id (owner/name: needs the "
                        "network or the hub cache), or (with --generator openai) a served model name; default: "
                        "embedded SmolLM2-135M")
    g_what.add_argument("--benchmarks", default=None,
                        help=f"comma-separated names, or 'paper' for the 17 paper benchmarks (default "
                             f"{DEFAULT_BENCHMARK}; with --protocol official: paper (the 18 official tasks), "
                             f"or llm / vlm / mmmu, or official task names); "
                             f"known: {', '.join(REGISTRY)}")
    g_what.add_argument("--data-files", action="append", default=[], metavar="NAME=PATH",
                        help="local files for a benchmark (repeatable; comma-separate several files)")
    g_what.add_argument("--image-dir", action="append", default=[], metavar="TASK=DIR",
                        help="--protocol official: folder with the images a task's rows only name (slake_vqa: imgs/, "
                             "mimic_cxr_report_generation: the PhysioNet files)")
    g_what.add_argument("--limit", type=int, help="first N items of each benchmark")
    g_what.add_argument("--list-benchmarks", action="store_true")
    g_gen = p.add_argument_group("generation (the model under test; fixed under --protocol official)")
    g_gen.add_argument("--generator", choices=GENERATORS, default="vllm")
    g_gen.add_argument("--base-url", help="OpenAI-compatible /v1 URL for --generator openai")
    g_gen.add_argument("--api-key-env", default="OPENAI_API_KEY", metavar="VAR",
                       help="environment variable holding the API key for --generator openai (default "
                            "%(default)s; keys are never flags: flags show in ps and shell histories)")
    g_gen.add_argument("--prompt-style", choices=sorted(PROMPT_STYLES), default="medix")
    g_gen.add_argument("--max-new-tokens", type=int, default=256)
    g_gen.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    g_gen.add_argument("--batch-size", type=int, default=16)
    g_gen.add_argument("--max-model-len", type=int, default=2048)
    g_gen.add_argument("--kv-cache-bytes", type=int, default=1 << 30)
    g_gen.add_argument("--seed", type=int, default=0)
    g_judge = p.add_argument_group("the judge (fixed under --protocol official)")
    g_judge.add_argument("--judge", choices=("local", "http"),
                         help="local: SmolLM2 judge in this process; http: --judge-url endpoint "
                              "(default: http when --judge-url is given, else local)")
    g_judge.add_argument("--judge-url", help="OpenAI-compatible /v1 URL of the judge")
    g_judge.add_argument("--judge-model", help="judge model name at --judge-url")
    g_judge.add_argument("--judge-api-key-env", default="MEDIX_JUDGE_API_KEY", metavar="VAR",
                         help="environment variable holding the judge server's API key (default %(default)s; "
                              "unset: 'EMPTY', which a local vLLM server accepts)")
    g_judge.add_argument("--judge-model-dir", help="model folder for --judge local (default SmolLM2)")
    g_judge.add_argument("--judge-concurrency", type=int, default=8,
                         help="judge requests in flight (http judge; the local judge runs one at a time)")
    g_judge.add_argument("--judge-timeout", type=float, default=60.0,
                         help="seconds per judge request; also the longest wait a 429's Retry-After gets")
    g_judge.add_argument("--judge-deadline", type=float, default=600.0,
                         help="seconds one judge call may take in all, retries and waits included (http judge)")
    g_judge.add_argument("--judge-max-retries", type=int, default=3,
                         help="transport retries per judge call (timeouts, 5xx)")
    g_judge.add_argument("--rounds", type=int, default=3, help="judge rounds per item (majority vote)")
    g_judge.add_argument("--judge-retries", type=int, default=2,
                         help="extra attempts per round after an invalid (non-JSON) reply")
    g_judge.add_argument("--judge-max-tokens", type=int, default=16)
    g_out = p.add_argument_group("output and statistics")
    g_out.add_argument("--output-dir", help="run folder (default eval_runs/<model>-<generator>)")
    g_out.add_argument("--label", help="name of this run in tables and charts")
    g_out.add_argument("--resamples", type=int, default=2000, help="bootstrap resamples")
    g_out.add_argument("--no-progress", action="store_true")
    return p


def parse_benchmarks(text: str) -> list[str]:
    names = PAPER_BENCHMARKS if text.strip() == "paper" else \
        [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in REGISTRY]
    if not names or unknown:
        raise ValueError(f"--benchmarks: unknown {unknown or text!r}; known: {', '.join(REGISTRY)}")
    return list(dict.fromkeys(names))


def parse_data_files(items: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in items:
        name, sep, paths = item.partition("=")
        if not sep or not paths or name not in REGISTRY:
            raise ValueError(f"--data-files expects NAME=PATH[,PATH] with a known NAME, got {item!r}")
        out[name] = paths.split(",")
        if not all(path.strip() for path in out[name]):
            raise ValueError(f"--data-files {item!r}: an empty path")
        for path in out[name]:
            if Path(path).is_file() and Path(path).stat().st_size == 0:
                raise ValueError(f"data_files for {name}: {path} is empty (0 bytes)")
    return out


def make_judge_factory(args, output_dir: Path):
    """A zero-argument function building the judge (only called when items need judging)."""
    mode = args.judge or ("http" if args.judge_url else "local")
    cache_path = output_dir / "judge_cache.jsonl"
    common = {"concurrency": args.judge_concurrency, "timeout_s": args.judge_timeout,
                  "max_retries": args.judge_max_retries, "cache_path": cache_path}
    if mode == "http":
        if not args.judge_url or not args.judge_model:
            raise ValueError("--judge http needs --judge-url URL and --judge-model NAME")

        def make():
            from medix_r1.rewards import JudgeClient
            return JudgeClient(args.judge_url, args.judge_model, api_key_env=args.judge_api_key_env,
                               call_deadline_s=args.judge_deadline, **common)
        return mode, f"{args.judge_model}@{args.judge_url}", make

    def make():
        from medix_r1.rewards import LocalJudge
        return LocalJudge(args.judge_model_dir, **common)
    return mode, f"local:{args.judge_model_dir or 'SmolLM2-135M-Instruct'}", make


def run(argv: list[str]) -> int:
    args = build_parser().parse_args(argv)
    if args.protocol == "official":
        from .official.run import parse_named, parse_tasks, run_official
        parse_tasks(args.benchmarks or "paper")  # the argument errors it names first, as it does
        parse_named(args.data_files, "--data-files")
        parse_named(args.image_dir, "--image-dir")
        if args.model and args.generator != "openai":  # checked before run_official writes run.json
            from medix_r1.models import resolve_model_dir
            resolve_model_dir(args.model, "--model")
        return run_official(args)
    if args.list_benchmarks:
        for bench in REGISTRY.values():
            where = bench.hub_id and f"{bench.hub_id}:{bench.config or ''}:{bench.split}" \
                or "local files"
            print(f"{bench.name:26s} {bench.kind:5s} {where}  {bench.note}")
        return 0
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be >= 1, got {args.limit}")
    if args.model is None:
        if args.generator == "openai":
            raise ValueError("--generator openai needs --model NAME (the served model name)")
        from medix_r1.models import smollm2_hf_dir
        args.model = str(smollm2_hf_dir())
    cfg = GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                           batch_size=args.batch_size, max_model_len=args.max_model_len,
                           kv_cache_memory_bytes=args.kv_cache_bytes, seed=args.seed,
                           api_key=os.environ.get(args.api_key_env) or None, base_url=args.base_url)
    if args.generator != "openai":  # a folder, a checkpoint or a hub id; anything else fails before any work
        from medix_r1.models import resolve_model_dir
        args.model = str(resolve_model_dir(args.model, "--model"))
    model_name = Path(args.model).name if args.generator != "openai" else args.model
    output_dir = Path(args.output_dir or f"eval_runs/{model_name}-{args.generator}")
    benchmarks = parse_benchmarks(args.benchmarks or DEFAULT_BENCHMARK)
    data_files = parse_data_files(args.data_files)
    records = []
    for name in benchmarks:
        try:
            records += load_benchmark(name, limit=args.limit, data_files=data_files.get(name))
        except Exception as e:  # the datasets library on a file it cannot parse (no rows, a stray byte)
            if isinstance(e, ValueError) and name in str(e):  # our own message, naming the benchmark
                raise
            raise ValueError(f"benchmark {name}: cannot read {data_files.get(name) or 'its data'} "
                             f"({type(e).__name__}: {e or 'no records'})") from None
    judge_mode, judge_name, make_judge = make_judge_factory(args, output_dir)
    run_info = {"model": str(args.model), "generator": args.generator, "label": args.label,
                "prompt_style": args.prompt_style, "max_new_tokens": args.max_new_tokens,
                "temperature": args.temperature, "judge": judge_name, "rounds": args.rounds,
                "benchmarks": benchmarks, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    from .runner import run_eval

    t0 = time.time()
    rows = run_eval(records, lambda: make_generator(args.generator, args.model, cfg), make_judge,
                    output_dir, run_info=run_info, rounds=args.rounds,
                    judge_retries=args.judge_retries, judge_max_tokens=args.judge_max_tokens,
                    batch_size=args.batch_size, prompt_style=args.prompt_style,
                    resamples=args.resamples, progress=not args.no_progress,
                    # the local judge runs one call at a time; its timeout must not run while
                    # a call only waits for its turn
                    judge_in_flight=1 if judge_mode == "local" else args.judge_concurrency)
    print((output_dir / "summary.md").read_text())
    print(f"{len(records)} items, {time.time() - t0:.1f} s; wrote {output_dir}/summary.md, "
          f"summary.csv, accuracy.png, items.jsonl")
    return 0 if rows else 1


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv[:1] == ["compare"]:
            from .compare import compare
            p = argparse.ArgumentParser(prog=command_name("medix_r1.eval") + " compare")
            p.add_argument("runs", nargs="+", help="run folders (each with summary.csv)")
            p.add_argument("--output-dir", help="also write compare.md, compare.csv, compare.png")
            p.add_argument("--overwrite", action="store_true",
                           help="replace compare.md, compare.csv and compare.png in --output-dir")
            args = p.parse_args(argv[1:])
            print(compare(args.runs, args.output_dir, overwrite=args.overwrite))
            return 0
        return run(argv)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # a file that cannot be read or written: one line naming it
        print(f"error: {err.filename or ''}: {err.strerror or err}", file=sys.stderr)
        return 2
