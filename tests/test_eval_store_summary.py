"""Append-only JSON lines with torn-line repair, bootstrap CIs, summaries, charts, compare."""
import json

import numpy as np
import pytest

from medix_r1.eval.charts import bar_chart
from medix_r1.eval.compare import compare
from medix_r1.eval.summary import bootstrap_ci, read_summary_csv, summarize, to_csv, to_markdown
from medix_r1.utils.jsonl import JsonlWriter, read_jsonl


def test_read_jsonl_drops_and_repairs_torn_last_line(tmp_path):
    path = tmp_path / "a.jsonl"
    with JsonlWriter(path) as w:
        w.write({"k": 1})
        w.write({"k": 2})
    good = path.read_bytes()
    path.write_bytes(good + b'{"k": 3, "resp')  # killed mid-write
    assert read_jsonl(path) == [{"k": 1}, {"k": 2}]
    assert path.read_bytes() == good  # repaired: the next append starts on a clean line
    with JsonlWriter(path) as w:
        w.write({"k": 3})
    assert [r["k"] for r in read_jsonl(path)] == [1, 2, 3]


def test_read_jsonl_complete_line_without_newline_and_corruption(tmp_path):
    path = tmp_path / "b.jsonl"
    path.write_text('{"k": 1}\n{"k": 2}')  # no newline: may be torn, so it is redone
    assert read_jsonl(path) == [{"k": 1}]
    path.write_text('{"k": 1}\nnot json\n{"k": 2}\n')
    with pytest.raises(ValueError, match="not valid JSON"):
        read_jsonl(path)
    assert read_jsonl(tmp_path / "missing.jsonl") == []


def test_bootstrap_ci_properties():
    low, high = bootstrap_ci([1.0] * 10)
    assert low == high == 1.0
    scores = np.array([1] * 60 + [0] * 40, dtype=float)
    low, high = bootstrap_ci(scores, resamples=4000)
    # normal approximation: 0.6 +- 1.96 * sqrt(0.24 / 100) = [0.504, 0.696]
    assert 0.49 < low < 0.52 and 0.68 < high < 0.71
    assert bootstrap_ci(scores, seed=3) == bootstrap_ci(scores, seed=3)
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_ci([])


def _item(bench, score, decided_by="judge", rounds=((1, False), (1, False), (0, False))):
    rs = [{"score": s if not f else None, "failed": f} for s, f in rounds] \
        if decided_by == "judge" else []
    return {"benchmark": bench, "score": score, "decided_by": decided_by, "rounds": rs,
            "judge_failed": bool(rs) and all(r["failed"] for r in rs)}


def _items():
    return ([_item("a", 1), _item("a", 0, rounds=((None, True), (None, True), (None, True))),
             _item("a", 1, "exact_match"), _item("a", 0, "empty_answer")]
            + [_item("b", 1)] * 3 + [_item("b", 0, rounds=((0, False), (None, True), (0, False)))])


def test_summarize_counts_and_macro_overall():
    rows = summarize(_items(), resamples=500)
    a, b, overall = rows
    assert (a["benchmark"], a["n"], a["accuracy"]) == ("a", 4, 50.0)
    assert a["exact_match"] == 1 and a["judge_rounds"] == 6 and a["judge_failed_rounds"] == 3
    assert a["judge_failure_rate"] == 50.0 and a["items_all_rounds_failed"] == 1
    assert (b["accuracy"], b["judge_failure_rate"]) == (75.0, round(100 / 12, 2))
    assert overall["benchmark"] == "overall" and overall["accuracy"] == 62.5  # macro (50+75)/2
    assert overall["n"] == 8 and overall["ci_low"] <= 62.5 <= overall["ci_high"]
    md = to_markdown(rows, "run")
    assert "| a | 4 | 50.0 |" in md and "| overall | 8 | 62.5 |" in md


def test_csv_round_trip_chart_and_compare(tmp_path):
    rows = summarize(_items(), resamples=200)
    for name, label in (("r1", "model-1"), ("r2", "model-2")):
        d = tmp_path / name
        d.mkdir()
        (d / "summary.csv").write_text(to_csv(rows if name == "r1" else rows[1:]))
        (d / "run.json").write_text(json.dumps({"model": "/x/" + label, "label": None}))
    back = read_summary_csv(tmp_path / "r1" / "summary.csv")
    assert back == rows
    png = bar_chart({"run": rows}, tmp_path / "c.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = compare([tmp_path / "r1", tmp_path / "r2"], tmp_path / "cmp")
    lines = md.splitlines()
    assert lines[0] == "| Benchmark | model-1 | model-2 |"
    assert lines[2].startswith("| a | 50.0 [") and lines[2].endswith("| – |")
    assert lines[-1].startswith("| overall |")
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 1000
    assert (tmp_path / "cmp" / "compare.csv").read_text().startswith("benchmark,model-1 n,")
    with pytest.raises(ValueError, match="summary.csv"):
        compare([tmp_path])
