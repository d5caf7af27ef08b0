"""LossConfig.entropy_coef (issue 32): the entropy bonus -coef * H_t per token, aggregated like the loss.

The reference is checked against H written out from the softmax here; every backend (grpo_loss on the
compiled CPU kernels, fused_linear_grpo_loss chunk by chunk, Triton under its interpreter) against the
reference in values and gradients, fp32 and bf16, odd shapes; the tolerances are the table's."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import medix_kernels as mk
from medix_kernels import reference as ref
from tests.test_fused_linear import batch as fused_batch
from tests.test_fused_linear import cpu_and_reference
from tests.test_policy_loss import AGGREGATIONS, VALID_PAIRS, make_batch
from tests.tolerances import tol

REPO = Path(__file__).resolve().parents[1]


def entropy_by_hand(logits, temperature):
    p = torch.softmax(logits.double() / temperature, dim=-1)
    return -(p * torch.log(p)).sum(-1)


@pytest.mark.parametrize("aggregation", AGGREGATIONS)
def test_reference_subtracts_coef_times_the_aggregated_entropy(aggregation):
    logits, ids, mask, adv, old, ref_lp = make_batch(3, 6, 97, seed=4)
    base = mk.LossConfig(aggregation=aggregation, beta=0.02, temperature=0.8, max_len=8)
    with_bonus = base.replace(entropy_coef=0.3)
    l0, _ = ref.grpo_loss(logits, ids, mask, adv, old_logp=old, ref_logp=ref_lp, config=base)
    l1, stats = ref.grpo_loss(logits, ids, mask, adv, old_logp=old, ref_logp=ref_lp, config=with_bonus)
    h = entropy_by_hand(logits, 0.8).float()
    want = l0 - 0.3 * ref.aggregate(h, mask, aggregation, 8)
    torch.testing.assert_close(l1, want, **tol("loss", torch.float32))
    assert "entropy_mean" in stats  # the bonus's entropy is reported without return_entropy
    assert float(ref.aggregate(h, mask, aggregation, 8)) > 1.0  # a real term, not a no-op


def test_the_bonus_raises_the_entropy_of_a_gradient_step():
    """Descending the bonus alone (zero advantages) flattens the distribution."""
    logits, ids, mask, adv, _, _ = make_batch(2, 4, 50, seed=1, empty_row=False)
    x = logits.clone().requires_grad_(True)
    cfg = mk.LossConfig(entropy_coef=1.0)
    loss, stats = mk.grpo_loss(x, ids, mask, torch.zeros_like(adv), config=cfg, backend="cpu")
    loss.backward()
    with torch.no_grad():
        after = entropy_by_hand(x - 0.5 * x.grad, 1.0)
    assert float((after * mask).sum()) > float((entropy_by_hand(logits, 1.0) * mask).sum())


@pytest.mark.parametrize("loss_type,aggregation", VALID_PAIRS)
def test_grpo_loss_on_the_cpu_kernels_matches_the_reference(loss_type, aggregation):
    logits, ids, mask, adv, old, ref_lp = make_batch(3, 7, 1001, seed=9)
    cfg = mk.LossConfig(loss_type=loss_type, aggregation=aggregation, beta=0.05, clip_high=0.28, temperature=0.7,
                        max_len=9, entropy_coef=0.05)
    x1, x2 = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    l1, s1 = mk.grpo_loss(x1, ids, mask, adv, old_logp=old, ref_logp=ref_lp, config=cfg, backend="cpu")
    l2, s2 = ref.grpo_loss(x2, ids, mask, adv, old_logp=old, ref_logp=ref_lp, config=cfg)
    torch.testing.assert_close(l1, l2, **tol("loss", torch.float32))
    assert sorted(s1) == sorted(s2)
    for k in s2:
        torch.testing.assert_close(s1[k], s2[k], **tol("loss", torch.float32))
    l1.backward()
    l2.backward()
    torch.testing.assert_close(x1.grad, x2.grad, **tol("logprob_grad", torch.float32))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("inplace", [False, True])
def test_grpo_loss_low_precision_and_in_place(dtype, inplace):
    logits, ids, mask, adv, old, _ = make_batch(2, 3, 4099, dtype, seed=5)
    cfg = mk.LossConfig(entropy_coef=0.1)
    x1 = logits.clone().requires_grad_(True)
    x2 = logits.clone().float().requires_grad_(True)
    l1, _ = mk.grpo_loss(x1 * 1 if inplace else x1, ids, mask, adv, old_logp=old, config=cfg,
                         inplace_backward=inplace, backend="cpu")
    l2, _ = ref.grpo_loss(x2, ids, mask, adv, old_logp=old, config=cfg)
    torch.testing.assert_close(l1, l2, **tol("loss", dtype))
    l1.backward()
    l2.backward()
    torch.testing.assert_close(x1.grad.float(), x2.grad.to(dtype).float(), **tol("logprob_grad", dtype))


@pytest.mark.parametrize("preset", ["grpo", "dapo", "gspo", "dr_grpo", "cispo", "medix_gspo"])
@pytest.mark.parametrize("chunk", [1, 4, None])
@pytest.mark.parametrize("with_bias", [False, True])
def test_fused_linear_matches_the_reference(preset, chunk, with_bias):
    cfg = mk.LossConfig.preset(preset, entropy_coef=0.02, temperature=0.9)
    (loss, stats, ins), (want, want_stats, outs) = cpu_and_reference(fused_batch(seed=3), cfg, chunk, with_bias)
    t = tol("fused_linear", torch.float32)
    torch.testing.assert_close(loss, want, **t)
    assert sorted(stats) == sorted(want_stats) and "entropy_mean" in stats
    for k in want_stats:
        torch.testing.assert_close(stats[k], want_stats[k], **t)
    for got, exp in zip(ins[:3 if with_bias else 2], outs):
        torch.testing.assert_close(got.grad, exp.grad, **t)


def test_fused_linear_bf16_matches_the_reference():
    hidden, weight, _, ids, mask, adv, old, _ = fused_batch(b=2, l=9, h=32, v=501, dtype=torch.bfloat16, seed=8)
    cfg = mk.LossConfig(entropy_coef=0.05)
    h1, w1 = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    loss, _ = mk.fused_linear_grpo_loss(h1, w1, ids, mask, adv, old_logp=old, config=cfg, chunk_size=4,
                                        backend="cpu")
    loss.backward()
    h2, w2 = hidden.float().requires_grad_(True), weight.float().requires_grad_(True)
    want, _ = ref.fused_linear_grpo_loss(h2, w2, ids, mask, adv, old_logp=old, config=cfg)
    want.backward()
    t = tol("fused_linear", torch.bfloat16)
    torch.testing.assert_close(loss, want, **t)
    torch.testing.assert_close(h1.grad.float(), h2.grad, **t)
    torch.testing.assert_close(w1.grad.float(), w2.grad, **t)


def test_coef_zero_is_the_loss_without_the_bonus_bit_for_bit():
    """entropy_coef=0 (the default) computes exactly what the loss computed before the bonus existed,
    entropy reported or not: the trainer's default path asks for the entropy every step."""
    hidden, weight, _, ids, mask, adv, old, _ = fused_batch(seed=6)
    outs = []
    for return_entropy in (False, True):
        h = hidden.clone().requires_grad_(True)
        loss, _ = mk.fused_linear_grpo_loss(h, weight, ids, mask, adv, old_logp=old, return_entropy=return_entropy,
                                            backend="cpu")
        loss.backward()
        outs.append((loss.detach(), h.grad))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


