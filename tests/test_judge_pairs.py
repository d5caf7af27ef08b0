"""benchmarks judge-pairs: the labelled PubMedQA pairs, the threshold fit and the written report
(the model run itself is the benchmark; here the margins come from a file)."""
import csv
import math

import pytest

from medix_r1.eval.studies import judge_pairs
from medix_r1.rewards import parse_solution
from medix_r1.rewards.decision import decision_mismatch, leading_decision


@pytest.fixture(scope="module")
def records():
    return judge_pairs.load_records()


def test_pairs_are_labelled_and_built_from_the_records(records):
    pairs = judge_pairs.build_pairs(records, 10, seed=3)
    assert len(pairs) == 40 and sum(p["label"] for p in pairs) == 20
    by_id = {r["id"]: r for r in records}
    for p in pairs:
        rec = by_id[p["id"]]
        assert p["reference"] == parse_solution(rec["solution"])[1]
        decision = leading_decision(p["answer"])
        if p["kind"] == "own":
            assert decision == rec["decision"] and rec["long_answer"].strip() in p["answer"]
        elif p["kind"] == "flipped":
            assert decision not in (None, rec["decision"]) and p["answer"].endswith(rec["long_answer"].strip())
        elif p["kind"] == "other":
            assert rec["long_answer"].strip() not in p["answer"]
        else:
            assert p["answer"] != p["reference"] and p["label"]
    assert judge_pairs.build_pairs(records, 10, seed=3) == pairs  # seeded
    with pytest.raises(ValueError, match="records"):
        judge_pairs.build_pairs(records, 1)


def test_fit_threshold_separates_and_ignores_gated_pairs():
    pairs = [{"label": lab} for lab in (True, True, True, False, False, False)]
    assert judge_pairs.fit_threshold(pairs, [1.0, 2.0, 3.0, -1.0, 0.5, -math.inf]) == pytest.approx(0.75)


def test_report_from_saved_margins(records, tmp_path):
    pairs = judge_pairs.build_pairs(records, 8)
    # a judge that is right on every pair the gate lets through, with margins +-1
    margins = [-math.inf if p["kind"] == "flipped" else (1.0 if p["label"] else -1.0) for p in pairs]
    judge_pairs.write_margins(tmp_path / "m.csv", pairs, margins)
    assert judge_pairs.main(["--records", "8", "--margins", str(tmp_path / "m.csv"), "--decision-gate", "on",
                             "--min-similarity", "0", "--threshold", "0", "--calibrate", "--out-dir", str(tmp_path),
                             "--name", "t"]) == 0
    rows = list(csv.DictReader(open(tmp_path / "t.csv")))
    assert [r["split"] for r in rows] == ["all", "half 1", "half 0"]
    assert all(float(r["yes_rate_wrong"]) == 0.0 for r in rows)
    # the gate also says NO to right answers that do not open with the decision ("It is not certain; maybe")
    missed = sum(p["label"] and decision_mismatch(p["answer"], p["reference"]) for p in pairs)
    assert rows[0]["pairs"] == "32" and float(rows[0]["yes_rate_right"]) == pytest.approx(1 - missed / 16, abs=1e-4)
    assert float(rows[0]["accuracy"]) == pytest.approx(1 - missed / 32, abs=1e-4)
    md = (tmp_path / "t.md").read_text()
    assert "judge-pairs --records 8" in md and "| 0.0% |" in md
    with pytest.raises(ValueError, match="other gates"):
        judge_pairs.main(["--records", "8", "--margins", str(tmp_path / "m.csv"), "--decision-gate", "off",
                          "--out-dir", str(tmp_path)])
    with pytest.raises(ValueError, match="differ"):
        judge_pairs.main(["--records", "9", "--margins", str(tmp_path / "m.csv"), "--out-dir", str(tmp_path)])


