"""One evaluation run: generate, judge, summarise, with resume from the output folder.

Files in the output folder (all append-only JSON lines except the summaries):

- ``run.json``: what was evaluated (model, generator, prompt style, decoding, judge); a resumed
  run must match it, so two different models never mix in one folder.
- ``generations.jsonl``: one line per generated answer, written as each batch completes.
- ``judge_rounds.jsonl``: one line per finished judge round (score or failure, every reply).
- ``items.jsonl``: the final per-item record (answer, reference, how it was decided, all
  rounds with all judge replies, the vote).
- ``judge_stats.jsonl``: one line per session that built the judge: the client's counters
  (calls, HTTP requests or forward passes, transport retries, failures, cache hits, latency
  percentiles), shown under the table in ``summary.md``.
- ``summary.md``, ``summary.csv``, ``accuracy.png``: rebuilt at the end of every run.

A killed run restarted with the same arguments skips every generation, round and item already
on disk, so it never pays twice for generation or judging.
"""
from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

from tqdm import tqdm

from medix_r1.utils.jsonl import JsonlWriter, read_jsonl

from .benchmarks import record_key
from .charts import bar_chart
from .generation import build_messages
from .items import exact_match, extract_answer
from .judging import judge_round, majority_vote
from .summary import judge_stats_markdown, summarize, to_csv, to_markdown

# run.json keys that must agree between a run and its resumption.
RESUME_KEYS = ("model", "generator", "prompt_style", "max_new_tokens", "temperature",
               "judge", "rounds")


def check_run_info(output_dir: Path, run_info: dict) -> None:
    """Write run.json, or check that an existing one describes the same evaluation."""
    path = output_dir / "run.json"
    if path.exists():
        old = json.loads(path.read_text())
        diff = {k: (old.get(k), run_info.get(k)) for k in RESUME_KEYS if old.get(k) != run_info.get(k)}
        if diff:
            raise ValueError(f"--output-dir {output_dir} holds a different run (differs in "
                             f"{diff}); pick a new --output-dir to start a fresh run")
    else:
        output_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(run_info, indent=1))


def generate_missing(records: list[dict], make_generate: Callable, output_dir: Path, *,
                     batch_size: int, prompt_style: str, progress: bool = True) -> dict[str, str]:
    """Responses for all records, generating only those not yet in generations.jsonl.

    ``make_generate()`` builds the generator (loads the model); it is called only when
    something is left to generate.
    """
    path = output_dir / "generations.jsonl"
    done = {row["key"]: row["response"] for row in read_jsonl(path)}
    todo = [r for r in records if record_key(r) not in done]
    generate_fn = make_generate() if todo else None
    with JsonlWriter(path) as out, tqdm(total=len(todo), desc="generate", unit="item",
                                        disable=not progress) as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            texts = generate_fn([build_messages(r, prompt_style) for r in batch])
            if len(texts) != len(batch):
                raise RuntimeError(f"generator returned {len(texts)} texts for {len(batch)} items")
            for record, text in zip(batch, texts):
                key = record_key(record)
                out.write({"key": key, "benchmark": record["benchmark"], "id": record["id"],
                           "response": text})
                done[key] = text
            bar.update(len(batch))
    return done


async def _judge_item(judge, record, response, done_rounds, rounds_out, items_out, *, rounds,
                      retries, max_tokens) -> dict:
    key = record_key(record)
    answer = extract_answer(response)
    item = {"key": key, "benchmark": record["benchmark"], "id": record["id"],
            "question": record["question"], "reference": record["reference"],
            "response": response, "answer": answer, "rounds": []}
    if not answer:
        item.update(score=0, decided_by="empty_answer", votes=[], judge_failed=False)
    elif exact_match(answer, record):
        item.update(score=1, decided_by="exact_match", votes=[], judge_failed=False)
    else:
        async def one_round(index):
            if (key, index) in done_rounds:
                return done_rounds[(key, index)]
            result = await judge_round(judge, record, answer, index, retries=retries,
                                       max_tokens=max_tokens)
            rounds_out.write({"key": key, **result})  # stored the moment it is paid for
            return result

        results = await asyncio.gather(*(one_round(i) for i in range(rounds)))
        votes = [r["score"] for r in results]
        item.update(score=majority_vote(votes), decided_by="judge", votes=votes,
                    rounds=list(results), judge_failed=all(r["failed"] for r in results))
    items_out.write(item)
    return item


class _InFlightLimit:
    """Passes ``chat`` calls through to ``judge`` with at most ``limit`` of them in flight.

    Every round of every item is started at once; without this bound all of them would wait
    inside the judge, and a judge whose timeout also runs while a call waits for the model (the
    in-process judge serialises its calls) would time out calls that never ran.
    """

    def __init__(self, judge, limit: int):
        self.judge, self.model_id = judge, getattr(judge, "model_id", "judge")
        self.fit_answer = getattr(judge, "fit_answer", None)  # the judge's prompt budget (judging.fitted_messages)
        self._sem = asyncio.Semaphore(limit)

    async def chat(self, messages, **kwargs):
        async with self._sem:
            return await self.judge.chat(messages, **kwargs)


