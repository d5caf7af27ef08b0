"""Bad input and faults in a run (issue 6): a judge that is down, NaN losses that recover, rollouts
out of memory. Config typos and malformed records are in test_train_config / test_train_data; the
NaN stop and the judge-failure stop with a scripted worker are in test_train_run."""
import json
import socket

import pytest
import torch

from medix_r1.config import load_config
from medix_r1.rollout import HfRollout, RolloutOutOfMemory, is_oom
from medix_r1.train import TrainingStopped, train
from medix_r1.train import step as train_step
from medix_r1.train.cli import main
from medix_r1.train.policy import load_model, policy_loss
from tests.train_helpers import CharRewardWorker, make_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny"))


BASE = ["rollout.engine=hf", "rollout.max_tokens=6", "rollout.n=3", "data.prompts_per_step=2",
        "data.max_records=20", "train.max_steps=2", "train.progress=false", "train.tensorboard=false",
        "train.plot=false", "optim.lr=1e-3"]


def config(tiny, out, *more):
    return load_config("cpu_smollm2", [f"model.policy={tiny}", f"train.output_dir={out}", *BASE, *more])


def closed_port() -> int:
    with socket.socket() as s:  # bound then closed: nothing listens there
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def down_judge(port):
    return ["reward.judge=http", f"reward.judge_url=http://127.0.0.1:{port}/v1", "reward.judge_model=judge",
            "reward.judge_max_retries=0", "reward.judge_timeout_s=2", "reward.embedding_model=none",
            "reward.judge_decision_gate=false", "reward.judge_min_similarity=0"]  # every answer must reach the
    # (down) judge, none decided by a gate


def test_a_judge_that_is_down_is_counted_then_stops_the_run_over_the_threshold(tiny, tmp_path):
    port = closed_port()
    # Under the threshold the run goes on and every unanswered judgement is counted.
    out = tmp_path / "on"
    summary = train(config(tiny, out, *down_judge(port), "train.judge_failure_threshold=1.0"))
    assert summary["steps"] == 2
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert all(x["reward/judge_failed_rate"] > 0 for x in lines), [x["reward/judge_failed_rate"] for x in lines]
    assert all(x["reward/judge"] == 0.0 for x in lines)
    # Over it, the run stops with a message naming the judge URL setting and the threshold, after a checkpoint.
    out = tmp_path / "stop"
    with pytest.raises(TrainingStopped, match=r"judge failed on \d+% of answers over the last 2 steps.*"
                                                r"reward\.judge_url.*train\.judge_failure_threshold"):
        train(config(tiny, out, *down_judge(port), "train.max_steps=4", "train.judge_failure_window=2",
                       "train.judge_failure_threshold=0.0"))
    assert (out / "step_000002" / "COMPLETE").is_file()


def test_one_nan_step_is_skipped_and_the_run_goes_on(tiny, tmp_path, monkeypatch):
    real, calls = policy_loss, {"n": 0}

    def nan_once(*args, **kwargs):  # the first micro-batch of step 1 gives a NaN loss
        calls["n"] += 1
        loss, stats = real(*args, **kwargs)
        return (loss * float("nan") if calls["n"] == 1 else loss), stats

    monkeypatch.setattr(train_step, "policy_loss", nan_once)
    out = tmp_path / "run"
    summary = train(config(tiny, out, "train.max_steps=3", "train.max_nan_steps=2"),
                      reward_worker=CharRewardWorker())
    assert summary["steps"] == 3
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["nan_skipped"] for x in lines] == [1, 0, 0]
    assert lines[1]["optim/grad_norm"] > 0


def test_oom_detection():
    assert is_oom(MemoryError()) and is_oom(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate"))
    assert is_oom(RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 1 GB"))
    assert not is_oom(RuntimeError("shape mismatch"))


def test_rollout_out_of_memory_names_the_knobs(tiny, tmp_path, monkeypatch, capsys):
    from transformers import LlamaForCausalLM

    def oom(self, *args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: not enough memory: you tried to allocate 123456789 bytes")

    monkeypatch.setattr(LlamaForCausalLM, "generate", oom)
    cfg = config(tiny, tmp_path / "a")
    model = load_model(tiny, cfg, trainable=False)
    from transformers import AutoTokenizer
    engine = HfRollout(model, AutoTokenizer.from_pretrained(tiny), cfg.rollout)
    with pytest.raises(RolloutOutOfMemory, match=r"rollout\.max_tokens.*data\.prompts_per_step.*not enough memory"):
        engine.generate([[1, 2, 3]], 1, 0)
    # Through the command line: a one-line message and exit status 1, no traceback.
    argv = ["--set", f"model.policy={tiny}", "--output-dir", str(tmp_path / "b"), "-q"]
    for kv in BASE + ["reward.judge=none", "reward.embedding_model=none"]:
        argv += ["--set", kv]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "training stopped: out of memory during rollouts: lower rollout.kv_cache_gb" in err
    assert "Traceback" not in err
