"""The rollout correction of grpo_loss (truncated / masked importance sampling for the rollout engine's
mismatch): the reference against TRL's and verl's definitions written out here from their docs, every
backend against the reference (values, gradients, stats; fp32 and bf16; masked rows; ratios of 0 and
inf; NaN where the mask is 0), the diagnostics on a hand-computed case, and the argument checks.
The Triton kernels: tests/test_rollout_correction_triton.py."""
import math

import pytest
import torch

import medix_kernels as mk
from medix_kernels import reference as ref
from tests.tolerances import tol

MODES = ["none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask"]


def make_case(b=4, l=6, v=23, dtype=torch.float32, seed=0, spread=0.5):
    gen = torch.Generator().manual_seed(seed)
    logits = (torch.randn(b, l, v, generator=gen) * 2).to(dtype)
    ids = torch.randint(0, v, (b, l), generator=gen)
    mask = torch.rand(b, l, generator=gen) > 0.25
    mask[0, :3] = True
    mask[1] = False  # a sequence with no response token
    adv = torch.randn(b, generator=gen)
    lp = ref.selective_log_softmax(logits.float(), ids)
    old = lp + 0.2 * torch.randn(b, l, generator=gen)
    ref_lp = lp + 0.2 * torch.randn(b, l, generator=gen)
    roll = lp + spread * torch.randn(b, l, generator=gen)
    roll[~mask] = float("nan")  # anything off the response: never read into the loss
    return logits, ids, mask, adv, old, ref_lp, roll


def ppo_term(logp, old, adv, clip_low=0.2, clip_high=0.2):
    ratio = torch.exp(logp - old)
    return torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip_low, 1 + clip_high))


# --- the peers' definitions, written from their documentation --------------------------------------
def trl_is_ratio(old, sampling, mask, mode, clip_min, clip_max):
    """TRL GRPOTrainer (vllm_importance_sampling_correction): diff = (old - sampling) on the completion;
    sequence modes sum it over the completion; ratio = exp(diff); *_truncate clamps to [clip_min, clip_max],
    *_mask sets ratios outside it to 0. The loss multiplies the per-token policy loss by the ratio."""
    diff = torch.where(mask, old - sampling, torch.zeros_like(old))
    if mode.startswith("sequence"):
        diff = diff.sum(-1, keepdim=True)
    ratio = torch.exp(diff)
    lo = clip_min if clip_min is not None else -math.inf
    if mode.endswith("truncate"):
        return torch.clamp(ratio, min=clip_min, max=clip_max).expand_as(old)
    return ratio.masked_fill((ratio < lo) | (ratio > clip_max), 0.0).expand_as(old)


def verl_is_weights(old, rollout, mask, level, threshold):
    """verl rollout_is: log_ratio = old - rollout, bounded to [-20, 20] (sequence: the sum over the
    response), exp, zeroed off the response, truncated from above at rollout_is_threshold."""
    log_ratio = torch.where(mask, old - rollout, torch.zeros_like(old))
    if level == "sequence":
        log_ratio = log_ratio.sum(-1, keepdim=True)
    w = torch.exp(log_ratio.clamp(-20, 20)).expand_as(old) * mask
    return w.clamp(max=threshold)


def verl_rs_mask(old, rollout, mask, level, upper, lower):
    """verl rollout_rs: the statistic per token (ratio), per sequence (product) or geometric (exp of the
    mean log-ratio); tokens / sequences outside [lower, upper] leave the response mask."""
    log_ratio = torch.where(mask, old - rollout, torch.zeros_like(old))
    m = mask.float()
    if level == "token":
        stat = torch.exp(log_ratio.clamp(-20, 20))
    elif level == "sequence":
        stat = torch.exp(log_ratio.sum(-1, keepdim=True).clamp(-20, 20)).expand_as(old)
    else:
        mean = log_ratio.sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp_min(1)
        stat = torch.exp(mean.clamp(-20, 20)).expand_as(old)
    return m * ((stat >= lower) & (stat <= upper)).float()


