"""model.autocast=bfloat16: the policy's forward, backward and LM head run in bfloat16 while the weights
and their gradients stay float32; the result stays close to the float32 step, and the no-grad log-prob
pass (old log-probs) runs under the same autocast: over the same micro-batch an on-policy ratio is 1 to
float32 rounding; over micro-batches of other shapes, to bfloat16 rounding (~1e-4)."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

import medix_kernels as mk
from medix_r1.config import load_config
from medix_r1.models import resolve_model_dir
from medix_r1.train.batch import make_batch
from medix_r1.train.policy import load_model, policy_loss, sequence_logp


def tiny_model(autocast):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True)
    model = LlamaForCausalLM(cfg).float()
    model.medix_share_prompts = True
    model.medix_autocast = autocast
    return model


def batch():
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(1, 97, (n,), generator=g).tolist() for n in (9, 9, 5, 5, 7)]
    prompts[1], prompts[3] = prompts[0], prompts[2]  # shared prompts, as GRPO groups have
    responses = [torch.randint(1, 97, (n,), generator=g).tolist() for n in (6, 1, 8, 3, 5)]
    return make_batch(prompts, responses, 0)


def step(model, b, micro=5):
    model.zero_grad(set_to_none=True)
    adv = torch.tensor([1.0, -0.5, 0.25, -0.7, 0.3])
    old = sequence_logp(model, b, 1.0, micro=micro)  # the no-grad pass
    mb = {**b, "rollout_logp": old}  # the loss reports how far its own log-probs are from these (rollout_* stats)
    loss, stats = policy_loss(model, mb, adv, None, None, mk.LossConfig.preset("grpo", beta=0.0), "fused", 0)
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    return float(loss.detach()), stats, old, grads


def test_bfloat16_step_is_close_to_the_float32_step_with_float32_weights_and_gradients():
    b = batch()
    loss32, stats32, old32, g32 = step(tiny_model(None), b)
    model = tiny_model(torch.bfloat16)
    loss16, stats16, old16, g16 = step(model, b)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert all(g is not None and g.dtype == torch.float32 for g in g16.values())
    assert not torch.equal(old16, old32)  # it did run in bfloat16 (the on-policy loss value is -mean(adv) either way)
    assert abs(loss16 - loss32) < 2e-2 * max(abs(loss32), 1e-2)
    torch.testing.assert_close(old16, old32, atol=5e-2, rtol=2e-2)  # log-probs, bf16 logits
    for name, g in g32.items():
        cos = torch.nn.functional.cosine_similarity(g16[name].flatten(), g.flatten(), dim=0)
        assert cos > 0.99, name
    # old log-probs (no grad) and the loss's log-probs share numerics: mean |difference| ~0
    assert float(stats16["rollout_logp_mismatch"]) <= 1e-6
    assert float(stats32["rollout_logp_mismatch"]) <= 1e-6
    _, stats16_split, old16_split, _ = step(model, b, micro=2)  # other GEMM shapes: bf16 rounding
    assert float(stats16_split["rollout_logp_mismatch"]) <= 1e-3
    assert not torch.equal(old16_split, old16)


def test_config_and_loader(tmp_path):
    from tests.train_helpers import make_tiny_model
    folder = make_tiny_model(tmp_path / "tiny")
    on = load_config("cpu_smollm2", [f"model.policy={folder}", "model.autocast=bfloat16"])
    policy = load_model(resolve_model_dir(folder), on, trainable=True)
    assert policy.medix_autocast is torch.bfloat16
    assert all(p.dtype == torch.float32 for p in policy.parameters())
    off = load_config("cpu_smollm2", [f"model.policy={folder}"])
    assert load_model(resolve_model_dir(folder), off, trainable=True).medix_autocast is None
    with pytest.raises(ValueError, match="model.autocast"):
        load_config("cpu_smollm2", ["model.autocast=float16"])
