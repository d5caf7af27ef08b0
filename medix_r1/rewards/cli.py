"""``python -m medix_r1.rewards score``: score a JSONL file of responses offline.

Each input line is a JSON object with ``problem``, ``response`` and ``solution`` (``"<TAG> answer"``);
every other field is kept. Each output line is the input object plus ``rewards``: every reward
component, the weighted total and the flags (:meth:`RewardResult.to_dict`), in input order.

The whole input is checked before anything is scored: a malformed line stops the run with an error
naming the file and the line. The run is resumable: the lines already in the output are kept and
skipped (a line cut short by a kill is dropped and rewritten), so re-running the same command after
an interruption scores only the rest. An existing output is only ever appended to or cut back when
it is verifiably this command's output for this input (every complete line is an input line plus
``rewards``, a torn last line is the start of the next one); anything else is refused unless
``--overwrite``, and the input itself is never the output. The judge's API key is read from the environment variable
named by ``--judge-api-key-env`` (default ``MEDIX_JUDGE_API_KEY``); it is never a flag.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from medix_r1.utils.cli import command_name

from .cli_files import InputError, check_paths, output_line, read_inputs, resume_output
from .config import EMBEDDING_MODES, JUDGE_KINDS, RewardConfig, RewardWeights
from .parsing import PARITIES

COMPONENTS = ("total", "format", "modality", "judge", "embedding")
FLAGS = ("judge_failed", "embedding_failed", "exact_match", "invalid_answer", "truncated")
_DEFAULTS = RewardConfig(judge="none")


DESCRIPTION = """\
Each input line is a JSON object with "problem", "response" and "solution" ("<TAG> answer"); every
other field is kept. Each output line is the input object plus "rewards": every reward component
(total, format, modality, judge, embedding), the flags (judge_failed, embedding_failed, exact_match,
invalid_answer, truncated), the extracted answer and the judge's reply, in input order.

The whole input is checked before anything is scored: a malformed line stops the run with an error
naming the file and the line. The run is resumable: the complete lines already in --output are
kept and skipped (a line cut short by a kill is dropped and rewritten), so re-running the same
command after an interruption scores only the rest. An existing --output that is not this
command's output for this input is never modified: the run is refused unless --overwrite. A
summary (mean of each component, failure counts, judge counters) is printed as JSON at the end.
Lines whose judge or embedding failed (a deadline, a judge server down) are kept as failed; rerun
the same command with --retry-failed to score only those again.

The judge's API key is read from the environment variable named by --judge-api-key-env
(default MEDIX_JUDGE_API_KEY), never from a flag."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=command_name("medix_r1.rewards"),
        description="MediX-R1 composite rewards (format, modality, LLM judge, embedding) for JSONL files.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    p = sub.add_parser(
        "score", formatter_class=argparse.RawDescriptionHelpFormatter,
        help="score a JSONL file of responses (resumable)",
        description=DESCRIPTION,
        epilog="The total is content * (judge*J + embedding*E + modality*M) + format*F, by default "
               "0.9 * (0.575 J + 0.375 E + 0.05 M) + 0.1 F.\n\n"
               "examples:\n"
               "  python -m medix_r1.rewards score --input rollouts.jsonl --output scored.jsonl \\\n"
               "      --judge-url http://127.0.0.1:8000/v1 --judge-model Qwen/Qwen3-4B-Instruct-2507\n"
               "  python -m medix_r1.rewards score --input rollouts.jsonl --output scored.jsonl --judge none "
               "--embedding-model none")
    add_file_args(p.add_argument_group("files"))
    add_judge_args(p.add_argument_group("judge"))
    add_reward_args(p.add_argument_group("reward"))
    add_batch_args(p.add_argument_group("batching"))
    return parser


