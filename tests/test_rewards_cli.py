"""``python -m medix_r1.rewards score`` on 100 responses built from the bundled PubMedQA items."""
import json
import re
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import pytest

from medix_r1.rewards import RewardResult
from medix_r1.rewards.cli import build_parser, main
from tests.fault_server import FaultServer

DATA = Path(__file__).resolve().parents[1] / "medix_r1" / "data" / "pubmedqa" / "train.jsonl"
N = 100
KEYS = {f.name for f in fields(RewardResult)}
INVALID = ["?", "", "A", "Ratio: 2", "x__y"]


def reference(solution):
    ref = solution.strip()[len("<OTHER>"):].strip().strip(".").strip()
    return ref


def build_records():
    """100 responses: exact answers, valid-format wrong answers (every other one with a garbage-reply
    marker), invalid answers, no <thinking>, trailing text. Returns (records, kinds)."""
    rows = [json.loads(line) for line in DATA.read_text(encoding="utf-8").split("\n") if line.strip()]
    rows = [r for r in rows if not any(c in reference(r["solution"]) for c in (":", "?", "__"))][:N]
    records, kinds = [], []
    for i, row in enumerate(rows):
        kind = ["exact", "wrong", "invalid", "noformat", "trailing"][i % 5]
        think = "<thinking>The abstract reports the trial outcome.</thinking>"
        if kind == "exact":
            response = f"<OTHER> {think} <answer>{reference(row['solution'])}</answer>"
        elif kind == "wrong":
            marker = " mode-garbage" if i % 10 == 1 else ""
            kind = "garbage" if marker else kind
            response = f"<OTHER> {think} <answer>{row['decision'].capitalize()}, record {i}{marker}</answer>"
        elif kind == "invalid":
            response = f"<OTHER> {think} <answer>{INVALID[(i // 5) % len(INVALID)]}</answer>"
        elif kind == "noformat":
            response = f"<OTHER> <answer>No, record {i}</answer>"
        else:
            response = f"<OTHER> {think} <answer>Maybe, record {i}</answer> and some trailing text"
        records.append({"id": row["id"], "problem": row["problem"], "response": response,
                        "solution": row["solution"], "meta": {"kind": kind, "n": i}})
        kinds.append(kind)
    assert len(records) == N
    return records, kinds


RECORDS, KINDS = build_records()
NEEDS_JUDGE = [i for i, k in enumerate(KINDS) if k in ("wrong", "garbage", "noformat", "trailing")]
# expected (judge, modality, format, total, judge_failed) per kind, strict parity, judge replies YES
EXPECTED = {
    "exact": (1.0, 1.0, 1.0, 1.0, False),
    "wrong": (1.0, 1.0, 1.0, 0.9 * (0.575 + 0.05) + 0.1, False),
    "garbage": (0.0, 1.0, 1.0, 0.9 * 0.05 + 0.1, True),
    "invalid": (0.0, 1.0, 1.0, 0.9 * 0.05 + 0.1, False),
    "noformat": (1.0, 0.0, 0.0, 0.9 * 0.575, False),
    "trailing": (1.0, 1.0, 0.0, 0.9 * (0.575 + 0.05), False),
}


@pytest.fixture(scope="module")
def input_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "responses.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return path


@pytest.fixture
def server():
    with FaultServer(slow_s=3.0) as s:
        yield s


def http_args(inp, out, server, *extra):
    return ["score", "--input", str(inp), "--output", str(out), "--judge-url", server.url, "--judge-model",
            "fault-model", "--embedding-model", "none", "--batch-size", "16", "--judge-timeout-s", "5",
            "--no-progress", "--decision-gate", "off", *extra]  # every valid answer reaches the fake judge


def record_number(prompt):
    return int(re.search(r"<answer>\n\w+, record (\d+)", prompt).group(1))


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").split("\n") if line]


def run_main(argv, capsys):
    rc = main(argv)
    cap = capsys.readouterr()
    summary = json.loads(cap.out) if rc == 0 else None
    return rc, summary, cap.err