def token_mean(per_token, m):
    return (per_token * m).sum() / m.sum().clamp_min(1)


@pytest.mark.parametrize("mode", MODES[1:])
@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_trl_presets_match_trl_definition(mode, backend):
    logits, ids, mask, adv, old, _, roll = make_case(seed=1, spread=0.4)
    cfg = mk.LossConfig(loss_type="dapo", clip_high=0.28).with_rollout(f"trl_{mode}", cap=1.3, lower=0.8)
    x = logits.clone().requires_grad_(True)
    loss, _ = mk.grpo_loss(x, ids, mask, adv, old_logp=old, rollout_logp=roll, config=cfg, backend=backend)
    xr = logits.clone().requires_grad_(True)
    logp = ref.selective_log_softmax(xr, ids)
    w = trl_is_ratio(old, roll, mask, mode, 0.8, 1.3)
    want = token_mean(ppo_term(logp, old, adv[:, None], 0.2, 0.28) * w, mask.float())
    torch.testing.assert_close(loss, want, **tol("loss", torch.float32))
    loss.backward()
    want.backward()
    torch.testing.assert_close(x.grad, xr.grad, **tol("logprob_grad", torch.float32))
    assert 0 < float(((w != 1) & mask).float().mean()) < 1  # the case exercises the bounds


def test_trl_defaults():
    cfg = mk.LossConfig().with_rollout("trl_sequence_mask")  # TRL 1.16: sequence_mask, clip_max 3.0, no clip_min
    assert (cfg.rollout_correction, cfg.rollout_is_cap, cfg.rollout_is_lower, cfg.rollout_is_sequence,
            cfg.rollout_mask) == ("sequence_mask", 3.0, 0.0, "product", "weight")


@pytest.mark.parametrize("level", ["token", "sequence"])
@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_verl_is_presets_match_verl_definition(level, backend):
    logits, ids, mask, adv, old, ref_lp, roll = make_case(seed=2, spread=0.3)
    cfg = mk.LossConfig.preset("verl").with_rollout(f"verl_{level}_is", cap=1.5)
    x = logits.clone().requires_grad_(True)
    loss, _ = mk.grpo_loss(x, ids, mask, adv, old_logp=old, ref_logp=ref_lp, rollout_logp=roll, config=cfg,
                           backend=backend)
    xr = logits.clone().requires_grad_(True)
    logp = ref.selective_log_softmax(xr, ids)
    w = verl_is_weights(old, roll, mask, level, 1.5)
    pg = torch.minimum(ppo_term(logp, old, adv[:, None]), -adv[:, None] * 3.0)  # verl's dual clip for A < 0
    pg = torch.where(adv[:, None] < 0, pg, ppo_term(logp, old, adv[:, None]))
    x_kl = (ref_lp - logp).clamp(-20, 20)
    kl = (x_kl.exp() - x_kl - 1).clamp(-10, 10)
    want = token_mean(pg * w, mask.float()) + cfg.beta * token_mean(kl, mask.float())
    torch.testing.assert_close(loss, want, **tol("loss", torch.float32))
    loss.backward()
    want.backward()
    torch.testing.assert_close(x.grad, xr.grad, **tol("logprob_grad", torch.float32))


