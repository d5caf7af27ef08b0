"""`python -m medix_r1.eval` and `eval compare` on bad input (issue 30, items 5, 6 and 12): one line
naming the file or argument, no traceback, nothing a user wrote overwritten, and run.json written
only after the model is checked."""
import json

import pytest

from medix_r1.eval.cli import main
from medix_r1.eval.summary import to_csv

ROW = {"benchmark": "a", "n": 4, "accuracy": 50.0, "ci_low": 10.0, "ci_high": 90.0, "exact_match": 1,
       "judge_rounds": 12, "judge_failed_rounds": 0, "judge_failure_rate": 0.0, "items_all_rounds_failed": 0}


@pytest.fixture
def runs(tmp_path):
    out = []
    for name in ("r1", "r2"):
        d = tmp_path / name
        d.mkdir()
        (d / "summary.csv").write_text(to_csv([ROW]))
        (d / "run.json").write_text(json.dumps({"model": f"/m/{name}", "label": None}))
        out.append(d)
    return out


def one_line(capsys, *words):
    err = capsys.readouterr().err
    err = "".join(line + "\n" for line in err.splitlines() if line.strip() and "examples/s]" not in line)  # datasets
    assert err.count("\n") == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, (w, err)
    return err


def test_compare_refuses_to_overwrite_compare_md_unless_asked(runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    out.mkdir()
    (out / "compare.md").write_text("my notes")
    assert main(["compare", *map(str, runs), "--output-dir", str(out)]) == 2
    one_line(capsys, "compare.md", "--overwrite")
    assert (out / "compare.md").read_text() == "my notes" and not (out / "compare.csv").exists()
    assert main(["compare", *map(str, runs), "--output-dir", str(out), "--overwrite"]) == 0
    assert (out / "compare.md").read_text().startswith("| Benchmark | r1 | r2 |")


def short_row(header, row):
    return header + "a,4\n"


def not_a_number(header, row):
    return header + row.replace("50.0", "x")


@pytest.mark.parametrize("name, content, words", [
    ("run.json", "[1, 2]", ["run.json", "expected a JSON object", "list"]),
    ("run.json", "{not json", ["run.json", "not readable JSON"]),
    ("summary.csv", short_row, ["summary.csv", "short or malformed row"]),
    ("summary.csv", not_a_number, ["summary.csv", "short or malformed row"]),
])
def test_compare_on_a_broken_run_file_is_one_line_naming_it(runs, capsys, name, content, words):
    if callable(content):
        content = content(*to_csv([ROW]).splitlines(keepends=True))
    (runs[0] / name).write_text(content)
    assert main(["compare", *map(str, runs)]) == 2
    one_line(capsys, str(runs[0] / name), *words)


def test_compare_takes_an_integer_label_and_refuses_an_output_file(runs, tmp_path, capsys):
    (runs[0] / "run.json").write_text(json.dumps({"model": "/m/x", "label": 7}))
    assert main(["compare", *map(str, runs)]) == 0
    assert capsys.readouterr().out.startswith("| Benchmark | 7 | r2 |")
    (tmp_path / "a_file").write_text("x")
    assert main(["compare", *map(str, runs), "--output-dir", str(tmp_path / "a_file")]) == 2
    one_line(capsys, "a_file", "is a file")


@pytest.mark.parametrize("spec, words", [
    ("pubmedqa_bundled={empty}", ["is empty (0 bytes)", "empty.jsonl"]),
    ("pubmedqa_bundled={blank}", ["benchmark pubmedqa_bundled: cannot read", "blank.jsonl"]),
    ("pubmedqa_bundled={empty},", ["an empty path"]),
])
def test_empty_data_files_are_one_line(tmp_path, capsys, spec, words):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "blank.jsonl").write_text("  \n\n")
    spec = spec.format(empty=tmp_path / "empty.jsonl", blank=tmp_path / "blank.jsonl")
    assert main(["--benchmarks", "pubmedqa_bundled", "--data-files", spec, "--output-dir", str(tmp_path / "o")]) == 2
    one_line(capsys, *words)


def test_official_protocol_checks_the_model_before_writing_run_json(tmp_path, capsys):
    data = tmp_path / "anatomy.jsonl"
    data.write_text(json.dumps({"question": "Which nerve innervates the deltoid?", "subject": "anatomy",
                                "choices": ["Radial", "Axillary", "Ulnar", "Median"], "answer": 1}) + "\n")
    out = tmp_path / "run"
    assert main(["--protocol", "official", "--benchmarks", "mmlu_anatomy", "--data-files", f"mmlu_anatomy={data}",
                 "--model", str(tmp_path / "typo"), "--output-dir", str(out)]) == 2
    one_line(capsys, "--model", "typo")
    assert not (out / "run.json").exists()  # a rerun with the right model is not "a different run"