@pytest.fixture(scope="module")
def full_run(input_file, tmp_path_factory):
    """One complete http-judge run, shared by the tests that compare against it."""
    out = tmp_path_factory.mktemp("full") / "scored.jsonl"
    with FaultServer() as server:
        rc = main(http_args(input_file, out, server, "--summary-json", str(out) + ".summary.json"))
        prompts = server.prompts()
    assert rc == 0
    return out, prompts, json.loads(Path(str(out) + ".summary.json").read_text())


def test_http_judge_scores_every_line_in_order(full_run):
    out, prompts, summary = full_run
    rows = read_jsonl(out)
    assert len(rows) == N
    for i, (row, rec, kind) in enumerate(zip(rows, RECORDS, KINDS)):
        assert {k: v for k, v in row.items() if k != "rewards"} == rec  # other fields kept, input order
        r = row["rewards"]
        assert set(r) == KEYS
        judge, modality, fmt, total, failed = EXPECTED[kind]
        assert (r["judge"], r["modality"], r["format"], r["judge_failed"]) == (judge, modality, fmt, failed), (i, kind)
        assert r["total"] == pytest.approx(total), (i, kind)
        assert r["embedding"] == (1.0 if kind == "exact" else 0.0) and not r["embedding_failed"]
        assert r["exact_match"] is (kind == "exact") and r["invalid_answer"] is (kind == "invalid")
    # one judge request per judged line (no retries: YES and garbage replies are final)
    assert len(prompts) == len(NEEDS_JUDGE) == 60
    assert sorted(record_number(p) for p in prompts) == NEEDS_JUDGE
    assert summary["lines"] == summary["scored_now"] == N and summary["resumed"] == 0
    assert summary["judge_failures"] == KINDS.count("garbage") == 10
    assert summary["exact_match"] == 20 and summary["invalid_answer"] == 20
    want_total = sum(EXPECTED[k][3] for k in KINDS) / N
    assert summary["mean_total"] == pytest.approx(want_total)
    assert summary["mean_format"] == pytest.approx(0.6) and summary["mean_modality"] == pytest.approx(0.8)
    c = summary["judge_counters"]
    assert (c["calls"], c["requests"], c["retries"], c["failures"], c["cache_hits"]) == (60, 60, 0, 0, 0)
    assert c["latency_p50_s"] <= c["latency_p90_s"] <= c["latency_p99_s"]


