"""The metrics a GRPO user reads first (issue 32 item 6): the spread of rewards, advantages and lengths,
entropy, tokens and samples so far, the log-prob mismatch's max, the old-vs-new KL off-policy, the
judge's counters, memory, MFU's arithmetic; through metrics.jsonl and the trackers; rewards.png's panels."""
import json
import math
from types import SimpleNamespace

import pytest
import torch

from medix_r1.parallel import layout
from medix_r1.rollout import Rollouts
from medix_r1.train import batch_metrics as bm
from medix_r1.train import metrics as mt
from medix_r1.train import train
from tests.train_helpers import CharRewardWorker, Result, make_tiny_model, tiny_run_config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny"))


def rollouts(lengths, truncated, prompt_lengths):
    r = Rollouts()
    for i, (n, cut, p) in enumerate(zip(lengths, truncated, prompt_lengths)):
        r.add(prompt_ids=[1] * p, response_ids=[2] * n, sample_logp=[-1.0] * n, text="x", group=i // 2,
              truncated=cut)
    return r


def test_batch_metrics_by_hand():
    # two groups of two: rewards (1, 1) (zero std: advantage 0) and (0, 1)
    r = rollouts([3, 5, 2, 6], [False, True, False, True], [10, 10, 4, 4])
    results = [Result(total=1.0, format=0.5), Result(total=1.0, format=1.0), Result(total=0.0, format=0.0),
               Result(total=1.0, format=0.25, judge=1.0)]
    rows = layout.Layout(owner=[0] * 4, local=[0, 1, 2, 3], tokens=[3, 5, 2, 6], rewards=[1.0, 1.0, 0.0, 1.0])
    adv = torch.tensor([0.0, 0.0, -0.7071, 0.7071])
    m = bm.batch_metrics(r, results, adv, rows, 2)
    assert m["reward/zero_std_frac"] == 0.5
    assert m["reward/std"] == pytest.approx((0.0 + math.sqrt(0.5)) / 2)  # unbiased within-group std, averaged
    assert (m["adv/min"], m["adv/max"]) == pytest.approx((-0.7071, 0.7071)) and m["adv/mean"] == pytest.approx(0.0)
    assert (m["reward/total_min"], m["reward/total_max"]) == (0.0, 1.0)
    assert (m["reward/format_min"], m["reward/format_max"]) == (0.0, 1.0)
    assert (m["reward/judge_min"], m["reward/judge_max"]) == (0.0, 1.0)
    assert (m["rollout/response_len_min"], m["rollout/response_len_max"]) == (2.0, 6.0)
    assert m["rollout/terminated_len"] == 2.5  # the responses that ended: 3 and 2 tokens
    assert (m["rollout/prompt_len"], m["rollout/prompt_len_min"], m["rollout/prompt_len_max"]) == (7.0, 4.0, 10.0)
    counters = {}
    assert bm.seen_so_far(counters, r) == {"rollout/tokens_seen": 16, "rollout/samples_seen": 4}
    assert bm.seen_so_far(counters, r) == {"rollout/tokens_seen": 32, "rollout/samples_seen": 8}


def test_judge_memory_and_mfu():
    worker = SimpleNamespace(stats=lambda: {"batches": 3, "judge_calls": 40, "judge_retries": 2, "judge_cache_hits": 9,
                                            "judge_latency_p50_s": 0.25, "judge_latency_p90_s": None})
    assert bm.judge_metrics(worker) == {"judge/retries": 2, "judge/cache_hits": 9, "judge/calls": 40,
                                        "judge/latency_p50_s": 0.25}
    assert bm.judge_metrics(CharRewardWorker()) == {}  # no judge: nothing logged
    rss = bm.memory_metrics()["memory/cpu_rss_gb"]
    assert 0.05 < rss < 64
    # 6 FLOPs per parameter per token per pass: 135M params x 4,000 tokens x 2 passes in 2 s on one H100
    got = bm.update_mfu(135_000_000, 4000, 2, 2.0, bm.gpu_peak_flops("NVIDIA H100 80GB HBM3"))
    assert got["perf/update_tflops"] == pytest.approx(3.24)
    assert got["perf/mfu"] == pytest.approx(3.24e12 / 989e12)
    assert bm.gpu_peak_flops("NVIDIA H100 PCIe") == 756e12 and bm.gpu_peak_flops("Tesla T4") is None
    assert "perf/mfu" not in bm.update_mfu(1, 1, 1, 1.0, None)