async def judge_missing(records, responses, make_judge, output_dir: Path, *, rounds: int = 3,
                        retries: int = 2, max_tokens: int = 16, max_in_flight: int | None = None,
                        progress: bool = True) -> None:
    """Judge every record not yet in items.jsonl, reusing rounds already in judge_rounds.jsonl.

    ``make_judge()`` builds the judge; it is called only when some item is left to judge. The
    judge is closed (``aclose``) when judging ends, also on an error, and its counters
    (``stats()``) are appended to ``judge_stats.jsonl``. ``max_in_flight`` bounds the judge
    calls waiting at once (None: unbounded; use 1 for an in-process judge).
    """
    if not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be a positive int, got {rounds!r}")
    if not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an int >= 0, got {retries!r}")
    if max_in_flight is not None and (not isinstance(max_in_flight, int) or max_in_flight < 1):
        raise ValueError(f"max_in_flight must be a positive int or None, got {max_in_flight!r}")
    done_items = {row["key"] for row in read_jsonl(output_dir / "items.jsonl")}
    done_rounds = {(row["key"], row["round"]): row
                   for row in read_jsonl(output_dir / "judge_rounds.jsonl")}
    todo = [r for r in records if record_key(r) not in done_items]
    if not todo:
        return
    judge = make_judge()
    asker = judge if max_in_flight is None else _InFlightLimit(judge, max_in_flight)
    started = time.time()
    try:
        with JsonlWriter(output_dir / "judge_rounds.jsonl") as rounds_out, \
                JsonlWriter(output_dir / "items.jsonl") as items_out, \
                tqdm(total=len(todo), desc="judge", unit="item", disable=not progress) as bar:
            async def tracked(record):
                await _judge_item(asker, record, responses[record_key(record)], done_rounds,
                                  rounds_out, items_out, rounds=rounds, retries=retries,
                                  max_tokens=max_tokens)
                bar.update(1)

            await asyncio.gather(*(tracked(r) for r in todo))
    finally:
        stats = judge.stats() if callable(getattr(judge, "stats", None)) else None
        if callable(getattr(judge, "aclose", None)):
            await judge.aclose()
        if isinstance(stats, dict):
            with JsonlWriter(output_dir / "judge_stats.jsonl") as out:
                out.write({"started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)),
                           "seconds": round(time.time() - started, 2), "items": len(todo),
                           **stats})


def write_summary(records, output_dir: Path, *, title: str, resamples: int = 2000) -> list[dict]:
    """summary.md, summary.csv and accuracy.png for the items of ``records``."""
    # In benchmark order, not completion order: items finish in any order (concurrent judging,
    # resumed runs), and the bootstrap interval must not depend on it.
    order = {record_key(r): i for i, r in enumerate(records)}
    items = sorted((row for row in read_jsonl(output_dir / "items.jsonl") if row["key"] in order),
                   key=lambda row: order[row["key"]])
    rows = summarize(items, resamples=resamples)
    (output_dir / "summary.csv").write_text(to_csv(rows))
    sessions = read_jsonl(output_dir / "judge_stats.jsonl")
    (output_dir / "summary.md").write_text(to_markdown(rows, title) + judge_stats_markdown(sessions))
    bar_chart({title: [r for r in rows if r["benchmark"] != "overall"] or rows},
              output_dir / "accuracy.png", title=title)
    return rows


def run_label(run_info: dict) -> str:
    """The name of a run in tables and charts: its label, else the model folder's name."""
    return run_info.get("label") or Path(str(run_info["model"])).name or str(run_info["model"])


def run_eval(records: list[dict], make_generate: Callable, make_judge: Callable, output_dir, *,
             run_info: dict, rounds: int = 3, judge_retries: int = 2, judge_max_tokens: int = 16,
             batch_size: int = 16, prompt_style: str = "medix", resamples: int = 2000,
             judge_in_flight: int | None = None, progress: bool = True) -> list[dict]:
    """Generate, judge and summarise ``records``; returns the summary rows.

    ``make_generate`` and ``make_judge`` are factories called only when work is left, so a
    resumed run whose answers are all on disk never loads the model.
    """
    output_dir = Path(output_dir)
    if not records:
        raise ValueError("records is empty: nothing to evaluate")
    check_run_info(output_dir, run_info)
    responses = generate_missing(records, make_generate, output_dir, batch_size=batch_size,
                                 prompt_style=prompt_style, progress=progress)
    asyncio.run(judge_missing(records, responses, make_judge, output_dir, rounds=rounds,
                              retries=judge_retries, max_tokens=judge_max_tokens,
                              max_in_flight=judge_in_flight, progress=progress))
    return write_summary(records, output_dir, title=run_label(run_info),
                         resamples=resamples)
