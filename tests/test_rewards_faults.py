"""JudgeClient and RewardWorker(judge='http') against the fault-injecting loopback server.

Short timeouts keep the file to a few seconds. Every check of attempts, retries and waits is made
against the server's own request log, not the client's counters alone.
"""
import asyncio
import time
from collections import Counter

import pytest

from medix_r1.rewards import JudgeClient, RewardConfig, RewardWorker, judge_messages
from medix_r1.rewards.judge import JUDGE_MAX_TOKENS
from tests.fault_server import FaultServer

TIMEOUT_S = 0.5  # per-request timeout where a test waits for timeouts (mode-timeout sleeps 3 s)
RETRIES = 2
SLACK = 0.5  # seconds allowed past a deadline (thread hand-offs; the box may be busy)
GOOD = "<OTHER> <thinking>reasoning</thinking> <answer>{}</answer>"


@pytest.fixture
def server():
    with FaultServer(slow_s=3.0) as s:
        yield s


def client(server, parity="strict", **kw):
    kw.setdefault("timeout_s", 5.0)  # long where a reply is expected: the box may be busy
    kw.setdefault("max_retries", RETRIES)
    return JudgeClient(server.url, "fault-model", parity=parity, backoff_base_s=0.02, backoff_max_s=0.05,
                       seed=0, **kw)


def judge_one(judge, answer, reference="the reference", *, deadline_s=None):
    """One verdict; also sets ``judge.elapsed``: the seconds judge_many took (HTTP client set up before)."""
    async def go():
        judge._state()
        t0 = time.monotonic()
        deadline = None if deadline_s is None else t0 + deadline_s
        try:
            return (await judge.judge_many([("question", reference, answer)], deadline=deadline))[0]
        finally:
            judge.elapsed = time.monotonic() - t0
            await judge.aclose()
    return asyncio.run(go())


def per_prompt(server):
    """Requests per distinct prompt text, from the server's log."""
    return Counter(server.prompts())


# ------------------------------------------------------------------------------ JudgeClient alone
def test_yes_no_and_request_shape(server, monkeypatch):
    monkeypatch.setenv("MEDIX_JUDGE_API_KEY", "sk-test-123")
    j = client(server)
    yes, no = judge_one(j, "mode-yes a"), judge_one(j, "mode-no b")
    assert (yes.correct, yes.failed, yes.reply, yes.attempts) == (True, False, "YES", 1)
    assert (no.correct, no.failed, no.reply) == (False, False, "NO")
    assert len(server.log) == 2
    body = server.payloads[0]
    assert body["model"] == "fault-model" and body["max_tokens"] == JUDGE_MAX_TOKENS == 4
    assert body["temperature"] == 0.0 and body["top_p"] == 1.0
    assert body["chat_template_kwargs"] == {"enable_thinking": False}
    assert body["messages"] == judge_messages("mode-yes a", "the reference")
    assert server.headers[0]["authorization"] == "Bearer sk-test-123"


def test_timeout_is_retried_then_fails(server):
    j = client(server, timeout_s=TIMEOUT_S)
    v = judge_one(j, "mode-timeout x")
    elapsed = j.elapsed
    assert v.failed and v.correct is None and "timeout" in v.error and v.attempts == RETRIES + 1
    assert len(server.requests("timeout")) == RETRIES + 1
    assert elapsed < (RETRIES + 1) * (TIMEOUT_S + 0.1) + SLACK, elapsed
    s = j.stats()
    assert (s["requests"], s["retries"], s["failures"]) == (RETRIES + 1, RETRIES, 1)
    assert s["latency_p50_s"] is None  # no successful call


def test_500_always_and_once(server):
    j = client(server)
    v = judge_one(j, "mode-500 x")
    assert v.failed and "HTTP 500" in v.error and len(server.requests("500")) == RETRIES + 1
    v = judge_one(j, "mode-500once y")
    assert (v.correct, v.failed, v.attempts) == (True, False, 2) and len(server.requests("500once")) == 2
    s = j.stats()
    assert (s["requests"], s["retries"], s["failures"]) == (RETRIES + 1 + 2, RETRIES + 1, 1)
    assert s["requests"] == len(server.log)


def test_429_waits_for_retry_after(server):
    j = client(server)
    v = judge_one(j, "mode-429 x")
    assert (v.correct, v.failed, v.attempts) == (True, False, 2)
    (t1, _), (t2, _) = server.requests("429")
    assert t2 - t1 >= 1.0, t2 - t1  # Retry-After: 1, measured between arrivals at the server
    assert t2 - t1 < 1.5
    assert j.stats()["retries"] == 1