@pytest.mark.parametrize("level", ["token", "sequence", "geometric"])
@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_verl_rs_presets_match_verl_definition(level, backend):
    logits, ids, mask, adv, old, ref_lp, roll = make_case(seed=3, spread=0.25)
    cap = 1.05 if level == "geometric" else 1.4
    cfg = mk.LossConfig(beta=0.1).with_rollout(f"verl_{level}_rs", cap=cap)
    assert cfg.rollout_is_lower == pytest.approx(1 / cap)  # verl: rollout_rs_threshold_lower defaults to 1/upper
    x = logits.clone().requires_grad_(True)
    loss, _ = mk.grpo_loss(x, ids, mask, adv, old_logp=old, ref_logp=ref_lp, rollout_logp=roll, config=cfg,
                           backend=backend)
    xr = logits.clone().requires_grad_(True)
    logp = ref.selective_log_softmax(xr, ids)
    kept = verl_rs_mask(old, roll, mask, level, cap, 1 / cap)
    x_kl = (ref_lp - logp).clamp(-20, 20)
    kl = (x_kl.exp() - x_kl - 1).clamp(-10, 10)
    want = token_mean(ppo_term(logp, old, adv[:, None]), kept) + 0.1 * token_mean(kl, kept)
    torch.testing.assert_close(loss, want, **tol("loss", torch.float32))
    loss.backward()
    want.backward()
    torch.testing.assert_close(x.grad, xr.grad, **tol("logprob_grad", torch.float32))
    assert 0 < float(kept.sum()) < float(mask.sum())


def test_geometric_sequence_ratio_and_detached_weights():
    """Our default sequence ratio: exp of the mean log-ratio over the response; on-policy (no old_logp) the
    weight comes from the detached log-probs: the gradient is the weighted PPO gradient, nothing through w."""
    logits, ids, mask, adv, _, _, roll = make_case(seed=4, spread=0.2)
    cfg = mk.LossConfig(rollout_correction="sequence_truncate", rollout_is_cap=1.1, rollout_is_lower=0.95)
    x = logits.clone().requires_grad_(True)
    loss, _ = mk.grpo_loss(x, ids, mask, adv, rollout_logp=roll, config=cfg, backend="cpu")
    xr = logits.clone().requires_grad_(True)
    logp = ref.selective_log_softmax(xr, ids)
    m = mask.float()
    lr = torch.where(mask, logp.detach() - roll, torch.zeros_like(logp))
    w = torch.exp(lr.sum(-1, keepdim=True) / m.sum(-1, keepdim=True).clamp_min(1)).clamp(0.95, 1.1)
    want = token_mean(-adv[:, None] * torch.exp(logp - logp.detach()) * w, m)
    torch.testing.assert_close(loss, want, **tol("loss", torch.float32))
    loss.backward()
    want.backward()
    torch.testing.assert_close(x.grad, xr.grad, **tol("logprob_grad", torch.float32))


# --- every CPU backend against the reference ---------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("style", ["weight", "reject"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cpu_backend_matches_reference(mode, style, dtype):
    logits, ids, mask, adv, old, ref_lp, roll = make_case(dtype=dtype, seed=5)
    for i, (agg, o, seq) in enumerate((("token-mean", old, "geometric"), ("seq-mean-token-mean", None, "product"),
                                       ("seq-mean-token-sum-norm", old, "geometric"))):
        cfg = mk.LossConfig(loss_type="cispo" if i == 1 else "grpo", aggregation=agg, beta=0.05, dual_clip=3.0,
                            rollout_correction=mode, rollout_mask=style, rollout_is_sequence=seq,
                            rollout_is_cap=1.3, rollout_is_lower=0.75)
        x1 = logits.clone().requires_grad_(True)
        x2 = logits.clone().requires_grad_(True)
        l1, s1 = mk.grpo_loss(x1, ids, mask, adv, old_logp=o, ref_logp=ref_lp, rollout_logp=roll, config=cfg,
                              return_entropy=True, backend="cpu")
        l2, s2 = ref.grpo_loss(x2, ids, mask, adv, old_logp=o, ref_logp=ref_lp, rollout_logp=roll, config=cfg,
                               return_entropy=True)
        torch.testing.assert_close(l1, l2, **tol("loss", dtype), msg=str(cfg))
        assert sorted(s1) == sorted(s2) and set(mk.loss_config.ROLLOUT_STATS) <= set(s1)
        for k in s2:
            torch.testing.assert_close(s1[k], s2[k], **tol("loss", dtype), msg=k)
        g = torch.randn(())
        (l1 * g).backward()
        (l2 * g).backward()
        torch.testing.assert_close(x1.grad, x2.grad, **tol("logprob_grad", dtype), msg=str(cfg))
        assert (x1.grad[~mask] == 0).all()


