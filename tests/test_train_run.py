"""Short training runs on a tiny Llama with the hf rollout path: update, metrics, checkpoints,
exact resume, NaN skipping, judge-failure stop, SIGTERM checkpoint, DAPO filtering."""
import json
import os
import signal
from concurrent.futures import Future

import pytest
import torch

from medix_r1 import checkpoint as ckpt
from medix_r1.config import load_config
from medix_r1.train import TrainingStopped, train
from medix_r1.train import step as train_step
from medix_r1.train.policy import policy_loss
from medix_r1.train.step import keep_groups
from tests.train_helpers import CharRewardWorker, Result, make_tiny_model, tiny_run_config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny"))


def config(tiny, out, *more):
    return tiny_run_config(tiny, out, "optim.lr=1e-3", "optim.weight_decay=0.0", "train.save_every=1",
                           "train.keep_last=5", *more)


def weights(folder):
    from safetensors.torch import load_file
    return load_file(os.path.join(folder, "model.safetensors"))


def test_two_steps_update_log_and_checkpoint(tiny, tmp_path):
    out = tmp_path / "run"
    summary = train(config(tiny, out), reward_worker=CharRewardWorker())
    assert summary["steps"] == 2
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2]
    for key in ("reward/total", "loss/loss", "time/rollout", "time/update", "time/sync", "rollout/logp_mismatch",
                "perf/tokens_per_s", "optim/grad_norm"):
        assert key in lines[-1]
    assert lines[0]["optim/grad_norm"] > 0
    # hf rollouts run on the policy itself: sampling and trainer log-probs agree closely
    assert lines[0]["rollout/logp_mismatch"] < 1e-4
    final = out / "step_000002"
    for name in ("COMPLETE", "trainer_state.json", "optim_rng.pt", "model/model.safetensors", "model/config.json"):
        assert (final / name).exists(), name
    state = json.loads((final / "trainer_state.json").read_text())
    assert state["step"] == 2 and state["data_position"]["index"] == 4 and len(state["metrics"]) == 2
    before, after = weights(tiny), weights(final / "model")
    changed = [k for k in after if not torch.equal(before[k], after[k])]
    assert "model.embed_tokens.weight" in changed and len(changed) >= len(after) // 2
    assert (out / "rewards.png").stat().st_size > 1000
    assert any((out / "tensorboard").iterdir())


def test_resume_reproduces_the_uninterrupted_run_exactly(tiny, tmp_path):
    full = train(config(tiny, tmp_path / "full"), reward_worker=CharRewardWorker())
    train(config(tiny, tmp_path / "part", "train.max_steps=1"), reward_worker=CharRewardWorker())
    resumed = train(config(tiny, tmp_path / "part"), resume=True, reward_worker=CharRewardWorker())
    a, b = full["history"][1], resumed["history"][1]
    assert b["step"] == 2 and a["loss/loss"] == b["loss/loss"] and a["reward/total"] == b["reward/total"]
    assert a["loss/loss"] != 0.0
    wa, wb = weights(tmp_path / "full" / "step_000002" / "model"), weights(tmp_path / "part" / "step_000002" / "model")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    lines = (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["step"] for x in lines] == [1, 2]


def test_keep_last_prunes_old_checkpoints(tiny, tmp_path):
    out = tmp_path / "run"
    train(config(tiny, out, "train.max_steps=3", "train.keep_last=2"), reward_worker=CharRewardWorker())
    assert [p.name for p in ckpt.list_checkpoints(out)] == ["step_000002", "step_000003"]


def test_nan_loss_skips_the_step_then_stops(tiny, tmp_path, monkeypatch):
    real = policy_loss

    def nan_loss(*args, **kwargs):
        loss, stats = real(*args, **kwargs)
        return loss * float("nan"), stats

    monkeypatch.setattr(train_step, "policy_loss", nan_loss)
    out = tmp_path / "run"
    with pytest.raises(TrainingStopped, match="2 steps in a row had a non-finite loss"):
        train(config(tiny, out, "train.max_steps=4", "train.max_nan_steps=2"), reward_worker=CharRewardWorker())
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["nan_skipped"] for x in lines] == [1, 1]
    before, after = weights(tiny), weights(out / "step_000002" / "model")
    assert all(torch.equal(before[k], after[k]) for k in after)  # skipped steps change nothing


def test_judge_failures_over_the_threshold_stop_the_run(tiny, tmp_path):
    with pytest.raises(TrainingStopped, match=r"judge failed on 100% of answers over the last 2 steps"):
        train(config(tiny, tmp_path / "run", "train.max_steps=5", "train.judge_failure_window=2"),
                reward_worker=CharRewardWorker(judge_failed=True))
    assert ckpt.latest_checkpoint(tmp_path / "run").name == "step_000002"


def test_sigterm_checkpoints_at_the_end_of_the_step(tiny, tmp_path):
    worker = CharRewardWorker(on_submit=lambda call: os.kill(os.getpid(), signal.SIGTERM) if call == 1 else None)
    out = tmp_path / "run"
    summary = train(config(tiny, out, "train.max_steps=5", "train.save_every=0"), reward_worker=worker)
    assert summary["steps"] == 1 and ckpt.latest_checkpoint(out).name == "step_000001"


def test_dapo_keep_groups_drops_degenerate_and_extreme_groups():
    cfg = load_config("cpu_smollm2", ["algorithm.dynamic_sampling=true"])
    rewards = torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0, 1.0, 0.2, 0.2, 0.0, 0.005, 0.0, 0.0])
    # groups of 3: [0,0,.5] keep; [1,1,1] degenerate; [.2,.2,0] keep; [0,.005,0] mean <= 0.01
    assert keep_groups(rewards, 3, cfg) == [0, 2]
    cfg = load_config("cpu_smollm2")
    assert keep_groups(rewards, 3, cfg) == [0, 1, 2, 3]


def test_dapo_refills_the_batch(tiny, tmp_path):
    # Groups of identical rewards are degenerate: a worker that scores everything 0 keeps nothing,
    # so every refill round runs and the step is skipped without an update.
    class Zero(CharRewardWorker):
        def submit(self, problems, responses, solutions):
            fut = Future()
            fut.set_result([Result(total=0.0) for r in super().submit(problems, responses, solutions).result()])
            return fut

    worker = Zero()
    out = tmp_path / "run"
    train(config(tiny, out, "train.max_steps=1", "algorithm.dynamic_sampling=true",
                   "algorithm.max_refill_tries=2"), reward_worker=worker)
    assert worker.calls == 3
    line = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert line["rollout/groups_kept"] == 0 and line["rollout/dropped_groups"] == 6
