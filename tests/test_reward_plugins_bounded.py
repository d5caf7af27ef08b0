"""Plug-in reward functions that hang, block, overflow or exit (issue 30, items 8 and 10): every call
is bounded by the batch deadline on threads of its own (the judge's thread pool is never starved),
the batch's Future is bounded even when the worker's event loop is blocked, the process exits, and
values outside float32 (or sums that leave it), sys.exit and `from __future__ import annotations`
plug-ins give one flagged sample or one config error, never a crash."""
import asyncio
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import medix_kernels as mk
from medix_r1.rewards import RewardConfig, RewardWorker
from medix_r1.rewards.judge import JudgeVerdict
from medix_r1.rewards.plugins import MAX_RUNNING, load_function

ROOT = Path(__file__).resolve().parents[1]
PLUGIN = textwrap.dedent('''
    import asyncio
    import sys
    import threading
    import time

    RELEASE = threading.Event()  # the test lets the hanging calls go at the end

    def hangs(prompts, completions, **columns):
        RELEASE.wait()
        return [1.0] * len(completions)

    async def blocks_its_loop(prompts, completions, **columns):
        time.sleep(2.0)  # blocking code in an async def: the loop it runs on stops
        return [1.0] * len(completions)

    def returns_a_hanging_awaitable(prompts, completions, **columns):
        return asyncio.sleep(3600)

    def huge(prompts, completions, **columns):
        return [10 ** 400, 1e39, 2.0][:len(completions)]

    def big(prompts, completions, **columns):
        return [3e38] * len(completions)

    def big_too(prompts, completions, **columns):
        return [3e38] * len(completions)

    def exits(prompts, completions, **columns):
        sys.exit(3)

    async def exits_async(prompts, completions, **columns):
        sys.exit(4)
''')
PROBLEMS = ["Does aspirin help?", "Is it safe?", "Boom?"]
RESPONSES = ["<OTHER> <thinking>t</thinking> <answer>Perhaps it does.</answer>"] * 3
SOLUTIONS = ["<OTHER> yes", "<OTHER> no", "<OTHER> yes"]


@pytest.fixture
def plugin(tmp_path):
    path = tmp_path / "bad_rewards.py"
    path.write_text(PLUGIN)
    yield path
    load_function(f"{path}:hangs").__globals__["RELEASE"].set()  # free the threads the test left hanging


class ThreadJudge:
    """Answers YES from asyncio.to_thread, i.e. from the event loop's default thread pool, as LocalJudge
    and the embedding model do."""
    parity = "strict"

    async def judge_many(self, items, *, deadline=None):
        return await asyncio.to_thread(lambda: [JudgeVerdict(correct=True, failed=False, reply="YES") for _ in items])


class LoopBlockingJudge:
    """A judge whose coroutine blocks the event loop (sync code inside async def)."""
    parity = "strict"

    async def judge_many(self, items, *, deadline=None):
        time.sleep(5.0)
        return [JudgeVerdict(correct=True, failed=False, reply="YES") for _ in items]


def config(plugin, *names, **kw):
    return RewardConfig(**{"judge": "none", "embedding_model": "none", "deadline_s": 0.5,
                           "functions": [f"{plugin}:{n}" for n in names], **kw})


def test_a_hanging_plain_function_never_starves_the_judge(plugin):
    with RewardWorker(config(plugin, "hangs"), judge=ThreadJudge()) as worker:
        for batch in range(3 * MAX_RUNNING):  # more than the default thread pool's workers (6 on 2 cores)
            got = worker.score(PROBLEMS, RESPONSES, SOLUTIONS)
            assert [r.judge_reply for r in got] == ["YES"] * 3, (batch, [r.judge_error for r in got])
            assert all(r.function_failed and r.functions["hangs"] == 0.0 for r in got)
            assert ("missed the batch deadline" in got[0].judge_error if batch < MAX_RUNNING
                    else "earlier calls have not returned" in got[0].judge_error), got[0].judge_error


def test_the_process_exits_though_a_function_hangs(plugin):
    script = textwrap.dedent(f'''
        from medix_r1.rewards import RewardConfig, RewardWorker
        cfg = RewardConfig(judge="none", embedding_model="none", deadline_s=0.3, functions=["{plugin}:hangs"])
        with RewardWorker(cfg) as worker:
            got = worker.score(["q"], ["<OTHER> <answer>a b</answer>"], ["<OTHER> c"])
        print("SCORED", got[0].function_failed, flush=True)
    ''')
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0 and "SCORED True" in proc.stdout, proc.stderr[-2000:]
    assert time.monotonic() - t0 < 45