def test_kill_and_resume_scores_only_the_rest(full_run, input_file, tmp_path, server, capsys):
    full_out, _, _ = full_run
    lines = [line + "\n" for line in full_out.read_text(encoding="utf-8").split("\n")[:-1]]
    out = tmp_path / "scored.jsonl"
    out.write_text("".join(lines[:40]) + lines[40][: len(lines[40]) // 2])  # 40 lines and a torn 41st
    rc, summary, err = run_main(http_args(input_file, out, server), capsys)
    assert rc == 0, err
    assert out.read_text() == full_out.read_text()  # same bytes as the uninterrupted run
    rest = [i for i in NEEDS_JUDGE if i >= 40]
    assert len(server.log) == len(rest) == 36  # only lines 41..100 were judged
    assert sorted(record_number(p) for p in server.prompts()) == rest
    assert (summary["lines"], summary["resumed"], summary["scored_now"]) == (N, 40, 60)
    assert summary["judge_failures"] == 10  # over the whole output, resumed lines included
    # nothing left: a third run scores nothing and sends nothing
    rc, summary, _ = run_main(http_args(input_file, out, server), capsys)
    assert rc == 0 and summary["scored_now"] == 0 and len(server.log) == 36
    assert out.read_text() == full_out.read_text()


def test_judge_none_with_the_bundled_embedder(input_file, tmp_path, capsys):
    pytest.importorskip("sentence_transformers")
    out = tmp_path / "scored.jsonl"
    rc, summary, err = run_main(["score", "--input", str(input_file), "--output", str(out), "--judge", "none",
                                 "--no-progress", "--batch-size", "50", "--embedding-mode", "continuous"], capsys)
    assert rc == 0, err
    rows = read_jsonl(out)
    assert len(rows) == N and [r["id"] for r in rows] == [r["id"] for r in RECORDS]
    for row, kind in zip(rows, KINDS):
        r = row["rewards"]
        assert set(r) == KEYS and not r["judge_failed"] and not r["embedding_failed"]
        assert r["judge"] == (1.0 if kind == "exact" else 0.0) and r["judge_reply"] is None
        if kind == "exact":
            assert r["total"] == pytest.approx(1.0) and r["embedding"] == 1.0
        elif kind == "invalid":
            assert r["embedding"] == 0.0
        else:
            assert 0.0 <= r["embedding"] < 1.0
    # the default (bundled MiniLM) embedder really ran: cosines strictly inside (0, 1), bar the odd
    # negative one clamped to 0
    inside = [row["rewards"]["embedding"] for row, k in zip(rows, KINDS) if k not in ("exact", "invalid")]
    assert sum(0.0 < v < 1.0 for v in inside) >= 0.8 * len(inside), inside
    assert summary["judge_failures"] == 0 and summary["judge_counters"] == {}
    assert 0.0 < summary["mean_total"] < 1.0


def test_malformed_input_names_the_line_before_scoring(tmp_path, server, capsys):
    good = [json.dumps(r) for r in RECORDS[:10]]
    cases = {
        "notjson": (good[:6] + ['{"problem": "q", "response": '] + good[6:], ":7: not valid JSON"),
        "missing": (good[:3] + ['{"problem": "q", "response": "r"}'] + good[3:], ":4: missing field(s) solution"),
        "badtag": (good[:8] + [json.dumps({"problem": "q", "response": "r", "solution": "<XRAY> a"})],
                   ":9: bad 'solution': solution has unknown modality tag '<XRAY>'"),
        "notag": (good[:1] + [json.dumps({"problem": "q", "response": "r", "solution": "Yes"})],
                  ":2: bad 'solution': solution must start with a modality tag"),
        "notstr": (good[:2] + [json.dumps({"problem": "q", "response": None, "solution": "<OTHER> a"})],
                   ":3: field 'response' must be a string"),
        "array": (["[1, 2]"], ":1: expected a JSON object"),
    }
    for name, (lines, message) in cases.items():
        inp, out = tmp_path / f"{name}.jsonl", tmp_path / f"{name}.out.jsonl"
        inp.write_text("\n".join(lines) + "\n")
        rc, _, err = run_main(http_args(inp, out, server), capsys)
        assert rc == 2 and f"{inp}{message}" in err, (name, err)
        assert not out.exists()
    bad_utf8 = tmp_path / "bytes.jsonl"
    bad_utf8.write_bytes(("\n".join(good[:4]) + "\n").encode() + b'{"problem": "\xff"}\n')
    rc, _, err = run_main(http_args(bad_utf8, tmp_path / "b.out", server), capsys)
    assert rc == 2 and f"{bad_utf8}:5: not valid UTF-8" in err
    # blank lines are skipped, not errors; the error line numbers count them
    blank = tmp_path / "blank.jsonl"
    blank.write_text(good[0] + "\n\n" + good[1] + "\n   \n")
    rc, summary, err = run_main(http_args(blank, tmp_path / "blank.out", server), capsys)
    assert rc == 0 and summary["lines"] == 2
    assert len(server.log) == 0 + sum(k in ("wrong", "garbage", "noformat", "trailing") for k in KINDS[:2])


def test_output_of_another_input_is_refused(input_file, tmp_path, server, capsys):
    out = tmp_path / "other.jsonl"
    other = dict(RECORDS[1], rewards={"total": 0.0})
    out.write_text(json.dumps(other) + "\n")
    rc, _, err = run_main(http_args(input_file, out, server), capsys)
    assert rc == 2 and f"{out}:1 does not match input line 1" in err
    out.write_text("not json\n" + json.dumps(other) + "\n")
    rc, _, err = run_main(http_args(input_file, out, server), capsys)
    assert rc == 2 and f"{out}:1: the existing output has a malformed line" in err
    assert len(server.log) == 0


def test_config_errors_and_api_key_from_env(input_file, tmp_path, server, capsys, monkeypatch):
    small = tmp_path / "small.jsonl"
    small.write_text("".join(json.dumps(r) + "\n" for r in RECORDS[:5]))
    rc, _, err = run_main(["score", "--input", str(small), "--output", str(tmp_path / "o"), "--judge", "http",
                           "--embedding-model", "none"], capsys)
    assert rc == 2 and "needs reward.judge_url" in err
    rc, _, err = run_main(http_args(small, tmp_path / "o", server, "--weight", "format"), capsys)
    assert rc == 2 and "--weight must be NAME=VALUE" in err
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-from-env")
    rc, summary, err = run_main(http_args(small, tmp_path / "o2", server, "--judge-api-key-env", "MY_JUDGE_KEY",
                                          "--weight", "format=0.5", "--parity", "official"), capsys)
    assert rc == 0, err
    assert server.headers and all(h["authorization"] == "Bearer sk-from-env" for h in server.headers)
    rows = read_jsonl(tmp_path / "o2")
    assert rows[0]["rewards"]["total"] == pytest.approx(0.9 + 0.5)  # exact match, format weight 0.5
    assert rows[1]["rewards"]["judge_failed"] is False  # official: the garbage reply is a plain 0
    assert rows[1]["rewards"]["judge"] == 0.0


def test_help_documents_every_option():
    text = build_parser()._subparsers._group_actions[0].choices["score"].format_help()
    for opt in ("--input", "--output", "--judge", "--judge-url", "--judge-model", "--parity", "--embedding-model",
                "--embedding-mode", "--deadline-s", "--batch-size", "--judge-concurrency", "--cache",
                "--judge-api-key-env", "--weight", "--summary-json"):
        assert opt in text
    proc = subprocess.run([sys.executable, "-m", "medix_r1.rewards", "score", "--help"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0 and "--judge-url URL" in proc.stdout and "resumable" in proc.stdout


def test_module_entry_point_runs(tmp_path):
    small = tmp_path / "small.jsonl"
    small.write_text("".join(json.dumps(r) + "\n" for r in RECORDS[:5]))
    out = tmp_path / "out.jsonl"
    proc = subprocess.run([sys.executable, "-m", "medix_r1.rewards", "score", "--input", str(small), "--output",
                           str(out), "--judge", "none", "--embedding-model", "none"], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["lines"] == 5 and len(read_jsonl(out)) == 5
    assert "5 lines (0 kept, 5 scored now)" in proc.stderr


def test_retry_failed_scores_only_the_failed_lines_again(tmp_path, capsys):
    """Issue 30, item 14: failed lines are named in the summary with the way to retry them, and
    --retry-failed scores those lines only, rewriting the output in place (order and other lines kept)."""
    flaky = [" mode-flaky" if i % 2 else "" for i in range(6)]
    rows = [{"id": str(i), "problem": f"Question {i}?", "solution": "<OTHER> yes",
             "response": f"<OTHER> <thinking>t</thinking> <answer>Yes, case {i}{flaky[i]}</answer>"} for i in range(6)]
    inp, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    inp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    # the first reply to a flaky line is not YES/NO (judge_failed), the next one is YES
    with FaultServer(scripts={"flaky": ["Perhaps, hard to say", "YES"]}) as server:
        rc, summary, err = run_main(http_args(inp, out, server), capsys)
        assert rc == 0 and summary["judge_failures"] == 3 and len(server.log) == 6
        assert "3 lines failed" in err and "--retry-failed" in err
        first = read_jsonl(out)
        rc, summary, err = run_main(http_args(inp, out, server, "--retry-failed"), capsys)
        assert rc == 0, err
        assert len(server.log) == 9 and sorted(server.prompts()[6:]) == sorted(
            p for p in server.prompts()[:6] if "mode-flaky" in p)  # the three failed lines only
    again = read_jsonl(out)
    assert [r["id"] for r in again] == [r["id"] for r in rows]
    assert [r["rewards"]["judge_failed"] for r in again] == [False] * 6
    assert [a for a, f in zip(again, first) if not f["rewards"]["judge_failed"]] == \
        [f for f in first if not f["rewards"]["judge_failed"]]  # the good lines are untouched
    assert summary["retried"] == 3 and summary["judge_failures"] == 0 and summary["scored_now"] == 0
    assert "lines failed" not in err
    assert not list(tmp_path.glob(".out.jsonl.retry-*"))
