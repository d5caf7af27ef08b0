"""fused_linear_grpo_loss / fused_linear_selective_log_softmax vs the full-logits path."""
import zlib

import pytest
import torch

import medix_kernels as mk
from medix_kernels import reference as ref
from medix_kernels._fused_linear_chunks import ACCUMULATE, CHUNK_CONFIGS, _works, accumulate_mode
from tests.tolerances import tol


def batch(b=3, l=5, h=24, v=777, dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(b, l, h, generator=gen).to(dtype)
    weight = (torch.randn(v, h, generator=gen) * 0.2).to(dtype)
    bias = (torch.randn(v, generator=gen) * 0.1).to(dtype)
    ids = torch.randint(0, v, (b, l), generator=gen)
    mask = torch.rand(b, l, generator=gen) > 0.3
    mask[-1] = False
    adv = torch.randn(b, generator=gen)
    lp = ref.selective_log_softmax(hidden.float() @ weight.float().t() + bias.float(), ids)
    return hidden, weight, bias, ids, mask, adv, lp + 0.2 * torch.randn(b, l, generator=gen), lp - 0.1


def cpu_and_reference(inputs, cfg, chunk, with_bias, backend="cpu"):
    """fused_linear_grpo_loss on the cpu (or torch) backend and the reference, each on its own leaf copies
    of hidden, weight and bias, both backpropagated: ((loss, stats, leaves), (loss, stats, leaves))."""
    hidden, weight, bias, ids, mask, adv, old, ref_lp = inputs
    ins = [t.clone().requires_grad_(True) for t in (hidden, weight, bias)]
    loss, stats = mk.fused_linear_grpo_loss(ins[0], ins[1], ids, mask, adv, lm_head_bias=ins[2] if with_bias else None,
                                            old_logp=old, ref_logp=ref_lp, config=cfg, chunk_size=chunk,
                                            backend=backend)
    loss.backward()
    outs = [t.clone().requires_grad_(True) for t in (hidden, weight, bias)]
    want, want_stats = ref.fused_linear_grpo_loss(outs[0], outs[1], ids, mask, adv, bias=outs[2] if with_bias else None,
                                                  old_logp=old, ref_logp=ref_lp, config=cfg)
    want.backward()
    return (loss, stats, ins), (want, want_stats, outs)


@pytest.mark.parametrize("preset", ["grpo", "dapo", "gspo", "dr_grpo", "cispo", "verl", "medix_grpo", "medix_dapo",
                                    "medix_gspo"])
@pytest.mark.parametrize("chunk", [1, 4, None])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("backend", ["cpu", "torch"])
def test_matches_full_logits_path(preset, chunk, with_bias, backend):
    """The chunked pass (the compiled kernels, or the torch backend's ops on each chunk) equals the
    reference's full-logits loss, statistics and gradients."""
    cfg = mk.LossConfig.preset(preset)
    inputs = batch(seed=zlib.crc32(preset.encode()) % 100)
    (loss, stats, ins), (want, want_stats, outs) = cpu_and_reference(inputs, cfg, chunk, with_bias, backend)
    t = tol("fused_linear", torch.float32)
    torch.testing.assert_close(loss, want, **t)
    for k in want_stats:
        torch.testing.assert_close(stats[k], want_stats[k], **t)
    torch.testing.assert_close(ins[0].grad, outs[0].grad, **t)
    torch.testing.assert_close(ins[1].grad, outs[1].grad, **t)
    if with_bias:
        torch.testing.assert_close(ins[2].grad, outs[2].grad, **t)


def test_bf16_weight_gradient_accumulates_in_fp32():
    hidden, weight, _, ids, mask, adv, old, _ = batch(b=4, l=64, h=32, v=500, dtype=torch.bfloat16, seed=2)
    mask[:] = True
    cfg = mk.LossConfig.preset("dapo")
    h = hidden.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    loss, _ = mk.fused_linear_grpo_loss(h, w, ids, mask, adv, old_logp=old, config=cfg, chunk_size=8, backend="cpu")
    loss.backward()
    # Oracle: the same bf16 logits, everything after them in float64, d weight summed in float64.
    logits = (hidden @ weight.t()).double().requires_grad_(True)
    want, _ = ref.grpo_loss(logits, ids, mask, adv, old_logp=old.double(), config=cfg)
    (d_logits,) = torch.autograd.grad(want, logits)
    want_w = d_logits.reshape(-1, 500).t() @ hidden.double().reshape(-1, 32)
    assert w.grad.dtype == torch.bfloat16
    err = ((w.grad.double() - want_w).norm() / want_w.norm()).item()
    # d logits is rounded to bf16 once (~0.4%) and the result once more; a bf16 running sum over
    # 32 chunks would add its own rounding at every step.
    assert err < 1e-2, err


def test_fused_linear_selective_log_softmax():
    hidden, weight, bias, ids, *_ = batch()
    got, ent = mk.fused_linear_selective_log_softmax(hidden, weight, ids, bias=bias, temperature=0.8, chunk_size=3,
                                                     return_entropy=True)
    want, want_ent = ref.selective_log_softmax(hidden @ weight.t() + bias, ids, temperature=0.8, return_entropy=True)
    torch.testing.assert_close(got, want, **tol("fused_linear", torch.float32))
    torch.testing.assert_close(ent, want_ent, **tol("fused_linear", torch.float32))
    assert not got.requires_grad


@pytest.mark.parametrize("call,match", [
    (lambda b: mk.fused_linear_grpo_loss(b[0][0], b[1], b[3], b[4], b[5]),
     r"'hidden' must be a float tensor \[B, L, H\]"),
    (lambda b: mk.fused_linear_grpo_loss(b[0], b[1][:, :3], b[3], b[4], b[5]), r"'lm_head_weight' must be \[V, H\]"),
    (lambda b: mk.fused_linear_grpo_loss(b[0], b[1], b[3] + 10**6, b[4], b[5]), r"'ids' must be in \[0, V=777\)"),
    (lambda b: mk.fused_linear_grpo_loss(b[0], b[1], b[3], b[4], b[5], chunk_size=0), "'chunk_size' must be"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call(batch())


def test_tiny_causal_lm_step_changes_parameters_and_matches_logits_path():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    model = LlamaForCausalLM(config)
    ids = torch.randint(0, 300, (4, 12))
    mask = torch.ones(4, 11, dtype=torch.bool)
    mask[:, :3] = False  # prompt tokens
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5])
    cfg = mk.LossConfig.preset("dapo")

    out = model(ids, output_hidden_states=True)
    hidden = out.hidden_states[-1][:, :-1]
    loss_f, _ = mk.fused_linear_grpo_loss(hidden, model.lm_head.weight, ids[:, 1:], mask, adv, config=cfg)
    grads_f = torch.autograd.grad(loss_f, list(model.parameters()))
    loss_l, _ = mk.grpo_loss(model(ids).logits[:, :-1], ids[:, 1:], mask, adv, config=cfg)
    grads_l = torch.autograd.grad(loss_l, list(model.parameters()))
    torch.testing.assert_close(loss_f, loss_l, rtol=1e-5, atol=1e-6)
    for gf, gl in zip(grads_f, grads_l):
        torch.testing.assert_close(gf, gl, rtol=1e-3, atol=1e-6)

    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    out = model(ids, output_hidden_states=True)
    loss, _ = mk.fused_linear_grpo_loss(out.hidden_states[-1][:, :-1], model.lm_head.weight, ids[:, 1:], mask, adv,
                                        config=cfg)
    loss.backward()
    opt.step()
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_scaled_and_repeated_backward():
    """grad_loss != 1 (loss * 3) scales every gradient; a second backward (retain_graph) gives the
    same gradients again (the stored gradients are never scaled in place)."""
    hidden, weight, _, ids, mask, adv, old, _ = batch(seed=5)
    cfg = mk.LossConfig.preset("grpo", beta=0.0)
    h = hidden.clone().requires_grad_(True)
    w = weight.clone().requires_grad_(True)
    loss, _ = mk.fused_linear_grpo_loss(h, w, ids, mask, adv, old_logp=old, config=cfg, chunk_size=3, backend="cpu")
    g1 = torch.autograd.grad(loss, (h, w), retain_graph=True)
    g3 = torch.autograd.grad(loss * 3.0, (h, w), retain_graph=True)
    g1b = torch.autograd.grad(loss, (h, w))
    for a, b, c in zip(g1, g3, g1b):
        torch.testing.assert_close(b, 3.0 * a)
        torch.testing.assert_close(c, a)


@pytest.mark.parametrize("chunk", [2, 14, 15, 16, 1000])
def test_chunk_edges_and_buffer_reuse(chunk):
    """Each chunk's logits are overwritten by their gradient, then dropped before the next chunk:
    chunks that divide the 15 tokens or not, one chunk of all of them and a chunk larger than the
    batch give the reference's loss and gradients, with and without bias; the GSPO pre-pass
    (forward only) and the fused log-probs too."""
    hidden, weight, bias, ids, mask, adv, old, ref_lp = batch(seed=chunk)
    for preset, use_bias in (("grpo", True), ("gspo", False)):
        cfg = mk.LossConfig.preset(preset)
        (loss, _, ins), (want, _, outs) = cpu_and_reference((hidden, weight, bias, ids, mask, adv, old, ref_lp), cfg,
                                                            chunk, use_bias)
        t = tol("fused_linear", torch.float32)
        torch.testing.assert_close(loss, want, **t)
        for a, b in zip(ins[: 2 + use_bias], outs[: 2 + use_bias]):
            torch.testing.assert_close(a.grad, b.grad, **t)
    got = mk.fused_linear_selective_log_softmax(hidden, weight, ids, bias=bias, chunk_size=chunk)
    torch.testing.assert_close(got, ref.selective_log_softmax(hidden @ weight.t() + bias, ids),
                               **tol("fused_linear", torch.float32))


def test_default_chunk_sizes():
    from medix_kernels.fused_linear import default_chunk_size
    # CPU: ~12 MB of logits per chunk (SmolLM2's vocabulary in fp32: 64 tokens), a multiple of 16, >= 16
    assert default_chunk_size(49152, 576, torch.float32, "cpu") == 64
    assert default_chunk_size(49152, 576, torch.bfloat16, "cpu") == 128
    assert default_chunk_size(10**7, 576, torch.float32, "cpu") == 16
    # GPU: a chunk of logits as large as the weight (H tokens), >= 2,048, a multiple of 128, spread
    # evenly over the tokens
    assert default_chunk_size(152064, 4096, torch.bfloat16, "cuda", tokens=8192) == 4096
    assert default_chunk_size(152064, 4096, torch.float32, "cuda", tokens=8192) == 4096
    assert default_chunk_size(152064, 4096, torch.bfloat16, "cuda", tokens=5000) == 2512  # 2 x 2,500, not 4,096 + 904
    assert default_chunk_size(152064, 3584, torch.bfloat16, "cuda", tokens=32768) == 3280  # 10 chunks of <= 3,584
    assert default_chunk_size(49152, 576, torch.bfloat16, "cuda", tokens=8192) == 2048
    assert default_chunk_size(49152, 576, torch.bfloat16, "cuda", tokens=100) == 112


@pytest.mark.parametrize("name", sorted(CHUNK_CONFIGS))
def test_named_chunk_configs(name):
    """Every named configuration runs (its d W accumulation resolved to what works here) and gives
    the reference's loss and gradients, with bias; the fused log-probs take the names too."""
    hidden, weight, bias, ids, mask, adv, old, ref_lp = batch(seed=11)
    (loss, _, ins), (want, _, outs) = cpu_and_reference((hidden, weight, bias, ids, mask, adv, old, ref_lp),
                                                        mk.LossConfig.preset("grpo"), name, True)
    t = tol("fused_linear", torch.float32)
    torch.testing.assert_close(loss, want, **t)
    for a, b in zip(ins, outs):
        torch.testing.assert_close(a.grad, b.grad, **t)
    got = mk.fused_linear_selective_log_softmax(hidden, weight, ids, bias=bias, chunk_size=name)
    torch.testing.assert_close(got, ref.selective_log_softmax(hidden @ weight.t() + bias, ids), **t)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mode", sorted(ACCUMULATE))
def test_weight_gradient_accumulation_modes(device, dtype, mode):
    """Each d W accumulation that works on this device sums 5 chunks' dZ^T h in float32 (the first
    chunk written, not added: d W starts uninitialised); one that does not is never picked."""
    if not _works(mode, torch.device(device), dtype):
        assert accumulate_mode(mode, device, dtype) != mode
        pytest.skip(f"{mode} does not run on {device} in {dtype} with this torch")
    gen = torch.Generator().manual_seed(3)
    dz = torch.randn(5, 40, 300, generator=gen).to(dtype)
    h = torch.randn(5, 40, 24, generator=gen).to(dtype)
    acc = torch.full((300, 24), float("nan"), device=device)
    for i in range(5):
        ACCUMULATE[mode](acc, dz[i].to(device).t(), h[i].to(device), i == 0)
    want = torch.einsum("ktv,kth->vh", dz.double(), h.double())
    torch.testing.assert_close(acc.cpu().double(), want, rtol=1e-5, atol=1e-4)


def test_accumulation_on_the_cpu_is_upcast():
    for mode in ("auto", *ACCUMULATE):
        assert accumulate_mode(mode, "cpu", torch.bfloat16) == "upcast"
        assert accumulate_mode(mode, "cpu", torch.float32) == "upcast"


def test_bad_chunk_size_name():
    with pytest.raises(ValueError, match="'chunk_size' must be None, an int >= 1 or one of"):
        b = batch()
        mk.fused_linear_grpo_loss(b[0], b[1], b[3], b[4], b[5], chunk_size="weight-x3")
    with pytest.raises(ValueError, match="'chunk_size' must be"):
        b = batch()
        mk.fused_linear_selective_log_softmax(b[0], b[1], b[3], chunk_size=True)
