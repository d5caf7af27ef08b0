"""The rollout correction on the Triton backend, under TRITON_INTERPRET=1 in a subprocess (tiny shapes):
the lean and single-pass grpo_loss and the fused-linear loss against the reference, every mode and mask
style, fp32 and bf16, ratios of 0 and inf, NaN off the response, the checks and validate=False."""
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TRITON = """
    import sys, torch
    import medix_kernels as mk
    from medix_kernels import reference as ref
    from tests.tolerances import tol
    from tests.test_rollout_correction import make_case
    G = sys.modules["medix_kernels.grpo_loss"]
    modes = ["none", "token_truncate", "token_mask", "sequence_truncate", "sequence_mask"]
    for dtype in (torch.float32, torch.bfloat16):
        logits, ids, mask, adv, old, ref_lp, roll = make_case(3, 5, 37, dtype=dtype, seed=8)
        roll[0, 0] = -float("inf")  # ratio inf
        roll[0, 1] = old[0, 1] + 25.0  # ratio ~0
        for i, mode in enumerate(modes):
            for style in ("weight", "reject"):
                for path in ("lean", "single_pass"):
                    o = None if i % 2 else old
                    cfg = mk.LossConfig(loss_type=("grpo", "cispo", "gspo_token")[i % 3], beta=0.05,
                                        aggregation=("token-mean", "seq-mean-token-mean")[i % 2],
                                        rollout_correction=mode, rollout_mask=style, rollout_is_cap=1.5,
                                        rollout_is_lower=0.6, rollout_is_sequence=("geometric", "product")[i % 2])
                    x1 = logits.clone().requires_grad_(True)
                    x2 = logits.clone().requires_grad_(True)
                    l1, s1 = G.TRITON_PATHS[path](x1, ids, mask, adv, o, ref_lp, cfg, False, True, "triton", roll)
                    l2, s2 = ref.grpo_loss(x2, ids, mask, adv, old_logp=o, ref_logp=ref_lp, rollout_logp=roll,
                                           config=cfg, return_entropy=True)
                    what = str((dtype, mode, style, path))
                    torch.testing.assert_close(l1, l2.float(), **tol("loss", torch.float32), msg=what)
                    assert sorted(s1) == sorted(s2), what
                    for k in s2:
                        torch.testing.assert_close(s1[k], s2[k].float(), **tol("loss", torch.float32), msg=k + what)
                    (l1 * 1.3).backward()
                    (l2 * 1.3).backward()
                    torch.testing.assert_close(x1.grad.float(), x2.grad.float(), **tol("logprob_grad", dtype),
                                               msg=what)
                    assert (x1.grad[~mask] == 0).all()
        # GSPO's sequence ratio and a sequence-level correction in the same first loop of policy_seq_kernel
        for cfg in (mk.LossConfig(loss_type="gspo", rollout_correction="sequence_mask", rollout_mask="reject",
                                  rollout_is_cap=1.3, rollout_is_lower=0.8),
                    mk.LossConfig(loss_type="gspo_token", rollout_correction="sequence_truncate", rollout_is_cap=1.2,
                                  rollout_is_sequence="product")):
            x1 = logits.clone().requires_grad_(True)
            x2 = logits.clone().requires_grad_(True)
            l1, s1 = G.TRITON_PATHS["single_pass"](x1, ids, mask, adv, old, None, cfg, False, False, "triton", roll)
            l2, s2 = ref.grpo_loss(x2, ids, mask, adv, old_logp=old, rollout_logp=roll, config=cfg)
            torch.testing.assert_close(l1, l2.float(), **tol("loss", torch.float32))
            for k in s2:
                torch.testing.assert_close(s1[k], s2[k].float(), **tol("loss", torch.float32), msg=k)
            l1.backward()
            l2.backward()
            torch.testing.assert_close(x1.grad.float(), x2.grad.float(), **tol("logprob_grad", dtype))
        # the public op (the defaults table's path), with its checks
        cfg = mk.LossConfig(rollout_correction="token_mask", rollout_is_cap=1.5)
        l1, _ = mk.grpo_loss(logits, ids, mask, adv, rollout_logp=roll, config=cfg, backend="triton")
        l2, _ = ref.grpo_loss(logits, ids, mask, adv, rollout_logp=roll, config=cfg)
        torch.testing.assert_close(l1, l2.float(), **tol("loss", torch.float32))
        bad = roll.clone()
        bad[0, 0] = float("nan")
        try:
            mk.grpo_loss(logits, ids, mask, adv, rollout_logp=bad, config=cfg, backend="triton")
            raise AssertionError("a NaN rollout log-prob on a response token passed the checks")
        except ValueError as exc:
            assert "'rollout_logp' must not be NaN where the mask is 1" in str(exc)
        assert torch.isnan(mk.grpo_loss(logits, ids, mask, adv, rollout_logp=bad, config=cfg, validate=False,
                                        backend="triton")[0])
        near = ref.selective_log_softmax(logits.float(), ids) + 1e-6  # engine and trainer within 1e-6 nat
        _, s = G.TRITON_PATHS["lean"](logits, ids, mask, adv, None, None, mk.LossConfig(), False, False, "triton",
                                      near)
        assert 0 <= float(s["rollout_kl_k3"]) < 1e-11, s["rollout_kl_k3"]  # no cancellation in rho - 1 - log rho
    # fused linear on the triton backend (its log-prob kernels), corrected, equals the plain reference
    g = torch.Generator().manual_seed(3)
    h = torch.randn(3, 5, 16, generator=g).requires_grad_(True)
    w = (torch.randn(37, 16, generator=g) * 0.3).requires_grad_(True)
    for cfg in (mk.LossConfig(rollout_correction="token_truncate"),
                mk.LossConfig(rollout_correction="sequence_mask", rollout_mask="reject", rollout_is_cap=1.2)):
        l1, s1 = mk.fused_linear_grpo_loss(h, w, ids, mask, adv, rollout_logp=roll, config=cfg, chunk_size=4,
                                           backend="triton")
        l2, s2 = ref.fused_linear_grpo_loss(h, w, ids, mask, adv, rollout_logp=roll, config=cfg)
        torch.testing.assert_close(l1, l2, **tol("fused_linear", torch.float32))
        for k in s2:
            torch.testing.assert_close(s1[k], s2[k], **tol("fused_linear", torch.float32), msg=k)
        for a, c in zip(torch.autograd.grad(l1, [h, w]), torch.autograd.grad(l2, [h, w])):
            torch.testing.assert_close(a, c, **tol("fused_linear", torch.float32))
    print("ROLLOUT-TRITON-OK")
"""


def test_triton_kernels_match_reference_under_interpreter():
    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(TRITON)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    assert "ROLLOUT-TRITON-OK" in proc.stdout
