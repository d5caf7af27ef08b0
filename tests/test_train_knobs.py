"""Issue 32's trainer knobs on short tiny-Llama runs: loss.mask_truncated, DAPO's overlong reward shaping,
the entropy logged every step and loss.entropy_coef, model.attn_implementation on every model load; and
the default path: a run with every new knob at its default computes what the trainer computed before."""
import json
import math
from pathlib import Path

import pytest
import torch

from medix_r1.config import load_config
from medix_r1.parallel import layout
from medix_r1.train import train
from medix_r1.train.batch import make_batch
from medix_r1.train.policy import load_model, loss_config
from medix_r1.train.step import overlong_penalty, update
from tests.train_helpers import CharRewardWorker, make_tiny_model, tiny_run_config

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny"))


def run(tiny, out, *more):
    cfg = tiny_run_config(tiny, out, "optim.lr=1e-3", "train.tensorboard=false", "train.plot=false", *more)
    return train(cfg, reward_worker=CharRewardWorker())["history"]


# --- the default path --------------------------------------------------------------------------------

# Keys allowed to move by float rounding since that file was made, with the bound: the loss of these
# steps is a sum of terms that cancel to ~0 (ratio 1, group-centred advantages), so the CPU kernels' exp
# polynomial (issue 27) and the loss's rollout-stat composition (issue 28) move it by ~2e-7; and
# rollout/logp_mismatch is now measured inside the loss against the distribution the engine sampled
# from (issue 28), not by a separate raw log-prob pass. Rewards, lengths, KL and the gradient norm
# stay bit-identical.
ROUNDED = {"loss/loss": 1e-6, "rollout/logp_mismatch": 1e-5}


def test_default_knobs_reproduce_the_run_before_issue_32(tiny, tmp_path):
    """tests/data/default_run_bd4cda2.json holds this run's metrics computed by main at bd4cda2, the last
    merge of main before issue 32's changes landed (tests/data/default_run.py made it; an earlier file
    from 8c906f1, before any of them, matched too). Every new knob is at its default here, so every value
    must come out the same to the last bit. A change that moves these numbers on purpose (a new sampler,
    another loss default) remakes the file from the commit before it."""
    got = run(tiny, tmp_path / "run")
    want = json.loads((HERE / "data" / "default_run_bd4cda2.json").read_text())
    for before, now in zip(want, got, strict=True):
        for key, value in before.items():
            if key in ROUNDED:
                assert abs(now[key] - value) <= ROUNDED[key], (before["step"], key, value, now[key])
            else:
                assert now[key] == value, (before["step"], key, value, now[key])
        assert now["loss/entropy"] > 0  # new in issue 32


# --- loss.mask_truncated --------------------------------------------------------------------------------

def _update(model_dir, cfg, batch, adv, tokens):
    model = load_model(model_dir, cfg, trainable=True)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    rows = layout.Layout(owner=[0] * len(tokens), local=list(range(len(tokens))), tokens=tokens,
                         rewards=[0.0] * len(tokens))
    stats, _ = update(model, opt, batch, adv, None, None, cfg, loss_config(cfg), 1, rows)
    return stats["loss"], {n: p.detach().clone() for n, p in model.named_parameters()}


def _initial(model_dir, cfg):
    return {n: p.detach().clone() for n, p in load_model(model_dir, cfg, trainable=True).named_parameters()}


