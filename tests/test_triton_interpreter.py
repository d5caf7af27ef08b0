"""The Triton kernels of the reward ops, run by Triton's interpreter on CPU tensors.

Runs in a subprocess with TRITON_INTERPRET=1 set before Triton is imported (the flag is read at
import time), so the rest of the test session keeps the normal mode."""
import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import torch, torch.nn.functional as F
    import medix_kernels as mk
    from medix_kernels import reference as ref
    from tests.tolerances import tol
    assert "triton" in mk.backends(), mk.backends()
    gen = torch.Generator().manual_seed(0)
    # ragged groups, singletons, a degenerate group, every mode/scale/singleton rule
    gi = torch.tensor([0, 0, 0, 1, 2, 2, 2, 2, 2, 3, 3, 4] + [5] * 40)
    r = torch.randn(gi.numel(), generator=gen); r[9:11] = 0.25
    for mode in ("grpo", "dr_grpo", "rloo"):
        for scale in ("group", "batch", "none"):
            for singleton in ("zero", "verl"):
                kw = dict(group_index=gi, mode=mode, scale=scale, singleton=singleton)
                torch.testing.assert_close(mk.group_advantages(r, backend="triton", **kw),
                                           ref.group_advantages(r, **kw), **tol("advantages", torch.float32))
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for n, g in ((1, 1), (40, 8), (1000, 5), (3000, 1500)):
            x = torch.rand(n, generator=gen).round(decimals=1).to(dtype)
            torch.testing.assert_close(mk.group_advantages(x, g, backend="triton").float(),
                                       ref.group_advantages(x.float(), g).to(dtype).float(), **tol("advantages", dtype))
    st = mk.group_stats(r, group_index=gi, backend="triton")
    want = ref.group_stats(r, group_index=gi)
    torch.testing.assert_close(st.mean, want[0]); torch.testing.assert_close(st.std, want[1])
    assert st.degenerate.tolist() == want[2].tolist()
    comp = torch.rand(30, 4, generator=gen); comp[3, 1] = float("nan")
    total, adv = mk.composite_advantages(comp, [0.5, 0.3, 0.1, 0.1], 5, nan_policy="zero", backend="triton")
    t2, a2 = mk.composite_advantages(comp, [0.5, 0.3, 0.1, 0.1], 5, nan_policy="zero", backend="torch")
    torch.testing.assert_close(total, t2); torch.testing.assert_close(adv, a2, **tol("advantages", torch.float32))
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for b, d in ((1, 1), (3, 7), (33, 1100)):
            x = torch.randn(b, d, generator=gen).to(dtype); y = torch.randn(b, d, generator=gen).to(dtype); x[0] = 0
            torch.testing.assert_close(mk.cosine_rewards(x, y, backend="triton"),
                                       F.cosine_similarity(x.float(), y.float()), **tol("cosine", dtype))
            torch.testing.assert_close(mk.cosine_rewards(x, y, threshold=0.1, backend="triton"),
                                       (F.cosine_similarity(x.float(), y.float()) >= 0.1).float())
    # issue 17: rewards that require grad, finite rewards near 3e38, cosine of entries near 1e30
    rg = torch.randn(12, requires_grad=True)
    got = mk.group_advantages(rg, 4, backend="triton")
    assert not got.requires_grad
    torch.testing.assert_close(got, ref.group_advantages(rg.detach(), 4), **tol("advantages", torch.float32))
    huge = torch.cat([torch.full((4,), 3e38), torch.tensor([3e38, -3e38, 1.0, 2.0]), torch.randn(4) * 1e20,
                      torch.tensor([3e38, 3e38, 3e38, 1.0])])
    for mode, scale in (("grpo", "group"), ("grpo", "batch"), ("dr_grpo", "none"), ("rloo", "none")):
        for kw in (dict(group_size=4), dict(group_index=torch.arange(16) // 4)):
            got = mk.group_advantages(huge, mode=mode, scale=scale, backend="triton", **kw)
            assert not got.isnan().any(), (mode, scale, got)
            torch.testing.assert_close(got, ref.group_advantages(huge, mode=mode, scale=scale, **kw),
                                       **tol("advantages", torch.float32))
    for d in (1, 7, 1500):
        x = (torch.rand(4, d, generator=gen) * 2 - 1) * torch.tensor([1e30, 3e38, 1e20, 1.0])[:, None]
        y = 0.7 * x + 0.3 * (torch.rand(4, d, generator=gen) * 2 - 1) * torch.tensor([1e30, 3e38, 1e20, 1.0])[:, None]
        y[1] = -x[1]
        got = mk.cosine_rewards(x, y, backend="triton")
        assert not got.isnan().any(), got
        want = F.cosine_similarity(x.double(), y.double()).float()
        torch.testing.assert_close(got, want, **tol("cosine", torch.float32))
    print("TRITON-INTERPRETER-OK")
""")


def test_triton_reward_kernels_under_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=root, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "TRITON-INTERPRETER-OK" in proc.stdout


LOSS_SCRIPT = textwrap.dedent("""
    import torch
    import medix_kernels as mk
    from medix_kernels import reference as ref
    from tests.tolerances import tol
    gen = torch.Generator().manual_seed(0)
    b, l, v = 3, 4, 300
    logits = torch.randn(b, l, v, generator=gen) * 2
    ids = torch.randint(0, v, (b, l), generator=gen)
    mask = torch.rand(b, l, generator=gen) > 0.3
    adv = torch.randn(b, generator=gen)
    old = ref.selective_log_softmax(logits, ids) + 0.2 * torch.randn(b, l, generator=gen)
    for preset in ("grpo", "gspo", "cispo", "medix_gspo"):
        cfg = mk.LossConfig.preset(preset, temperature=0.8)
        for inplace in (False, True):
            x1 = (logits * 1.0).requires_grad_(True)
            x2 = logits.clone().requires_grad_(True)
            l1, s1 = mk.grpo_loss(x1 * 1.0, ids, mask, adv, old_logp=old, ref_logp=old, config=cfg,
                                  inplace_backward=inplace, backend="triton")
            l2, s2 = ref.grpo_loss(x2, ids, mask, adv, old_logp=old, ref_logp=old, config=cfg)
            torch.testing.assert_close(l1, l2, **tol("loss", torch.float32))
            l1.backward(); l2.backward()
            torch.testing.assert_close(x1.grad, x2.grad, **tol("logprob_grad", torch.float32))
    h = torch.randn(b, l, 16, generator=gen).requires_grad_(True)
    w = (torch.randn(v, 16, generator=gen) * 0.3).requires_grad_(True)
    l1, _ = mk.fused_linear_grpo_loss(h, w, ids, mask, adv, old_logp=old, chunk_size=5, backend="triton")
    g1 = torch.autograd.grad(l1, [h, w])
    l2, _ = ref.fused_linear_grpo_loss(h, w, ids, mask, adv, old_logp=old)
    g2 = torch.autograd.grad(l2, [h, w])
    torch.testing.assert_close(l1, l2, **tol("fused_linear", torch.float32))
    for a, c in zip(g1, g2):
        torch.testing.assert_close(a, c, **tol("fused_linear", torch.float32))
    try:  # in place over an expanded view would write every row's gradient into one row
        mk.selective_log_softmax(logits[:1, :1].expand(b, l, v), ids, inplace_backward=True, backend="triton")
        raise AssertionError("an expanded view was accepted for the in-place backward")
    except ValueError as exc:
        assert "do not share memory" in str(exc), exc
    x = logits[0, :1].expand(b * l, v)
    lp, lse, _ = torch.ops.medix.logprob_fwd_triton(x, ids.view(-1), 1.0, False)
    try:
        torch.ops.medix.logprob_bwd_triton_(x, ids.view(-1), lse, torch.ones(b * l), None, None, 1.0)
        raise AssertionError("the Triton in-place op accepted an expanded view")
    except ValueError as exc:
        assert "do not share memory" in str(exc), exc
    print("TRITON-LOSS-OK")
""")


def test_triton_policy_loss_under_interpreter():
    env = dict(os.environ, TRITON_INTERPRET="1")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", LOSS_SCRIPT], cwd=root, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "TRITON-LOSS-OK" in proc.stdout
