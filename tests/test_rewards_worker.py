"""The composite reward through RewardWorker with a scripted judge and a fake embedder (no models).

Total = 0.9 * (0.575 J + 0.375 E + 0.05 M) + 0.1 F, every expected number written out by hand.
"""
import asyncio
import math
import threading
import time

import pytest
import torch

from medix_r1.rewards import ChatReply, JudgeVerdict, RewardConfig, RewardWeights, RewardWorker, compute_rewards
from medix_r1.rewards.embedding import Embedder
from medix_r1.rewards.judge import JudgeBase

GOOD = "<OTHER> <thinking>The trial showed a benefit.</thinking> <answer>{}</answer>"
SOL = "<OTHER> {}"


class ScriptedJudge(JudgeBase):
    """Replies from a table keyed by the predicted answer (default 'YES'); records every item.

    ``judge()`` goes through JudgeBase's reply -> verdict path, so strict/official parsing is real."""

    def __init__(self, replies=None, parity="strict", delay=0.0, raises=None):
        super().__init__(None, parity)
        self.replies, self.delay, self.raises = dict(replies or {}), delay, raises
        self.items, self.batches = [], []

    async def judge_many(self, items, *, deadline=None):
        items = list(items)
        self.batches.append((items, deadline))
        return await super().judge_many(items, deadline=deadline)

    async def judge(self, question, reference, answer, *, deadline=None):
        self.items.append((question, reference, answer))
        if self.raises is not None:
            raise self.raises
        if self.delay:
            await asyncio.sleep(self.delay)
        reply = self.replies.get(answer, "YES")
        if reply is None:  # a transport failure
            return self._verdict(ChatReply(text=None, failed=True, error="connection refused", attempts=4))
        return self._verdict(ChatReply(text=reply, attempts=1))

    def answers(self):
        return [a for _, _, a in self.items]


class BareJudge:
    """The minimal judge interface: only ``judge_many``; a fixed verdict, or an exception."""

    def __init__(self, correct=True, raises=None, sleep=0.0):
        self.correct, self.raises, self.sleep, self.calls = correct, raises, sleep, []

    async def judge_many(self, items, *, deadline=None):
        self.calls.append(list(items))
        if self.sleep:
            await asyncio.sleep(self.sleep)  # ignores the deadline on purpose
        if self.raises is not None:
            raise self.raises
        return [JudgeVerdict(correct=self.correct, failed=False, reply="YES" if self.correct else "NO")
                for _ in items]


class FakeEmbedder(Embedder):
    """Embedder with a table text -> vector (default: a fixed random vector per text); the real
    ``rewards`` (medix_kernels.cosine_rewards, NaN handling) runs on top."""

    def __init__(self, vectors=None, dim=8):
        self.vectors, self.dim, self.calls = dict(vectors or {}), dim, []
        self.batch_size, self.name, self._lock = 64, "fake", threading.Lock()

    def encode(self, texts):
        out = []
        for t in texts:
            if t not in self.vectors:
                g = torch.Generator().manual_seed(abs(hash(t)) % (2 ** 31))
                self.vectors[t] = torch.randn(self.dim, generator=g)
            out.append(torch.as_tensor(self.vectors[t], dtype=torch.float32))
        return torch.stack(out)

    def rewards(self, answers, references, *, mode="threshold", threshold=0.8):
        self.calls.append((list(answers), list(references), mode, threshold))
        return super().rewards(answers, references, mode=mode, threshold=threshold)


def total(J, E, M, F):
    return 0.9 * (0.575 * J + 0.375 * E + 0.05 * M) + 0.1 * F


def score(responses, solutions, *, judge=None, embedder=None, problems=None, **cfg):
    cfg.setdefault("deadline_s", 10.0)
    problems = problems if problems is not None else [f"q{i}" for i in range(len(responses))]
    return compute_rewards(problems, responses, solutions, RewardConfig(**cfg), judge=judge,
                           embedder=embedder if embedder is not None else FakeEmbedder())


def parts(r):
    return (r.judge, r.embedding, r.modality, r.format)