def test_429_retry_after_past_the_deadline_gives_up_at_once():
    with FaultServer(retry_after="30") as server:
        j = client(server)
        v = judge_one(j, "mode-429 x", deadline_s=2.0)
        assert j.elapsed < SLACK
        assert v.failed and "HTTP 429" in v.error and "deadline" in v.error
        assert len(server.log) == 1


@pytest.mark.parametrize("parity", ["strict", "official"])
def test_garbage_reply(server, parity):
    j = client(server, parity)
    v = judge_one(j, "mode-garbage x")
    assert v.reply == "Perhaps, hard to say" and len(server.log) == 1  # a 200 is never retried
    if parity == "strict":
        assert v.failed and v.correct is None and "not YES or NO" in v.error  # flagged, not a silent NO
    else:
        assert not v.failed and v.correct is False  # official: no "YES" in it -> 0


def test_bad_json_body_fails_without_retry(server):
    j = client(server)
    v = judge_one(j, "mode-badjson x")
    assert v.failed and v.correct is None and v.error and len(server.log) == 1
    assert j.stats()["failures"] == 1


def test_dropped_connection_always_and_once(server):
    j = client(server)
    v = judge_one(j, "mode-drop x")
    assert v.failed and "connection" in v.error and len(server.requests("drop")) == RETRIES + 1
    v = judge_one(j, "mode-dropOnce y")
    assert (v.correct, v.failed, v.attempts) == (True, False, 2) and len(server.requests("dropOnce")) == 2


def test_400_is_not_retried(server):
    j = client(server)
    v = judge_one(j, "mode-400 x")
    assert v.failed and "HTTP 400" in v.error and v.attempts == 1
    assert len(server.log) == 1 and j.stats()["retries"] == 0


def test_slow_reply_past_the_deadline(server):
    j = client(server, timeout_s=10.0)
    v = judge_one(j, "mode-slow x", deadline_s=0.5)
    assert 0.5 <= j.elapsed < 0.5 + SLACK
    assert v.failed and "deadline" in v.error and len(server.log) == 1


def test_cache_hits_skip_the_server(server, tmp_path):
    path = tmp_path / "cache.jsonl"
    items = [("q", "ref", f"mode-yes a{i}") for i in range(3)] + [("q", "ref", "mode-500 z")]

    async def go(j):
        try:
            return await j.judge_many(items)
        finally:
            await j.aclose()
    j = client(server, cache_path=path)
    first = asyncio.run(go(j))
    second = asyncio.run(go(j))  # a new event loop: the client rebuilds its HTTP session
    assert [v.correct for v in first] == [True, True, True, None] == [v.correct for v in second]
    assert [v.cached for v in second] == [True, True, True, False]
    assert len(server.log) == 3 + 2 * (RETRIES + 1)  # failures are not cached: retried next time
    s = j.stats()
    assert (s["calls"], s["cache_hits"], s["requests"], s["failures"]) == (8, 3, len(server.log), 2)
    fresh = client(server, cache_path=path)  # the file cache survives the process
    third = asyncio.run(go(fresh))
    assert [v.cached for v in third] == [True, True, True, False] and fresh.stats()["cache_hits"] == 3


def test_concurrency_is_bounded(server):
    j = client(server, concurrency=4)
    items = [("q", "ref", f"mode-timeout c{i}") for i in range(8)]
    server.slow_s = 0.5

    async def go():
        try:
            return await j.judge_many(items)
        finally:
            await j.aclose()
    t0 = time.monotonic()
    verdicts = asyncio.run(go())
    elapsed = time.monotonic() - t0
    assert all(v.correct for v in verdicts)
    assert elapsed >= 1.0, elapsed  # 8 requests of 0.5 s, 4 at a time: (at least) two waves
    arrivals = sorted(t for t, _ in server.log)
    assert len(arrivals) == 8 and arrivals[3] - arrivals[0] < 0.45  # four at once
    assert arrivals[4] - arrivals[0] >= 0.45  # the fifth waited for a slot


# ------------------------------------------------------------------------------ the worker, mixed faults
MODES = ["yes", "no", "garbage", "badjson", "500", "500once", "429", "400", "timeout", "drop", "dropOnce"]


