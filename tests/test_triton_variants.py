"""Every named configuration of the Triton kernels (medix_kernels/triton_kernels/configs.py) and the
lean and single-pass grpo_loss, against the PyTorch reference under TRITON_INTERPRET=1 (values and gradients,
fp32 and bf16, odd V, -inf logits, masked rows); the defaults table; and (slow) every
configuration compiled for sm_90 without spilling.

The interpreter runs in a subprocess: Triton reads TRITON_INTERPRET when a kernel is defined, and
setting it in this session would leak into other test modules."""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
import textwrap

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _interpret(script: str, marker: str, timeout: int = 900) -> None:
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert marker in proc.stdout


KERNELS = """
    import torch, torch.nn.functional as F
    from medix_kernels.triton_kernels import configs, cosine, logprob as tk
    from tests.tolerances import tol

    def ref(x, ids, temp, glp=None, gent=None):
        xx = x.detach().double().requires_grad_(True)
        z = xx / temp
        lse = torch.logsumexp(z, -1)
        lp = z.gather(-1, ids[:, None]).squeeze(-1) - lse
        p = torch.softmax(z, -1)
        ent = lse - (p * torch.where(p > 0, z, torch.zeros_like(z))).sum(-1)
        grad = None
        if glp is not None:
            total = (glp.double() * lp).sum() + ((gent.double() * ent).sum() if gent is not None else 0)
            grad, = torch.autograd.grad(total, xx)
        return lp.detach(), lse.detach(), ent.detach(), grad

    g = torch.Generator().manual_seed(0)
    for t, v in ((5, 7), (3, 1001)):  # odd V: a partial last chunk (and a peeled tail)
        for dtype in (torch.float32, torch.bfloat16):
            x = (torch.randn(t, v, generator=g) * 3).to(dtype)
            x[0, 1:3] = float("-inf")  # banned words: no NaN in entropy or gradient
            ids = torch.randint(3, v, (t,), generator=g)
            rlp, rlse, rent, _ = ref(x, ids, 0.7)
            keep = torch.arange(t) % 2 == 0
            for name in configs.LOGPROB_FWD_CONFIGS:
                lp, lse, ent = tk.logprob_fwd(x, ids, 0.7, True, config=name)
                for got, want in ((lp, rlp), (lse, rlse), (ent, rent)):
                    torch.testing.assert_close(got.double(), want, **tol("logprob", dtype), msg=name)
                lp2, lse2, _ = tk.logprob_fwd(x, ids, 0.7, False, config=name)
                assert torch.equal(lp2, lp) and torch.equal(lse2, lse), name
                # masked rows: 0 for every output, the other rows unchanged
                lp3, lse3, ent3 = tk.logprob_fwd(x, ids, 0.7, True, config=name, row_mask=keep)
                assert (lp3[~keep] == 0).all() and (lse3[~keep] == 0).all() and (ent3[~keep] == 0).all(), name
                torch.testing.assert_close(lp3[keep], lp[keep], rtol=0, atol=0, msg=name)
            glp = torch.randn(t, generator=g)
            gent = torch.randn(t, generator=g)
            glp[1] = gent[1] = 0.0  # a zero-gradient row (a masked token)
            _, lse, ent = tk.logprob_fwd(x, ids, 0.7, True)
            for ge in (None, gent):
                rg = ref(x, ids, 0.7, glp, ge)[3]
                big = rg.abs().max().item()
                eps = {torch.float32: 1e-5, torch.bfloat16: 2 ** -8}[dtype]
                for name in configs.LOGPROB_BWD_CONFIGS:
                    gr = tk.logprob_bwd(x, ids, lse, glp, None if ge is None else ent, ge, 0.7, config=name)
                    torch.testing.assert_close(gr.double(), rg, rtol=2 * eps, atol=2 * eps * big + 1e-7, msg=name)
                    assert (gr[1] == 0).all() and torch.isfinite(gr).all(), name
                    buf = x.clone()  # in place over the logits: the same values
                    tk.logprob_bwd(buf, ids, lse, glp, None if ge is None else ent, ge, 0.7, out=buf, config=name)
                    assert torch.equal(buf, gr), name
    for name in configs.COSINE_CONFIGS:
        for dtype in (torch.float32, torch.bfloat16):
            for b, d in ((1, 1), (5, 7), (9, 300)):
                x = torch.randn(b, d, generator=g).to(dtype)
                y = torch.randn(b, d, generator=g).to(dtype)
                x[0] = 0
                got = cosine.cosine_rewards_triton(x, y, 1e-8, None, config=name)
                torch.testing.assert_close(got, F.cosine_similarity(x.float(), y.float()), **tol("cosine", dtype))
        scale = torch.tensor([1e30, 3e38, 1e20, 1.0])[:, None]  # fp32 sums overflow: the rescaled pass
        x = (torch.rand(4, 33, generator=g) * 2 - 1) * scale
        y = 0.7 * x + 0.3 * (torch.rand(4, 33, generator=g) * 2 - 1) * scale
        got = cosine.cosine_rewards_triton(x, y, 1e-8, None, config=name)
        want = F.cosine_similarity(x.double(), y.double()).float()
        torch.testing.assert_close(got, want, **tol("cosine", torch.float32), msg=name)
    print("VARIANTS-OK")
"""


