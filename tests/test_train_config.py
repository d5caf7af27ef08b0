"""Config tree: recipes, --set overrides, validation messages, --help."""
import dataclasses

import pytest

from medix_r1.config import TrainConfig, describe_fields, load_config, resolve_recipe
from medix_r1.train.build import lr_lambda
from medix_r1.train.cli import build_parser
from medix_r1.utils.typed_config import parse_override, set_value


def test_default_recipe_loads_and_matches_the_embedded_values():
    cfg = load_config()
    assert cfg.model.policy == "smollm2"
    assert cfg.rollout.engine == "vllm" and cfg.rollout.n == 4
    assert cfg.loss.beta == 0.0 and cfg.optim.lr == 2e-5


@pytest.mark.parametrize("name", ["cpu_smollm2", "grpo", "dapo", "gspo"])
def test_every_shipped_recipe_validates(name):
    cfg = load_config(name)
    assert isinstance(cfg, TrainConfig)


def test_paper_recipes_carry_the_paper_hyperparameters():
    grpo, dapo, gspo = load_config("grpo"), load_config("dapo"), load_config("gspo")
    assert (grpo.loss.kl, grpo.loss.beta, grpo.optim.lr, grpo.rollout.n) == ("k3", 0.01, 1e-6, 5)
    assert (dapo.loss.clip_low, dapo.loss.clip_high, dapo.loss.beta) == (0.2, 0.28, 0.0)
    assert dapo.algorithm.dynamic_sampling and dapo.algorithm.dynamic_sampling_high == 0.99
    assert gspo.loss.loss_type == "gspo" and gspo.loss.clip_low < 1e-3


@pytest.mark.parametrize("name", ["grpo", "dapo", "gspo", "qwen25vl_7b", "qwen3vl_2b", "qwen3vl_8b"])
def test_gpu_recipes_use_the_papers_judge_and_embedding_models(name):
    r = load_config(name).reward
    assert (r.judge, r.judge_url, r.judge_model) == ("http", "http://127.0.0.1:8000/v1", "Qwen/Qwen3-4B-Instruct-2507")
    assert r.embedding_model == "abhinand/MedEmbed-large-v0.1"
    assert load_config("cpu_smollm2").reward.judge == "local"  # the embedded run needs no server


def test_overrides_are_typed():
    cfg = load_config(overrides=["loss.beta=0.05", "rollout.n=8", "train.tensorboard=false",
                                 "data.train=some/file.jsonl", "optim.lr=3e-6"])
    assert cfg.loss.beta == 0.05 and cfg.rollout.n == 8 and cfg.train.tensorboard is False
    assert cfg.data.train == "some/file.jsonl" and cfg.optim.lr == 3e-6
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])


def test_text_fields_take_the_text_as_written():
    """YAML reads 'Context: ...' as a mapping and 'yes' as true; a string field gets the text itself."""
    question = "Context: A trial of 200 adults.\n\nQuestion: Does aspirin help?"
    cfg = load_config(overrides=[f"data.example_question={question}", "data.example_answer=yes",
                                 "data.balance_by=no"])
    assert cfg.data.example_question == question and cfg.data.example_answer == "yes"
    assert cfg.data.balance_by == "no"
    with pytest.raises(TypeError, match=r"rollout\.n: expected an integer, got \[1, 2\]"):
        load_config(overrides=["rollout.n=[1, 2]"])  # neither reading fits: the YAML one is reported


def test_unknown_field_suggests_the_closest_name():
    with pytest.raises(ValueError, match=r"unknown config field 'loss\.betta'.*did you mean 'beta'"):
        load_config(overrides=["loss.betta=0.1"])
    with pytest.raises(ValueError, match=r"unknown config field 'rollot'.*did you mean 'rollout'"):
        load_config(overrides=["rollot.n=2"])


def test_wrong_type_names_the_field():
    with pytest.raises(TypeError, match=r"rollout\.n: expected an integer, got 'four'"):
        load_config(overrides=["rollout.n=four"])
    with pytest.raises(TypeError, match=r"train\.tensorboard: expected a boolean"):
        load_config(overrides=["train.tensorboard=3"])


def test_out_of_range_and_bad_choices():
    with pytest.raises(ValueError, match=r"rollout\.n must be >= 2, got 0"):
        load_config(overrides=["rollout.n=0"])
    with pytest.raises(ValueError, match=r"optim\.lr must be > 0"):
        load_config(overrides=["optim.lr=0"])
    with pytest.raises(ValueError, match=r"loss\.impl must be one of .*did you mean 'fused'"):
        load_config(overrides=["loss.impl=fusd"])
    with pytest.raises(ValueError, match=r"max_model_len .* must be >= data\.max_prompt_tokens"):
        load_config(overrides=["rollout.max_model_len=100"])


