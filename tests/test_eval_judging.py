"""Strict judge-reply parsing, majority vote ties, retries of invalid replies, exact match."""
import asyncio
from types import SimpleNamespace

import pytest

from medix_r1.eval.items import exact_match, extract_answer, make_record
from medix_r1.eval.judging import judge_messages, judge_round, majority_vote, parse_judge_reply


@pytest.mark.parametrize("text, expected", [
    ('{"score": 1}', 1),
    ('{"score": 0}', 0),
    ('  {"score":1}\n', 1),
    ('```json\n{"score": 1}\n```', 1),          # one code fence is tolerated
    ('```\n{"score": 0}\n```', 0),
    ('{"score": 1, "reason": "same diagnosis"}', 1),  # extra keys are fine
    ('The answer is correct. {"score": 1}', None),   # extra text around the object
    ('{"score": 1} because it matches', None),
    ('```json\n{"score": 1}\n``` thanks', None),
    ('{"score": 1}{"score": 0}', None),              # two objects
    ('{"score": "1"}', None),                        # wrong types
    ('{"score": true}', None),
    ('{"score": 1.0}', None),
    ('{"score": null}', None),
    ('{"score": [1]}', None),
    ('{"score": 2}', None),                          # out of range
    ('{"score": -1}', None),
    ('{"result": 1}', None),                         # missing key
    ('[{"score": 1}]', None),                        # not an object
    ("YES", None),                                   # non-JSON
    ("{score: 1}", None),
    ("", None),
    (None, None),
])
def test_parse_judge_reply(text, expected):
    assert parse_judge_reply(text) == expected


@pytest.mark.parametrize("votes, expected", [
    ([1, 1, 1], 1), ([1, 1, 0], 1), ([0, 0, 1], 0), ([0, 0, 0], 0),
    ([1, 0, None], 0),          # tie between valid rounds -> 0
    ([1, None, None], 1),       # failed rounds do not vote
    ([None, None, None], 0),    # no valid round -> 0
    ([1, 0], 0), ([1, 1, 0, 0], 0), ([1, 1, 0, 0, 1], 1), ([1], 1), ([0], 0),
])
def test_majority_vote_and_ties(votes, expected):
    assert majority_vote(votes) == expected


def test_majority_vote_rejects_bad_votes():
    with pytest.raises(ValueError, match="vote"):
        majority_vote([1, 2])
    with pytest.raises(ValueError, match="vote"):
        majority_vote([True, 0])
    with pytest.raises(TypeError, match="votes"):
        majority_vote("110")


class ScriptedJudge:
    """Replies from a script, one per call, recording every call (a JudgeClient stand-in)."""

    def __init__(self, replies):
        self.replies = list(replies)
        self.calls = []

    async def chat(self, messages, *, max_tokens, cache_key=None):
        self.calls.append((messages, max_tokens, cache_key))
        text = self.replies.pop(0)
        if isinstance(text, Exception):
            return SimpleNamespace(text=None, failed=True, error=str(text), attempts=3, latency=0.0)
        return SimpleNamespace(text=text, failed=False, error=None, attempts=1, latency=0.0)


RECORD = make_record(id="q1", benchmark="t", question="Drug of choice for X?", problem="p",
                     reference="Aspirin")


def test_judge_round_retries_invalid_reply_with_new_cache_key():
    judge = ScriptedJudge(["sure, it is correct", '{"score": 1}'])
    result = asyncio.run(judge_round(judge, RECORD, "acetylsalicylic acid", 0, retries=2))
    assert result["score"] == 1 and not result["failed"]
    assert [r["text"] for r in result["replies"]] == ["sure, it is correct", '{"score": 1}']
    keys = [c[2] for c in judge.calls]
    assert len(keys) == 2 and keys[0] != keys[1]
    prompt = judge.calls[0][0][-1]["content"]
    assert "Aspirin" in prompt and "acetylsalicylic acid" in prompt and "Drug of choice" in prompt


def test_judge_round_counts_failure_after_retries():
    judge = ScriptedJudge(["no json", "YES", '{"score": 3}'])
    result = asyncio.run(judge_round(judge, RECORD, "ibuprofen", 1, retries=2))
    assert result["failed"] and result["score"] is None and len(result["replies"]) == 3
    assert [r["score"] for r in result["replies"]] == [None] * 3
    assert judge.replies == []


def test_transport_failure_ends_the_round_without_more_calls():
    """The client already retried the transport (its max_retries); the round does not again."""
    judge = ScriptedJudge(["no json", RuntimeError("HTTP 500"), '{"score": 1}'])
    result = asyncio.run(judge_round(judge, RECORD, "ibuprofen", 1, retries=2))
    assert result["failed"] and result["score"] is None and len(result["replies"]) == 2
    assert result["replies"][1]["failed"] and "500" in result["replies"][1]["error"]
    assert result["replies"][1]["attempts"] == 3
    assert judge.replies == ['{"score": 1}']


def test_round_cache_keys_differ_between_rounds_and_repeat_on_resume():
    keys = []
    for round_index in (0, 1, 0):
        judge = ScriptedJudge(['{"score": 0}'])
        asyncio.run(judge_round(judge, RECORD, "x y", round_index))
        keys.append(judge.calls[0][2])
    assert keys[0] != keys[1] and keys[0] == keys[2]


def test_extract_answer_and_exact_match():
    assert extract_answer("<OTHER><thinking>t</thinking><answer> Aspirin. </answer>") == "Aspirin"
    assert extract_answer("no tags here.") == "no tags here"
    assert exact_match("Aspirin", RECORD)
    assert not exact_match("aspirin", RECORD)  # case-sensitive, as in the MediX reward
    assert not exact_match("", RECORD)
    with pytest.raises(TypeError, match="response"):
        extract_answer(None)


def test_judge_messages_validate_and_bound_inputs():
    with pytest.raises(TypeError, match="prediction"):
        judge_messages("q", "r", None)
    long = judge_messages("q", "r", "x" * 50_000)[-1]["content"]
    assert len(long) < 6000