def test_every_kernel_config_matches_the_reference():
    _interpret(KERNELS, "VARIANTS-OK")


LEAN = """
    import sys, torch
    import medix_kernels as mk
    from medix_kernels import reference as ref
    from tests.tolerances import tol
    G = sys.modules["medix_kernels.grpo_loss"]
    assert G.TRITON_PATHS[mk._defaults.kernel_config("grpo_loss_triton")] is G._lean
    g = torch.Generator().manual_seed(0)
    b, l, v = 3, 4, 37
    cases = [mk.LossConfig(loss_type=lt, aggregation=agg, kl=kl, beta=beta, dual_clip=dc, clip_high=0.28,
                           temperature=0.9, max_len=ml)
             for lt, agg, kl, beta, dc, ml in (
                 ("grpo", "token-mean", "k3", 0.05, 3.0, None), ("dapo", "seq-mean-token-mean", "k1", 0.1, None, None),
                 ("dr_grpo", "seq-mean-token-sum-norm", "k2", 0.1, None, 6), ("gspo", "seq-mean-token-mean", "k3",
                 0.0, None, None), ("gspo_token", "seq-mean-token-sum", "k3", 0.02, 3.0, None),
                 ("cispo", "token-mean", "k3", 0.0, None, None))]
    for dtype in (torch.float32, torch.bfloat16):
        logits = (torch.randn(b, l, v, generator=g) * 2).to(dtype)
        ids = torch.randint(0, v, (b, l), generator=g)
        mask = torch.rand(b, l, generator=g) > 0.3
        mask[0, :2] = True
        mask[2] = False  # an empty sequence: in no denominator
        lp0 = ref.selective_log_softmax(logits, ids)
        old = lp0 + 0.3 * torch.randn(b, l, generator=g)
        old[0, 0] = lp0[0, 0] + 30  # a log-ratio past the clamp at 20
        rf = lp0 + 0.3 * torch.randn(b, l, generator=g)
        for i, cfg in enumerate(cases):
            adv = torch.randn(b, generator=g) if i % 2 else torch.randn(b, l, generator=g)
            o = None if i == 2 else old
            inplace = i % 3 == 0
            x1 = logits.clone().requires_grad_(True)
            x2 = logits.clone().requires_grad_(True)
            l1, s1 = mk.grpo_loss(x1 * 1 if inplace else x1, ids, mask.float() if i == 4 else mask, adv, old_logp=o,
                                  ref_logp=rf, config=cfg, inplace_backward=inplace, return_entropy=True,
                                  validate=bool(i % 2), backend="triton")
            l2, s2 = ref.grpo_loss(x2, ids, mask, adv, old_logp=o, ref_logp=rf, config=cfg, return_entropy=True)
            torch.testing.assert_close(l1, l2.float(), **tol("loss", torch.float32), msg=str(cfg))
            assert sorted(s1) == sorted(s2)
            for k in s2:
                torch.testing.assert_close(s1[k], s2[k].float(), **tol("loss", torch.float32), msg=k)
            (l1 * 1.7).backward()
            (l2 * 1.7).backward()
            torch.testing.assert_close(x1.grad.float(), x2.grad.float(), **tol("logprob_grad", dtype), msg=str(cfg))
    # masked rows are read in neither pass: NaN logits there change nothing, their gradient is exactly 0
    cfg = mk.LossConfig.preset("medix_grpo")
    logits = torch.randn(b, l, v, generator=g) * 2
    ids = torch.randint(0, v, (b, l), generator=g)
    mask = torch.ones(b, l, dtype=torch.bool)
    mask[1, 1:] = False
    adv = torch.randn(b, generator=g)
    rf = ref.selective_log_softmax(logits, ids)
    poisoned = logits.clone()
    poisoned[~mask] = float("nan")
    x1 = poisoned.clone().requires_grad_(True)
    l1, _ = mk.grpo_loss(x1, ids, mask, adv, old_logp=rf, ref_logp=rf, config=cfg, backend="triton")
    x2 = logits.clone().requires_grad_(True)
    l2, _ = ref.grpo_loss(x2, ids, mask, adv, old_logp=rf, ref_logp=rf, config=cfg)
    torch.testing.assert_close(l1, l2, **tol("loss", torch.float32))
    l1.backward()
    l2.backward()
    assert (x1.grad[~mask] == 0).all()
    torch.testing.assert_close(x1.grad, x2.grad, **tol("logprob_grad", torch.float32))
    # the fast path: no value checks, and bad values show up as NaN instead of an error
    bad_ids = ids.clone()
    bad_ids[0, 0] = v + 5
    loss, _ = mk.grpo_loss(logits, bad_ids, mask, adv, config=cfg.replace(beta=0.0), validate=False, backend="triton")
    assert torch.isnan(loss), loss
    try:
        mk.grpo_loss(logits, bad_ids, mask, adv, config=cfg.replace(beta=0.0), backend="triton")
        raise AssertionError("an out-of-range id passed the default checks")
    except ValueError as exc:
        assert "'ids' must be in [0, V=" in str(exc)
    nan_adv = adv.clone()
    nan_adv[0] = float("nan")
    loss, _ = mk.grpo_loss(logits, ids, mask, nan_adv, config=cfg.replace(beta=0.0), validate=False, backend="triton")
    assert torch.isnan(loss)
    print("LEAN-OK")
"""