# ------------------------------------------------------------------------------ hand-written totals
def test_composite_totals_by_hand():
    same = [1.0, 0.0, 0.0]  # answer and reference embed to the same direction -> cos 1 -> E = 1
    emb = FakeEmbedder({"Aspirin": same, "Acetylsalicylic acid": same,
                        "Paracetamol": [0.0, 1.0, 0.0], "Ibuprofen": [1.0, 0.0, 0.0], "No": [0.0, 0.0, 1.0],
                        "Yes": [1.0, 0.0, 0.0]})
    judge = ScriptedJudge({"Aspirin": "YES", "Paracetamol": "YES", "Ibuprofen": "NO", "No": "NO"})
    responses = [
        GOOD.format("Yes"),                                          # exact match, all right
        "<answer>Yes</answer>",                                      # exact, no <thinking>: F = M = 0
        GOOD.format("Aspirin"),                                      # judge YES, cos 1
        GOOD.format("Paracetamol"),                                  # judge YES, cos 0
        GOOD.format("Ibuprofen"),                                    # judge NO, cos 1
        GOOD.format("No"),                                           # judge NO, cos 0
        GOOD.format("?"),                                            # invalid: only F and M
        GOOD.format("Yes") + " trailing",                            # trailing text: F = 0, M = 1
        GOOD.format("Yes").replace("<OTHER>", "<other>"),            # tag case-insensitive
        GOOD.format("Yes").replace("<OTHER>", "<CT_SCAN>"),          # wrong tag
    ]
    solutions = [SOL.format("Yes"), SOL.format("Yes"), SOL.format("Acetylsalicylic acid"),
                 SOL.format("Acetaminophen"), SOL.format("Yes"), SOL.format("Yes"), SOL.format("Yes"),
                 SOL.format("Yes"), SOL.format("Yes"), SOL.format("Yes")]
    emb.vectors["Acetaminophen"] = [1.0, 0.0, 0.0]
    res = score(responses, solutions, judge=judge, embedder=emb)
    want = [(1, 1, 1, 1), (1, 1, 0, 0), (1, 1, 1, 1), (1, 0, 1, 1), (0, 1, 1, 1), (0, 0, 1, 1),
            (0, 0, 1, 1), (1, 1, 1, 0), (1, 1, 1, 1), (1, 1, 0, 1)]
    assert [parts(r) for r in res] == [tuple(float(x) for x in w) for w in want]
    expected = [1.0, 0.855, 1.0, 0.6625, 0.4825, 0.145, 0.145, 0.9, 1.0, 0.955]
    assert [r.total for r in res] == pytest.approx(expected, abs=1e-12)
    assert [total(*w) for w in want] == pytest.approx(expected, abs=1e-12)
    assert [r.exact_match for r in res] == [True, True, False, False, False, False, False, True, True, True]
    assert [r.invalid_answer for r in res] == [False] * 6 + [True] + [False] * 3
    # only the four non-exact, valid answers reach the judge and the embedder, in one batch each
    assert judge.answers() == ["Aspirin", "Paracetamol", "Ibuprofen", "No"] and len(judge.batches) == 1
    assert emb.calls == [(["Aspirin", "Paracetamol", "Ibuprofen", "No"],
                          ["Acetylsalicylic acid", "Acetaminophen", "Yes", "Yes"], "threshold", 0.8)]
    assert not any(r.judge_failed or r.embedding_failed for r in res)
    assert res[2].judge_reply == "YES" and res[0].judge_reply is None  # no call for the exact match


@pytest.mark.parametrize("answer", ["", " ", "A", "x__y", "Ratio: 2", "Is it?", "__", ":", "?", "..."])
def test_invalid_answers_score_zero_without_calls(answer):
    judge, emb = ScriptedJudge(), FakeEmbedder()
    [r] = score([GOOD.format(answer)], [SOL.format("Yes")], judge=judge, embedder=emb)
    assert r.invalid_answer and not r.exact_match and (r.judge, r.embedding) == (0.0, 0.0)
    assert r.total == pytest.approx(total(0, 0, 1, 1))
    assert judge.items == [] and emb.calls == []


