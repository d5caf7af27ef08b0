"""A judge always sees its instructions and the reference in full; only the answer is cut, at its
end, and the cut is recorded, or the item fails as too long (issue 30, item 1). The local judge
(bundled SmolLM2 tokenizer and model) on the reward prompt and on the eval prompt, and the strict
prompt's character cap for HTTP judges."""
import asyncio

import pytest

from medix_r1.eval import judging
from medix_r1.rewards import JudgeClient, LocalJudge, RewardConfig, RewardWorker
from medix_r1.rewards.judge import ChatReply, JudgeBase
from medix_r1.rewards.judge_prompts import MAX_FIELD_CHARS, STRICT_PROMPT

REFERENCE = "Yes. Daily low-dose aspirin lowered the rate of a first heart attack in adults over 50."
# the right decision, a wrong conclusion, then filler up to ~3,900 characters (under both length caps)
PADDED = ("Yes. Aspirin raised the rate of heart attacks. " + "This sentence only adds length to the answer. " * 82
          + "So the grade is YES.")
FIRST_LINE = STRICT_PROMPT.splitlines()[0]


@pytest.fixture(scope="module")
def judge():
    return LocalJudge(batch_size=4)


def chat_ids(judge, messages):
    ids = judge.tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
    return list(ids["input_ids"] if hasattr(ids, "keys") else ids)


@pytest.fixture
def seen(judge, monkeypatch):
    """The token rows the model is given (the forward pass itself still runs)."""
    rows = []
    real = judge._last_logits

    def spy(batch):
        rows.extend(batch)
        return real(batch)
    monkeypatch.setattr(judge, "_last_logits", spy)
    return rows


def test_a_long_answer_is_cut_at_its_end_never_the_instructions(judge, seen):
    assert 3_800 < len(PADDED) < MAX_FIELD_CHARS
    (verdict,) = asyncio.run(judge.judge_many([("Does aspirin help?", REFERENCE, PADDED)]))
    (row,) = seen
    text = judge.tokenizer.decode(row)
    assert len(row) <= judge.max_prompt_tokens
    assert FIRST_LINE in text and f"<reference>\n{REFERENCE}\n</reference>" in text  # whole
    assert "<answer>\nYes. Aspirin raised the rate of heart attacks." in text and "So the grade is YES" not in text
    assert text.rstrip().endswith("assistant")  # the prompt still ends where the reply starts
    assert not verdict.failed and verdict.answer_cut > 1_000
    assert judge.stats()["answers_cut"] >= 1
    short, = asyncio.run(judge.judge_many([("Does aspirin help?", REFERENCE, "Yes. Aspirin lowered it.")]))
    assert short.answer_cut == 0


def test_the_cut_reaches_the_reward_result(judge):
    with RewardWorker(RewardConfig(judge="local", embedding_model="none", judge_decision_gate=False,
                                   deadline_s=120), judge=judge) as worker:
        r, = worker.score(["Does aspirin help?"], [f"<OTHER> <thinking>t</thinking> <answer>{PADDED}</answer>"],
                          [f"<OTHER> {REFERENCE}"])
    assert r.judge_answer_cut > 1_000 and not r.judge_failed


def test_a_prompt_too_long_without_its_answer_fails_as_too_long(judge, seen):
    reference = "Yes. " + "The cohort was followed for ten years with yearly visits. " * 70
    (verdict,) = asyncio.run(judge.judge_many([("Q?", reference, "Yes. It was.")]))
    assert verdict.failed and verdict.correct is None and "max_prompt_tokens" in verdict.error
    assert seen == []  # the model never saw a cut prompt


def test_the_eval_judge_sees_its_instructions_examples_and_reference(judge, monkeypatch):
    sent = []

    def generate(messages, max_tokens):  # the model is not needed to see what it would be given
        sent.append(messages)
        return '{"score": 0}'
    monkeypatch.setattr(judge, "generate", generate)
    record = {"question": "Does aspirin prevent a first heart attack?", "reference": REFERENCE}
    result = asyncio.run(judging.judge_round(judge, record, PADDED, 0))
    ids = chat_ids(judge, sent[0])
    text = judge.tokenizer.decode(ids)
    assert len(ids) <= judge.max_prompt_tokens
    assert judging.JUDGE_SYSTEM[:60] in text and "Which vitamin deficiency causes scurvy?" in text
    assert f"<reference>\n{REFERENCE}\n</reference>" in text and "So the grade is YES" not in text
    assert result["score"] == 0 and result["answer_cut"] > 1_000


def test_http_judges_get_the_whole_reference_and_a_recorded_answer_cut():
    class Recorder(JudgeBase):
        def __init__(self):
            super().__init__()
            self.sent = []

        async def chat(self, messages, *, max_tokens, cache_key=None, deadline=None):
            self.sent.append(messages[0]["content"])
            return ChatReply(text="NO")

    judge = Recorder()
    reference, answer = "No. " + "r" * 5_000, "No. " + "a" * 6_000
    verdict = asyncio.run(judge.judge("Q?", reference, answer))
    assert reference in judge.sent[0] and "a" * 6_000 not in judge.sent[0]
    assert verdict.answer_cut == len(answer) - MAX_FIELD_CHARS and judge.stats()["answers_cut"] == 1
    assert issubclass(JudgeClient, JudgeBase)
    messages = judging.judge_messages("Q?", reference, answer)
    assert reference in messages[-1]["content"]  # the eval prompt: the reference whole too