def add_file_args(io) -> None:
    """--input, --output and how an existing --output is resumed, replaced or retried."""
    io.add_argument("--input", required=True, metavar="PATH",
                    help="JSONL input: one object per line with 'problem', 'response' and 'solution' "
                         "(other fields are kept); blank lines are ignored")
    io.add_argument("--output", required=True, metavar="PATH",
                    help="JSONL output: each input object plus a 'rewards' object, in input order. If it "
                         "exists, its complete lines are kept and only the remaining inputs are scored; a file "
                         "that is not this command's output for --input is refused (see --overwrite)")
    io.add_argument("--overwrite", action="store_true",
                    help="replace an existing --output whatever it holds, and score every line again")
    io.add_argument("--retry-failed", action="store_true",
                    help="also score again the lines of --output flagged judge_failed or embedding_failed (e.g. "
                         "cut off by --deadline-s); the file is rewritten in place atomically")
    io.add_argument("--summary-json", metavar="PATH", default=None,
                    help="also write the end-of-run summary (means, failures, judge counters) to this file")
    io.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_judge_args(j) -> None:
    """The judge backend, its server and requests, and the gates that answer NO without a judge call."""
    j.add_argument("--judge", choices=JUDGE_KINDS, default=None,
                   help="judge backend: 'http' (an OpenAI-compatible server; the default when --judge-url is "
                        "given), 'local' (SmolLM2-135M or --judge-model in this process; the default "
                        "otherwise) or 'none' (judge reward 0 except exact matches)")
    j.add_argument("--judge-url", default=None, metavar="URL",
                   help="base URL of the judge server, e.g. http://127.0.0.1:8000/v1")
    j.add_argument("--judge-model", default=None, metavar="NAME",
                   help="served model name (http) or model folder (local; default SmolLM2-135M-Instruct)")
    j.add_argument("--judge-api-key-env", default=_DEFAULTS.judge_api_key_env, metavar="VAR",
                   help="environment variable holding the judge server's API key (default %(default)s; "
                        "unset: 'EMPTY')")
    j.add_argument("--judge-concurrency", type=int, default=_DEFAULTS.judge_concurrency, metavar="N",
                   help="judge requests in flight at once (default %(default)s)")
    j.add_argument("--judge-timeout-s", type=float, default=_DEFAULTS.judge_timeout_s, metavar="S",
                   help="seconds per judge request before a retry (default %(default)s)")
    j.add_argument("--judge-max-retries", type=int, default=_DEFAULTS.judge_max_retries, metavar="N",
                   help="retries per judge request on timeouts, 5xx, 429 and dropped connections "
                        "(default %(default)s)")
    j.add_argument("--cache", default=None, metavar="PATH",
                   help="JSONL cache of judge replies, shared across runs (default: in memory only)")

    j.add_argument("--judge-threshold", type=float, default=_DEFAULTS.judge_threshold, metavar="X",
                   help="local judge: YES when log P(YES) - log P(NO) is above X (default %(default)s)")
    j.add_argument("--decision-gate", choices=("on", "off"), default="on" if _DEFAULTS.judge_decision_gate else "off",
                   help="strict parity: NO without a judge call when the reference opens with yes/no/maybe and "
                        "the answer does not open with the same decision, or when the answer is the reference's "
                        "words with a negation changed or out of order (default %(default)s)")

    j.add_argument("--judge-min-similarity", type=float, default=_DEFAULTS.judge_min_similarity, metavar="X",
                   help="strict parity: NO without a judge call when answer and reference (decisions removed) have "
                        "an embedding cosine similarity below X; 0 = off (default %(default)s)")