def test_extreme_ratios_and_nan_off_the_response():
    """A token the engine gave probability 0 (rollout log-prob -inf: ratio inf) and one the trainer finds
    e^-25 times less likely (ratio ~0): truncated to the bounds, or masked; NaN where the mask is 0 changes
    nothing."""
    logits, ids, mask, adv, old, _, roll = make_case(seed=6, spread=0.1)
    roll[0, 0] = -float("inf")
    roll[0, 1] = old[0, 1] + 25.0
    clean = torch.where(mask, roll, torch.zeros_like(roll))
    for mode in MODES[1:]:
        for style in ("weight", "reject"):
            cfg = mk.LossConfig(rollout_correction=mode, rollout_mask=style, rollout_is_cap=2.0, rollout_is_lower=0.5)
            got = {}
            for backend in ("torch", "cpu"):
                for name, r in (("nan", roll), ("zero", clean)):
                    x = logits.clone().requires_grad_(True)
                    loss, stats = mk.grpo_loss(x, ids, mask, adv, old_logp=old, rollout_logp=r, config=cfg,
                                               backend=backend)
                    loss.backward()
                    assert torch.isfinite(loss) and torch.isfinite(x.grad).all(), (mode, style, backend)
                    assert all(torch.isfinite(v) for v in stats.values()), stats
                    got[backend, name] = (loss, x.grad)
            for loss, grad in got.values():
                torch.testing.assert_close(loss, got["torch", "zero"][0], **tol("loss", torch.float32))
                torch.testing.assert_close(grad, got["torch", "zero"][1], **tol("logprob_grad", torch.float32))
    w, keep, inside = ref.rollout_weights(ref.rollout_log_ratio(old, roll, mask), mask,
                                          mk.LossConfig(rollout_correction="token_truncate", rollout_is_lower=0.5))
    assert w[0, 0] == 2.0 and w[0, 1] == 0.5 and not inside[0, 0] and not inside[0, 1]


def test_stats_by_hand():
    """One sequence of two response tokens with log-ratios log 2 and 0 (a third token masked out)."""
    mask = torch.tensor([[True, True, False]])
    train = torch.tensor([[-1.0, -2.0, -3.0]])
    roll = torch.tensor([[-1.0 - math.log(2), -2.0, float("nan")]])
    cfg = mk.LossConfig(rollout_correction="token_truncate", rollout_is_cap=1.5)
    log_rho = ref.rollout_log_ratio(train, roll, mask)
    w, keep, inside = ref.rollout_weights(log_rho, mask, cfg)
    stats = ref.rollout_stats(log_rho, w, keep, inside, mask)
    ln2 = math.log(2)
    want = {"rollout_weight_mean": (1.5 + 1.0) / 2, "rollout_weight_max": 1.5, "rollout_flagged_frac": 0.5,
            "rollout_kl_k3": ((2 - ln2 - 1) + 0) / 2, "rollout_chi2": ((4 - 1) + 0) / 2,
            "rollout_ppl_ratio": math.exp(-ln2 / 2), "rollout_logp_mismatch": ln2 / 2,
            "rollout_logp_mismatch_max": ln2}
    for k, v in want.items():
        assert float(stats[k]) == pytest.approx(v, rel=1e-6), k
    logits = torch.randn(1, 3, 5)
    ids = torch.tensor([[0, 1, 2]])
    lp = ref.selective_log_softmax(logits, ids)
    _, s_cpu = mk.grpo_loss(logits, ids, mask, torch.ones(1), old_logp=train, rollout_logp=roll, config=cfg,
                            backend="cpu")
    _, s_ref = ref.grpo_loss(logits, ids, mask, torch.ones(1), old_logp=train, rollout_logp=roll, config=cfg)
    for k in want:
        torch.testing.assert_close(s_cpu[k], s_ref[k], **tol("loss", torch.float32))
    assert lp.shape == (1, 3)
    # engine and trainer agreeing to 1e-6 nat (fp32 vLLM on the CPU): k3 stays >= 0, no cancellation
    near = lp + 1e-6 * torch.randn(1, 3, generator=torch.Generator().manual_seed(0))
    for backend in ("torch", "cpu"):
        _, s = mk.grpo_loss(logits, ids, mask, torch.ones(1), rollout_logp=near, backend=backend)
        assert 0 <= float(s["rollout_kl_k3"]) < 1e-11, backend


