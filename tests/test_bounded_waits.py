"""Every judge wait is bounded (issue 17): a 429 asking for hours waits at most the request
timeout, and an eval judge call has an overall deadline, retries and waits included."""
import asyncio
import time

import pytest

from medix_r1.eval.cli import build_parser, make_judge_factory
from medix_r1.eval.judging import judge_round
from medix_r1.rewards import JudgeClient

from .fault_server import FaultServer

RECORD = {"question": "Which vitamin?", "reference": "Vitamin C"}


def timed(coro):
    t0 = time.monotonic()
    out = asyncio.run(coro)
    return out, time.monotonic() - t0


def test_a_huge_retry_after_waits_at_most_the_request_timeout():
    with FaultServer(retry_after="86400") as server:  # one day
        judge = JudgeClient(server.url, "fault-model", timeout_s=0.5, max_retries=2, seed=0)
        reply, elapsed = timed(judge.chat([{"role": "user", "content": "mode-429 x"}], max_tokens=4))
    assert reply.text == "YES" and reply.attempts == 2
    (t1, _), (t2, _) = server.requests("429")
    assert 0.5 <= t2 - t1 < 1.5 and elapsed < 3.0


def test_an_http_date_far_ahead_is_capped_too():
    with FaultServer(retry_after="Fri, 31 Dec 2100 23:59:59 GMT") as server:
        judge = JudgeClient(server.url, "fault-model", timeout_s=0.5, max_retries=1, seed=0)
        reply, elapsed = timed(judge.chat([{"role": "user", "content": "mode-429 x"}], max_tokens=4))
    assert reply.text == "YES" and elapsed < 3.0


def test_eval_judge_calls_have_an_overall_deadline(tmp_path):
    """A judge that never answers in time, with many retries allowed: the eval CLI's judge gives up
    at --judge-deadline, not after retries x timeout."""
    with FaultServer(slow_s=10.0, yes_text='{"score": 1}') as server:
        args = build_parser().parse_args(["--judge-url", server.url, "--judge-model", "fault-model",
                                          "--judge-timeout", "0.6", "--judge-max-retries", "20",
                                          "--judge-deadline", "1.5"])
        _, _, make = make_judge_factory(args, tmp_path)
        judge = make()
        result, elapsed = timed(judge_round(judge, RECORD, "mode-timeout Vitamin C", 0, retries=0))
    assert result["failed"] and result["score"] is None
    assert "deadline" in result["replies"][0]["error"]
    assert 1.4 < elapsed < 3.0, elapsed
    assert 2 <= len(server.log) <= 4  # a few attempts, not 21


def test_the_deadline_counts_from_the_slot_not_from_the_queue():
    """Calls waiting for a concurrency slot do not spend their deadline while they wait."""
    with FaultServer(slow_s=0.4) as server:
        judge = JudgeClient(server.url, "fault-model", timeout_s=2.0, max_retries=0, concurrency=1,
                            call_deadline_s=1.0)

        async def many():
            return await asyncio.gather(*(judge.chat([{"role": "user", "content": f"mode-slow {i}"}], max_tokens=4)
                                          for i in range(4)))
        replies, elapsed = timed(many())
    assert [r.text for r in replies] == ["YES"] * 4 and elapsed >= 1.6


def test_the_trainers_wait_for_rewards_is_bounded(monkeypatch):
    """A reward Future that never completes (the worker's own deadline timer failed) stops the run with a
    message after reward.deadline_s plus the margin, instead of waiting for ever."""
    from concurrent.futures import Future

    from medix_r1.config import load_config
    from medix_r1.train import TrainingStopped, step

    monkeypatch.setattr(step, "REWARD_WAIT_MARGIN_S", 0.2)
    cfg = load_config("cpu_smollm2", ["reward.deadline_s=0.1"])
    t = time.monotonic()
    with pytest.raises(TrainingStopped, match=r"reward worker returned no results within 0 s.*--resume"):
        step.reward_results(Future(), cfg)
    assert time.monotonic() - t < 5
    done = Future()
    done.set_result([1, 2])
    assert step.reward_results(done, cfg) == [1, 2]
