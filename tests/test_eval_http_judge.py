"""Full `--limit 5` runs through the command line with the real HTTP judge client.

Answers come from an OpenAI-compatible endpoint (a FaultServer in echo mode: each item's
problem names the answer to give), and the real :class:`medix_r1.rewards.JudgeClient` judges
them against a second FaultServer that injects faults chosen by a marker inside each answer:
a connection dropped on every request, invalid JSON before valid replies, a 500 once, a dropped
connection once, and a split vote with one round that never gives JSON. The summary's judge
failure rate, the per-item records and the number of requests the server saw must match what
was injected; resuming after a kill (simulated, then a real SIGKILL of a subprocess) must not
send the judge again any request already answered.
"""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from medix_r1.eval.cli import main
from medix_r1.utils.jsonl import read_jsonl
from tests.fault_server import FaultServer

REPO = Path(__file__).resolve().parents[1]
YES, NO = '{"score": 1}', '{"score": 0}'
SCRIPTS = {
    # the first reply is not JSON (its round retries), then three valid votes: 1, 0, 1
    "flaky": ["I would say the answer is correct", YES, NO, YES],
    # two valid rounds disagree, the third never gives JSON (3 attempts): a 1-1 tie -> 0
    "split": [NO, YES, "maybe"],
}
# item id -> judge fault mode; the 6th item is beyond --limit 5 and must never be touched
ITEMS = {"q1": "drop", "q2": "flaky", "q3": "500once", "q4": "dropOnce", "q5": "split",
         "q6": "yes"}
# judge requests per item: 3 rounds x 2 attempts (--judge-max-retries 1); 3 + 1 invalid;
# 3 + 1 transport retry; 3 + 1 transport retry; 3 + 2 more invalid replies
EXPECTED_REQUESTS = {"drop": 6, "flaky": 4, "500once": 4, "dropOnce": 4, "split": 5}


def write_items(path: Path, items: dict = ITEMS) -> Path:
    rows = [{"id": i, "question": f"Does treatment {i} help?",
             "problem": f"Context: trial {i}. Question: does it help? "
                        f"mode-echo echo=<answer>mode-{mode}-{i}</answer>",
             "solution": "<OTHER> Yes, it helps.", "decision": "yes"} for i, mode in items.items()]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def cli_args(gen, judge, data, out):
    return ["--generator", "openai", "--base-url", gen.url, "--model", "fault-model",
            "--data-files", f"pubmedqa_bundled={data}", "--limit", "5",
            "--judge-url", judge.url, "--judge-model", "fault-model", "--judge-max-retries", "1",
            "--judge-timeout", "30", "--output-dir", str(out), "--resamples", "200",
            "--no-progress"]


@pytest.fixture
def servers():
    with FaultServer() as gen, FaultServer(slow_s=60, yes_text=YES, no_text=NO,
                                           scripts=SCRIPTS) as judge:
        yield gen, judge


def judge_modes(judge):
    return Counter(mode for _, mode in judge.requests())


