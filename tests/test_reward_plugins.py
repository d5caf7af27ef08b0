"""Plug-in reward functions (reward.functions): TRL's signature, import paths, weights, reward.medix,
failures reported per sample and never fatal, config-time checks, and a short training run."""
import json
import logging
import textwrap

import pytest

from medix_r1.config import load_config
from medix_r1.rewards import RewardConfig, RewardWorker
from medix_r1.rewards.plugins import load_function
from tests.train_helpers import make_tiny_model

PLUGIN = textwrap.dedent('''
    import asyncio

    def length_bonus(prompts, completions, **columns):
        return [min(len(c), 100) / 100 for c in completions]

    async def says_yes(prompts, completions, solution, **columns):
        await asyncio.sleep(0)
        return [1.0 if "yes" in c.lower() and "yes" in s.lower() else 0.0 for c, s in zip(completions, solution)]

    def only_with_id(prompts, completions, id=None, **columns):
        # None: not applicable (counts 0, not a failure)
        return [None if i is None else float(len(str(i))) for i in (id or [None] * len(completions))]

    def breaks_on_boom(prompts, completions, **columns):
        if any("boom" in c for c in completions):
            raise RuntimeError("cannot score boom")
        return [0.5] * len(completions)

    def one_short(prompts, completions, **columns):
        return [1.0] * (len(completions) - 1) if len(completions) > 1 else [1.0]

    def not_a_number(prompts, completions, **columns):
        return ["high" if "x" in c else 0.25 for c in completions]

    def seen_columns(prompts, completions, **columns):
        seen_columns.calls.append({"prompts": list(prompts), **{k: list(v) for k, v in columns.items()}})
        return [0.0] * len(completions)
    seen_columns.calls = []

    NOT_CALLABLE = 3
''')

GOOD = "<OTHER> <thinking>because</thinking> <answer>Yes, it does.</answer>"
PROBLEMS = ["Does aspirin help?", "Is it safe?", "Boom?"]
RESPONSES = [GOOD, "<OTHER> <answer>no</answer>", "boom x"]
SOLUTIONS = ["<OTHER> yes", "<OTHER> no", "<OTHER> yes"]