def test_lean_grpo_loss_matches_the_reference():
    _interpret(LEAN, "LEAN-OK")


SINGLE = """
    import sys, torch
    import medix_kernels as mk
    from medix_kernels import reference as ref
    from tests.tolerances import tol
    G = sys.modules["medix_kernels.grpo_loss"]
    g = torch.Generator().manual_seed(1)
    b, l, v = 3, 4, 37
    cases = [mk.LossConfig(loss_type=lt, aggregation=agg, kl=kl, beta=0.05, dual_clip=dc, temperature=0.9, max_len=ml)
             for lt, agg, kl, dc, ml in (("grpo", "token-mean", "k3", 3.0, None),
                                         ("cispo", "seq-mean-token-mean", "k1", None, None),
                                         ("dr_grpo", "seq-mean-token-sum-norm", "k2", None, 6),
                                         ("dapo", "seq-mean-token-sum", "k3", 3.0, None),
                                         ("gspo", "seq-mean-token-mean", "k3", None, None))]
    for dtype in (torch.float32, torch.bfloat16):
        logits = (torch.randn(b, l, v, generator=g) * 2).to(dtype)
        ids = torch.randint(0, v, (b, l), generator=g)
        mask = torch.rand(b, l, generator=g) > 0.3
        mask[0, 0] = True
        mask[2] = False
        lp0 = ref.selective_log_softmax(logits, ids)
        old = lp0 + 0.3 * torch.randn(b, l, generator=g)
        old[0, 0] = lp0[0, 0] + 30
        rf = lp0 + 0.3 * torch.randn(b, l, generator=g)
        for i, cfg in enumerate(cases):
            adv = torch.randn(b, generator=g) if i % 2 else torch.randn(b, l, generator=g)
            for o, inplace, scale in ((old, False, 1.0), (None, True, 1.7), (old, True, 1.0)):
                x1 = logits.clone().requires_grad_(True)
                x2 = logits.clone().requires_grad_(True)
                l1, s1 = G.TRITON_PATHS["single_pass"](x1 * 1 if inplace else x1, ids, mask, adv, o, rf, cfg,
                                                       inplace, True, "triton")
                l2, s2 = ref.grpo_loss(x2, ids, mask, adv, old_logp=o, ref_logp=rf, config=cfg, return_entropy=True)
                torch.testing.assert_close(l1, l2.float(), **tol("loss", torch.float32), msg=str(cfg))
                for k in s2:
                    torch.testing.assert_close(s1[k], s2[k].float(), **tol("loss", torch.float32), msg=k)
                # an upstream gradient of 1 (nothing to rescale) and of 1.7 (the backward's scale kernel)
                (l1 * scale).backward()
                (l2 * scale).backward()
                torch.testing.assert_close(x1.grad.float(), x2.grad.float(), **tol("logprob_grad", dtype),
                                           msg=str(cfg))
                assert (x1.grad[~mask] == 0).all()
    print("SINGLE-OK")
"""


