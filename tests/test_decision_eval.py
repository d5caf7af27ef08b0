"""benchmarks decision-eval: the lenient decision reading, the paired bootstrap and the command end to end
on real bundled test items with a scripted generator (the vLLM run itself is the benchmark)."""
import csv
import json
import shlex
import shutil

import numpy as np
import pytest

from benchmarks.__main__ import main as benchmarks_main
from medix_r1.config import load_config
from medix_r1.data.prompts import prompt_token_ids
from medix_r1.eval.studies import decision_eval, decision_report
from medix_r1.models import smollm2_hf_dir


@pytest.mark.parametrize("response, decision, tag, full_format", [
    # the answer tag's text decides, not the "no" in the thinking
    ("<OTHER> <thinking>There is no placebo arm.</thinking> <answer>Yes. It works.</answer>", "yes", True, True),
    # no tag: the whole response; "No acute ..." opens with "no" (the reward's gate reads no decision there)
    ("No acute findings.", "no", False, False),
    ("I think the answer is maybe, given the small sample.", "maybe", False, False),
    ("MAYBE, though yes is possible", "maybe", False, False),  # the first word wins, any case
    # a tag without a decision word: none, even when the rest of the response has one
    ("<answer>The data are unclear</answer> yes", None, True, False),
    ("Knowledge of nobody; yesterday's notes.", None, False, False),  # whole words only
    ("<thinking>t</thinking> <answer>Yes. but unclosed", "yes", False, False),  # no closed tag: whole response
])
def test_read_response(response, decision, tag, full_format):
    assert decision_eval.read_response(response) == {"decision": decision, "answer_tag": tag,
                                                     "format_ok": full_format}


def test_paired_bootstrap_finds_a_known_difference():
    base = np.array([1] * 40 + [0] * 60)
    better = base.copy()
    better[40:70] = 1  # right on 30 more of 100 items
    stats = decision_report.paired_bootstrap(np.stack([base, better]), resamples=4000, seed=1)
    assert stats["accuracy"] == [0.4, 0.7]
    assert stats["diff"][1] == pytest.approx(0.30)
    lo, hi = stats["diff_ci"][1]
    assert 0 < lo < 0.30 < hi  # excludes zero
    assert 0.05 < hi - 0.30 < 0.13 and 0.05 < 0.30 - lo < 0.13  # ~1.96 * sqrt(0.3 * 0.7 / 100) = 0.09
    for acc, (a_lo, a_hi) in zip(stats["accuracy"], stats["accuracy_ci"]):
        assert a_lo < acc < a_hi
    assert decision_report.paired_bootstrap(np.stack([base, better]), 4000, 1) == stats  # seeded
    assert "above zero" in decision_report.interval_sentence("ckpt", "base", 0.3, lo, hi, 100)


def test_balanced_accuracy_is_the_mean_of_the_per_decision_accuracies():
    gold = ["yes"] * 12 + ["no"] * 6 + ["maybe"] * 6
    always_yes = np.array([g == "yes" for g in gold], dtype=float)
    mixed = np.array([1] * 6 + [0] * 6 + [1] * 2 + [0] * 4 + [1] * 6, dtype=float)  # yes 6/12, no 2/6, maybe 6/6
    stats = decision_report.paired_bootstrap(np.stack([always_yes, mixed]), resamples=2000, seed=0, groups=gold)
    assert stats["accuracy"] == pytest.approx([1 / 3, (0.5 + 1 / 3 + 1) / 3])
    assert stats["diff"][1] == pytest.approx((0.5 + 1 / 3 + 1) / 3 - 1 / 3)
    # a constant answer scores 1/3 on any resample that holds every label (nearly all of them here)
    assert stats["accuracy_ci"][0] == pytest.approx((1 / 3, 1 / 3))
    lo, hi = stats["diff_ci"][1]
    assert lo < stats["diff"][1] < hi
    plain = decision_report.paired_bootstrap(np.stack([always_yes, mixed]), resamples=2000, seed=0)
    assert plain["accuracy"] == pytest.approx([0.5, 14 / 24])