def test_an_async_function_that_blocks_its_loop_is_cut_at_the_deadline(plugin):
    with RewardWorker(config(plugin, "blocks_its_loop", deadline_s=0.4)) as worker:
        t0 = time.monotonic()
        got = worker.score(PROBLEMS, RESPONSES, SOLUTIONS)
        assert time.monotonic() - t0 < 1.5  # not the 2 s the function blocks for
    assert all(r.function_failed and r.functions["blocks_its_loop"] == 0.0 for r in got)
    assert "missed the batch deadline" in got[0].judge_error


def test_a_plain_function_returning_a_hanging_awaitable_is_cut_at_the_deadline(plugin):
    with RewardWorker(config(plugin, "returns_a_hanging_awaitable")) as worker:
        got = worker.submit(PROBLEMS, RESPONSES, SOLUTIONS).result(timeout=10)
    assert all(r.function_failed for r in got) and "missed the batch deadline" in got[0].judge_error


def test_the_batch_future_is_bounded_even_when_the_loop_is_blocked():
    worker = RewardWorker(RewardConfig(judge="none", embedding_model="none", deadline_s=0.3),
                          judge=LoopBlockingJudge())
    try:
        t0 = time.monotonic()
        got = worker.submit(PROBLEMS, RESPONSES, SOLUTIONS).result(timeout=30)
        assert time.monotonic() - t0 < 4.0  # deadline + 0.2 s guard + 2 s, not the judge's 5 s
        assert all(r.judge_failed and r.total == 0.0 and "event loop is blocked" in r.judge_error for r in got)
        assert worker.stats()["deadline_misses"] == 1
    finally:
        worker.close()


def test_values_outside_float32_score_0_and_are_flagged(plugin):
    with RewardWorker(config(plugin, "huge")) as worker:
        got = worker.score(PROBLEMS, RESPONSES, SOLUTIONS)
    assert [r.functions["huge"] for r in got] == [0.0, 0.0, 2.0]
    assert [r.function_failed for r in got] == [True, True, False]
    assert "401 digits" in got[0].judge_error and "outside float32" in got[1].judge_error
    totals = torch.tensor([r.total for r in got], dtype=torch.float32)
    assert torch.isfinite(totals).all()
    mk.group_advantages(totals, 3)  # the trainer's next step takes them


def test_a_sum_leaving_float32_scores_0_and_is_flagged(plugin):
    with RewardWorker(config(plugin, "big", "big_too", medix=False)) as worker:
        got = worker.score(PROBLEMS, RESPONSES, SOLUTIONS)
    assert all(r.function_failed and r.total == 0.0 and r.functions == {"big": 0.0, "big_too": 0.0} for r in got)
    assert "outside float32's range" in got[0].judge_error
    mk.group_advantages(torch.tensor([r.total for r in got]), 3)
    with RewardWorker(config(plugin, "big", medix=False)) as worker:  # one 3e38 alone is a float32
        assert [r.total for r in worker.score(PROBLEMS, RESPONSES, SOLUTIONS)] == [3e38] * 3


def test_sys_exit_in_a_call_fails_that_call_only(plugin):
    with RewardWorker(config(plugin, "exits", "exits_async")) as worker:
        got = worker.score(PROBLEMS, RESPONSES, SOLUTIONS)
        again = worker.score(PROBLEMS, RESPONSES, SOLUTIONS)  # the async function's loop still runs
    for r in got + again:
        assert r.function_failed and r.functions == {"exits": 0.0, "exits_async": 0.0}
    assert "sys.exit(4)" in got[0].judge_error or "sys.exit(3)" in got[0].judge_error


def test_sys_exit_at_import_is_a_config_error_naming_the_file(tmp_path, capsys):
    bad = tmp_path / "exits_at_import.py"
    bad.write_text("import sys\nsys.exit(0)\n\n"
                   "def fn(prompts, completions, **kw):\n    return [0.0] * len(completions)\n")
    with pytest.raises(ValueError, match=r"reward.functions\[0\].*exits_at_import.py.*sys.exit\(0\)"):
        RewardConfig(judge="none", embedding_model="none", functions=[f"{bad}:fn"])
    from medix_r1.train.cli import main
    assert main(["--set", f"reward.functions=[{bad}:fn]", "--max-steps", "1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sys.exit(0)" in err and str(bad) in err


def test_a_plugin_with_future_annotations_and_a_dataclass_loads(tmp_path):
    path = tmp_path / "typed_rewards.py"
    path.write_text(textwrap.dedent('''
        from __future__ import annotations
        from dataclasses import dataclass

        @dataclass
        class Scale:
            factor: float

        SCALE = Scale(0.5)

        def scaled(prompts, completions, **columns) -> list[float]:
            return [SCALE.factor] * len(completions)
    '''))
    with RewardWorker(config(path, "scaled", medix=False)) as worker:
        assert [r.total for r in worker.score(PROBLEMS, RESPONSES, SOLUTIONS)] == [0.5] * 3