def test_exact_match_is_case_sensitive():
    judge = ScriptedJudge({"yes": "YES"})
    r1, r2 = score([GOOD.format("Yes"), GOOD.format("yes")], [SOL.format("Yes")] * 2, judge=judge)
    assert r1.exact_match and not r2.exact_match and judge.answers() == ["yes"]


def test_no_thinking_gives_no_format_and_no_modality():
    [r] = score(["<OTHER> <answer>Aspirin</answer>"], [SOL.format("Aspirin")], judge=ScriptedJudge())
    assert (r.format, r.modality) == (0.0, 0.0)
    assert r.exact_match and r.total == pytest.approx(0.9 * 0.95)
    # no answer block either: the whole (normalised) response is the answer
    [r] = score(["<OTHER> Aspirin"], [SOL.format("Aspirin")], judge=ScriptedJudge({"<OTHER>Aspirin": "NO"}),
                embedding_model="none")
    assert (r.format, r.modality, r.answer, r.exact_match) == (0.0, 0.0, "<OTHER>Aspirin", False)
    assert r.total == 0.0
    # an unclosed <thinking> still gives the modality (the rule only looks for the opening tag)
    [r] = score(["<OTHER><thinking>x<answer>Aspirin</answer>"], [SOL.format("Aspirin")], judge=ScriptedJudge())
    assert (r.format, r.modality, r.exact_match) == (0.0, 1.0, True)


def test_whitespace_normalisation_strict_vs_official():
    resp = "<OTHER> < thinking > 2 / 3 of patients </ thinking >\n< answer > 1 / 2 </ answer >"
    sol = SOL.format("1/2")
    js, jo = ScriptedJudge({"1 / 2": "YES"}), ScriptedJudge(parity="official")
    [s] = score([resp], [sol], judge=js, parity="strict")
    [o] = score([resp], [sol], judge=jo, parity="official")
    # official removes the spaces around '/': "1/2" is an exact match, no judge call
    assert o.exact_match and o.answer == "1/2" and jo.items == [] and o.total == pytest.approx(1.0)
    # strict keeps the answer's text: "1 / 2" goes to the judge (YES), embedding of distinct strings
    assert not s.exact_match and s.answer == "1 / 2" and js.answers() == ["1 / 2"]
    assert (s.format, s.modality, s.judge) == (1.0, 1.0, 1.0)
    # leading dots: official keeps the space after them, strict strips it
    resp2 = GOOD.format(". Yes")
    [o2] = score([resp2], [SOL.format("Yes")], judge=ScriptedJudge(parity="official"), parity="official")
    [s2] = score([resp2], [SOL.format("Yes")], judge=ScriptedJudge(), parity="strict")
    assert (o2.answer, o2.exact_match) == (" Yes", False) and (s2.answer, s2.exact_match) == ("Yes", True)


@pytest.mark.parametrize("reply, strict, official", [
    ("YES", (1.0, False), (1.0, False)),
    (" yes.", (1.0, False), (1.0, False)),
    ("Yes, it does", (0.0, True), (1.0, False)),
    ("NO!", (0.0, False), (0.0, False)),
    ("NOPE", (0.0, True), (0.0, False)),
    ("", (0.0, True), (0.0, False)),
    ("maybe", (0.0, True), (0.0, False)),
    (None, (0.0, True), (0.0, True)),  # transport failure: 0 in both, flagged in both
])
def test_verdict_parsing_strict_vs_official(reply, strict, official):
    for parity, (j, failed) in (("strict", strict), ("official", official)):
        judge = ScriptedJudge({"Aspirin": reply}, parity=parity)
        [r] = score([GOOD.format("Aspirin")], [SOL.format("Paracetamol")], judge=judge, parity=parity,
                    embedding_model="none")
        assert (r.judge, r.judge_failed) == (j, failed), (parity, reply)
        assert r.judge_reply == reply and r.total == pytest.approx(total(j, 0, 1, 1))
        if failed:
            assert r.judge_error


# ------------------------------------------------------------------------------ bad input
def test_empty_and_whitespace_responses():
    judge = ScriptedJudge()
    res = score(["", "   \n\t"], [SOL.format("Yes")] * 2, judge=judge)
    for r in res:
        assert r.invalid_answer and r.total == 0.0 and parts(r) == (0.0, 0.0, 0.0, 0.0)
    assert judge.items == []