def test_limit5_http_judge_with_faults_and_resume(tmp_path, servers, capsys):
    gen, judge = servers
    data, out = write_items(tmp_path / "items.jsonl"), tmp_path / "run"
    assert main(cli_args(gen, judge, data, out)) == 0
    assert "| pubmedqa_bundled | 5 | 60.0 |" in capsys.readouterr().out

    # The servers saw exactly what the injected faults imply.
    assert len(gen.requests()) == 5 and set(judge_modes(gen)) == {"echo"}
    assert judge_modes(judge) == EXPECTED_REQUESTS
    for payload in judge.payloads:  # what the judge was asked: greedy, thinking off
        assert payload["temperature"] == 0 and payload["max_tokens"] == 16
        assert payload["chat_template_kwargs"] == {"enable_thinking": False}

    # Summary: 15 rounds asked, 4 failed (3 dropped, 1 without JSON), one item lost entirely.
    with open(out / "summary.csv", newline="") as f:
        bench, overall = csv.DictReader(f)
    assert bench["benchmark"] == "pubmedqa_bundled" and bench["n"] == "5"
    assert (bench["accuracy"], bench["exact_match"], bench["judge_rounds"]) == ("60.0", "0", "15")
    assert (bench["judge_failed_rounds"], bench["judge_failure_rate"]) == ("4", "26.67")
    assert bench["items_all_rounds_failed"] == "1" and overall["accuracy"] == "60.0"

    # Per-item records carry every judge reply.
    items = {row["id"]: row for row in read_jsonl(out / "items.jsonl")}
    assert sorted(items) == ["q1", "q2", "q3", "q4", "q5"]
    dropped = items["q1"]
    assert dropped["judge_failed"] and dropped["score"] == 0 and dropped["votes"] == [None] * 3
    for rnd in dropped["rounds"]:
        (reply,) = rnd["replies"]  # a transport failure is not retried again by the round
        assert reply["failed"] and reply["attempts"] == 2 and "connection" in reply["error"]
    flaky = items["q2"]
    assert flaky["score"] == 1 and sorted(flaky["votes"]) == [0, 1, 1]
    assert sorted(len(r["replies"]) for r in flaky["rounds"]) == [1, 1, 2]
    retried = next(r for r in flaky["rounds"] if len(r["replies"]) == 2)
    assert retried["replies"][0] == {"text": SCRIPTS["flaky"][0], "score": None, "failed": False,
                                     "error": None, "attempts": 1, "cached": False}
    for item_id in ("q3", "q4"):  # one transport retry inside the client, invisible to the vote
        item = items[item_id]
        assert item["score"] == 1 and item["votes"] == [1, 1, 1] and not item["judge_failed"]
        assert sorted(r["replies"][0]["attempts"] for r in item["rounds"]) == [1, 1, 2]
    split = items["q5"]
    assert split["score"] == 0 and not split["judge_failed"]
    assert sorted(split["votes"], key=str) == [0, 1, None]
    failed_round = next(r for r in split["rounds"] if r["failed"])
    assert [r["text"] for r in failed_round["replies"]] == ["maybe"] * 3

    # The client's counters are kept and shown under the table.
    (stats,) = read_jsonl(out / "judge_stats.jsonl")
    assert (stats["calls"], stats["requests"], stats["retries"]) == (18, 23, 5)
    assert (stats["failures"], stats["cache_hits"], stats["items"]) == (3, 0, 5)
    assert "Judge sessions" in (out / "summary.md").read_text()

    # Simulated kill after every call was answered and cached but before any round or item was
    # recorded: the rerun pays only for the calls that never got an answer (the dropped ones).
    before = (out / "summary.csv").read_text()
    (out / "items.jsonl").unlink()
    (out / "judge_rounds.jsonl").unlink()
    n_gen, n_judge = len(gen.requests()), len(judge.requests())
    assert main(cli_args(gen, judge, data, out)) == 0
    assert len(gen.requests()) == n_gen                      # no generation redone
    assert Counter(m for _, m in judge.requests()[n_judge:]) == {"drop": 6}
    assert (out / "summary.csv").read_text() == before
    second = read_jsonl(out / "judge_stats.jsonl")[-1]
    assert (second["calls"], second["requests"], second["cache_hits"]) == (18, 6, 15)

    # Nothing left: a third run asks neither server anything.
    n_gen, n_judge = len(gen.requests()), len(judge.requests())
    assert main(cli_args(gen, judge, data, out)) == 0
    assert (len(gen.requests()), len(judge.requests())) == (n_gen, n_judge)


def test_sigkill_mid_judging_then_resume(tmp_path, servers):
    """A real kill: the eval process is SIGKILLed while judge requests hang; the resumed run
    sends only the requests that had no answer when it died."""
    gen, judge = servers
    data = write_items(tmp_path / "items.jsonl",
                       {"q1": "yes", "q2": "flaky", "q3": "slow", "q4": "500once", "q5": "no"})
    out = tmp_path / "run"
    env = dict(os.environ, PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "medix_r1.eval",
                             *cli_args(gen, judge, data, out)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    answered = {"yes": 3, "flaky": 4, "500once": 4, "no": 3}
    deadline = time.monotonic() + 60
    try:
        while judge_modes(judge) != {**answered, "slow": 3}:
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, judge_modes(judge)
            time.sleep(0.05)
        time.sleep(0.3)  # let the fast items' lines reach the files
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
    done = {row["id"] for row in read_jsonl(out / "items.jsonl")}
    assert done == {"q1", "q2", "q4", "q5"} and not (out / "summary.csv").exists()

    judge.slow_s = 0.0
    n_gen, n_judge = len(gen.requests()), len(judge.requests())
    assert main(cli_args(gen, judge, data, out)) == 0
    assert len(gen.requests()) == n_gen
    assert Counter(m for _, m in judge.requests()[n_judge:]) == {"slow": 3}
    items = {row["id"]: row for row in read_jsonl(out / "items.jsonl")}
    assert sorted(items) == ["q1", "q2", "q3", "q4", "q5"]
    assert [items[i]["score"] for i in sorted(items)] == [1, 1, 1, 1, 0]