@pytest.fixture
def plugin(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(PLUGIN)
    return path


def worker(plugin, names, **kw):
    kw = {"judge": "none", "embedding_model": "none", **kw}
    cfg = RewardConfig(functions=[f"{plugin}:{n}" for n in names], **kw)
    return RewardWorker(cfg)


def test_sync_and_async_functions_are_weighted_and_added_to_the_medix_total(plugin):
    with worker(plugin, ["length_bonus", "says_yes"], function_weights=[0.5, 2.0]) as w:
        res = w.score(PROBLEMS, RESPONSES, SOLUTIONS)
    base = RewardConfig(judge="none", embedding_model="none")
    with RewardWorker(base) as w0:
        medix = [r.total for r in w0.score(PROBLEMS, RESPONSES, SOLUTIONS)]
    lengths = [min(len(c), 100) / 100 for c in RESPONSES]
    yes = [1.0, 0.0, 0.0]
    for r, m, le, y in zip(res, medix, lengths, yes):
        assert r.functions == {"length_bonus": pytest.approx(le), "says_yes": y}
        assert r.total == pytest.approx(m + 0.5 * le + 2.0 * y)
        assert not r.function_failed and not r.judge_failed
    assert medix[0] > 0  # the MediX part (format + modality with judge none) is really in there


def test_medix_false_replaces_the_composite_and_loads_no_model(plugin):
    with worker(plugin, ["says_yes"], medix=False, judge="local", embedding_model=None) as w:
        # a local judge and the default embedder would load two models; with medix=false neither loads
        res = w.score(PROBLEMS, RESPONSES, SOLUTIONS)
        assert w._judge is None and w._embedder is None
    assert [r.total for r in res] == [1.0, 0.0, 0.0]


def test_a_function_that_raises_fails_only_its_sample_named_in_the_log(plugin, caplog):
    with worker(plugin, ["breaks_on_boom"]) as w, caplog.at_level(logging.WARNING, "medix_r1.rewards.plugins"):
        res = w.score(PROBLEMS, RESPONSES, SOLUTIONS, columns={"id": ["a1", "b2", "c3"]})
        stats = w.stats()
    assert [r.functions["breaks_on_boom"] for r in res] == [0.5, 0.5, 0.0]
    assert [r.function_failed for r in res] == [False, False, True]
    assert [r.judge_failed for r in res] == [False, False, True]  # counted like a failed judgement
    assert "breaks_on_boom" in res[2].judge_error and "cannot score boom" in res[2].judge_error
    assert stats["function_failed"] == 1 and stats["judge_failed"] == 1
    msg = caplog.text
    assert "'breaks_on_boom'" in msg and "sample 2 (id c3)" in msg and "RuntimeError" in msg


def test_wrong_length_and_non_numbers_are_reported_per_sample(plugin, caplog):
    with worker(plugin, ["one_short", "not_a_number"]) as w, caplog.at_level(logging.WARNING):
        res = w.score(PROBLEMS, RESPONSES, SOLUTIONS)
    # one_short fails on the batch (2 values for 3), then returns one value per single sample
    assert [r.functions["one_short"] for r in res] == [1.0, 1.0, 1.0]
    assert [r.functions["not_a_number"] for r in res] == [0.25, 0.25, 0.0]
    assert [r.function_failed for r in res] == [False, False, True]
    assert "'not_a_number' failed on 1 of 3 samples" in caplog.text and "'high', not a number" in caplog.text


def test_none_means_not_applicable_and_columns_reach_the_function(plugin):
    with worker(plugin, ["only_with_id", "seen_columns"]) as w:
        res = w.score(PROBLEMS[:2], RESPONSES[:2], SOLUTIONS[:2], columns={"id": ["abc", None], "extra": [1, 2]})
    assert [r.functions["only_with_id"] for r in res] == [3.0, 0.0]
    assert not any(r.function_failed for r in res)
    calls = load_function(f"{plugin}:seen_columns").calls
    assert calls[-1] == {"prompts": PROBLEMS[:2], "id": ["abc", None], "extra": [1, 2], "solution": SOLUTIONS[:2]}


def test_module_import_paths_work(plugin, monkeypatch):
    monkeypatch.syspath_prepend(str(plugin.parent))
    with RewardWorker(RewardConfig(judge="none", embedding_model="none", functions=["my_rewards:length_bonus"],
                                   medix=False)) as w:
        res = w.score(PROBLEMS[:1], RESPONSES[:1], SOLUTIONS[:1])
    assert [r.total for r in res] == [pytest.approx(len(GOOD) / 100)]


@pytest.mark.parametrize("spec, words", [
    ("{p}:nope", ["reward.functions[0]", "has no 'nope'", "length_bonus"]),
    ("{p}:NOT_CALLABLE", ["reward.functions[0]", "not a function"]),
    ("{d}/missing.py:f", ["reward.functions[0]", "no file"]),
    ("no_such_module_xyz:f", ["reward.functions[0]", "cannot import module 'no_such_module_xyz'"]),
    ("just_a_name", ["reward.functions[0]", "pkg.module:function"]),
])
def test_bad_paths_fail_at_config_time_naming_the_field(plugin, spec, words):
    with pytest.raises(ValueError) as e:
        load_config("cpu_smollm2", [f"reward.functions=[{spec.format(p=plugin, d=plugin.parent)}]"])
    assert all(w in str(e.value) for w in words), str(e.value)


def test_weights_and_medix_false_are_checked_at_config_time(plugin):
    with pytest.raises(ValueError, match="1 weights for 2 reward.functions"):
        load_config("cpu_smollm2", [f"reward.functions=[{plugin}:length_bonus, {plugin}:says_yes]",
                                    "reward.function_weights=[1.0]"])
    with pytest.raises(ValueError, match="reward.medix=false .* none is set"):
        load_config("cpu_smollm2", ["reward.medix=false"])


def test_a_training_run_with_plugin_rewards_only(plugin, tmp_path):
    from medix_r1.train import train
    tiny = make_tiny_model(tmp_path / "tiny")
    out = tmp_path / "run"
    cfg = load_config("cpu_smollm2", [
        f"model.policy={tiny}", "rollout.engine=hf", "rollout.max_tokens=6", "rollout.n=3",
        "data.prompts_per_step=2", "data.max_records=10", "train.max_steps=2", f"train.output_dir={out}",
        "train.progress=false", "train.tensorboard=false", "train.plot=false", "train.save_every=0",
        f"reward.functions=[{plugin}:length_bonus, {plugin}:seen_columns]", "reward.medix=false"])
    train(cfg)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2]
    for x in lines:
        assert x["reward/total"] == pytest.approx(x["reward/fn/length_bonus"]) and x["reward/total"] > 0
        assert x["reward/fn/seen_columns"] == 0.0 and x["reward/function_failed_rate"] == 0.0
    seen = load_function(f"{plugin}:seen_columns").calls[-1]
    assert {"id", "solution", "images"} <= set(seen) and len(seen["id"]) == 6  # 2 prompts x 3 samples


def test_without_columns_a_plugin_gets_the_records_solution_back():
    import asyncio
    import time

    from medix_r1.rewards.worker import Sample, score_samples
    seen = {}

    def grab(prompts, completions, solution, **columns):
        seen["solution"] = solution
        return [0.0] * len(completions)

    samples = [Sample("q", "<OTHER> <thinking>t</thinking><answer>a</answer>", "<OTHER>", "Yes, it does.", False),
               Sample("q", "r", "<OTHER>", None, False)]
    cfg = RewardConfig(judge="none")
    asyncio.run(score_samples(samples, cfg, None, None, deadline=time.monotonic() + 30,
                              functions=[("tests:grab", grab, 1.0)]))
    assert seen["solution"] == ["<OTHER> Yes, it does.", "<OTHER>"]