@pytest.mark.parametrize("parity", ["strict", "official"])
def test_worker_mixed_faults_batch(server, parity):
    # the timeouts take (RETRIES + 1) s: once is enough (strict); official checks the other scores
    modes = MODES if parity == "strict" else [m for m in MODES if m != "timeout"]
    deadline_s = 5.0
    cfg = RewardConfig(judge="http", judge_url=server.url, judge_model="fault-model", parity=parity,
                       judge_timeout_s=1.0, judge_max_retries=RETRIES, deadline_s=deadline_s,
                       embedding_model="none")
    answers = [f"mode-{m} item{i}" for i, m in enumerate(modes)]
    responses = [GOOD.format(a) for a in answers] + [GOOD.format("Yes"), GOOD.format("?"), ""]
    solutions = ["<OTHER> reference answer"] * len(modes) + ["<OTHER> Yes"] * 3
    with RewardWorker(cfg) as w:
        w.preload().result(timeout=30)
        w._judge.backoff_base_s = 0.02  # keep the retry backoff short
        t0 = time.monotonic()
        res = w.submit(["question"] * len(responses), responses, solutions).result(timeout=10)
        elapsed = time.monotonic() - t0
        stats = w.stats()
    assert elapsed < deadline_s + SLACK, elapsed
    assert len(res) == len(responses)
    by_mode = dict(zip(modes, res))
    for r in res:  # every sample has a defined reward and flags
        assert isinstance(r.total, float) and 0.0 <= r.total <= 1.0
        assert isinstance(r.judge_failed, bool) and r.judge in (0.0, 1.0)
    ok = {"yes": 1.0, "no": 0.0, "500once": 1.0, "429": 1.0, "dropOnce": 1.0}
    for m, j in ok.items():
        assert (by_mode[m].judge, by_mode[m].judge_failed) == (j, False), m
    for m in {"badjson", "500", "400", "timeout", "drop"} & set(modes):
        assert by_mode[m].judge == 0.0 and by_mode[m].judge_failed and by_mode[m].judge_error, m
    assert by_mode["garbage"].judge == 0.0 and by_mode["garbage"].judge_failed is (parity == "strict")
    # the exact match, the invalid answer and the empty response never reached the server
    assert res[-3].exact_match and res[-3].total == pytest.approx(1.0)
    assert res[-2].invalid_answer and res[-1].invalid_answer and res[-1].total == 0.0
    # bounded retries, from the server's log: at most max_retries + 1 requests per item
    counts = dict(Counter(mode for _, mode in server.log).items())
    assert set(counts) == set(modes)
    assert all(c <= RETRIES + 1 for c in counts.values()), counts
    assert counts["400"] == counts["badjson"] == counts["garbage"] == counts["yes"] == 1
    assert counts["500"] == counts["drop"] == counts.get("timeout", RETRIES + 1) == RETRIES + 1
    assert counts["500once"] == counts["dropOnce"] == 2
    assert counts["429"] == 2
    assert stats["judge_requests"] == len(server.log)
    assert stats["judge_retries"] == len(server.log) - len(modes)
    assert stats["judge_calls"] == len(modes) and stats["judge_cache_hits"] == 0
    failed = sum(r.judge_failed for r in res)
    assert stats["judge_failed"] == failed
    lat = [stats[f"judge_latency_p{q}_s"] for q in (50, 90, 99)]
    assert all(x is not None for x in lat) and lat[0] <= lat[1] <= lat[2] <= elapsed
    assert lat[2] >= 1.0  # the 429 item waited a whole second
    assert stats["deadline_reached"] == 0  # every item ended on its own (retries exhausted or a reply)


def test_worker_slow_judge_past_the_batch_deadline(server):
    cfg = RewardConfig(judge="http", judge_url=server.url, judge_model="fault-model", judge_timeout_s=10.0,
                       judge_max_retries=RETRIES, deadline_s=0.5, embedding_model="none")
    with RewardWorker(cfg) as w:
        w.preload().result(timeout=30)  # the HTTP client's set-up would otherwise eat the short deadline
        t0 = time.monotonic()
        res = w.score(["q"] * 3, [GOOD.format("mode-slow a"), GOOD.format("mode-slow b"), GOOD.format("mode-yes c")],
                      ["<OTHER> ref"] * 3)
        elapsed = time.monotonic() - t0
        stats = w.stats()
    assert elapsed < 0.5 + SLACK, elapsed
    assert [r.judge_failed for r in res] == [True, True, False] and res[2].judge == 1.0
    assert all("deadline" in r.judge_error for r in res[:2])
    assert len(server.requests("slow")) == 2  # one attempt each: no time left for a retry
    assert stats["judge_failed"] == 2 and stats["deadline_reached"] == 1 and stats["deadline_misses"] == 0
