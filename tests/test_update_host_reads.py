"""The update reads the device once per optimizer step (issue 26), and computes what the loop that
read every micro-batch's loss and statistics as Python floats computed: the same stats, bit for bit,
and the same weights.

Reads are counted with medix_r1/testing/host_reads.py on the CPU (the ops that would make a GPU's host wait).
What the trainer's own code (medix_r1/) may read per update: the shuffled mini-batch order once per
epoch (a CPU generator's tensor: host memory, no device involved) and one small tensor per optimizer
step (finite or not, the gradient norm, the statistics). The optimizer's step is not counted:
PyTorch's AdamW keeps its step counters on the host. Reads the libraries make are listed in
:data:`LIBRARY_READS` (what they are, not a bound the trainer controls).
"""
import math

import pytest
import torch

from medix_r1.parallel import layout
from medix_r1.testing.host_reads import HostReads, no_counting
from medix_r1.train import step as train_step
from medix_r1.train.batch import make_batch, slice_batch
from medix_r1.train.optim import make_optimizer
from medix_r1.train.policy import load_model, loss_config, policy_loss, sequence_logp
from tests.train_helpers import make_tiny_model, tiny_run_config

# Per micro-batch, outside medix_r1 (seen with torch 2.13 / transformers 5.19): the loss kernels'
# input checks (token ids in range, twice; mask 0/1 and finite advantages, once), and transformers'
# check whether the attention mask pads anything (once per model forward, twice when it does).
LIBRARY_READS = ("medix_kernels/fused_linear.py", "medix_kernels/grpo_loss.py", "transformers/masking_utils.py")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny"))


def setting(tiny, tmp_path, *more):
    """Off-policy: 2 epochs of mini-batches of 4 out of 6 rows, micro-batches of 2 (rows that share a
    prompt take the shared-prompt forward), a KL term: 4 optimizer steps of 2 micro-batches each."""
    cfg = tiny_run_config(tiny, tmp_path, "optim.micro_batch_size=2", "optim.mini_batch_size=4",
                          "optim.updates_per_step=2", "loss.beta=0.01", "optim.lr=1e-3", *more)
    g = torch.Generator().manual_seed(0)
    prompts = [[5, 6, 7, 8]] * 2 + [[9, 10, 11]] * 2 + [[12, 13, 14, 15, 16]] * 2
    responses = [torch.randint(20, 400, (k,), generator=g).tolist() for k in (3, 5, 2, 6, 4, 1)]
    batch = make_batch(prompts, responses, 0)
    rows = layout.row_layout([0, 0, 0], 2, [len(r) for r in responses], [0.1, 0.5, 0.2, 0.9, 0.3, 0.3])
    ref = load_model(tiny, cfg, trainable=False)
    adv = torch.randn(6, generator=g)
    ref_logp = sequence_logp(ref, batch, 1.0, 2)
    return cfg, batch, rows, adv, ref_logp


def float_read_update(model, optimizer, batch, advantages, ref_logp, old_logp, cfg, lcfg, step, rows):
    """The update as it was before (single process): every micro-batch's loss checked and its loss and
    statistics read as Python floats, the loss weight from the mask on the device."""
    o = cfg.optim
    B = len(rows.tokens)
    mini = o.mini_batch_size or B
    per_token = lcfg.aggregation == "token-mean"
    sums = {"loss": 0.0, "kl_mean": 0.0, "clip_frac_low": 0.0, "clip_frac_high": 0.0, "ratio_mean": 0.0,
            "grad_norm": 0.0}
    count, nan_skipped = 0, False
    gen = torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + step)
    for _ in range(o.updates_per_step):
        order = torch.randperm(B, generator=gen) if (o.updates_per_step > 1 or mini < B) else torch.arange(B)
        for ms in range(0, B, mini):
            mini_rows = order[ms:ms + mini].tolist()
            weight_total = float(sum(rows.tokens[g] for g in mini_rows)) if per_token else float(len(mini_rows))
            optimizer.zero_grad(set_to_none=True)
            acc = {k: 0.0 for k in sums if k != "grad_norm"}
            finite = True
            for start in range(0, len(mini_rows), o.micro_batch_size):
                r = torch.tensor(mini_rows[start:start + o.micro_batch_size], dtype=torch.long)
                mb = slice_batch(batch, r)
                w = (float(mb["mask"].sum()) if per_token else float(len(r))) / max(weight_total, 1e-9)
                loss, stats = train_step.policy_loss(model, mb, advantages[r], old_logp[r], ref_logp[r], lcfg,
                                                     cfg.loss.impl, cfg.loss.chunk_size)
                if not bool(torch.isfinite(loss)):
                    finite = False
                    break
                (loss * w).backward()
                acc["loss"] += float(loss.detach()) * w
                for k in ("kl_mean", "clip_frac_low", "clip_frac_high", "ratio_mean"):
                    acc[k] += float(stats[k]) * w
            if finite:
                params = [p for p in model.parameters() if p.grad is not None]
                gnorm = torch.nn.utils.clip_grad_norm_(params, o.grad_clip if o.grad_clip > 0 else float("inf"))
                finite = bool(torch.isfinite(gnorm))
            if not finite:
                optimizer.zero_grad(set_to_none=True)
                nan_skipped = True
                continue
            optimizer.step()
            for k, v in acc.items():
                sums[k] += v
            sums["grad_norm"] += float(gnorm)
            count += 1
    stats = {k: v / count for k, v in sums.items()} if count else {k: float("nan") for k in sums}
    return stats, nan_skipped


