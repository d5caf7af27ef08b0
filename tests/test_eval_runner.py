"""A whole run with a scripted generator and judge: short-circuits, records, and resume after a
simulated kill mid-file (torn last lines) without paying twice for generation or judging."""
import json
from types import SimpleNamespace

import pytest

from medix_r1.eval.items import make_record
from medix_r1.eval.runner import run_eval
from medix_r1.utils.jsonl import read_jsonl

ANSWERS = {  # id -> what the "model" says
    "q0": "<OTHER><thinking>t</thinking><answer>Aspirin</answer>",   # exact match
    "q1": "<OTHER><thinking>t</thinking><answer></answer>",          # empty answer
    "q2": "<answer>good: acetylsalicylic acid</answer>",             # judge says 1
    "q3": "<answer>bad: paracetamol</answer>",                       # judge says 0
    "q4": "good guess without tags",                                 # judge says 1
    "q5": "<answer>flaky</answer>",                                  # judge gives no JSON
}


def records():
    return [make_record(id=i, benchmark="toy" if i < "q3" else "toy2", question=f"Question {i}?",
                        problem=f"Problem {i}", reference="Aspirin") for i in ANSWERS]


class CountingGenerator:
    def __init__(self):
        self.seen = []

    def __call__(self, batch):
        ids = [m[-1]["content"].split()[-1] for m in batch]
        self.seen += ids
        return [ANSWERS[i] for i in ids]


class CountingJudge:
    def __init__(self):
        self.calls = 0

    async def chat(self, messages, *, max_tokens, cache_key=None):
        self.calls += 1
        prompt = messages[-1]["content"]
        answer = prompt.rsplit("<answer>\n", 1)[1]  # the fenced candidate answer comes last
        text = "no idea" if answer.startswith("flaky") else \
            json.dumps({"score": int(answer.startswith("good"))})
        return SimpleNamespace(text=text, failed=False, error=None, attempts=1, latency=0.0)


def run(tmp_path, gen, judge, recs=None, **kw):
    info = {"model": "toy-model", "generator": "toy", "prompt_style": "medix",
            "max_new_tokens": 8, "temperature": 0.0, "judge": "scripted", "rounds": 3}
    info.update(kw.pop("info", {}))
    return run_eval(recs or records(), lambda: gen, lambda: judge, tmp_path, run_info=info,
                    batch_size=4, resamples=200, progress=False, **kw)


def test_full_run_records_and_summary(tmp_path):
    gen, judge = CountingGenerator(), CountingJudge()
    rows = run(tmp_path, gen, judge)
    items = {r["id"]: r for r in read_jsonl(tmp_path / "items.jsonl")}
    assert items["q0"]["decided_by"] == "exact_match" and items["q0"]["score"] == 1
    assert items["q1"]["decided_by"] == "empty_answer" and items["q1"]["score"] == 0
    assert items["q2"]["votes"] == [1, 1, 1] and items["q2"]["score"] == 1
    assert items["q3"]["votes"] == [0, 0, 0] and items["q3"]["score"] == 0
    assert items["q4"]["answer"] == "good guess without tags" and items["q4"]["score"] == 1
    flaky = items["q5"]
    assert flaky["judge_failed"] and flaky["score"] == 0 and flaky["votes"] == [None] * 3
    assert all(len(r["replies"]) == 3 and r["replies"][0]["text"] == "no idea"
               for r in flaky["rounds"])
    # 3 judged items x 3 rounds x 1 call + 1 flaky item x 3 rounds x 3 attempts
    assert judge.calls == 9 + 9
    assert sorted(gen.seen) == sorted(ANSWERS)
    toy, toy2, overall = rows
    assert (toy["n"], toy["accuracy"], toy["exact_match"]) == (3, round(200 / 3, 2), 1)
    assert (toy2["n"], toy2["accuracy"], toy2["judge_failure_rate"]) == (3, round(100 / 3, 2), round(100 / 3, 2))
    assert overall["accuracy"] == 50.0
    assert "| toy | 3 | 66.7 |" in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "accuracy.png").read_bytes()[:4] == b"\x89PNG"


