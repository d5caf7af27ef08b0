"""Studies of a training run: what training changed, and whether the reward's judge can tell right from wrong.

    python -m medix_r1.eval.studies NAME [options]     (NAME --help for each)

- ``decision-eval`` (:mod:`.decision_eval`, its report in :mod:`.decision_report`): trained vs base
  model on the bundled PubMedQA test items, scored by the yes / no / maybe decision, with paired
  bootstrap intervals;
- ``judge-pairs`` (:mod:`.judge_pairs`): the reward judge on labelled answer / reference pairs built
  by rule (accuracy, YES rates, fitted thresholds, the gates, cheap attacks);
- ``judge-vs-decision`` (:mod:`.judge_vs_decision`): the recipe's reward on the responses
  ``decision-eval`` saved, right vs wrong decisions;
- ``run-curves`` (:mod:`.run_curves`): training runs' metrics.jsonl side by side.

They write into benchmarks/results by default, where their committed results are; ``python -m
benchmarks NAME`` (the command those results name) runs the same study.
"""
from pathlib import Path

_CHECKOUT_RESULTS = Path(__file__).resolve().parents[3] / "benchmarks" / "results"
# the checkout's benchmarks/results (the committed results); installed without the checkout: ./benchmarks/results
RESULTS = _CHECKOUT_RESULTS if _CHECKOUT_RESULTS.is_dir() else Path("benchmarks") / "results"