def test_bad_override_syntax_and_recipe_name(tmp_path):
    with pytest.raises(ValueError, match="key=value"):
        parse_override("loss.beta")
    with pytest.raises(ValueError, match="did you mean 'dapo'"):
        resolve_recipe("dapoo")
    bad = tmp_path / "r.yaml"
    bad.write_text("loss:\n  clip_hihg: 0.3\n")
    with pytest.raises(ValueError, match=rf"recipe {bad}: unknown config field 'loss\.clip_hihg'.*'clip_high'"):
        load_config(str(bad))


def test_section_cannot_be_set_to_a_value():
    cfg = TrainConfig()
    with pytest.raises(TypeError, match="is a section"):
        set_value(cfg, "loss", 3)


def test_help_documents_every_field():
    text = build_parser().format_help()
    cfg = TrainConfig()

    def walk(obj, prefix):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):  # a nested section: a [header], then its fields
                assert f"[{prefix}{f.name}]" in text, f"section {prefix}{f.name} missing from --help"
                walk(value, f"{prefix}{f.name}.")
            else:
                assert f"{prefix}{f.name} (" in text, f"{prefix}{f.name} missing from --help"
    for section in dataclasses.fields(cfg):
        walk(getattr(cfg, section.name), f"{section.name}.")
    assert len(describe_fields()) > 50


def test_lr_schedules():
    cfg = load_config(overrides=["optim.schedule=linear", "optim.warmup_steps=2", "train.max_steps=12",
                                 "optim.min_lr_ratio=0.0"])
    f = lr_lambda(cfg)
    assert [f(0), f(1)] == [0.5, 1.0]
    assert f(2) == 1.0 and f(7) == pytest.approx(0.5) and f(12) == 0.0
    cfg = load_config(overrides=["optim.schedule=cosine", "train.max_steps=10", "optim.min_lr_ratio=0.1"])
    f = lr_lambda(cfg)
    assert f(0) == pytest.approx(1.0) and f(5) == pytest.approx(0.55) and f(10) == pytest.approx(0.1)


def _help_entries(text: str) -> dict[str, tuple[str, str]]:
    """field -> (value shown, the [section] it is listed under), from --help's config-field list."""
    import re
    entries, section = {}, None
    for line in text.splitlines():
        if re.fullmatch(r"\[[\w.]+\]", line):
            section = line[1:-1]
        m = re.match(r"  ([\w.]+) \([^)]*\) = (.*?)(?::(?:\s|$)|$)", line)
        if m:
            entries[m.group(1)] = (m.group(2), section)
    return entries


def _leaves(obj, prefix=""):
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from _leaves(value, f"{prefix}{f.name}.")
        else:
            yield f"{prefix}{f.name}", value


@pytest.mark.parametrize("recipe", ["cpu_smollm2", "grpo", "medix_r1_8b_dapo"])
def test_help_shows_the_values_of_the_recipe_it_would_run_under_the_right_headers(recipe, monkeypatch, capsys):
    from medix_r1.train.cli import main
    monkeypatch.setenv("COLUMNS", "100")
    argv = ["--help"] if recipe == "cpu_smollm2" else ["--recipe", recipe, "--help"]
    with pytest.raises(SystemExit):
        main(argv)
    text = capsys.readouterr().out
    assert f"the values of recipe {recipe}" in text
    assert max(len(line) for line in text.splitlines()) <= 100
    entries = _help_entries(text)
    cfg = load_config(recipe)
    for key, value in _leaves(cfg):
        shown, section = entries[key]
        if len(repr(value)) < 60:
            assert shown == repr(value), f"{key}: --help shows {shown}, the recipe runs {value!r}"
        assert section == key.rsplit(".", 1)[0], f"{key} is listed under [{section}]"


def test_help_names_the_overrides_and_survives_a_broken_recipe(capsys):
    from medix_r1.train.cli import main
    with pytest.raises(SystemExit):
        main(["--set", "rollout.temperature=0.3", "--help"])
    entries = _help_entries(capsys.readouterr().out)
    assert entries["rollout.temperature"][0] == "0.3"
    with pytest.raises(SystemExit):
        main(["--recipe", "no_such_recipe", "--help"])
    assert "the built-in defaults (recipe no_such_recipe does not load" in capsys.readouterr().out