def test_single_pass_grpo_loss_matches_the_reference():
    _interpret(SINGLE, "SINGLE-OK")


def test_defaults_table_names_real_configs_and_backends():
    from medix_kernels import _backend, _defaults
    from medix_kernels.triton_kernels import configs
    for kernel, choice in _defaults.KERNEL_CONFIGS.items():
        assert choice.source, kernel
        if kernel in configs.REGISTRIES:
            assert choice.value in configs.REGISTRIES[kernel], (kernel, choice)
    grpo = importlib.import_module("medix_kernels.grpo_loss")  # the module (the package exports the function)
    assert _defaults.kernel_config("grpo_loss_triton") in grpo.TRITON_PATHS
    for (device, op), choice in _defaults.AUTO_BACKENDS.items():
        assert device in ("cpu", "cuda") and choice.source
        for rule in choice.value:
            assert set(rule.order) <= set(_backend.BACKENDS), (device, op, rule)


def test_auto_follows_the_table(monkeypatch):
    from medix_kernels import _backend, _defaults
    x = torch.zeros(10)
    assert _backend.resolve_backend("auto", x, "grpo_loss") == ("cpu" if _backend.has_cpu_extension() else "torch")
    rules = {("cpu", "grpo_loss"): _defaults.Choice((_defaults.AutoRule(("torch",), max_numel=5),
                                                     _defaults.AutoRule(("cpu", "torch")))),
             ("cpu", "*"): _defaults.Choice((_defaults.AutoRule(("cpu", "torch")),))}
    monkeypatch.setattr(_defaults, "AUTO_BACKENDS", rules)
    monkeypatch.setattr(_backend, "_CPU_FIRST", _defaults.cpu_always_first())
    assert _backend._CPU_FIRST is False
    assert _backend.resolve_backend("auto", torch.zeros(5), "grpo_loss") == "torch"  # a small call: the first rule
    big = _backend.resolve_backend("auto", torch.zeros(6), "grpo_loss")
    assert big == ("cpu" if _backend.has_cpu_extension() else "torch")
    assert _backend.resolve_backend("auto", torch.zeros(5), "cosine_rewards") == big  # other ops: the "*" rule


def test_validate_false_on_the_cpu_backend_skips_value_checks():
    import medix_kernels as mk
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 11, generator=g)
    ids = torch.randint(0, 11, (2, 3), generator=g)
    mask = torch.tensor([[1.0, 2.0, 1.0], [1.0, 1.0, 0.0]])  # a 2: refused by the checks, a weight without them
    adv = torch.randn(2, generator=g)
    with pytest.raises(ValueError, match="'mask' must hold only 0 and 1"):
        mk.grpo_loss(logits, ids, mask, adv)
    for backend in ("torch", "cpu"):
        loss, _ = mk.grpo_loss(logits, ids, mask, adv, validate=False, backend=backend)
        want, _ = mk.reference.grpo_loss(logits, ids, mask, adv)
        torch.testing.assert_close(loss, want)


@pytest.mark.slow
def test_every_config_and_switch_compiles_for_sm90_without_spills():
    pytest.importorskip("triton.backends.nvidia")
    from benchmarks.gpu import triton_aot
    if triton_aot._cuobjdump() is None:
        pytest.skip("Triton's cuobjdump is not installed")
    rows = triton_aot.report("bf16", 90) + triton_aot.compile_matrix(90)  # + every switch of the defaults
    assert not [r for r in rows if "error" in r], [r for r in rows if "error" in r]
    spilling = [r for r in rows if r["stack"] > 0 or r["registers"] > 255]
    assert not spilling, spilling
