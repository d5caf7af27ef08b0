"""The trainer's rollout correction: its config fields and their checks, the engines' promise of
sampling log-probs, the batch's rollout_logp, the step's rollout/* metrics from the loss, and a short
run with the correction on (tiny Llama, hf rollouts: weights 1, the same losses as without it)."""
import json
from types import SimpleNamespace

import pytest
import torch

from medix_r1.config import load_config
from medix_r1.rollout import Rollouts
from medix_r1.train import train
from medix_r1.train.batch import make_batch, placeholder_batch
from medix_r1.train.policy import loss_config
from medix_r1.train.step import RolloutStats, check_engine_logprobs, with_rollout_logp
from tests.train_helpers import CharRewardWorker, make_tiny_model, tiny_run_config


def test_config_fields_reach_the_loss():
    cfg = load_config("cpu_smollm2", ["loss.rollout_correction=sequence_mask", "loss.rollout_is_cap=1.5",
                                      "loss.rollout_is_lower=0.5"])
    lcfg = loss_config(cfg)
    assert (lcfg.rollout_correction, lcfg.rollout_is_cap, lcfg.rollout_is_lower) == ("sequence_mask", 1.5, 0.5)
    assert load_config("cpu_smollm2").loss.rollout_correction == "none"  # the embedded CPU recipe: off
    for name in ("grpo", "dapo", "gspo"):  # the project's GPU recipes: TIS with cap 2
        loss = load_config(name).loss
        assert (loss.rollout_correction, loss.rollout_is_cap) == ("token_truncate", 2.0), name


@pytest.mark.parametrize("override, message", [
    ("loss.rollout_correction=token", r"loss.rollout_correction must be one of .*did you mean 'token_mask'"),
    ("loss.rollout_is_cap=1.0", r"loss.rollout_is_cap must be > 1.0, got 1.0 \(a weight capped"),
    ("loss.rollout_is_cap=nan", r"loss.rollout_is_cap must be a finite number"),
    ("loss.rollout_is_lower=1.0", r"loss.rollout_is_lower must be >= 0.0 and < 1.0, got 1.0"),
    ("loss.rollout_is_lower=-0.5", r"loss.rollout_is_lower must be >= 0.0 and < 1.0"),
    ("rollout.vllm_server_logprobs_mode=processed", r"rollout.vllm_server_logprobs_mode must be one of"),
])
def test_bad_values_name_the_field(override, message):
    with pytest.raises(ValueError, match=message):
        load_config("cpu_smollm2", [override])


def test_a_correction_the_engine_cannot_serve_is_a_config_error():
    server = ["rollout.engine=vllm-server", "rollout.server_url=http://127.0.0.1:9"]
    with pytest.raises(ValueError, match=r"loss.rollout_correction=token_truncate needs .* --logprobs-mode "
                                         r"processed_logprobs.*rollout.vllm_server_logprobs_mode=processed_logprobs"):
        load_config("cpu_smollm2", server + ["loss.rollout_correction=token_truncate"])
    load_config("cpu_smollm2", server + ["loss.rollout_correction=token_truncate",
                                         "rollout.vllm_server_logprobs_mode=processed_logprobs"])
    load_config("cpu_smollm2", server)  # off: nothing to serve
    # an engine found, once built, to return raw log-probs (an older rollout server): refused before any step
    cfg = load_config("cpu_smollm2", ["loss.rollout_correction=token_mask"])
    with pytest.raises(ValueError, match=r"loss.rollout_correction=token_mask needs the sampling log-probs"):
        check_engine_logprobs(SimpleNamespace(sampling_logprobs=False), cfg)
    check_engine_logprobs(SimpleNamespace(sampling_logprobs=True), cfg)
    check_engine_logprobs(SimpleNamespace(), load_config("cpu_smollm2"))


def test_vllm_server_engine_promises_what_the_config_says(monkeypatch):
    from medix_r1.rollout.vllm_server import VllmServerRollout
    monkeypatch.setattr(VllmServerRollout, "_request", lambda self, method, path, body=None: {"data": [{"id": "m"}]})
    for mode, promised in (("raw_logprobs", False), ("processed_logprobs", True)):
        cfg = load_config("cpu_smollm2", ["rollout.engine=vllm-server", "rollout.server_url=http://127.0.0.1:9",
                                          f"rollout.vllm_server_logprobs_mode={mode}"])
        assert VllmServerRollout(cfg.rollout, 0).sampling_logprobs is promised


def test_batch_gets_the_engines_logprobs():
    r = Rollouts()
    r.add(prompt_ids=[1, 2], response_ids=[5, 6, 7], sample_logp=[-0.5, -1.0, -2.0], text="a", group=0,
          truncated=False)
    r.add(prompt_ids=[1, 2], response_ids=[8], sample_logp=[-0.25], text="b", group=0, truncated=False)
    batch = with_rollout_logp(make_batch(r.prompt_ids, r.response_ids, 0), r, SimpleNamespace(sampling_logprobs=True))
    torch.testing.assert_close(batch["rollout_logp"], torch.tensor([[-0.5, -1.0, -2.0], [-0.25, 0.0, 0.0]]))
    assert "rollout_logp" not in with_rollout_logp(make_batch(r.prompt_ids, r.response_ids, 0), r,
                                                   SimpleNamespace(sampling_logprobs=False))
    empty = with_rollout_logp(placeholder_batch(0), Rollouts(), SimpleNamespace(sampling_logprobs=True))
    assert empty["rollout_logp"].shape == empty["mask"].shape and not empty["rollout_logp"].any()