def test_topic_gate_on_saved_margins(records, tmp_path):
    """A judge that says YES to every pair it sees: the topic gate (real MiniLM) turns the answers
    with another record's conclusion into NO, and no right answer (own) is lost to it."""
    pairs = judge_pairs.build_pairs(records, 8)
    judge_pairs.write_margins(tmp_path / "m.csv", pairs, [1.0] * len(pairs))
    argv = ["--records", "8", "--margins", str(tmp_path / "m.csv"), "--decision-gate", "off", "--threshold", "0",
            "--out-dir", str(tmp_path), "--name"]
    assert judge_pairs.main(argv + ["off", "--min-similarity", "0"]) == 0
    assert judge_pairs.main(argv + ["on", "--min-similarity", "0.35"]) == 0
    off, on = (next(csv.DictReader(open(tmp_path / f"{n}.csv"))) for n in ("off", "on"))
    assert float(off["yes_rate_other"]) == 1.0 and float(on["yes_rate_other"]) == 0.0
    assert float(on["yes_rate_own"]) == 1.0 and float(on["yes_rate_flipped"]) == 1.0  # same conclusion: on topic
    assert "topic gate 0.35" in (tmp_path / "on.md").read_text()
    with pytest.raises(ValueError, match="--min-similarity"):
        judge_pairs.main(argv + ["bad", "--min-similarity", "1.5"])


def test_attacks_are_wrong_held_out_and_stopped_by_the_restatement_checks(records, tmp_path):
    """A judge that says YES to every pair it sees: the negated and shuffled answers get YES without
    the restatement checks and NO with them, no right answer is lost, and the attacks change neither
    the base pairs nor the accuracy or a fitted threshold."""
    pairs = judge_pairs.build_pairs(records, 8, attacks=True)
    assert pairs[:32] == judge_pairs.build_pairs(records, 8)  # the base pairs are the same
    attacks = pairs[32:]
    assert [p["kind"] for p in attacks] == ["negated", "shuffled"] * 8 and not any(p["label"] for p in attacks)
    by_id = {r["id"]: r for r in records}
    for p in attacks[1::2]:  # the record's decision, then its conclusion's words in another order
        assert sorted(p["answer"].split()[1:]) == sorted(by_id[p["id"]]["long_answer"].split())
    judge_pairs.write_margins(tmp_path / "m.csv", pairs, [1.0] * len(pairs))
    argv = ["--records", "8", "--attacks", "--margins", str(tmp_path / "m.csv"), "--decision-gate", "off",
            "--min-similarity", "0", "--threshold", "0", "--calibrate", "--out-dir", str(tmp_path), "--name"]
    assert judge_pairs.main(argv + ["off", "--restatement-gate", "off"]) == 0
    assert judge_pairs.main(argv + ["on", "--restatement-gate", "on"]) == 0
    off, on = (list(csv.DictReader(open(tmp_path / f"{n}.csv"))) for n in ("off", "on"))
    assert float(off[0]["yes_rate_negated"]) == 1.0 and float(off[0]["yes_rate_shuffled"]) == 1.0
    assert float(on[0]["yes_rate_negated"]) == 0.0 and float(on[0]["yes_rate_shuffled"]) == 0.0
    assert float(on[0]["yes_rate_own"]) == 1.0 and float(on[0]["yes_rate_paraphrase"]) == 1.0
    assert on[0]["pairs"] == off[0]["pairs"] == "32" and on[0]["accuracy"] == off[0]["accuracy"]  # base kinds only
    assert "YES negated" in (tmp_path / "on.md").read_text()


def test_negate_toggles_one_negation():
    assert judge_pairs.negate("The drug is safe.") == "The drug is not safe."
    assert judge_pairs.negate("The drug did not work.") == "The drug did work."
    assert judge_pairs.negate("Surgery doesn't help.") == "Surgery does help."
    assert judge_pairs.negate("Early surgery helps.") == "It is not true that early surgery helps."
