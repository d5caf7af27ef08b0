"""model.lora (issue 32): LoRA adapters through peft.

The adapters are injected in place (utils/lora.py): only they train and sit in the optimizer, the
reference of the KL term is the base with the adapters off, the engines get the merged weights,
checkpoints hold the adapters (peft's format) and export merged or as an adapter. Runs on the
bundled SmolLM2-135M where the issue asks for it (the loss falls, the base stays bit-identical,
resume reproduces the run), on a tiny Llama elsewhere. The tests that train SmolLM2 for two steps (one
thread each, for bit-exact sums: several minutes on a busy 2-core machine) and the vLLM engine check
are marked slow."""
import contextlib
import json
import shutil
from pathlib import Path

import pytest
import torch

from medix_r1 import checkpoint as ckpt
from medix_r1.config import load_config
from medix_r1.models import resolve_model_dir
from medix_r1.train import train
from medix_r1.train.policy import load_model, sequence_logp
from medix_r1.utils import lora as L
from tests.train_helpers import CharRewardWorker, make_tiny_model, tiny_run_config

LORA = ["model.lora.r=4", "model.lora.alpha=8"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny"))


def adapted(model_dir, *more):
    cfg = load_config("cpu_smollm2", [f"model.policy={model_dir}", *LORA, *more])
    return load_model(model_dir, cfg, trainable=True), cfg


def perturb_adapters(model, seed=0, scale=0.05):
    """Non-zero B (peft starts it at 0): an adapted model that differs from its base."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".lora_B." in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)


def batch_of(tokenizer, k=2):
    from medix_r1.train.batch import make_batch
    ids = [tokenizer.encode(t) for t in ("What does aspirin do?", "Is the trial randomized?")[:k]]
    return make_batch(ids, [[11, 12, 13, 14], [21, 22, 23]][:k], tokenizer.eos_token_id)


def test_only_the_adapters_train_and_the_merged_view_is_the_merged_model(tiny):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, cfg = adapted(tiny)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    # 2 layers x 7 linear layers (q, k, v, o, gate, up, down) x (A, B); the tied LM head gets none
    assert len(trainable) == 28 and not any("lm_head" in n for n in trainable)
    perturb_adapters(model)
    merged = dict(L.MergedWeights(model).named_parameters())
    plain = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    assert list(merged) == [n for n, _ in plain.named_parameters()]  # the names every engine loads
    layer = L.lora_layers(model)["model.layers.0.self_attn.q_proj"]
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    want = plain.model.layers[0].self_attn.q_proj.weight + (8 / 4) * b @ a
    torch.testing.assert_close(merged["model.layers.0.self_attn.q_proj.weight"], want, rtol=0, atol=1e-6)
    batch = batch_of(AutoTokenizer.from_pretrained(tiny))
    plain.load_state_dict(merged, strict=False)  # the tied LM head is the embedding
    adapted_lp = sequence_logp(model, batch, 1.0, 4)
    torch.testing.assert_close(adapted_lp, sequence_logp(plain, batch, 1.0, 4), rtol=0, atol=1e-5)
    base = AutoModelForCausalLM.from_pretrained(tiny, dtype=torch.float32)
    with L.adapters_disabled(model):  # the reference policy: the base, exactly
        assert torch.equal(sequence_logp(model, batch, 1.0, 4), sequence_logp(base, batch, 1.0, 4))
    assert torch.equal(sequence_logp(model, batch, 1.0, 4), adapted_lp)  # adapters back on
    assert all(p.requires_grad for n, p in model.named_parameters() if ".lora_" in n)


@pytest.mark.parametrize("override, message", [
    ("model.lora.target_modules=[q_proj, qq_proj]", r"model\.lora\.target_modules: LlamaForCausalLM has no linear "
                                                    r"layer named 'qq_proj'; its linear layers are named \[.*q_proj"),
    ("model.lora.target_modules=[lm_head]", r"model\.lora\.target_modules: 'lm_head' is the LM head"),
    ("model.lora.target_modules=.*attention.*", r"matches no linear layer of LlamaForCausalLM"),
])
def test_targets_the_model_does_not_have_fail_before_any_model_loads(tiny, tmp_path, monkeypatch, override, message):
    import medix_r1.train.build as build

    def no_load(*a, **k):
        raise AssertionError("a model was loaded")
    monkeypatch.setattr(build, "load_model", no_load)
    cfg = tiny_run_config(tiny, tmp_path / "run", *LORA, override)
    with pytest.raises(ValueError, match=message):
        train(cfg, reward_worker=CharRewardWorker())


@pytest.mark.parametrize("override, message", [
    (["model.lora.r=-1"], r"model\.lora\.r must be >= 0, got -1 \(the rank of the adapters; 0 turns LoRA off\)"),
    (["model.lora.r=0", "model.lora.alpha=32"], r"model\.lora\.r must be >= 1 to train LoRA adapters "
                                                r"\(model\.lora\.alpha is set"),
    (["model.lora.r=0", "model.lora.target_modules=[q_proj]"], r"model\.lora\.r must be >= 1"),
    (["model.lora.r=8", "model.lora.target_modules=[]"], r"model\.lora\.target_modules must be a non-empty list"),
    (["model.lora.r=8", "model.lora.alpha=0"], r"model\.lora\.alpha must be > 0\.0"),
    (["model.lora.r=8", "model.lora.dropout=1.0"], r"model\.lora\.dropout must be >= 0\.0 and < 1\.0"),
    (["model.lora.r=8", "model.lora.dropout=.nan"], r"model\.lora\.dropout must be a finite number"),
])
def test_bad_lora_settings_are_config_errors(override, message):
    with pytest.raises(ValueError, match=message):
        load_config("cpu_smollm2", override)


# --- the bundled model --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def smollm2():
    return str(resolve_model_dir("smollm2"))


def test_a_lora_update_lowers_the_loss_of_its_batch_on_the_bundled_model(smollm2):
    """Four optimizer steps of the trainer's update on one batch of SmolLM2 rollouts (old log-probs
    fixed, advantages of both signs): the clipped objective falls at every step."""
    from transformers import AutoTokenizer

    from medix_r1.parallel import layout
    from medix_r1.train.optim import make_optimizer
    from medix_r1.train.policy import loss_config
    from medix_r1.train.step import update

    model, cfg = adapted(smollm2, "optim.lr=1e-3", "optim.weight_decay=0.0", "loss.clip_high=10.0",
                         "loss.clip_low=0.9")
    tok = AutoTokenizer.from_pretrained(smollm2)
    batch = batch_of(tok)
    lengths = batch["mask"].sum(-1).long().tolist()
    rows = layout.Layout(owner=[0, 0], local=[0, 1], tokens=lengths, rewards=[1.0, 0.0])
    old = sequence_logp(model, batch, cfg.rollout.temperature, 4)
    opt = make_optimizer((p for p in model.parameters() if p.requires_grad), cfg.optim)
    adv = torch.tensor([1.0, -1.0])
    losses = [update(model, opt, batch, adv, None, old, cfg, loss_config(cfg), s, rows)[0]["loss"]
              for s in range(1, 6)]
    assert all(b < a for a, b in zip(losses, losses[1:])), losses
    # on-policy at first: ratio 1, loss = -(4 tokens x (+1) + 3 tokens x (-1)) / 7
    assert losses[0] == pytest.approx(-1 / 7, abs=1e-6) and losses[-1] < losses[0] - 0.1, losses


@contextlib.contextmanager
def one_thread():
    """Bit-exact float sums: with several threads the BLAS may split a product differently from one call
    to the next when the machine is busy (MKL_DYNAMIC), so two identical runs can differ in the last bit."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_config(smollm2, out, *more):
    return tiny_run_config(smollm2, out, *LORA, "loss.beta=0.05", "optim.lr=2e-3", "train.save_every=1",
                           "train.keep_last=5", "train.tensorboard=false", "train.plot=false", *more)