def test_step_stats_weight_micro_batches_by_tokens():
    acc = RolloutStats()
    names = ("rollout_weight_mean", "rollout_flagged_frac", "rollout_kl_k3", "rollout_chi2", "rollout_logp_mismatch")
    acc.add({**{k: torch.tensor(1.0) for k in names}, "rollout_weight_max": torch.tensor(1.5),
             "rollout_ppl_ratio": torch.tensor(2.0), "rollout_logp_mismatch_max": torch.tensor(0.25)},
            torch.tensor([[1.0, 1.0, 1.0]]))
    acc.add({**{k: torch.tensor(0.0) for k in names}, "rollout_weight_max": torch.tensor(0.5),
             "rollout_ppl_ratio": torch.tensor(1.0), "rollout_logp_mismatch_max": torch.tensor(0.75)},
            torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    out = acc.result(acc.device_sums(torch.device("cpu")).tolist())
    assert out["rollout_weight_mean"] == pytest.approx(3 / 4)  # 3 tokens at 1, 1 token at 0
    assert out["rollout_ppl_ratio"] == pytest.approx(1.5)  # one sequence each (the empty row counts in neither)
    assert out["rollout_weight_max"] == 1.5 and out["rollout_logp_mismatch_max"] == 0.75


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny"))


def test_hf_engine_reports_the_distribution_it_drew_from(tiny):
    """The HF engine's log-probs: log_softmax((logits with the suppressed ids at -inf) / T) of the sampled
    tokens, as the trainer's forward computes them; the trainer's own log-probs (T only) differ by the
    suppressed mass exactly."""
    from transformers import AutoTokenizer

    from medix_r1.rollout import HfRollout
    from medix_r1.train.policy import load_model
    cfg = load_config("cpu_smollm2", [f"model.policy={tiny}", "rollout.engine=hf", "rollout.max_tokens=5",
                                      "rollout.n=3", "rollout.temperature=0.7"])
    tok = AutoTokenizer.from_pretrained(tiny)
    model = load_model(tiny, cfg, trainable=False)
    engine = HfRollout(model, tok, cfg.rollout)
    with torch.no_grad():
        probe = model(torch.tensor([[1, 2, 3]])).logits[0, -1]
    banned = probe.topk(5000).indices.tolist()  # the likeliest ids: ~10% of this near-uniform model's mass
    engine.suppress_tokens(banned)
    r = engine.generate([[1, 2, 3], [4, 5]], step=1, seed=0)
    for prompt, ids, logp in zip(r.prompt_ids, r.response_ids, r.sample_logp):
        assert not set(ids) & set(banned)
        with torch.no_grad():
            logits = model(torch.tensor([prompt + ids])).logits[0, len(prompt) - 1:-1].float()
        drawn_from = logits.index_fill(-1, torch.tensor(banned), float("-inf")) / 0.7
        want = drawn_from.log_softmax(-1).gather(-1, torch.tensor(ids)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(logp), want, rtol=0, atol=1e-4)
        trainer = (logits / 0.7).log_softmax(-1).gather(-1, torch.tensor(ids)[:, None])[:, 0]
        kept = (logits / 0.7).softmax(-1).index_fill(-1, torch.tensor(banned), 0.0).sum(-1)
        torch.testing.assert_close(torch.tensor(logp) - trainer, -kept.log(), rtol=0, atol=1e-4)
        assert (torch.tensor(logp) - trainer).min() > 5e-2  # a visible gap: the test would see raw log-probs


def test_a_run_with_the_correction_reports_it_and_changes_nothing_on_the_cpu(tiny, tmp_path):
    """hf rollouts on the policy itself (fp32): the engine's and the trainer's log-probs agree, every weight is 1
    within 1e-4, and two steps with token_truncate give the losses of two steps without it."""
    runs = {}
    for mode in ("none", "token_truncate"):
        out = tmp_path / mode
        cfg = tiny_run_config(tiny, out, "optim.lr=1e-3", f"loss.rollout_correction={mode}", "train.plot=false",
                              "optim.mini_batch_size=3", "rollout.temperature=0.8")  # 2 updates, old log-probs
        assert train(cfg, reward_worker=CharRewardWorker())["steps"] == 2
        runs[mode] = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    for line in runs["token_truncate"]:
        assert abs(line["rollout/is_weight_mean"] - 1) < 1e-4 and line["rollout/is_weight_max"] < 1 + 1e-4
        assert line["rollout/is_flagged_frac"] == 0.0
        assert 0 <= line["rollout/kl_k3"] < 1e-8 and abs(line["rollout/chi2"]) < 1e-4
        assert abs(line["rollout/ppl_ratio"] - 1) < 1e-4 and line["rollout/logp_mismatch"] < 1e-4
    for off, on in zip(runs["none"], runs["token_truncate"]):
        assert "rollout/kl_k3" in off  # the diagnostics come with the correction off too
        assert on["loss/loss"] == pytest.approx(off["loss/loss"], rel=1e-4, abs=1e-6)
        assert on["reward/total"] == off["reward/total"]
