"""Config values that used to pass every check (issue 17): NaN / inf in any float field, clip_low
>= 1, a judge URL that is not http(s), rollout.n = 1. Each is refused naming the field."""
import dataclasses
import re

import pytest

from medix_r1.config import TrainConfig, load_config
from medix_r1.rewards import RewardConfig
from medix_r1.train.cli import main


def float_fields(obj, prefix=""):
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            yield from float_fields(value, f"{prefix}{f.name}.")
        elif isinstance(value, float):
            yield f"{prefix}{f.name}"


FLOATS = sorted(float_fields(TrainConfig()))


def test_the_tree_has_the_float_fields_the_issue_names():
    for key in ("optim.lr", "loss.beta", "rollout.temperature", "rollout.top_p", "loss.clip_low",
                "train.judge_failure_threshold", "reward.embedding_threshold", "reward.weights.judge"):
        assert key in FLOATS


@pytest.mark.parametrize("key", FLOATS)
@pytest.mark.parametrize("value", [".nan", ".inf", "-.inf"])
def test_non_finite_floats_are_refused_naming_the_field(key, value):
    with pytest.raises(ValueError, match=re.escape(key) + " must be a finite number"):
        load_config("cpu_smollm2", [f"{key}={value}"])


@pytest.mark.parametrize("override, message", [
    ("loss.clip_low=1.0", r"loss\.clip_low must be >= 0\.0 and < 1\.0, got 1\.0 \(the ratio is clipped below"),
    ("loss.clip_low=1.5", r"loss\.clip_low must be >= 0\.0 and < 1\.0"),
    ("rollout.n=1", r"rollout\.n must be >= 2, got 1 \(.*every group advantage is 0\)"),
    ("reward.judge_url=ftp://judge:21/v1", r"reward\.judge_url must be an http\(s\) URL"),
    ("reward.judge_url=127.0.0.1:8000/v1", r"reward\.judge_url must be an http\(s\) URL"),
])
def test_bad_values_are_refused_naming_the_field(override, message):
    with pytest.raises(ValueError, match=message):
        load_config("cpu_smollm2", [override])


def test_the_edges_that_are_fine_still_pass():
    cfg = load_config("cpu_smollm2", ["loss.clip_low=0.99", "rollout.n=2", "reward.judge=http",
                                      "reward.judge_url=https://judge.example/v1", "reward.judge_model=m"])
    assert cfg.loss.clip_low == 0.99 and cfg.rollout.n == 2


def test_reward_config_alone_refuses_non_finite_and_bad_urls():
    with pytest.raises(ValueError, match="reward.deadline_s must be a finite number"):
        RewardConfig(deadline_s=float("inf"))
    with pytest.raises(ValueError, match="reward.embedding_threshold must be a finite number"):
        RewardConfig(embedding_threshold=float("nan"))
    with pytest.raises(ValueError, match="reward.judge_url must be an http"):
        RewardConfig(judge="http", judge_url="file:///etc/passwd", judge_model="m")


def test_lr_nan_is_one_line_before_any_model_loads(capsys, monkeypatch):
    import medix_r1.train.cli as cli

    def no_training(*args, **kwargs):  # a config error must stop the CLI before train() is reached
        raise AssertionError("train() was called")

    monkeypatch.setattr(cli, "train", no_training)
    assert main(["--set", "optim.lr=.nan", "-q"]) == 2
    err = capsys.readouterr().err
    assert err == "config error: optim.lr must be a finite number, got nan\n"


def test_loss_aggregation_auto_is_the_loss_types_own_and_dr_grpo_pairs_are_checked():
    from medix_r1.train.policy import loss_config
    cfg = load_config("cpu_smollm2", ["loss.loss_type=dr_grpo", "loss.aggregation=auto"])
    assert loss_config(cfg).aggregation == "seq-mean-token-sum-norm"
    assert load_config("cpu_smollm2").loss.aggregation == "token-mean"  # the recipes name theirs
    with pytest.raises(ValueError, match="loss.aggregation=token-mean with loss.loss_type=dr_grpo"):
        load_config("cpu_smollm2", ["loss.loss_type=dr_grpo"])  # the recipe's token-mean conflicts