def add_reward_args(r) -> None:
    """The parsing rules (parity), the embedding reward, the weights of the total."""
    r.add_argument("--parity", choices=PARITIES, default=_DEFAULTS.parity,
                   help="'strict' (default): whitespace removed around tags only, a judge reply that is not "
                        "YES/NO is a failed judgement; 'official': the MediX-R1 code's rules")
    r.add_argument("--embedding-model", default=None, metavar="PATH|none",
                   help="sentence-transformers folder or name for the embedding reward (default: the bundled "
                        "all-MiniLM-L6-v2); 'none' turns the embedding reward off")
    r.add_argument("--embedding-mode", choices=EMBEDDING_MODES, default=_DEFAULTS.embedding_mode,
                   help="'threshold' (1 when cosine >= --embedding-threshold; default) or 'continuous' "
                        "(cosine clamped to [0, 1])")
    r.add_argument("--embedding-threshold", type=float, default=_DEFAULTS.embedding_threshold, metavar="X",
                   help="cosine threshold of the embedding reward (default %(default)s)")
    r.add_argument("--weight", action="append", default=[], metavar="NAME=VALUE",
                   help="override one weight of the total (repeatable): content, judge, embedding, modality, "
                        "format; e.g. --weight format=0.2")
    r.add_argument("--max-response-chars", type=int, default=_DEFAULTS.max_response_chars, metavar="N",
                   help="truncate longer responses before scoring (default %(default)s)")


def add_batch_args(b) -> None:
    """How many lines a batch holds and how long it may take."""
    b.add_argument("--batch-size", type=int, default=64, metavar="N",
                   help="lines per scoring batch; two batches are in flight at once (default %(default)s)")
    b.add_argument("--deadline-s", type=float, default=_DEFAULTS.deadline_s, metavar="S",
                   help="each batch returns within this many seconds; judgements not done by then score 0 and "
                        "are flagged judge_failed (default %(default)s)")


# ------------------------------------------------------------------------------------------ scoring
def make_config(args) -> RewardConfig:
    judge = args.judge or ("http" if args.judge_url else "local")
    weights = {}
    names = set(RewardWeights.__dataclass_fields__)
    for item in args.weight:
        name, sep, value = item.partition("=")
        if not sep or name.strip() not in names:
            raise ValueError(f"--weight must be NAME=VALUE with NAME in {sorted(names)}, got {item!r}")
        try:
            weights[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"--weight {name.strip()}: {value!r} is not a number") from None
    return RewardConfig(
        weights=RewardWeights(**weights), parity=args.parity, embedding_model=args.embedding_model,
        embedding_mode=args.embedding_mode, embedding_threshold=args.embedding_threshold, judge=judge,
        judge_url=args.judge_url, judge_model=args.judge_model, judge_api_key_env=args.judge_api_key_env,
        judge_concurrency=args.judge_concurrency, judge_timeout_s=args.judge_timeout_s,
        judge_max_retries=args.judge_max_retries, judge_cache_path=args.cache, deadline_s=args.deadline_s,
        max_response_chars=args.max_response_chars, judge_threshold=args.judge_threshold,
        judge_decision_gate=args.decision_gate == "on", judge_min_similarity=args.judge_min_similarity)


def summarize(rows: list[dict], *, scored_now: int, resumed: int, elapsed: float, worker_stats: dict) -> dict:
    out = {"lines": len(rows), "scored_now": scored_now, "resumed": resumed, "seconds": round(elapsed, 3)}
    rewards = [r["rewards"] for r in rows]
    for key in COMPONENTS:
        vals = [float(r.get(key, 0.0)) for r in rewards]
        out[f"mean_{key}"] = sum(vals) / len(vals) if vals else None  # no lines: no mean (JSON null, not NaN)
    for key in FLAGS:
        out[key] = sum(bool(r.get(key)) for r in rewards)
    out["judge_failures"] = out["judge_failed"]
    out["judge_counters"] = {k[len("judge_"):]: v for k, v in worker_stats.items()
                             if k.startswith("judge_") and k != "judge_failed"}
    out["worker"] = {k: v for k, v in worker_stats.items() if not k.startswith("judge_")}
    return out


