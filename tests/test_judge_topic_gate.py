"""The topic gate (rewards.decision.off_topic, reward.judge_min_similarity): NO without the judge when
the answer's conclusion is another question's, with the bundled MiniLM on real PubMedQA text."""
import asyncio
import json
import math
import time
from pathlib import Path

import pytest
import torch

from medix_r1.rewards import JudgeClient, RewardConfig
from medix_r1.rewards.decision import off_topic, without_decision
from medix_r1.rewards.worker import prepare, score_samples

from .fault_server import FaultServer

DATA = Path(__file__).resolve().parents[1] / "medix_r1" / "data" / "pubmedqa" / "train.jsonl"


@pytest.fixture(scope="module")
def embedder():
    from medix_r1.rewards.embedding import Embedder
    return Embedder()


@pytest.fixture(scope="module")
def two_records():
    with open(DATA) as fh:
        records = [json.loads(line) for line, _ in zip(fh, range(40))]
    a = records[0]
    b = next(r for r in records[1:] if r["decision"] == a["decision"])  # same decision, another question
    return a, b


@pytest.mark.parametrize("text, body", [
    ("Yes. Aspirin works.", "Aspirin works."), ("No, it does not", "it does not"), ("Maybe", ""),
    ("The answer is yes: the drug helps", "the drug helps"), ("No acute findings.", "No acute findings."),
    ("Aspirin works", "Aspirin works")])
def test_without_decision(text, body):
    assert without_decision(text) == body


def test_off_topic_on_real_conclusions(embedder, two_records):
    a, b = two_records
    word = {"yes": "Yes", "no": "No", "maybe": "Maybe"}[a["decision"]]
    reference = f"{word}. {a['long_answer']}"
    answers = [reference,                                   # the reference itself
               f"{word}. {b['long_answer']}",               # right decision, another record's conclusion
               f"{word}.",                                   # a decision and nothing to compare
               a["long_answer"].split(". ")[0]]              # the first sentence of the right conclusion
    flags = off_topic(embedder.encode, answers, [reference] * 4, 0.35)
    assert flags == [False, True, False, False]
    assert off_topic(embedder.encode, answers[:1], [reference], 1.01) == [True]  # no cosine reaches 1.01


def test_off_topic_checks_lengths_and_treats_broken_embeddings_as_off_topic():
    with pytest.raises(ValueError, match="same length"):
        off_topic(lambda texts: torch.ones(len(texts), 4), ["a"], [], 0.3)
    nan = lambda texts: torch.full((len(texts), 4), math.nan)
    assert off_topic(nan, ["Yes. x"], ["Yes. x"], 0.3) == [True]


def test_worker_gates_off_topic_answers_without_a_judge_call(embedder, two_records):
    a, b = two_records
    word = {"yes": "Yes", "no": "No", "maybe": "Maybe"}[a["decision"]]
    solution = f"<OTHER> {word}. {a['long_answer']}"
    responses = [f"<OTHER> <thinking>x</thinking> <answer>{word}. {b['long_answer']}</answer>",
                 f"<OTHER> <thinking>x</thinking> <answer>{word}. {a['long_answer'].split('. ')[0]}</answer>"]
    cfg = RewardConfig(judge="http", judge_url="http://127.0.0.1:1/v1", judge_model="m", judge_min_similarity=0.35)
    samples = prepare(["q", "q"], responses, [solution, solution], cfg)
    with FaultServer(responder=lambda messages: "YES") as server:
        judge = JudgeClient(server.url, "m", max_retries=0, decision_gate=True)
        results = asyncio.run(score_samples(samples, cfg, judge, lambda: embedder, time.monotonic() + 60))
        assert [r.judge for r in results] == [0.0, 1.0]
        assert results[0].judge_reply == "NO" and not results[0].judge_failed
        assert len(server.prompts()) == 1 and judge.stats()["gated"] == 1
        off = RewardConfig(judge="http", judge_url="http://127.0.0.1:1/v1", judge_model="m")  # gate off: both asked
        results = asyncio.run(score_samples(samples, off, judge, lambda: embedder, time.monotonic() + 60))
        # only the formerly gated answer is new to the judge (the other verdict is in the client's cache)
        assert [r.judge for r in results] == [1.0, 1.0] and len(server.prompts()) == 2


def test_worker_asks_the_judge_when_the_embedding_model_fails():
    class Broken:
        def encode(self, texts):
            raise RuntimeError("embedding model gone")

        def rewards(self, answers, references, **kw):
            raise RuntimeError("embedding model gone")

    cfg = RewardConfig(judge="http", judge_url="http://127.0.0.1:1/v1", judge_model="m", judge_min_similarity=0.35)
    samples = prepare(["q"], ["<OTHER> <thinking>x</thinking> <answer>Yes. Something else entirely</answer>"],
                      ["<OTHER> Yes. Aspirin works"], cfg)
    with FaultServer(responder=lambda messages: "YES") as server:
        judge = JudgeClient(server.url, "m", max_retries=0)
        results = asyncio.run(score_samples(samples, cfg, judge, Broken, time.monotonic() + 60))
        assert results[0].judge == 1.0 and results[0].embedding_failed and len(server.prompts()) == 1


def test_config_and_cli_for_the_topic_gate():
    for bad in (-0.1, 1.5, math.nan, "0.3"):
        with pytest.raises(ValueError, match="judge_min_similarity"):
            RewardConfig(judge_min_similarity=bad)
    with pytest.raises(ValueError, match="parity='strict' only"):
        RewardConfig(judge_min_similarity=0.3, parity="official")
    with pytest.raises(ValueError, match="embedding_model is 'none'"):
        RewardConfig(judge_min_similarity=0.3, embedding_model="none")
    # no judge (or no MediX reward at all): the gate has nothing to gate, turning embeddings off is fine
    RewardConfig(judge_min_similarity=0.3, embedding_model="none", judge="none")
    from medix_r1.config import load_config
    with pytest.raises(ValueError, match="judge_min_similarity=0"):  # the CPU recipe's gate, named with its fix
        load_config(overrides=["reward.embedding_model=none"])
    assert load_config(overrides=["reward.embedding_model=none", "reward.judge=none"]).reward.judge == "none"
    from medix_r1.rewards.cli import build_parser, make_config
    base = ["score", "--input", "in.jsonl", "--output", "out.jsonl"]
    assert make_config(build_parser().parse_args(base)).judge_min_similarity == 0.0
    cfg = make_config(build_parser().parse_args(base + ["--judge-min-similarity", "0.4"]))
    assert cfg.judge_min_similarity == 0.4
    from medix_r1.config import load_config
    assert load_config().reward.judge_min_similarity == 0.35  # the embedded CPU recipe turns it on
