"""``rewards score`` never destroys a file that is not its own output (issue 17): unrelated and
newline-free outputs, input == output, directories, lone surrogates, empty inputs, --overwrite."""
import json

import pytest

from medix_r1.rewards.cli import main

RECORDS = [{"id": i, "problem": f"Question {i}?", "solution": f"<OTHER> Yes {i}",
            "response": f"<OTHER> <thinking>t</thinking> <answer>Yes {i}</answer>"} for i in range(4)]


@pytest.fixture
def input_file(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return path


def score(inp, out, capsys, *more):
    rc = main(["score", "--input", str(inp), "--output", str(out), "--judge", "none", "--embedding-model", "none",
               "--no-progress", *more])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def one_line_error(rc, err):
    assert rc == 2 and err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err, err


@pytest.mark.parametrize("content", [b'{"lr": 0.001, "steps": 10}', b"not json\n", b'{"a": 1}\n',
                                     b"\xff\xfe binary", json.dumps(RECORDS[0]).encode()[:20] + b"X"])
def test_a_file_that_is_not_its_output_is_left_alone(input_file, tmp_path, capsys, content):
    out = tmp_path / "config.json"
    out.write_bytes(content)
    rc, _, err = score(input_file, out, capsys)
    one_line_error(rc, err)
    assert str(out) in err and "--overwrite" in err
    assert out.read_bytes() == content


def test_a_foreign_tail_after_good_lines_is_left_alone(input_file, tmp_path, capsys):
    out = tmp_path / "scored.jsonl"
    assert score(input_file, out, capsys)[0] == 0
    good = out.read_bytes().split(b"\n")
    content = good[0] + b"\n" + b"something else"
    out.write_bytes(content)
    rc, _, err = score(input_file, out, capsys)
    one_line_error(rc, err)
    assert f"{out}:2" in err and out.read_bytes() == content
    # the start of its own next line (a kill mid-write) is cut and rewritten
    out.write_bytes(good[0] + b"\n" + good[1][:30])
    assert score(input_file, out, capsys)[0] == 0
    assert out.read_bytes() == b"\n".join(good)


def test_overwrite_replaces_it_and_scores_every_line(input_file, tmp_path, capsys):
    out = tmp_path / "config.json"
    out.write_text('{"lr": 0.001}')
    rc, stdout, err = score(input_file, out, capsys, "--overwrite")
    assert rc == 0, err
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == [0, 1, 2, 3] and all("rewards" in r for r in rows)
    assert json.loads(stdout)["scored_now"] == 4


def test_input_as_output_is_refused_even_with_overwrite(input_file, tmp_path, capsys):
    before = input_file.read_bytes()
    for out in (input_file, tmp_path / "." / "in.jsonl"):
        for more in ((), ("--overwrite",)):
            rc, _, err = score(input_file, out, capsys, *more)
            one_line_error(rc, err)
            assert "is the --input file" in err
    one_line = tmp_path / "one.jsonl"
    one_line.write_text(json.dumps(RECORDS[0]) + "\n")  # the case: a one-line input as its own output
    one_line_error(*score(one_line, one_line, capsys)[::2])
    assert input_file.read_bytes() == before and one_line.read_text() == json.dumps(RECORDS[0]) + "\n"


def test_directories_and_uncreatable_outputs_are_one_line(input_file, tmp_path, capsys):
    rc, _, err = score(input_file, tmp_path, capsys)
    one_line_error(rc, err)
    assert "is a directory" in err
    rc, _, err = score(tmp_path, tmp_path / "o.jsonl", capsys)
    one_line_error(rc, err)
    assert "a directory, not a file" in err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc, _, err = score(input_file, blocker / "sub" / "o.jsonl", capsys)
    one_line_error(rc, err)
    assert str(blocker) in err


def test_a_lone_surrogate_is_named_before_anything_is_written(tmp_path, capsys):
    inp = tmp_path / "in.jsonl"
    inp.write_text(json.dumps(RECORDS[0]) + "\n" + json.dumps(RECORDS[1]).replace("Question 1", "Q \\ud800 1") + "\n")
    out = tmp_path / "o.jsonl"
    for _ in range(2):  # the same answer every time: nothing written, nothing half-done
        rc, _, err = score(inp, out, capsys)
        one_line_error(rc, err)
        assert f"{inp}:2: contains a lone surrogate" in err
        assert not out.exists()


def test_an_empty_input_gives_a_summary_without_nan(tmp_path, capsys):
    inp = tmp_path / "empty.jsonl"
    inp.write_text("\n\n")
    rc, stdout, err = score(inp, tmp_path / "o.jsonl", capsys)
    assert rc == 0 and "NaN" not in stdout and "nan" not in err
    summary = json.loads(stdout)
    assert summary["lines"] == 0 and summary["mean_total"] is None
    assert (tmp_path / "o.jsonl").read_text() == ""
