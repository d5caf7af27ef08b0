"""The decision gate (rewards.decision) and the local judge's YES/NO margin threshold."""
import asyncio
import math

import pytest

from medix_r1.rewards import JudgeClient, RewardConfig
from medix_r1.rewards.decision import decision_mismatch, leading_decision
from medix_r1.rewards.worker import make_judge

from .fault_server import FaultServer


@pytest.mark.parametrize("text, decision", [
    ("No. These data indicate that ...", "no"), ("Yes, there is", "yes"), ("yes it does", "yes"),
    ("The answer is yes: x", "yes"), ("  Maybe.", "maybe"), ("Maybe the trial was small", "maybe"),
    ("No \u2014 the trial", "no"), ("No", "no"), (" no ", "no"), ("Yes", "yes"),
    ("No acute cardiopulmonary process.", None), ("Nothing found", None),
    ("It is not certain; maybe", None), ("Pneumonia", None), ("", None)])
def test_leading_decision(text, decision):
    assert leading_decision(text) == decision


def test_decision_mismatch_needs_the_reference_decision():
    assert decision_mismatch("No. Aspirin works", "Yes. Aspirin works")
    assert decision_mismatch("Aspirin works", "Yes. Aspirin works")  # the decision left out
    assert not decision_mismatch("yes, aspirin works", "Yes. Aspirin works")
    assert not decision_mismatch("No", "No. Aspirin does not work")  # parsed answers lose the final period
    assert not decision_mismatch("No. right lung", "Left kidney")  # no decision in the reference: no gate
    assert not decision_mismatch("Clear lungs.", "No acute cardiopulmonary process.")


def test_gate_answers_no_without_a_request_in_strict_mode_only():
    items = [("q", "Yes. Aspirin works", "No. Aspirin works"), ("q", "Yes. Aspirin works", "Yes, it works"),
             ("q", "Left kidney", "No. right lung")]
    with FaultServer(responder=lambda messages: "YES") as server:
        gated = JudgeClient(server.url, "m", max_retries=0, decision_gate=True)
        verdicts = asyncio.run(gated.judge_many(items))
        assert [v.correct for v in verdicts] == [False, True, True]
        assert len(server.prompts()) == 2 and gated.stats()["gated"] == 1
        official = JudgeClient(server.url, "m", max_retries=0, decision_gate=True, parity="official")
        assert [v.correct for v in asyncio.run(official.judge_many(items))] == [True, True, True]
        assert len(server.prompts()) == 5 and official.stats()["gated"] == 0


def test_rewards_cli_flags_reach_the_config():
    from medix_r1.rewards.cli import build_parser, make_config
    base = ["score", "--input", "in.jsonl", "--output", "out.jsonl"]
    default = make_config(build_parser().parse_args(base))
    assert (default.judge_decision_gate, default.judge_threshold) == (True, -1.22)
    cfg = make_config(build_parser().parse_args(base + ["--decision-gate", "off", "--judge-threshold", "0.5"]))
    assert (cfg.judge_decision_gate, cfg.judge_threshold) == (False, 0.5)


def test_config_validates_and_passes_gate_and_threshold():
    with pytest.raises(ValueError, match="judge_threshold"):
        RewardConfig(judge_threshold=math.nan)
    with pytest.raises(ValueError, match="judge_decision_gate"):
        RewardConfig(judge_decision_gate="yes")
    judge = make_judge(RewardConfig(judge="http", judge_url="http://127.0.0.1:1/v1", judge_model="m",
                                    judge_decision_gate=True))
    assert judge.decision_gate is True
    assert make_judge(RewardConfig(judge="http", judge_url="http://127.0.0.1:1/v1", judge_model="m",
                                   judge_decision_gate=False)).decision_gate is False


@pytest.mark.slow
def test_local_judge_threshold_and_gate():
    pytest.importorskip("transformers")
    from medix_r1.models import smollm2_hf_dir
    from medix_r1.rewards import LocalJudge, judge_messages

    with pytest.raises(ValueError, match="threshold"):
        LocalJudge(smollm2_hf_dir(), threshold=math.inf)
    items = [("q", "Yes. Aspirin lowers fever.", "Yes. Aspirin lowers fever."),
             ("q", "Left kidney", "The right lung"), ("q", "Yes. Aspirin lowers fever.", "No. Aspirin lowers fever.")]
    judge = LocalJudge(smollm2_hf_dir(), threshold=-100.0, decision_gate=True)
    margins = judge.yes_no_margins([judge_messages(a, r) for _, r, a in items])
    assert all(math.isfinite(m) and -100 < m < 100 for m in margins)
    verdicts = asyncio.run(judge.judge_many(items))
    assert [v.correct for v in verdicts] == [True, True, False]  # margin > -100, except the gated pair
    assert judge.stats()["requests"] == 3 + 2 and judge.stats()["gated"] == 1  # the gated pair costs no forward
    high = LocalJudge(smollm2_hf_dir(), threshold=100.0)
    assert [v.correct for v in asyncio.run(high.judge_many(items))] == [False] * 3
    assert high.model_id != judge.model_id  # the reply cache keeps thresholds apart


# --- the restatement checks: the reference's words negated or shuffled (issue 30, item 2) -------------
REF = "Yes. Daily aspirin was associated with fewer heart attacks in adults over 50, and bleeding was rare."


@pytest.mark.parametrize("answer, wrong", [
    (REF, False),                                                                      # the reference itself
    ("Yes. Daily aspirin was not associated with fewer heart attacks in adults over 50, and bleeding was rare.",
     True),                                                                            # one word negated
    ("Yes. It is not true that daily aspirin was associated with fewer heart attacks in adults over 50, and "
     "bleeding was rare.", True),                                                      # the sentence negated
    ("Yes. attacks over was aspirin Daily heart fewer 50, in bleeding with and adults rare. associated was",
     True),                                                                            # word salad
    ("Yes. Daily aspirin was associated with fewer heart attacks in adults over 50, and bleeding was rare. "
     "No patient stopped the drug.", False),                                           # a negation of its own
    ("Yes. In people over fifty, taking aspirin every day cut heart attacks, with little bleeding.", False),
    ("Yes.", False), ("Yes. Not associated.", False),                                 # too short to judge here
])
def test_restatement_mismatch(answer, wrong):
    from medix_r1.rewards.decision import restatement_mismatch
    assert restatement_mismatch(answer, REF) is wrong


def test_removing_a_negation_of_the_reference_is_caught():
    from medix_r1.rewards.decision import restatement_mismatch
    ref = "No. Physical characteristics are not a predictor of tidal volume delivery, and a manual device is not one."
    assert restatement_mismatch(ref.replace("are not a", "are a"), ref)
    assert not restatement_mismatch(ref, ref)


def test_the_decision_gate_says_no_to_negated_and_shuffled_restatements_without_a_request():
    items = [("q", REF, REF.replace("was associated", "was not associated")),
             ("q", REF, "Yes. " + " ".join(reversed(REF[5:].split()))), ("q", REF, REF + " Well tolerated.")]
    with FaultServer(responder=lambda messages: "YES") as server:
        gated = JudgeClient(server.url, "m", max_retries=0, decision_gate=True)
        assert [v.correct for v in asyncio.run(gated.judge_many(items))] == [False, False, True]
        assert len(server.prompts()) == 1 and gated.stats()["gated"] == 2
        plain = JudgeClient(server.url, "m", max_retries=0, decision_gate=False)  # without the gate: a YES each
        assert [v.correct for v in asyncio.run(plain.judge_many(items))] == [True, True, True]
