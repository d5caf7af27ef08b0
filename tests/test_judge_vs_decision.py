"""benchmarks judge-vs-decision: the recipe's reward on decision-eval responses, split by decision."""
import csv
import json

import numpy as np
import pytest

from benchmarks.__main__ import main as benchmarks_main
from medix_r1.eval.studies import judge_vs_decision
from medix_r1.eval.studies.decision_eval import load_items


def test_gap_interval_on_constructed_cases():
    right = np.array([True] * 50 + [False] * 50)
    judge = np.array([1.0] * 40 + [0.0] * 10 + [1.0] * 10 + [0.0] * 40)  # YES 80% when right, 20% when wrong
    gap, lo, hi = judge_vs_decision.gap_interval(judge, right, 2000, 0)
    assert gap == pytest.approx(0.6) and 0.4 < lo < 0.6 < hi < 0.8
    gap, lo, hi = judge_vs_decision.gap_interval(np.ones(100), right, 500, 0)  # a judge that always says YES
    assert (gap, lo, hi) == (0.0, 0.0, 0.0)
    assert np.isnan(judge_vs_decision.gap_interval(judge, np.ones(100, bool), 500, 0)[0])


def test_scores_real_responses_with_the_cpu_recipe_reward(tmp_path):
    items = []
    for i, rec in enumerate(load_items(limit=6)):
        word = {"yes": "Yes", "no": "No", "maybe": "Maybe"}[rec["gold"]]
        wrong = "No" if word != "No" else "Yes"
        right = i % 2 == 0
        answer = f"{word if right else wrong}. {rec['long_answer']}"
        items.append({"id": rec["id"], "gold": rec["gold"], "models": {"m": {
            "decision": word.lower() if right else wrong.lower(), "correct": right, "answer_tag": True,
            "response": f"<OTHER> <thinking>From the abstract.</thinking> <answer>{answer}</answer>"}}})
    path = tmp_path / "x-items.jsonl"
    path.write_text("".join(json.dumps(it) + "\n" for it in items))
    argv = ["judge-vs-decision", str(path), "--out-dir", str(tmp_path), "--name", "t", "--resamples", "200"]
    assert benchmarks_main(argv) == 0
    row = next(csv.DictReader(open(tmp_path / "t.csv")))
    assert row["responses"] == "6" and row["decision_right"] == "3"
    assert float(row["judge_wrong"]) == 0.0  # the decision gate: wrong decisions are NO without the model
    assert float(row["judge_gated_share"]) >= 0.5 and float(row["format"]) == 1.0
    assert float(row["gap"]) == pytest.approx(float(row["judge_right"]))
    assert "judge-vs-decision" in (tmp_path / "t.md").read_text()
    with pytest.raises(ValueError, match="--overwrite"):
        benchmarks_main(argv)


def test_bad_items_are_named(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        judge_vs_decision.main([str(tmp_path / "none.jsonl"), "--out-dir", str(tmp_path)])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"x": 1}\n')
    with pytest.raises(ValueError, match="not a decision-eval items file"):
        judge_vs_decision.main([str(bad), "--out-dir", str(tmp_path)])
    other = tmp_path / "other.jsonl"
    other.write_text(json.dumps({"id": "pubmedqa-0", "models": {"m": {"response": "x", "correct": False}}}) + "\n")
    with pytest.raises(ValueError, match="not bundled PubMedQA test items"):
        judge_vs_decision.main([str(other), "--out-dir", str(tmp_path)])
    with pytest.raises(ValueError, match="--resamples"):
        judge_vs_decision.main([str(other), "--resamples", "5"])


def test_run_curves_plots_two_real_runs(tmp_path):
    from benchmarks.__main__ import main
    from medix_r1.eval.studies import run_curves
    # the embedded run of 2026-12-01 (before the judge's gates), kept for comparisons
    metrics = run_curves.Path(__file__).resolve().parents[1] / "benchmarks" / "results" / \
        "train_cpu_default-2026-12-01-metrics.jsonl"
    half = tmp_path / "half" / "metrics.jsonl"
    half.parent.mkdir()
    half.write_text("".join(metrics.read_text().splitlines(keepends=True)[:12]))
    assert main(["run-curves", str(metrics), str(half), "--labels", "full,half", "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 10_000
    runs = {"full": run_curves.read_history(metrics), "half": run_curves.read_history(half)}
    first, last = run_curves.window_means(runs["full"], "reward/format")
    assert first == pytest.approx(0.306, abs=1e-3) and last == pytest.approx(0.969, abs=1e-3)  # the published run
    assert "0.306 -> 0.969" in run_curves.table(runs)
    with pytest.raises(ValueError, match="--labels"):
        main(["run-curves", str(metrics), str(half), "--labels", "a", "--out", str(tmp_path / "d.png")])
    with pytest.raises(ValueError, match="no training steps"):
        (tmp_path / "e.jsonl").write_text('{"x": 1}\n')
        run_curves.read_history(tmp_path / "e.jsonl")
