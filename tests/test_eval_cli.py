"""Command-line parsing and errors (fast), and full `--limit 5` runs with real models (slow)."""
import json

import pytest

from medix_r1.eval.cli import main, parse_benchmarks, parse_data_files
from medix_r1.utils.jsonl import read_jsonl


def test_list_benchmarks(capsys):
    assert main(["--list-benchmarks"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 18 and out[-1].startswith("pubmedqa_bundled")


def test_bad_arguments_give_clear_errors(capsys):
    assert main(["--benchmarks", "pubmedqa_bundled,nope"]) == 2
    assert "unknown ['nope']" in capsys.readouterr().err
    assert main(["--data-files", "medqa"]) == 2
    assert "NAME=PATH" in capsys.readouterr().err
    assert main(["--limit", "0"]) == 2
    assert "--limit" in capsys.readouterr().err
    assert main(["--generator", "openai"]) == 2
    assert "--model NAME" in capsys.readouterr().err
    assert main(["--judge", "http", "--model", "x", "--generator", "openai",
                 "--base-url", "http://127.0.0.1:9/v1"]) == 2
    assert "--judge-url" in capsys.readouterr().err
    assert main(["compare", "/nonexistent-run"]) == 2
    assert "summary.csv" in capsys.readouterr().err


def test_model_may_be_a_hub_id_and_a_bad_one_fails_first(capsys, tmp_path):
    assert main(["--model", str(tmp_path / "no-such-folder")]) == 2
    assert "--model" in capsys.readouterr().err
    # a hub id (owner/name) is accepted as the model: the run gets as far as the next bad argument
    assert main(["--model", "Qwen/Qwen3-4B-Instruct-2507", "--benchmarks", "nope"]) == 2
    assert "unknown ['nope']" in capsys.readouterr().err


def test_unreadable_data_is_one_line_before_any_model_loads(capsys, tmp_path, monkeypatch):
    missing, bad = tmp_path / "missing.jsonl", tmp_path / "bad.jsonl"
    bad.write_bytes(b"\xff\xfe not utf-8\n")
    for path, says in ((missing, "missing.jsonl"), (bad, "bad.jsonl")):
        assert main(["--benchmarks", "pubmedqa_bundled", "--data-files", f"pubmedqa_bundled={path}",
                     "--output-dir", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err[-1].startswith("error: data_files for pubmedqa_bundled: cannot read") and says in err[-1]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # a hub benchmark offline (and not cached): one line naming it
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "empty_cache"))
    assert main(["--benchmarks", "medqa", "--limit", "1", "--output-dir", str(tmp_path / "out2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: benchmark medqa: cannot load hub:") and "--data-files medqa=PATH" in err


def test_parse_helpers():
    assert len(parse_benchmarks("paper")) == 17
    assert parse_benchmarks("medqa, medqa,pubmedqa") == ["medqa", "pubmedqa"]
    assert parse_data_files(["usmle=a.jsonl,b.jsonl"]) == {"usmle": ["a.jsonl", "b.jsonl"]}


@pytest.mark.slow
def test_limit5_hf_generation_local_judge(tmp_path, capsys):
    """The whole tool on real models: SmolLM2 answers (transformers), SmolLM2 judges."""
    out = tmp_path / "run"
    assert main(["--limit", "5", "--generator", "hf", "--judge", "local", "--max-new-tokens",
                 "48", "--output-dir", str(out), "--no-progress"]) == 0
    items = read_jsonl(out / "items.jsonl")
    assert len(items) == 5 and len(read_jsonl(out / "generations.jsonl")) == 5
    for item in items:
        assert item["score"] in (0, 1) and item["reference"] and item["response"]
        if item["decided_by"] == "judge":
            assert len(item["rounds"]) == 3
            assert all(r["replies"] and r["replies"][0]["text"] is not None for r in item["rounds"])
    summary = (out / "summary.csv").read_text().splitlines()
    assert summary[1].startswith("pubmedqa_bundled,5,") and summary[2].startswith("overall,5,")
    assert (out / "accuracy.png").stat().st_size > 1000
    assert "| pubmedqa_bundled | 5 |" in capsys.readouterr().out
    # Resume: nothing left to do, same summary.
    before = (out / "summary.csv").read_text()
    assert main(["--limit", "5", "--generator", "hf", "--judge", "local", "--max-new-tokens",
                 "48", "--output-dir", str(out), "--no-progress"]) == 0
    assert (out / "summary.csv").read_text() == before
    assert json.loads((out / "run.json").read_text())["generator"] == "hf"
