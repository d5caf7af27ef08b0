"""Training records: bundled set, malformed lines named file:line, skip vs fail, prompts, sampler."""
import json

import pytest

from medix_r1.data.prompts import problem_text, prompt_messages
from medix_r1.data.records import MalformedRecord, load_records
from medix_r1.data.sampling import PromptSampler

GOOD = {"id": "a", "images": [], "problem": "Is it?", "solution": "<OTHER> Yes. Because."}


def write_jsonl(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_bundled_pubmedqa_loads_with_context_fields():
    records, skipped = load_records("pubmedqa")
    assert len(records) == 500 and skipped == 0
    r = records[0]
    assert r["solution"].startswith("<OTHER> ") and r["images"] == []
    text = problem_text(r, 600)
    assert text.startswith("Context: ") and f"Question: {r['question']}" in text
    assert len(text) < len(r["problem"])
    assert len(text.split("\n\nQuestion: ")[0]) <= len("Context: ") + 600 + 4
    assert problem_text(r, 0) == r["problem"]


def test_malformed_json_line_is_named_with_file_and_line(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [json.dumps(GOOD), "{not json", json.dumps({**GOOD, "id": "b"})])
    with pytest.raises(MalformedRecord, match=rf"{path}:2: not valid JSON"):
        load_records(path)


def test_missing_field_and_bad_solution_are_reported(tmp_path):
    no_solution = {k: v for k, v in GOOD.items() if k != "solution"}
    path = write_jsonl(tmp_path / "d.jsonl", [json.dumps(GOOD), json.dumps(no_solution)])
    with pytest.raises(MalformedRecord, match=rf"{path}:2: missing field\(s\) \['solution'\]"):
        load_records(path)
    path = write_jsonl(tmp_path / "e.jsonl", [json.dumps({**GOOD, "solution": "no tag here"})])
    with pytest.raises(MalformedRecord, match=rf"{path}:1:"):
        load_records(path)
    path = write_jsonl(tmp_path / "f.jsonl", [json.dumps({**GOOD, "images": [3]})])
    with pytest.raises(MalformedRecord, match=rf"{path}:1: column 'images', image 0: expected a path.*got int"):
        load_records(path)
    path = write_jsonl(tmp_path / "g.jsonl", [json.dumps({**GOOD, "images": "x.png"})])
    assert load_records(path)[0][0]["images"] == ["x.png"]  # a single image is a list of one


def test_skip_mode_counts_and_keeps_the_good_records(tmp_path):
    path = write_jsonl(tmp_path / "d.jsonl", [json.dumps(GOOD), "[1, 2]", "{oops", json.dumps({**GOOD, "id": 7})])
    records, skipped = load_records(path, on_malformed="skip")
    assert skipped == 2 and [r["id"] for r in records] == ["a", "7"]


def test_json_and_parquet_go_through_datasets(tmp_path):
    import datasets
    rows = [GOOD, {**GOOD, "id": "b"}]
    (tmp_path / "d.json").write_text(json.dumps(rows))
    records, _ = load_records(str(tmp_path / "d.json"))
    assert [r["id"] for r in records] == ["a", "b"]
    datasets.Dataset.from_list(rows).to_parquet(str(tmp_path / "d.parquet"))
    records, _ = load_records(str(tmp_path / "d.parquet"), max_records=1)
    assert [r["id"] for r in records] == ["a"]


def test_bad_source_and_empty_data(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a bundled set"):
        load_records(str(tmp_path / "missing.jsonl"))
    path = write_jsonl(tmp_path / "d.jsonl", ["{bad"])
    with pytest.raises(ValueError, match="no valid records"):
        load_records(path, on_malformed="skip")
    with pytest.raises(ValueError, match="on_malformed"):
        load_records(path, on_malformed="ignore")


def test_prompt_messages_text_and_image_items():
    msgs = prompt_messages(GOOD, "SYS", 600)
    assert msgs == [{"role": "system", "content": "SYS"}, {"role": "user", "content": "Is it?"}]
    msgs = prompt_messages({**GOOD, "images": ["a.png"]}, "SYS", 600)
    assert msgs[1]["content"][0] == {"type": "image"} and msgs[1]["content"][1]["text"] == "Is it?"


def test_sampler_epochs_and_exact_resume():
    s = PromptSampler(5, seed=3)
    first = s.take(4)
    state = s.state()
    rest = s.take(8)
    assert sorted(first + rest[:1]) == [0, 1, 2, 3, 4]   # an epoch is a permutation
    t = PromptSampler(5, seed=3)
    t.load_state(state)
    assert t.take(8) == rest
    with pytest.raises(ValueError, match="5 records"):
        PromptSampler(6, seed=3).load_state(state)


def test_input_lines_numbers_lines_and_names_problems(tmp_path):
    from medix_r1.utils.jsonl import input_lines
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"a": 1}\n\n  \n[2]\n{"a": \n\xff\n')
    rows = list(input_lines(path))
    assert [(n, obj) for n, obj, _ in rows] == [(1, {"a": 1}), (4, [2]), (5, None), (6, None)]
    assert rows[2][2].startswith("not valid JSON (") and rows[3][2].startswith("not valid UTF-8 (")
    assert rows[0][2] is None and rows[1][2] is None
