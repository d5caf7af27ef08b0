"""``python -m medix_r1.eval.studies NAME``: the studies' own command, and ``python -m benchmarks NAME``
(the command their committed results name) running the same modules."""
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.__main__ import SUBCOMMANDS
from medix_r1.eval.studies import RESULTS
from medix_r1.eval.studies.__main__ import STUDIES, main

ROOT = Path(__file__).resolve().parents[1]


def test_benchmarks_forwards_every_study_to_its_module():
    assert set(STUDIES) == {"decision-eval", "judge-pairs", "judge-vs-decision", "run-curves"}
    for name, module in STUDIES.items():
        assert SUBCOMMANDS[name] == f"medix_r1.eval.studies.{module}"
    assert RESULTS == ROOT / "benchmarks" / "results"  # in a checkout: where the committed results are


def test_unknown_or_missing_study_is_a_usage_error(capsys):
    assert main(["decision_eval"]) == 2 and "unknown study 'decision_eval'" in capsys.readouterr().err
    assert main([]) == 2 and "decision-eval,judge-pairs,judge-vs-decision,run-curves" in capsys.readouterr().err
    assert main(["--help"]) == 0 and "judge-vs-decision" in capsys.readouterr().out


def test_run_curves_through_the_studies_command(tmp_path):
    metrics = RESULTS / "train_cpu_default-2026-12-01-metrics.jsonl"
    out = tmp_path / "c.png"
    proc = subprocess.run([sys.executable, "-m", "medix_r1.eval.studies", "run-curves", str(metrics), "--labels", "a",
                           "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.stat().st_size > 10_000 and "0.306 -> 0.969" in proc.stdout  # the published run's format reward
    usage = subprocess.run([sys.executable, "-m", "medix_r1.eval.studies", "judge-pairs", "--help"], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert usage.returncode == 0 and usage.stdout.startswith("usage: python -m medix_r1.eval.studies judge-pairs")


@pytest.mark.parametrize("name", ["decision-eval", "judge-vs-decision"])
def test_each_study_names_itself_in_its_usage(name, capsys):
    with pytest.raises(SystemExit):
        main([name, "--help"])
    assert capsys.readouterr().out.startswith(f"usage: python -m medix_r1.eval.studies {name}")