# --- fused linear: the same loss from hidden states ----------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("style", ["weight", "reject"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_linear_equals_plain_path_with_the_correction(mode, style, dtype):
    """fused_linear_grpo_loss (chunked, cpu) against grpo_loss on the full logits (cpu), both corrected: loss,
    stats, d hidden, d W; with and without old log-probs (without them a sequence-level or rejecting
    correction takes the extra forward-only pass), GSPO's sequence ratio included."""
    gen = torch.Generator().manual_seed(9)
    b, l, hd, v = 3, 7, 16, 41
    hidden = torch.randn(b, l, hd, generator=gen).to(dtype)
    weight = (torch.randn(v, hd, generator=gen) * 0.4).to(dtype)
    ids = torch.randint(0, v, (b, l), generator=gen)
    mask = torch.rand(b, l, generator=gen) > 0.2
    mask[2] = False
    adv = torch.randn(b, generator=gen)
    lp = ref.selective_log_softmax(hidden.float() @ weight.float().t(), ids)
    roll = lp + 0.3 * torch.randn(b, l, generator=gen)
    roll[~mask] = float("nan")
    old = lp + 0.1 * torch.randn(b, l, generator=gen)
    for loss_type, o in (("grpo", None), ("gspo", old), ("dapo", old)):
        cfg = mk.LossConfig(loss_type=loss_type, beta=0.05, rollout_correction=mode, rollout_mask=style,
                            rollout_is_cap=1.3, rollout_is_lower=0.7)
        h1 = hidden.clone().requires_grad_(True)
        w1 = weight.clone().requires_grad_(True)
        l1, s1 = mk.fused_linear_grpo_loss(h1, w1, ids, mask, adv, old_logp=o, ref_logp=lp, rollout_logp=roll,
                                           config=cfg, chunk_size=4, backend="cpu")
        h2 = hidden.clone().requires_grad_(True)
        w2 = weight.clone().requires_grad_(True)
        l2, s2 = mk.grpo_loss(h2 @ w2.t(), ids, mask, adv, old_logp=o, ref_logp=lp, rollout_logp=roll, config=cfg,
                              backend="cpu")
        what = f"{loss_type} {mode} {style} {dtype}"
        torch.testing.assert_close(l1, l2, **tol("fused_linear", dtype), msg=what)
        assert sorted(s1) == sorted(s2), what
        for k in s2:
            torch.testing.assert_close(s1[k], s2[k], **tol("fused_linear", dtype), msg=k + what)
        g1 = torch.autograd.grad(l1, [h1, w1])
        g2 = torch.autograd.grad(l2, [h2, w2])
        for a, c in zip(g1, g2):
            torch.testing.assert_close(a.float(), c.float(), **tol("fused_linear", dtype), msg=what)
    cfg = cfg.replace(beta=0.0)
    lt, _ = mk.fused_linear_grpo_loss(hidden.float(), weight.float(), ids, mask, adv, rollout_logp=roll, config=cfg,
                                      backend="torch")
    lc, _ = mk.fused_linear_grpo_loss(hidden.float(), weight.float(), ids, mask, adv, rollout_logp=roll, config=cfg,
                                      chunk_size=5, backend="cpu")
    torch.testing.assert_close(lc, lt, **tol("fused_linear", torch.float32))