def run_update(fn, tiny, cfg, batch, rows, adv, ref_logp, count_reads=False):
    model = load_model(tiny, cfg, trainable=True)
    old_logp = sequence_logp(model, batch, 1.0, 2)
    optimizer = make_optimizer(model.parameters(), cfg.optim)
    reads = HostReads()
    if count_reads:
        real_step = optimizer.step

        def uncounted_step(*a, **k):  # AdamW's step counters live on the host (not a device read)
            with no_counting(reads):
                return real_step(*a, **k)
        optimizer.step = uncounted_step
        with reads:
            out = fn(model, optimizer, batch, adv, ref_logp, old_logp, cfg, loss_config(cfg), 1, rows)
    else:
        out = fn(model, optimizer, batch, adv, ref_logp, old_logp, cfg, loss_config(cfg), 1, rows)
    return out, {n: p.detach().clone() for n, p in model.named_parameters()}, reads


@pytest.mark.parametrize("engine_logp", [False, True])
def test_one_device_read_per_optimizer_step_and_the_float_loops_results(tiny, tmp_path, engine_logp):
    """With the engine's log-probs in the batch the loss also reports the rollout diagnostics
    (train.step.RolloutStats): read with the first epoch's last optimizer step, no read of their own, none
    per micro-batch, and the same training."""
    cfg, batch, rows, adv, ref_logp = setting(tiny, tmp_path)
    if engine_logp:
        batch["rollout_logp"] = ref_logp + 0.01
    (stats, skipped), weights, reads = run_update(train_step.update, tiny, cfg, batch, rows, adv, ref_logp,
                                                 count_reads=True)
    (want, want_skipped), want_weights, _ = run_update(float_read_update, tiny, cfg, batch, rows, adv, ref_logp)
    epochs, optimizer_steps = 2, 4
    ours = reads.by("medix_r1")
    assert len(ours) == epochs + optimizer_steps, ours
    assert ("rollout_kl_k3" in stats) is engine_logp
    stats = {k: v for k, v in stats.items() if not k.startswith("rollout_")}
    assert all("medix_r1/train/step.py:" in w[1] for w in ours), ours  # none in the forward or the shared prompt
    others = [w for w in reads.where if w not in ours]
    assert all(any(lib in w[1] for lib in LIBRARY_READS) for w in others), others
    # bit for bit: float64 sums in the same order (the loop before knew no entropy / old-vs-new KL, issue 32)
    assert {k: stats[k] for k in want} == want and skipped is want_skipped is False
    assert stats["entropy_mean"] > 0 and stats["approx_kl_old"] > 0
    assert stats["loss"] != 0.0 and stats["kl_mean"] > 0 and math.isfinite(stats["grad_norm"])
    assert all(torch.equal(weights[n], want_weights[n]) for n in weights)


def test_a_non_finite_loss_skips_its_optimizer_step_as_before(tiny, tmp_path, monkeypatch):
    calls = []

    def nan_in_the_third_micro_batch(*args, **kwargs):
        loss, stats = policy_loss(*args, **kwargs)
        calls.append(1)
        return (loss * float("nan") if len(calls) == 3 else loss), stats

    monkeypatch.setattr(train_step, "policy_loss", nan_in_the_third_micro_batch)
    cfg, batch, rows, adv, ref_logp = setting(tiny, tmp_path)
    (stats, skipped), weights, _ = run_update(train_step.update, tiny, cfg, batch, rows, adv, ref_logp)
    calls.clear()
    (want, want_skipped), want_weights, _ = run_update(float_read_update, tiny, cfg, batch, rows, adv, ref_logp)
    assert skipped is want_skipped is True
    assert {k: stats[k] for k in want} == want and math.isfinite(stats["loss"])  # the 3 other steps' means
    assert all(torch.equal(weights[n], want_weights[n]) for n in weights)