def test_huge_response_is_truncated_and_flagged():
    judge = ScriptedJudge()
    huge = GOOD.format("Yes") + " filler" * 200_000
    res = score([huge, GOOD.format("Yes")], [SOL.format("Yes")] * 2, judge=judge, max_response_chars=1000)
    assert res[0].truncated and not res[1].truncated
    assert res[0].format == 0.0 and res[0].exact_match  # the trailing filler fails the format
    long_answer = "<OTHER><thinking>t</thinking><answer>" + "word " * 1000 + "</answer>"
    [r] = score([long_answer], [SOL.format("Yes")], judge=judge, max_response_chars=200)
    # the closing tag was cut off: no <answer> block, the whole (truncated) text is the answer
    assert r.truncated and r.format == 0.0 and len(r.answer) <= 200
    assert all(len(a) <= 200 for a in judge.answers())


def test_non_utf8_bytes_and_surrogates_are_replaced():
    judge = ScriptedJudge()
    raw = "<OTHER><thinking>t</thinking><answer>Aspi\udcffrin</answer>"
    res = score([GOOD.format("Aspirin").encode() + b"\xff\xfe",
                 b"<OTHER><thinking>t</thinking><answer>Ye\xffs</answer>", raw],
                [SOL.format("Yes")] * 3, judge=judge)
    assert res[0].format == 0.0 and res[0].answer == "Aspirin"  # trailing U+FFFD fails the format
    assert res[1].answer == "Ye\ufffds" and res[1].format == 1.0
    assert res[2].answer == "Aspi\ufffdrin"
    assert judge.answers() == ["Aspirin", "Ye\ufffds", "Aspi\ufffdrin"]
    for a in judge.answers():
        a.encode("utf-8")  # no lone surrogates left


def test_bad_solutions_and_lengths_raise_naming_the_index():
    with RewardWorker(RewardConfig(judge="none", embedding_model="none")) as w:
        with pytest.raises(ValueError, match=r"solutions\[2\].*must start with a modality tag"):
            w.submit(["q"] * 3, ["r"] * 3, [SOL.format("a"), SOL.format("b"), "no tag here"])
        with pytest.raises(ValueError, match=r"solutions\[1\].*unknown modality tag '<XRAY>'"):
            w.submit(["q"] * 2, ["r"] * 2, [SOL.format("a"), "<XRAY> fracture"])
        with pytest.raises(ValueError, match="same length, got 2, 3 and 2"):
            w.submit(["q"] * 2, ["r"] * 3, [SOL.format("a")] * 2)
        with pytest.raises(TypeError, match=r"responses\[1\] must be a str"):
            w.submit(["q"] * 2, ["r", None], [SOL.format("a")] * 2)
        with pytest.raises(TypeError, match="problems must be a list"):
            w.submit("q", ["r"], [SOL.format("a")])
        assert w.score([], [], []) == []


def test_nan_embedding_scores_zero_and_is_flagged():
    nan = [float("nan")] * 3
    emb = FakeEmbedder({"Aspirin": nan, "Ibuprofen": [1.0, 0.0, 0.0], "Acetylsalicylic acid": [1.0, 0.0, 0.0],
                        "Pain relief": [1.0, 0.0, 0.0]})
    res = score([GOOD.format("Aspirin"), GOOD.format("Ibuprofen")], [SOL.format("Acetylsalicylic acid"),
                                                                     SOL.format("Pain relief")],
                judge=ScriptedJudge(), embedder=emb)
    assert (res[0].embedding, res[0].embedding_failed) == (0.0, True)
    assert (res[1].embedding, res[1].embedding_failed) == (1.0, False)
    assert res[0].total == pytest.approx(total(1, 0, 1, 1)) and math.isfinite(res[0].total)