def test_identical_models_differ_by_exactly_zero():
    scores = np.array([[1, 0, 1, 1, 0, 0, 1, 0] * 10] * 2)
    stats = decision_report.paired_bootstrap(scores, resamples=1000, seed=0)
    assert stats["diff"][1] == 0.0 and stats["diff_ci"][1] == (0.0, 0.0)
    assert "includes zero" in decision_report.interval_sentence("b", "a", 0.0, 0.0, 0.0, 80)
    row = {"label": "m", "accuracy": 0.7, "accuracy_ci_low": 0.6, "accuracy_ci_high": 0.8}
    assert decision_report.versus_majority(row, 0.55) == "m: 70.0% [60.0%, 80.0%], above it."
    assert decision_report.versus_majority(row, 0.65).endswith("not separable from it.")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A trainer checkpoint folder (step_000030/model/ with config and tokenizer; the scripted
    generator needs no weights)."""
    model = tmp_path_factory.mktemp("runs") / "x" / "step_000030" / "model"
    model.mkdir(parents=True)
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(smollm2_hf_dir() / name, model / name)
    return model.parent


def scripted_generator(calls, items):
    """The baseline says "Yes" without the format; the checkpoint answers each item's gold decision in
    the format, except the first gold-yes item, where its answer has no decision."""
    first_yes = next(i for i, it in enumerate(items) if it["gold"] == "yes")

    def generate(model_dir, prompt_ids, max_tokens):
        calls.append((str(model_dir), prompt_ids, max_tokens))
        if "step_000030" not in str(model_dir):
            return ["Yes, I believe so."] * len(prompt_ids)
        return ["<OTHER> <thinking>t</thinking> <answer>"
                + ("It is hard to say" if i == first_yes else f"{it['gold'].capitalize()}. Because.") + "</answer>"
                for i, it in enumerate(items)]
    return generate


def test_cli_end_to_end_on_six_real_items(tmp_path, checkpoint, capsys, monkeypatch):
    items = decision_eval.load_items(6)
    gold = [it["gold"] for it in items]
    assert set(gold) == {"yes", "no", "maybe"} and len({it["id"] for it in items}) == 6
    calls = []
    argv = ["decision-eval", "--model", "smollm2", "--model", str(checkpoint), "--labels", "base,trained",
            "--limit", "6", "--resamples", "500", "--out-dir", str(tmp_path), "--name", "de"]
    real_main = decision_eval.main  # `python -m benchmarks decision-eval` hands its arguments to this
    monkeypatch.setattr(decision_eval, "main",
                        lambda args: real_main(args, generate=scripted_generator(calls, items)))
    assert benchmarks_main(argv) == 0
    monkeypatch.undo()
    # the trainer's prompts, greedy budget = the recipe's rollout.max_tokens, one call per model
    cfg = load_config("cpu_smollm2")
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(smollm2_hf_dir()))
    expected = [prompt_token_ids(tok, it, cfg.data) for it in items]
    assert [c[2] for c in calls] == [112, 112] and [c[1] for c in calls] == [expected, expected]
    text = tok.decode(expected[0])
    context = " ".join(items[0]["contexts"])
    assert items[0]["question"] in text and "aspirin" in text  # the record and the one-shot example
    assert len(context) > 300 and context[:200] in text and context[400:] not in text  # cut to 300 characters

    n_yes = gold.count("yes")
    rows = {r["label"]: r for r in csv.DictReader(open(tmp_path / "de.csv"))}
    base, trained = rows["base"], rows["trained"]
    assert float(base["accuracy"]) == pytest.approx(n_yes / 6, abs=1e-4)
    assert float(trained["accuracy"]) == pytest.approx(5 / 6, abs=1e-4)
    assert float(trained["diff_vs_baseline"]) == pytest.approx((5 - n_yes) / 6, abs=1e-4)
    assert int(trained["better_items"]) == 6 - n_yes and int(trained["worse_items"]) == 1
    assert float(base["answer_tag_rate"]) == 0 and float(trained["answer_tag_rate"]) == 1
    assert float(trained["format_ok_rate"]) == 1 and float(trained["no_decision_rate"]) == pytest.approx(1 / 6, 1e-3)
    assert float(base["predicted_yes"]) == 1 and float(base["right_on_gold_yes"]) == 1
    assert float(base["right_on_gold_no"]) == 0 and base["diff_vs_baseline"] == ""
    assert float(trained["accuracy_ci_low"]) <= 5 / 6 <= float(trained["accuracy_ci_high"])
    # balanced accuracy: the always-yes baseline is right on every gold yes only -> 1/3; the checkpoint
    # misses one of the n_yes gold-yes items -> (1 - 1/n_yes + 1 + 1) / 3
    assert float(base["balanced_accuracy"]) == pytest.approx(1 / 3, abs=1e-4)
    balanced = (1 - 1 / n_yes + 2) / 3
    assert float(trained["balanced_accuracy"]) == pytest.approx(balanced, abs=1e-4)
    assert float(trained["balanced_diff"]) == pytest.approx(balanced - 1 / 3, abs=1e-4)
    assert float(trained["balanced_diff_ci_low"]) <= balanced - 1 / 3 <= float(trained["balanced_diff_ci_high"])
    assert "any constant answer scores 33.3%" in (tmp_path / "de.md").read_text()

    lines = [json.loads(x) for x in (tmp_path / "de-items.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines] == [it["id"] for it in items] and [x["gold"] for x in lines] == gold
    assert all(x["models"]["base"]["decision"] == "yes" for x in lines)
    assert sum(x["models"]["trained"]["correct"] for x in lines) == 5
    assert lines[0]["models"]["trained"]["response"].startswith("<OTHER> <thinking>")

    md = (tmp_path / "de.md").read_text()
    diff = 100 * (5 - n_yes) / 6
    assert f"| trained - base | {diff:+.1f} points |" in md and "Machine: " in md and "--labels base,trained" in md
    majority = max(("yes", "no", "maybe"), key=gold.count)
    assert f"always \"{majority}\" scores {100 * gold.count(majority) / 6:.1f}%" in md
    assert "identical for every model" in md and "trained: 83.3% [" in md
    assert "## What limits this" in md and "trained vs base" in md
    assert "items/s" in capsys.readouterr().out

    # existing outputs are refused unless --overwrite (before any generation)
    assert decision_eval.main(argv[1:], generate=lambda *a: pytest.fail("generated")) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert decision_eval.main(argv[1:] + ["--overwrite"], generate=scripted_generator([], items)) == 0


@pytest.mark.parametrize("extra, flag", [
    (["--model", "smollm2"], "--model"),
    (["--model", "smollm2", "--model", "smollm2", "--labels", "a,b,c"], "--labels"),
    (["--model", "smollm2", "--model", "smollm2"], "--labels"),  # two models, same default label
    (["--model", "smollm2", "--model", "runs/nope/step_000030"], "--model"),
    (["--model", "smollm2", "--model", "smollm2", "--labels", "a,b", "--limit", "0"], "--limit"),
    (["--model", "smollm2", "--model", "smollm2", "--labels", "a,b", "--resamples", "10"], "--resamples"),
    (["--model", "smollm2", "--model", "smollm2", "--labels", "a,b", "--max-tokens", "1000"], "--max-tokens"),
    (["--model", "smollm2", "--model", "smollm2", "--labels", "a,b", "--recipe", "no_such_recipe"], "--recipe"),
    (["--model", "smollm2", "--model", "smollm2", "--labels", "a,b", "--set", "data.no_such_field=1"], "--set"),
    (["--model", "smollm2", "--model", "smollm2", "--labels", "a,b", "--name", "x/y"], "--name"),
])
def test_bad_arguments_are_named_before_any_model_loads(tmp_path, capsys, extra, flag):
    argv = extra + ["--out-dir", str(tmp_path)]
    assert decision_eval.main(argv, generate=lambda *a: pytest.fail("generated")) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and flag in err
    assert not list(tmp_path.iterdir())


def test_set_overrides_the_recipe_like_the_trainer(tmp_path):
    """A run trained with --set data.example_answer=... is evaluated on the same prompts."""
    answer = "<OTHER> <thinking>t</thinking> <answer>No. It does not.</answer>"
    args = decision_eval.build_parser().parse_args(
        ["--model", "smollm2", "--model", "smollm2", "--labels", "a,b", "--out-dir", str(tmp_path),
         "--set", f"data.example_answer={answer}", "--set", "rollout.max_tokens=64"])
    _, _, cfg, max_tokens = decision_eval.check_args(args)
    assert cfg.data.example_answer == answer and max_tokens == 64
    assert cfg.data.example_question == load_config("cpu_smollm2").data.example_question


def test_report_command_with_set_can_be_pasted_back(tmp_path, monkeypatch):
    """A --set value with spaces and a newline is quoted in the report, and the report names the field."""
    items = decision_eval.load_items(3)
    question = "Context: A trial of 200 adults.\n\nQuestion: Does it help?"
    argv = ["--model", "smollm2", "--model", "smollm2", "--labels", "a,b", "--limit", "3", "--resamples", "200",
            "--out-dir", str(tmp_path), "--name", "de", "--set", f"data.example_question={question}"]
    assert decision_eval.main(argv, generate=scripted_generator([], items)) == 0
    md = (tmp_path / "de.md").read_text()
    block = md.split("```sh\n", 1)[1].split("\n```", 1)[0]
    assert shlex.split(block) == ["python", "-m", "benchmarks", "decision-eval", *argv]
    assert "under recipe `cpu_smollm2` with `data.example_question` set" in md