def _cut(path, keep_lines):
    lines = path.read_bytes().splitlines(keepends=True)
    path.write_bytes(b"".join(lines[:keep_lines]) + lines[keep_lines][: len(lines[keep_lines]) // 2])


def test_resume_after_kill_mid_file(tmp_path):
    first_gen, first_judge = CountingGenerator(), CountingJudge()
    run(tmp_path, first_gen, first_judge)
    complete = {r["id"]: r for r in read_jsonl(tmp_path / "items.jsonl")}
    # The kill: each file loses its tail and ends in a half-written line.
    _cut(tmp_path / "generations.jsonl", 4)
    _cut(tmp_path / "judge_rounds.jsonl", 5)
    _cut(tmp_path / "items.jsonl", 2)
    kept_items = {r["key"] for r in read_jsonl(tmp_path / "items.jsonl", repair=False)}
    kept_rounds = read_jsonl(tmp_path / "judge_rounds.jsonl", repair=False)
    judged = {"q2": 1, "q3": 1, "q4": 1, "q5": 3}  # calls per round
    expected_calls = 0
    for item_id, per_round in judged.items():
        key = next(k for k in (c["key"] for c in complete.values()) if f"/{item_id}/" in k)
        if key not in kept_items:
            done = sum(1 for row in kept_rounds if row["key"] == key)
            expected_calls += (3 - done) * per_round

    gen, judge = CountingGenerator(), CountingJudge()
    rows = run(tmp_path, gen, judge)
    assert sorted(gen.seen) == ["q4", "q5"]          # only the lost generations are redone
    assert judge.calls == expected_calls < first_judge.calls
    final = {r["id"]: r for r in read_jsonl(tmp_path / "items.jsonl")}
    assert final.keys() == complete.keys()
    for item_id, item in final.items():
        assert (item["score"], item["votes"]) == (complete[item_id]["score"], complete[item_id]["votes"])
    assert rows[-1]["accuracy"] == 50.0
    # A third run has nothing left to do and builds neither the model nor the judge.
    run_eval(records(), _never, _never, tmp_path, run_info=json.loads((tmp_path / "run.json")
             .read_text()), resamples=200, progress=False)


def _never():
    raise AssertionError("nothing was left to do, yet a model/judge was built")


def test_resume_refuses_a_different_run(tmp_path):
    run(tmp_path, CountingGenerator(), CountingJudge())
    with pytest.raises(ValueError, match="different run"):
        run(tmp_path, CountingGenerator(), CountingJudge(), info={"model": "other"})


class ConcurrencyJudge(CountingJudge):
    """Records how many chat calls are in flight at once; also has stats() and aclose()."""

    def __init__(self):
        super().__init__()
        self.active = self.peak = 0
        self.closed = False

    async def chat(self, messages, *, max_tokens, cache_key=None):
        import asyncio
        self.active += 1
        self.peak = max(self.peak, self.active)
        await asyncio.sleep(0.001)
        self.active -= 1
        return await super().chat(messages, max_tokens=max_tokens, cache_key=cache_key)

    def stats(self):
        return {"calls": self.calls, "requests": self.calls}

    async def aclose(self):
        self.closed = True


@pytest.mark.parametrize("limit, peak", [(1, 1), (2, 2), (None, 12)])
def test_judge_calls_in_flight_are_bounded_and_judge_closed(tmp_path, limit, peak):
    judge = ConcurrencyJudge()
    run(tmp_path, CountingGenerator(), judge, judge_in_flight=limit)
    # 4 judged items x 3 rounds start together; only the bound limits them
    assert judge.peak == peak and judge.closed
    (stats,) = read_jsonl(tmp_path / "judge_stats.jsonl")
    assert stats["calls"] == 18 and stats["items"] == 6
    assert "| 18 | 18 |" in (tmp_path / "summary.md").read_text()