@pytest.mark.parametrize("aggregation", ["token-mean", "seq-mean-token-mean", "seq-mean-token-sum"])
def test_a_masked_row_counts_in_no_denominator(tiny, aggregation):
    """Rows 0 and 2 of three with row 1 masked out (what mask_truncated does to a truncated response)
    update the policy exactly as the batch of rows 0 and 2 alone, in every aggregation, across micro-batches."""
    cfg = load_config("cpu_smollm2", [f"model.policy={tiny}", f"loss.aggregation={aggregation}",
                                      "optim.micro_batch_size=2", "optim.grad_clip=0", "optim.weight_decay=0"])
    prompts, responses = [[5, 6, 7], [8, 9], [10, 11, 12, 13]], [[20, 21, 22], [30, 31], [40, 41, 42, 43, 44]]
    full = make_batch(prompts, responses, 0)
    full["mask"][1] = 0.0
    adv = torch.tensor([1.0, -2.0, -0.5])
    loss_a, after_a = _update(tiny, cfg, full, adv, [3, 0, 5])
    pair = make_batch([prompts[0], prompts[2]], [responses[0], responses[2]], 0)
    loss_b, after_b = _update(tiny, cfg, pair, adv[[0, 2]], [3, 5])
    assert loss_a == pytest.approx(loss_b, rel=1e-6, abs=1e-8)
    # SGD at lr 1: the parameters moved by the gradient itself, which the two batches give up to float
    # summation order (other micro-batches, other padding); a wrong weight would move them by ~1/3 more
    moved = max(float((after_a[n] - before).abs().max()) for n, before in _initial(tiny, cfg).items())
    assert moved > 1e-3
    for name in after_a:
        torch.testing.assert_close(after_a[name], after_b[name], rtol=1e-4, atol=1e-5)


def test_mask_truncated_in_a_run(tiny, tmp_path):
    """6-token responses of a random tiny model are nearly all cut at max_tokens: with mask_truncated
    only the few that ended train; when every one is cut, the loss and its gradient are 0."""
    plain = run(tiny, tmp_path / "plain", "rollout.max_tokens=2")
    masked = run(tiny, tmp_path / "masked", "rollout.max_tokens=2", "loss.mask_truncated=true")
    assert plain[0]["rollout/truncated_frac"] == masked[0]["rollout/truncated_frac"] == 1.0
    assert plain[0]["optim/grad_norm"] > 0
    assert masked[0]["loss/loss"] == 0.0 and masked[0]["optim/grad_norm"] == 0.0
    assert masked[0]["reward/total"] == plain[0]["reward/total"]  # the same samples: only the loss changed


# --- DAPO's overlong reward shaping --------------------------------------------------------------------------

def test_overlong_penalty_is_dapos_soft_punishment():
    # L_max 100, buffer 20: none up to 80 tokens, then linear down to -penalty at 100
    assert [overlong_penalty(n, 100, 20, 1.0) for n in (1, 80, 81, 90, 100)] == [0.0, 0.0, -0.05, -0.5, -1.0]
    assert overlong_penalty(90, 100, 20, 0.4) == pytest.approx(-0.2)
    assert overlong_penalty(100, 100, 0, 1.0) == 0.0  # off


def test_overlong_shaping_in_a_run(tiny, tmp_path):
    plain = run(tiny, tmp_path / "plain")
    shaped = run(tiny, tmp_path / "shaped", "reward.overlong_buffer=4", "reward.overlong_penalty=0.5")
    lengths_cut = plain[0]["rollout/truncated_frac"]
    assert lengths_cut > 0.5  # most of the 6-token responses hit max_tokens: they lose the full 0.5
    assert shaped[0]["reward/overlong_penalty"] < -0.25
    assert shaped[0]["reward/total"] == pytest.approx(plain[0]["reward/total"] + shaped[0]["reward/overlong_penalty"],
                                                      abs=1e-12)
    assert "reward/overlong_penalty" not in plain[0]


@pytest.mark.parametrize("override, message", [
    (["reward.overlong_buffer=-1"], r"reward\.overlong_buffer must be >= 0, got -1"),
    (["reward.overlong_buffer=.nan"], r"reward\.overlong_buffer: expected an integer"),
    (["reward.overlong_buffer=200"], r"reward\.overlong_buffer \(200\) must be <= rollout\.max_tokens \(112\)"),
    (["reward.overlong_penalty=-0.5"], r"reward\.overlong_penalty must be >= 0\.0"),
    (["loss.entropy_coef=-0.01"], r"loss\.entropy_coef must be >= 0\.0"),
    (["loss.entropy_coef=.nan"], r"loss\.entropy_coef must be a finite number"),
])
def test_bad_values_are_refused_naming_the_field(override, message):
    with pytest.raises((ValueError, TypeError), match=message):
        load_config("cpu_smollm2", override)