def test_embedder_error_fails_only_the_embedding():
    class Broken(FakeEmbedder):
        def rewards(self, *a, **k):
            raise RuntimeError("embedding model crashed")
    [r] = score([GOOD.format("Aspirin")], [SOL.format("Ibuprofen")], judge=ScriptedJudge(), embedder=Broken())
    assert r.embedding_failed and r.embedding == 0.0 and (r.judge, r.judge_failed) == (1.0, False)


def test_judge_that_raises_fails_judgements_not_the_batch():
    judge = BareJudge(raises=RuntimeError("judge exploded"))
    res = score([GOOD.format("Aspirin"), GOOD.format("Yes")], [SOL.format("Ibuprofen"), SOL.format("Yes")],
                judge=judge)
    assert res[0].judge_failed and res[0].judge == 0.0 and "judge exploded" in res[0].judge_error
    assert res[1].exact_match and not res[1].judge_failed and res[1].total == pytest.approx(1.0)
    assert judge.calls == [[("q0", "Ibuprofen", "Aspirin")]]


def test_judge_returning_too_few_verdicts_fails_the_missing_ones():
    class Short(BareJudge):
        async def judge_many(self, items, *, deadline=None):
            return (await super().judge_many(items, deadline=deadline))[:1]
    res = score([GOOD.format("Aspirin"), GOOD.format("Ibuprofen")], [SOL.format("X y")] * 2, judge=Short())
    assert all(r.judge_failed and r.judge == 0.0 for r in res)
    assert "1 verdicts for 2" in res[0].judge_error


@pytest.mark.parametrize("judge_cls", ["bare", "scripted"])
def test_slow_judge_returns_by_the_deadline(judge_cls):
    judge = BareJudge(sleep=30) if judge_cls == "bare" else ScriptedJudge(delay=30)
    t0 = time.monotonic()
    res = score([GOOD.format("Aspirin"), GOOD.format("Yes"), GOOD.format("?")],
                [SOL.format("Ibuprofen"), SOL.format("Yes"), SOL.format("Yes")], judge=judge, deadline_s=0.5)
    elapsed = time.monotonic() - t0
    assert elapsed < 0.5 + 0.6, elapsed
    assert res[0].judge_failed and res[0].judge == 0.0 and "deadline" in res[0].judge_error
    assert res[0].total == pytest.approx(total(0, res[0].embedding, 1, 1))
    assert res[1].exact_match and res[1].total == pytest.approx(1.0) and not res[1].judge_failed
    assert res[2].invalid_answer and not res[2].judge_failed


def test_judge_none_and_embedding_none():
    cfg = RewardConfig(judge="none", embedding_model="none")
    with RewardWorker(cfg) as w:
        res = w.score(["q", "q"], [GOOD.format("Yes"), GOOD.format("Aspirin")],
                      [SOL.format("Yes"), SOL.format("Ibuprofen")])
        assert res[0].exact_match and res[0].total == pytest.approx(1.0)
        assert parts(res[1]) == (0.0, 0.0, 1.0, 1.0) and not res[1].judge_failed and not res[1].embedding_failed
        assert res[1].total == pytest.approx(total(0, 0, 1, 1))
        assert "judge_requests" not in w.stats() and w.stats()["samples"] == 2


def test_weights_are_configurable():
    w = RewardWeights(content=1.0, judge=1.0, embedding=0.0, modality=0.0, format=0.0)
    [r] = score([GOOD.format("Aspirin")], [SOL.format("Ibuprofen")], judge=ScriptedJudge(), weights=w)
    assert r.total == 1.0
    [r] = score([GOOD.format("Aspirin")], [SOL.format("Ibuprofen")], judge=ScriptedJudge({"Aspirin": "NO"}),
                weights={"format": 0.5, "content": 0.5})
    assert r.total == pytest.approx(0.5 * 0.05 + 0.5)


def test_continuous_embedding_mode_and_threshold_reach_the_embedder():
    emb = FakeEmbedder({"Aspirin": [1.0, 0.0], "Ibuprofen": [0.6, 0.8]})
    [r] = score([GOOD.format("Aspirin")], [SOL.format("Ibuprofen")], judge=ScriptedJudge(), embedder=emb,
                embedding_mode="continuous")
    assert r.embedding == pytest.approx(0.6) and emb.calls[-1][2:] == ("continuous", 0.8)
    [r] = score([GOOD.format("Aspirin")], [SOL.format("Ibuprofen")], judge=ScriptedJudge(), embedder=emb,
                embedding_threshold=0.5)
    assert r.embedding == 1.0 and emb.calls[-1][2:] == ("threshold", 0.5)