def score_command(args) -> int:
    from tqdm import tqdm

    from .worker import RewardWorker

    in_path, out_path = Path(args.input), Path(args.output)
    if args.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
    cfg = make_config(args)
    check_paths(in_path, out_path)
    records = read_inputs(in_path, cfg.parity)
    done = [] if args.overwrite else resume_output(out_path, records)
    todo = records[len(done):]
    rows = list(done)
    t0 = time.monotonic()
    stats: dict = {}
    retried = 0
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if args.overwrite or not out_path.exists():
        out_path.write_bytes(b"")
    if todo or (args.retry_failed and any(map(failed, rows))):
        with RewardWorker(cfg) as worker:
            if todo:
                with open(out_path, "ab") as out, \
                        tqdm(total=len(records), initial=len(done), desc="score", unit="line", file=sys.stderr,
                             disable=args.no_progress) as bar:
                    def append(start, batch, results):
                        for obj, res in zip(batch, results):
                            rows.append({**obj, "rewards": res.to_dict()})
                            out.write(output_line(rows[-1]))
                        out.flush()
                        os.fsync(out.fileno())
                        bar.update(len(batch))
                    score_batches(worker, [obj for _, obj in todo], args.batch_size, append)
            if args.retry_failed:
                retried = retry_failed(worker, rows, out_path, args.batch_size)
            stats = worker.stats()
    summary = summarize(rows, scored_now=len(todo), resumed=len(done), elapsed=time.monotonic() - t0,
                        worker_stats=stats)
    summary["retried"] = retried
    text = json.dumps(summary, indent=2, default=str)
    if args.summary_json:
        Path(args.summary_json).write_text(text + "\n")
    print(text)
    mean = "n/a" if summary["mean_total"] is None else f"{summary['mean_total']:.4f}"
    still = sum(map(failed, rows))
    print(f"{out_path}: {len(rows)} lines ({len(done)} kept, {len(todo)} scored now"
          + (f", {retried} failed lines scored again" if args.retry_failed else "") + f"); mean total {mean}, "
          f"judge failures {summary['judge_failures']}"
          + (f"; {still} lines failed (judge_failed or embedding_failed): rerun the same command with "
             f"--retry-failed to score only them" if still else ""), file=sys.stderr)
    return 0


def failed(row: dict) -> bool:
    """A scored line whose judge or embedding gave no result (what --retry-failed scores again)."""
    return bool(row["rewards"].get("judge_failed") or row["rewards"].get("embedding_failed"))


def score_batches(worker, objs: list[dict], batch_size: int, on_batch) -> None:
    """Score ``objs`` in batches, two in flight; ``on_batch(start, batch, results)`` in input order."""
    batches = [objs[i:i + batch_size] for i in range(0, len(objs), batch_size)]

    def submit(batch):
        return worker.submit([o["problem"] for o in batch], [o["response"] for o in batch],
                             [o["solution"] for o in batch])
    pending = [submit(batches[0])] if batches else []
    for k, batch in enumerate(batches):
        if k + 1 < len(batches):
            pending.append(submit(batches[k + 1]))  # the next batch scores while this one finishes
        on_batch(k * batch_size, batch, pending.pop(0).result())


def retry_failed(worker, rows: list[dict], out_path: Path, batch_size: int) -> int:
    """Score the failed lines of ``rows`` again and rewrite ``out_path`` with them replaced: written to a
    temporary file, fsynced, then renamed over the output (a kill leaves the old output whole)."""
    again = [k for k, row in enumerate(rows) if failed(row)]
    if not again:
        return 0

    def replace(start, batch, results):
        for k, res in zip(again[start:start + len(batch)], results):
            rows[k] = {**rows[k], "rewards": res.to_dict()}
    score_batches(worker, [{key: v for key, v in rows[k].items() if key != "rewards"} for k in again], batch_size,
                  replace)
    tmp = out_path.with_name(f".{out_path.name}.retry-{os.getpid()}")
    with open(tmp, "wb") as fh:
        for row in rows:
            fh.write(output_line(row))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, out_path)
    return len(again)


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "score":
            return score_command(args)
    except (InputError, ValueError, TypeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. an output folder that cannot be created, a full disk
        print(f"error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command!r}")
    return 2
