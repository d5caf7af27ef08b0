"""The five recipes of MediX-R1's official scripts, pinned value by value (a drift fails here).

The expected values are read from the official repository (commit 94fd018): the script named in each
recipe, training/examples/config.yaml and the trainer defaults (docs/reproducing.md)."""
import re
from pathlib import Path

import pytest
import yaml

from medix_kernels import LossConfig
from medix_r1.config import RECIPE_ALIASES, RECIPES_DIR, load_config, resolve_recipe

SHARED = {
    "model.dtype": "bfloat16", "model.gradient_checkpointing": True,
    "data.train": "hub:MBZUAI/medix-rl-data", "data.split": "train", "data.val": "hub:MBZUAI/medix-rl-data",
    "data.val_split": "test", "data.image_column": "image", "data.prompt_template": "official",
    "data.context_chars": 0, "data.max_prompt_tokens": 4352, "data.overlong": "filter",
    "data.overlong_measure": "chars", "data.prompts_per_step": 512,
    "rollout.engine": "vllm", "rollout.n": 5, "rollout.max_tokens": 4096, "rollout.temperature": 1.0,
    "rollout.top_p": 1.0, "rollout.max_model_len": 8448, "rollout.gpu_memory_utilization": 0.6,
    "rollout.val_n": 1, "rollout.val_temperature": 0.6, "rollout.val_top_p": 0.95,
    "algorithm.advantage_mode": "grpo", "algorithm.advantage_scale": "group", "algorithm.advantage_eps": 1e-6,
    "loss.impl": "fused", "loss.dual_clip": 3.0, "loss.kl": "k3",
    "optim.lr": 1e-6, "optim.weight_decay": 0.01, "optim.beta1": 0.9, "optim.beta2": 0.999, "optim.grad_clip": 1.0,
    "optim.schedule": "constant", "optim.warmup_steps": 0, "optim.updates_per_step": 1,
    "optim.mini_batch_size": 640, "optim.micro_batch_size": 2,
    "reward.parity": "official", "reward.judge": "http", "reward.judge_url": "http://127.0.0.1:8000/v1",
    "reward.judge_model": "Qwen/Qwen3-4B-Instruct-2507", "reward.judge_concurrency": 64,
    "reward.embedding_model": "abhinand/MedEmbed-large-v0.1", "reward.embedding_threshold": 0.8,
    "train.max_steps": 200, "train.seed": 1, "train.save_every": 5, "train.keep_last": 3, "train.eval_every": 5,
    "train.eval_before_train": True,
    "vision.freeze_tower": False, "vision.min_pixels": 262144, "vision.max_pixels": 4194304,
    "vision.on_bad_image": "skip", "vision.rgb_conversion": "official",
}
DAPO = {"algorithm.dynamic_sampling": True, "algorithm.dynamic_sampling_low": 0.01,
        "algorithm.dynamic_sampling_high": 0.99, "algorithm.drop_equal_groups": False, "algorithm.refill_chunk": 128,
        "algorithm.max_refill_tries": 19, "loss.loss_type": "dapo", "loss.clip_low": 0.2, "loss.clip_high": 0.28,
        "loss.beta": 0.0, "loss.aggregation": "token-mean"}
EXPECTED = {
    "medix_r1_2b_dapo": {**SHARED, **DAPO, "model.policy": "Qwen/Qwen3-VL-2B-Instruct", "optim.optimizer": "adamw"},
    "medix_r1_8b_dapo": {**SHARED, **DAPO, "model.policy": "Qwen/Qwen3-VL-8B-Instruct", "optim.optimizer": "adamw"},
    "medix_r1_8b_grpo": {**SHARED, "model.policy": "Qwen/Qwen3-VL-8B-Instruct", "optim.optimizer": "adamw",
                         "algorithm.dynamic_sampling": False, "loss.loss_type": "grpo", "loss.clip_low": 0.2,
                         "loss.clip_high": 0.3, "loss.beta": 0.01, "loss.aggregation": "token-mean"},
    "medix_r1_7b": {**SHARED, "model.policy": "Qwen/Qwen2.5-VL-7B-Instruct", "optim.optimizer": "adamw",
                    "algorithm.dynamic_sampling": False, "loss.loss_type": "gspo_token", "loss.clip_low": 3e-4,
                    "loss.clip_high": 4e-4, "loss.beta": 0.0, "loss.aggregation": "seq-mean-token-mean"},
    "medix_r1_30b_dapo": {**SHARED, **DAPO, "model.policy": "Qwen/Qwen3-VL-30B-A3B-Thinking",
                          "optim.optimizer": "adamw_bf16"},
}
PRESET = {"medix_r1_2b_dapo": "medix_dapo", "medix_r1_8b_dapo": "medix_dapo", "medix_r1_30b_dapo": "medix_dapo",
          "medix_r1_8b_grpo": "medix_grpo", "medix_r1_7b": "medix_gspo"}


def flatten(mapping, prefix=""):
    out = {}
    for key, value in mapping.items():
        if isinstance(value, dict):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recipe_values_are_the_pinned_official_ones(name):
    text = (RECIPES_DIR / f"{name}.yaml").read_text()
    written = flatten(yaml.safe_load(text))
    written.pop("train.output_dir")
    assert written == EXPECTED[name]
    cfg = load_config(name)
    for key, value in EXPECTED[name].items():
        section, field = key.split(".")
        assert getattr(getattr(cfg, section), field) == value, key
    assert cfg.train.output_dir == f"runs/{name}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_recipe_value_names_where_it_comes_from(name):
    lines = (RECIPES_DIR / f"{name}.yaml").read_text().splitlines()
    sources = {m.group(1) for line in lines if (m := re.match(r"#   (\S+): https://github\.com/mbzuai-oryx/", line))}
    assert {"config.yaml", "actor/config.py"} <= sources
    for line in lines:
        if line.startswith("  ") and ":" in line and not line.strip().startswith("#"):
            comment = line.split(" # ", 1)[1] if " # " in line else ""
            named = comment.split(":")[0]
            assert named in sources or comment.startswith("ours") or comment.startswith("the official"), line


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recipe_loss_equals_the_kernels_official_preset(name):
    cfg = load_config(name)
    preset = LossConfig.preset(PRESET[name])
    mine = (cfg.loss.loss_type, cfg.loss.clip_low, cfg.loss.clip_high, cfg.loss.dual_clip, cfg.loss.beta,
            cfg.loss.aggregation)
    assert mine == (preset.loss_type, preset.clip_low, preset.clip_high, preset.dual_clip, preset.beta,
                    preset.aggregation)


def test_former_recipe_names_resolve_to_the_official_recipes():
    for old, new in RECIPE_ALIASES.items():
        assert resolve_recipe(old) == RECIPES_DIR / f"{new}.yaml"
        assert not Path(RECIPES_DIR / f"{old}.yaml").exists()
    assert load_config("qwen25vl_7b").loss.loss_type == "gspo_token"