def test_submit_returns_at_once_while_the_judge_runs():
    judge = ScriptedJudge(delay=0.4)
    with RewardWorker(RewardConfig(deadline_s=10), judge=judge, embedder=FakeEmbedder()) as w:
        t0 = time.monotonic()
        f1 = w.submit(["q"], [GOOD.format("Aspirin")], [SOL.format("Ibuprofen")])
        f2 = w.submit(["q"], [GOOD.format("Paracetamol")], [SOL.format("Ibuprofen")])
        assert time.monotonic() - t0 < 0.1 and not f1.done() and not f2.done()
        r1, r2 = f1.result(timeout=5), f2.result(timeout=5)
        elapsed = time.monotonic() - t0
        assert 0.4 <= elapsed < 0.75, elapsed  # both batches judged concurrently on the worker's loop
        assert r1[0].judge == r2[0].judge == 1.0
        s = w.stats()
        assert s["batches"] == 2 and s["samples"] == 2 and "judge_requests" in s
    with pytest.raises(RuntimeError, match="closed"):
        w.submit(["q"], ["r"], [SOL.format("a")])


def test_judge_parity_must_match_the_config():
    with pytest.raises(ValueError, match="judge parity 'official' differs"):
        RewardWorker(RewardConfig(parity="strict"), judge=ScriptedJudge(parity="official"))


def test_bare_embedder_returning_nan_or_too_few_values():
    class Bare:
        def __init__(self, values, bad):
            self.out = (values, bad)

        def rewards(self, answers, references, *, mode, threshold):
            return self.out
    res = score([GOOD.format("Aspirin"), GOOD.format("Ibuprofen")], [SOL.format("X y")] * 2,
                judge=ScriptedJudge(), embedder=Bare([float("nan"), 1.0], [False, False]))
    assert [(r.embedding, r.embedding_failed) for r in res] == [(0.0, True), (1.0, False)]
    res = score([GOOD.format("Aspirin"), GOOD.format("Ibuprofen")], [SOL.format("X y")] * 2,
                judge=ScriptedJudge(), embedder=Bare([1.0], [False]))
    assert all(r.embedding_failed and r.embedding == 0.0 and r.judge == 1.0 for r in res)


def test_close_cancels_running_batches():
    import concurrent.futures
    w = RewardWorker(RewardConfig(deadline_s=60), judge=BareJudge(sleep=30), embedder=FakeEmbedder())
    future = w.submit(["q"], [GOOD.format("Aspirin")], [SOL.format("Ibuprofen")])
    time.sleep(0.1)
    t0 = time.monotonic()
    w.close()
    assert time.monotonic() - t0 < 3
    with pytest.raises(concurrent.futures.CancelledError):
        future.result(timeout=1)
    w.close()  # idempotent


def test_preload_loads_the_backends():
    emb = FakeEmbedder()
    with RewardWorker(RewardConfig(judge="none"), embedder=emb) as w:
        assert w.preload().result(timeout=5) is None
    with RewardWorker(RewardConfig(judge="http", judge_url="http://127.0.0.1:9/v1", judge_model="m",
                                   embedding_model="none")) as w:
        w.preload().result(timeout=30)
        assert w._judge is not None and w._judge._loop is w._loop  # HTTP client built for the worker's loop


def test_embedding_model_none_value_means_the_bundled_model():
    assert RewardWorker(RewardConfig(judge="none"))._embedding_enabled()  # None: bundled MiniLM, on
    for off in ("none", "None", " NONE "):
        w = RewardWorker(RewardConfig(judge="none", embedding_model=off))
        assert not w._embedding_enabled()
        w.close()
    w = RewardWorker(RewardConfig(judge="none", embedding_model="none"), embedder=FakeEmbedder())
    assert w._embedding_enabled()  # an injected embedder wins
    w.close()