def test_the_official_recipes_keep_the_new_knobs_off():
    from medix_r1.config import RECIPES_DIR
    for recipe in sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")):
        cfg = load_config(recipe)
        assert not cfg.loss.mask_truncated and cfg.reward.overlong_buffer == 0 and cfg.loss.entropy_coef == 0, recipe
        assert cfg.model.lora.r == 0 and cfg.model.attn_implementation == "sdpa", recipe
        assert (cfg.rollout.top_k, cfg.rollout.min_p, cfg.rollout.repetition_penalty) == (0, 0.0, 1.0), recipe


# --- entropy ---------------------------------------------------------------------------------------------

def test_entropy_is_logged_and_the_bonus_lowers_the_loss_by_coef_times_it(tiny, tmp_path):
    """Step 1 of both runs samples the same responses from the same weights: the loss differs by exactly
    entropy_coef x the (token-mean) entropy."""
    plain = run(tiny, tmp_path / "plain")
    bonus = run(tiny, tmp_path / "bonus", "loss.entropy_coef=0.01")
    vocab = 49152  # SmolLM2's tokenizer, the tiny model's vocabulary: a random model is near uniform
    assert 0.9 * math.log(vocab) < plain[0]["loss/entropy"] <= math.log(vocab) + 1e-4
    assert bonus[0]["loss/entropy"] == pytest.approx(plain[0]["loss/entropy"], rel=1e-9)
    assert bonus[0]["loss/loss"] == pytest.approx(plain[0]["loss/loss"] - 0.01 * plain[0]["loss/entropy"], abs=1e-6)


@pytest.mark.parametrize("impl", ["fused", "plain"])
def test_the_bonus_on_both_loss_paths(tiny, tmp_path, impl):
    h = run(tiny, tmp_path / impl, f"loss.impl={impl}", "loss.entropy_coef=0.05")
    assert h[0]["loss/loss"] < -0.05 * 0.9 * math.log(49152) + 1.0 and h[0]["optim/grad_norm"] > 0


# --- model.attn_implementation ---------------------------------------------------------------------------

def test_attn_implementation_reaches_the_policy_the_reference_and_the_local_judge(tiny, tmp_path, monkeypatch):
    import medix_r1.train.build as build
    from medix_r1.rewards import RewardWorker
    from medix_r1.rewards.worker import make_judge

    loaded = []
    real = build.load_model

    def spy(model_dir, cfg, trainable):
        model = real(model_dir, cfg, trainable)
        loaded.append((trainable, model.config._attn_implementation))
        return model
    monkeypatch.setattr(build, "load_model", spy)
    run(tiny, tmp_path / "eager", "model.attn_implementation=eager", "loss.beta=0.01", "train.max_steps=1")
    assert loaded == [(True, "eager"), (False, "eager")]
    cfg = load_config("cpu_smollm2", ["model.attn_implementation=eager"])
    judge = make_judge(cfg.reward, cfg.model.attn_implementation)
    assert judge.model.config._attn_implementation == "eager"
    worker = RewardWorker(cfg.reward, attn_implementation="eager")
    try:
        assert worker.attn_implementation == "eager"
    finally:
        worker.close()


def test_flash_attention_without_the_package_is_one_config_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "flash_attn" else real(name, *a))
    with pytest.raises(ValueError, match=r"model\.attn_implementation=flash_attention_2 needs the flash-attn "
                                         r"package, which is not installed: pip install 'medix\[flash\]'"):
        load_config("cpu_smollm2", ["model.attn_implementation=flash_attention_2"])
    with pytest.raises(ValueError, match=r"model\.attn_implementation must be one of \['sdpa', 'eager', "
                                         r"'flash_attention_2'\], got 'flash'"):
        load_config("cpu_smollm2", ["model.attn_implementation=flash"])