@pytest.fixture(scope="module")
def lora_run(smollm2, tmp_path_factory):
    """Two steps on the bundled SmolLM2 with LoRA and a KL term (the reference: the base with the
    adapters off), a checkpoint after each step."""
    out = tmp_path_factory.mktemp("lora_run")
    with one_thread():
        summary = train(run_config(smollm2, out), reward_worker=CharRewardWorker())
    return out, summary["history"]


@pytest.mark.slow
def test_the_base_weights_are_bit_identical_after_training(smollm2, lora_run):
    from safetensors.torch import load_file

    out, history = lora_run
    base = load_file(str(Path(smollm2) / "model.safetensors"))
    model, _ = adapted(smollm2)
    ckpt.load_checkpoint(out / "step_000002", model=model, optimizer=_null_optimizer(model),
                         scheduler=_null_scheduler())
    own = {n.replace(".base_layer", ""): p for n, p in model.named_parameters() if ".lora_" not in n}
    assert set(own) == set(base) - {"lm_head.weight"}
    assert all(torch.equal(own[k], base[k]) for k in own)
    assert any(float(p.detach().abs().max()) > 0 for n, p in model.named_parameters() if ".lora_B." in n)
    assert history[0]["loss/kl_mean"] == 0.0 < history[1]["loss/kl_mean"]  # base == policy at step 1 only
    assert not (out / "step_000002" / "model").exists()
    assert json.loads((out / "step_000002" / "adapter" / "adapter_config.json").read_text())["r"] == 4


def _null_optimizer(model):
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)


