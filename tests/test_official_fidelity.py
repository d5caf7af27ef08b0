"""The official recipes, second fidelity pass (issue 29): the reward on solutions the official code
takes as they are (reward.parity=official), the overlong filter's character count, PIL's
convert("RGB"), and fp32 master weights for model.dtype=bfloat16 in one process. Each test's
expected values follow the official code's rule named in its comment (mbzuai-oryx/MediX-R1 at
94fd018)."""
import json

import pytest

from medix_r1.config import load_config
from medix_r1.data.records import load_records
from medix_r1.train.validate import load_validation_records
from tests.test_rewards_worker import FakeEmbedder, ScriptedJudge, score

RESPONSE = "{tag} <thinking>Looked at it.</thinking> <answer>{answer}</answer>"


def total(J, E, M, F):
    return 0.9 * (0.575 * J + 0.375 * E + 0.05 * M) + 0.1 * F


# ----------------------------------------------------------------------------- item 7: untagged solutions

def test_official_parity_scores_solutions_as_the_official_reward_does():
    """training/examples/reward_function/medical.py: _extract_answer takes the text after the first '>'
    (an untagged solution raises, caught: accuracy 0, lines 74 and 99-100 / 117-118); modality_reward
    compares with the text up to the first '>' plus '>', unstripped (line 128)."""
    responses = [RESPONSE.format(tag="<OTHER>", answer="yes"),          # untagged solution
                 RESPONSE.format(tag="<XRAY>", answer="Pneumonia"),     # a tag outside the 16
                 RESPONSE.format(tag="<OTHER>", answer="yes")]          # a solution with a leading space
    solutions = ["yes", "<XRAY> Pneumonia.", " <OTHER> yes"]
    judge, emb = ScriptedJudge(parity="official"), FakeEmbedder()
    got = score(responses, solutions, judge=judge, embedder=emb, parity="official")
    assert [(r.judge, r.embedding, r.modality, r.format) for r in got] == [
        (0.0, 0.0, 0.0, 1.0),   # nothing to compare against: no judge call, no embedding
        (1.0, 1.0, 1.0, 1.0),   # exact match after the tag; the tag itself matches
        (1.0, 1.0, 0.0, 1.0)]   # " <OTHER>" != "<OTHER>"
    assert [r.total for r in got] == pytest.approx([total(0, 0, 0, 1), total(1, 1, 1, 1), total(1, 1, 0, 1)])
    assert judge.items == [] and emb.calls == []
    assert not any(r.invalid_answer or r.judge_failed for r in got)
    with pytest.raises(ValueError, match=r"solutions\[0\]: solution must start with a modality tag"):
        score(responses[:1], solutions[:1], judge=ScriptedJudge(), parity="strict")  # the project's rule stays
    with pytest.raises(ValueError, match=r"solutions\[0\]: solution has unknown modality tag '<XRAY>'"):
        score(responses[1:2], solutions[1:2], judge=ScriptedJudge(), parity="strict")


def test_official_parity_loads_solutions_as_they_are(tmp_path):
    rows = [{"id": "a", "images": [], "problem": "Is it?", "solution": "yes"},
            {"id": "b", "images": [], "problem": "Which?", "solution": "<XRAY> Pneumonia"}]
    data = tmp_path / "val.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tagged, _ = load_records(str(data), default_modality="<OTHER>")
    assert [r["solution"] for r in tagged] == ["<OTHER> yes", "<OTHER> <XRAY> Pneumonia"]  # the project's rule
    cfg = load_config("medix_r1_2b_dapo", [f"data.val={data}", "data.val_split=train"])
    assert cfg.reward.parity == "official"
    assert [r["solution"] for r in load_validation_records(cfg)] == ["yes", "<XRAY> Pneumonia"]
    as_is, skipped = load_records(str(data), default_modality="<OTHER>", any_solution=True)
    assert [r["solution"] for r in as_is] == ["yes", "<XRAY> Pneumonia"] and skipped == 0