def test_a_run_logs_them_every_step_to_metrics_jsonl_and_the_trackers(tiny, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    out = tmp_path / "run"
    cfg = tiny_run_config(tiny, out, "train.report_to=[tensorboard, mlflow]", "train.save_every=0",
                          "optim.updates_per_step=2", "optim.lr=1e-3")
    train(cfg, reward_worker=CharRewardWorker())
    history = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    keys = ("loss/entropy", "reward/std", "reward/zero_std_frac", "adv/mean", "adv/min", "adv/max",
            "reward/total_min", "reward/total_max", "reward/embedding_max", "rollout/response_len_min",
            "rollout/response_len_max", "rollout/prompt_len", "rollout/tokens_seen", "rollout/samples_seen",
            "rollout/logp_mismatch_max", "loss/approx_kl_old", "memory/cpu_rss_gb")
    for h in history:
        missing = [k for k in keys if k not in h]
        assert not missing, missing
        assert h["adv/min"] <= h["adv/mean"] <= h["adv/max"]
        assert h["rollout/logp_mismatch_max"] >= h["rollout/logp_mismatch"]
        assert h["rollout/response_len_min"] <= h["rollout/response_len"] <= h["rollout/response_len_max"]
    assert [h["rollout/samples_seen"] for h in history] == [6, 12]  # 2 prompts x n=3 a step
    step2_tokens = 6 * history[1]["rollout/response_len"]
    assert history[1]["rollout/tokens_seen"] == pytest.approx(history[0]["rollout/tokens_seen"] + step2_tokens)
    # two updates per step: the second mini-step sees a policy the first one moved
    assert all(h["loss/approx_kl_old"] > 0 for h in history)
    client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    (run,) = client.search_runs([e.experiment_id for e in client.search_experiments()])
    events = EventAccumulator(str(out / "tensorboard")).Reload()
    for key in ("loss/entropy", "reward/zero_std_frac", "adv/max", "rollout/tokens_seen"):
        logged = client.get_metric_history(run.info.run_id, key)
        assert [m.value for m in logged] == [pytest.approx(h[key]) for h in history], key
        assert [e.value for e in events.Scalars(key)] == [pytest.approx(h[key]) for h in history], key


def test_approx_kl_old_is_k3_of_the_sampled_tokens():
    from medix_r1.train.policy import approx_kl

    gen = torch.Generator().manual_seed(0)
    hidden, weight = torch.randn(2, 3, 8, generator=gen), torch.randn(50, 8, generator=gen)
    ids = torch.randint(0, 50, (2, 3), generator=gen)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    new = torch.log_softmax((hidden @ weight.t()) / 0.7, -1).gather(-1, ids[..., None])[..., 0]
    old = new + 0.3 * torch.randn(2, 3, generator=gen)
    r = (new - old).exp()
    want = ((r - 1 - (new - old)) * mask).sum() / 5
    got = approx_kl(hidden, weight, None, {"ids": ids, "mask": mask}, old, 0.7)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert approx_kl(hidden, weight, None, {"ids": ids, "mask": mask}, new, 0.7) == pytest.approx(0.0, abs=1e-6)


def test_rewards_png_shows_entropy_and_zero_std_and_kl_only_when_there_is_one(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    titles = []
    real = plt.Figure.savefig

    def spy(fig, *a, **k):
        titles.append([ax.get_title() for ax in fig.axes])
        return real(fig, *a, **k)
    monkeypatch.setattr(plt.Figure, "savefig", spy)
    base = {"reward/total": 0.5, "loss/entropy": 2.0, "reward/zero_std_frac": 0.25, "rollout/response_len": 40}
    mt.plot_history([{"step": 1, **base, "loss/kl_mean": 0.0}, {"step": 2, **base, "loss/kl_mean": 0.0}],
                    tmp_path / "a.png")
    mt.plot_history([{"step": 1, **base, "loss/kl_mean": 0.0}, {"step": 2, **base, "loss/kl_mean": 0.01}],
                    tmp_path / "b.png")
    assert titles[0] == ["reward", "entropy (nats per token)", "groups with zero reward std (no advantage)",
                         "response length (tokens)"]
    assert titles[1] == titles[0] + ["KL to reference"]
    assert (tmp_path / "a.png").stat().st_size > 1000