def _null_scheduler():
    return torch.optim.lr_scheduler.LambdaLR(torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0),
                                             lambda s: 1.0)


@pytest.mark.slow
def test_resume_reproduces_the_run(smollm2, lora_run, tmp_path):
    from safetensors.torch import load_file

    out, history = lora_run
    part = tmp_path / "part"
    shutil.copytree(out, part)
    shutil.rmtree(part / "step_000002")
    with one_thread():
        resumed = train(run_config(smollm2, part), resume=True, reward_worker=CharRewardWorker())["history"]
    # The samples, rewards and forward losses are bit-identical. The backward once came out 1 ulp apart
    # in float32 (grad norm 0.80169076 vs 0.80169064, one CI run of many, not reproduced since): the CPU
    # matmul library does not promise bit-identical sums from one process to another. A resume that
    # loses state (optimizer moments, RNG, the schedule) moves these by orders of magnitude more.
    for key in ("loss/loss", "loss/kl_mean", "loss/entropy", "reward/total"):
        assert resumed[1][key] == history[1][key], key
    assert resumed[1]["optim/grad_norm"] == pytest.approx(history[1]["optim/grad_norm"], rel=1e-6)
    a = load_file(str(out / "step_000002" / "adapter" / "adapter_model.safetensors"))
    b = load_file(str(part / "step_000002" / "adapter" / "adapter_model.safetensors"))
    assert sorted(a) == sorted(b)
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= 1e-7, worst  # one AdamW step at lr 2e-3 moves an adapter weight by up to ~2e-3


@pytest.mark.slow
def test_a_lora_checkpoint_does_not_resume_a_full_run(smollm2, lora_run, tmp_path):
    part = tmp_path / "part"
    shutil.copytree(lora_run[0], part)
    cfg = tiny_run_config(smollm2, part, "train.max_steps=3", "train.tensorboard=false")
    with pytest.raises(ckpt.CheckpointMismatch, match=r"holds LoRA adapters \(adapter/\) but this run trains the "
                                                       r"full model"):
        train(cfg, resume=True, reward_worker=CharRewardWorker())


@pytest.mark.slow
def test_export_merged_and_as_adapter(smollm2, lora_run, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    step = lora_run[0] / "step_000002"
    model, _ = adapted(smollm2)
    ckpt.load_checkpoint(step, model=model, optimizer=_null_optimizer(model), scheduler=_null_scheduler())
    batch = batch_of(AutoTokenizer.from_pretrained(smollm2))
    want = sequence_logp(model, batch, 1.0, 4)
    assert ckpt.main(["export", str(step), str(tmp_path / "merged")]) == 0
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "merged"), dtype=torch.float32)
    assert not any(".lora_" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(sequence_logp(merged, batch, 1.0, 4), want, rtol=0, atol=1e-4)
    assert ckpt.main(["export", str(step), str(tmp_path / "adapter"), "--lora", "adapter"]) == 0
    assert (tmp_path / "adapter" / "tokenizer_config.json").is_file()
    base = AutoModelForCausalLM.from_pretrained(smollm2, dtype=torch.float32)
    peft_model = PeftModel.from_pretrained(base, str(tmp_path / "adapter"))
    assert torch.equal(sequence_logp(peft_model.base_model.model, batch, 1.0, 4), want)
    capsys.readouterr()


@pytest.mark.slow
def test_the_vllm_engine_samples_from_the_merged_policy(smollm2):
    """The engine's sampling log-probs (raw) against the adapted policy's own, before and after a sync."""
    from transformers import AutoTokenizer

    from medix_r1.rollout import VllmRollout
    from medix_r1.train.step import sync_weights
    from tests.test_train_vllm import mismatch, prompts

    model, cfg = adapted(smollm2, "rollout.max_tokens=12", "rollout.n=2", "rollout.temperature=0.7")
    perturb_adapters(model, scale=0.02)
    tok = AutoTokenizer.from_pretrained(smollm2)
    eng = VllmRollout(smollm2, cfg.rollout, seed=0)
    ps = prompts(tok, cfg)
    stale = mismatch(model, eng.generate(ps, 1, 0), tok.eos_token_id)
    sync_weights(eng, model)
    synced = mismatch(model, eng.generate(ps, 2, 0), tok.eos_token_id)
    assert stale > 1e-2 and synced < 2e-4, (stale, synced)


def test_lora_without_peft_is_one_config_error(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "peft" else real(name, *a))
    load_config("cpu_smollm2")  # LoRA off: peft is not needed
    with pytest.raises(ValueError, match=r"model\.lora\.r > 0 trains LoRA adapters through the peft package, which "
                                         r"is not installed: pip install 'medix\[lora\]'"):
        load_config("cpu_smollm2", ["model.lora.r=8"])