def test_fused_linear_refuses_bad_rollout_logp():
    hidden, weight = torch.randn(2, 3, 8), torch.randn(11, 8)
    ids, mask, adv = torch.randint(0, 11, (2, 3)), torch.ones(2, 3, dtype=torch.bool), torch.randn(2)
    cfg = mk.LossConfig(rollout_correction="sequence_mask")
    with pytest.raises(ValueError, match="fused_linear_grpo_loss: 'rollout_logp' .* is required"):
        mk.fused_linear_grpo_loss(hidden, weight, ids, mask, adv, config=cfg)
    with pytest.raises(ValueError, match="fused_linear_grpo_loss: 'rollout_logp' must be a float tensor"):
        mk.fused_linear_grpo_loss(hidden, weight, ids, mask, adv, rollout_logp=torch.zeros(2, 4), config=cfg)
    with pytest.raises(ValueError, match="'rollout_logp' must not be NaN where the mask is 1"):
        mk.fused_linear_grpo_loss(hidden, weight, ids, mask, adv, rollout_logp=torch.full((2, 3), float("nan")),
                                  config=cfg)


# --- bad input: one error naming the argument or field, before any kernel ----------------------------
@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_bad_rollout_logp_is_refused(backend):
    logits, ids, mask, adv, old, _, roll = make_case(seed=7)
    cfg = mk.LossConfig(rollout_correction="token_truncate")

    def call(r, **kw):
        return mk.grpo_loss(logits, ids, mask, adv, old_logp=old, rollout_logp=r, config=cfg, backend=backend, **kw)

    for bad in (roll[:, :-1], roll[None], roll.long(), roll.to(torch.bool), "x"):
        with pytest.raises(ValueError, match=r"'rollout_logp' must be a float tensor \[B, L\]"):
            call(bad)
    with pytest.raises(ValueError, match="'rollout_logp' is on meta"):
        call(torch.empty(roll.shape, device="meta"))
    nan_on_response = roll.clone()
    nan_on_response[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"'rollout_logp' must not be NaN where the mask is 1, got NaN at position "
                                         r"\[0, 0\]"):
        call(nan_on_response)
    loss, _ = call(nan_on_response, validate=False)  # the fast path: no value check, the NaN shows in the loss
    assert torch.isnan(loss)
    with pytest.raises(ValueError, match="'rollout_logp' .* is required when config.rollout_correction='token_trunc"):
        mk.grpo_loss(logits, ids, mask, adv, config=cfg, backend=backend)
    loss, stats = mk.grpo_loss(logits, ids, mask, adv, rollout_logp=roll, backend=backend)  # "none": stats only
    plain, _ = mk.grpo_loss(logits, ids, mask, adv, backend=backend)
    torch.testing.assert_close(loss, plain)
    assert "rollout_kl_k3" in stats


def test_bad_config_values_name_the_field():
    for field, value in (("rollout_is_cap", 1.0), ("rollout_is_cap", 0.5), ("rollout_is_cap", float("nan")),
                         ("rollout_is_lower", 1.0), ("rollout_is_lower", -0.1), ("rollout_is_lower", float("nan")),
                         ("rollout_correction", "token"), ("rollout_is_sequence", "mean"), ("rollout_mask", "drop")):
        with pytest.raises(ValueError, match=f"LossConfig: '{field}' must be"):
            mk.LossConfig(**{field: value})
    with pytest.raises(ValueError, match="unknown preset 'trl'"):
        mk.LossConfig().with_rollout("trl")
    assert mk.LossConfig(rollout_is_cap=float("inf")).rollout_is_cap == float("inf")