@pytest.mark.parametrize("coef", [-0.1, float("nan"), "0.1"])
def test_bad_coefficients_are_refused_naming_the_field(coef):
    with pytest.raises(ValueError, match="'entropy_coef' must be a float >= 0"):
        mk.LossConfig(entropy_coef=coef)


TRITON_SCRIPT = textwrap.dedent("""
    import torch
    import medix_kernels as mk
    from medix_kernels import reference as ref
    from tests.test_fused_linear import batch
    from tests.test_policy_loss import make_batch
    from tests.tolerances import tol
    cfg = mk.LossConfig(loss_type="dapo", clip_high=0.28, temperature=0.8, entropy_coef=0.05)
    logits, ids, mask, adv, old, _ = make_batch(2, 5, 301, seed=2)
    x1, x2 = logits.clone().requires_grad_(True), logits.clone().requires_grad_(True)
    l1, _ = mk.grpo_loss(x1, ids, mask, adv, old_logp=old, config=cfg, backend="triton")
    l2, _ = ref.grpo_loss(x2, ids, mask, adv, old_logp=old, config=cfg)
    l1.backward(); l2.backward()
    torch.testing.assert_close(l1, l2, **tol("loss", torch.float32))
    torch.testing.assert_close(x1.grad, x2.grad, **tol("logprob_grad", torch.float32))
    hidden, weight, _, ids, mask, adv, old, _ = batch(b=2, l=5, h=16, v=301, seed=4)
    h1, w1 = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    h2, w2 = hidden.clone().requires_grad_(True), weight.clone().requires_grad_(True)
    l1, _ = mk.fused_linear_grpo_loss(h1, w1, ids, mask, adv, old_logp=old, config=cfg, chunk_size=3,
                                      backend="triton")
    l2, _ = ref.fused_linear_grpo_loss(h2, w2, ids, mask, adv, old_logp=old, config=cfg)
    l1.backward(); l2.backward()
    t = tol("fused_linear", torch.float32)
    torch.testing.assert_close(l1, l2, **t)
    torch.testing.assert_close(h1.grad, h2.grad, **t); torch.testing.assert_close(w1.grad, w2.grad, **t)
    print("OK")
""")


def test_triton_kernels_under_the_interpreter_match_the_reference():
    from medix_kernels import _backend
    if not _backend.has_triton():
        pytest.skip("triton is not installed")
    proc = subprocess.run([sys.executable, "-c", TRITON_SCRIPT], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]
