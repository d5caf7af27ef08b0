"""The shared-prompt forward (medix_r1/shared_prompt.py) gives the padded forward's hidden states and
gradients: distinct prompts of different lengths in one micro-batch, responses of length 1, rows
that share nothing, and a whole training step."""
import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from medix_r1.models import resolve_model_dir
from medix_r1.train.batch import make_batch, prompt_groups, slice_batch
from medix_r1.train.policy import load_model, policy_hidden, policy_loss
from medix_r1.train.shared_prompt import worth_sharing


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      tie_word_embeddings=True)
    return LlamaForCausalLM(cfg).float()


def rows():
    g = torch.Generator().manual_seed(1)
    long_p = torch.randint(1, 97, (11,), generator=g).tolist()
    short_p = torch.randint(1, 97, (4,), generator=g).tolist()
    lone_p = torch.randint(1, 97, (7,), generator=g).tolist()
    prompts = [long_p, long_p, long_p, short_p, short_p, lone_p]
    lens = [6, 1, 9, 3, 8, 5]  # a length-1 response, and the longest response after the short prompt
    responses = [torch.randint(1, 97, (n,), generator=g).tolist() for n in lens]
    return prompts, responses


def hidden_and_grads(model, batch, share: bool):
    model.zero_grad(set_to_none=True)
    model.medix_share_prompts = share
    h = policy_hidden(model, batch) * batch["mask"].unsqueeze(-1)
    w = torch.linspace(-1, 1, h.shape[-1])
    (h * w).sum().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return h.detach(), grads


def test_prompt_groups_follow_first_seen_order():
    assert prompt_groups([[1, 2], [3], [1, 2], [3], [4]]) == [0, 1, 0, 1, 2]
    batch = make_batch([[1, 2], [3, 4]], [[5], [6]], 0)
    assert not worth_sharing(batch)  # nothing shared: the padded forward runs
    assert worth_sharing(make_batch([[1, 2], [1, 2]], [[5], [6]], 0))


def test_values_and_gradients_equal_the_padded_forward(model):
    prompts, responses = rows()
    batch = make_batch(prompts, responses, 0)
    assert worth_sharing(batch)
    h_pad, g_pad = hidden_and_grads(model, batch, share=False)
    h_shared, g_shared = hidden_and_grads(model, batch, share=True)
    assert h_shared.shape == h_pad.shape
    torch.testing.assert_close(h_shared, h_pad, atol=2e-5, rtol=1e-5)
    assert g_pad.keys() == g_shared.keys() and len(g_pad) > 0
    for name in g_pad:
        torch.testing.assert_close(g_shared[name], g_pad[name], atol=2e-5, rtol=1e-4, msg=name)


def test_micro_batch_slices_share_within_themselves(model):
    prompts, responses = rows()
    batch = make_batch(prompts, responses, 0)
    for sel in (torch.tensor([0, 2]), torch.tensor([3, 4, 5]), torch.tensor([1, 5, 0])):
        mb = slice_batch(batch, sel)
        model.medix_share_prompts = True
        with torch.no_grad():
            shared = policy_hidden(model, mb) * mb["mask"].unsqueeze(-1)
            model.medix_share_prompts = False
            padded = policy_hidden(model, mb) * mb["mask"].unsqueeze(-1)
        torch.testing.assert_close(shared, padded, atol=2e-5, rtol=1e-5)


def test_a_training_step_is_the_same_with_and_without_sharing(model):
    import medix_kernels as mk
    prompts, responses = rows()
    batch = make_batch(prompts, responses, 0)
    adv = torch.tensor([1.0, -0.5, 0.25, 0.7, -0.7, 0.0])
    cfg = mk.LossConfig.preset("grpo", beta=0.0)
    out = {}
    for share in (False, True):
        model.zero_grad(set_to_none=True)
        model.medix_share_prompts = share
        loss, _, raw = policy_loss(model, batch, adv, None, None, cfg, "fused", 0)
        loss.backward()
        out[share] = (float(loss.detach()), raw.detach() * batch["mask"], model.lm_head.weight.grad.clone())
    assert abs(out[True][0] - out[False][0]) < 1e-5
    torch.testing.assert_close(out[True][1], out[False][1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out[True][2], out[False][2], atol=1e-5, rtol=1e-4)


def test_gradient_checkpointing_turns_sharing_off(tmp_path):
    from medix_r1.config import load_config
    from tests.train_helpers import make_tiny_model
    folder = make_tiny_model(tmp_path / "tiny")
    on = load_config("cpu_smollm2", [f"model.policy={folder}"])
    off = load_config("cpu_smollm2", [f"model.policy={folder}", "model.gradient_checkpointing=true"])
    assert load_model(resolve_model_dir(folder), on, trainable=True).medix_share_prompts
    assert not load_model(resolve_model_dir(folder), off, trainable=True).medix_share_prompts
    assert load_model(resolve_model_dir(folder), off, trainable=False).medix_share_prompts  # no grad: no recompute


def test_vision_language_models_keep_the_padded_forward(tmp_path):
    from medix_r1.config import load_config
    from medix_r1.testing.tiny_qwen_vl import build_tiny_qwen2_5_vl
    folder = build_tiny_qwen2_5_vl(tmp_path / "vl")
    cfg = load_config("cpu_smollm2", [f"model.policy={folder}", "rollout.engine=hf"])
    assert not load_model(resolve_model_dir(str(folder)), cfg, trainable=True).medix_share_prompts


def test_forced_response_pass_over_one_token_responses(model):
    """Under FSDP every rank runs the response pass when any rank needs it: a micro-batch of one-token
    responses then runs it over a masked position and still returns the padded forward's values."""
    from medix_r1.train.shared_prompt import shared_prompt_hidden
    batch = make_batch([[5, 6, 7], [5, 6, 7], [9, 8]], [[1], [2], [3]], 0)
    with torch.no_grad():
        model.medix_share_prompts = False
        padded = policy_hidden(model, batch)
        for forced in (None, True, False):
            shared = shared_prompt_hidden(model.base_model, batch, response_pass=forced)
            assert shared.shape == padded.shape
            torch.testing.assert_close(shared, padded, atol=2e-5, rtol=1e-5)
