"""GPU benchmark of the fused policy-loss kernels (issue 4), bf16, 8,192 tokens x 152,064 vocab.

Rows (medians of the suite's interleaved timing: CUDA events, a cold L2; GB/s from the bytes each
variant must move at least):
- logprob+entropy forward: medix Triton and CUDA kernels vs TRL's selective_log_softmax +
  entropy_from_logits (and its one-pass selective_log_softmax_and_entropy when installed).
- GRPO loss forward+backward on materialised logits: medix (kernel forward, the clipped-ratio
  loss with k3 KL on [T] vectors, kernel backward in place over the logits) and through the
  medix_kernels.grpo_loss API, vs Liger-Kernel's Triton GRPO loss (in place).
- fused-linear GRPO loss forward+backward from hidden states (H = 3584): medix's
  fused_linear_grpo_loss vs Liger's LigerFusedLinearGRPOLoss, with peak memory.
CSV: benchmarks/results/policy_loss_gpu.csv (GPU name, versions, date). Without a GPU the script
exits with a message; ``--dry-run-cpu`` runs every code path on tiny CPU shapes (torch reference
and the Triton interpreter) to check the logic, writing its CSV to a temporary folder.

The whole suite (every op, every peer, the sweeps) is ``python -m benchmarks --device cuda``, and the
GPU check with the targets' rows is ``bash benchmarks/gpu/check.sh OUT`` (benchmarks/gpu/README.md); this
script keeps the kernel-level rows (medix's raw forward/backward kernels without the autograd
wrapper). Timing (CUDA events, L2 flushed), peaks (datasheet table), peak memory (allocator
counters) and the Liger imports come from the suite's modules.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import os
import statistics
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run-cpu", action="store_true", help="tiny CPU shapes, Triton interpreter")
    ap.add_argument("--tokens", type=int, default=8192)
    ap.add_argument("--vocab", type=int, default=152_064)
    ap.add_argument("--hidden", type=int, default=3584)
    ap.add_argument("--out", default=None, help="CSV path (default benchmarks/results/policy_loss_gpu.csv)")
    return ap.parse_args()


ARGS = parse_args()
if ARGS.dry_run_cpu:
    os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(HERE))
from benchmarks import common, hardware  # noqa: E402
from benchmarks.memory import cuda_peak_extra  # noqa: E402
from benchmarks.peers import liger_peer  # noqa: E402
from medix_kernels.triton_kernels import logprob as tk  # noqa: E402


def bench(fn, device) -> float:
    """Median milliseconds of fn() (CUDA events and a cold L2 per sample on a GPU; wall clock on the CPU)."""
    rounds = 20 if device == "cuda" else 3
    res = common.interleaved({"fn": fn}, device=device, rounds_min=rounds, rounds_max=rounds, budget_s=0.0,
                             min_sample_s=1e-3 if device == "cuda" else 0.0, warmup=3 if device == "cuda" else 1)
    return statistics.median(res["fn"]["samples"]) * 1e3


def peak_mb(fn, device) -> float:
    if device != "cuda":
        return float("nan")
    return cuda_peak_extra(fn) / 2**20


def grpo_token_loss(logp, old_logp, ref_logp, adv, mask, eps_low=0.2, eps_high=0.28, beta=0.04):
    """Clipped-ratio loss with k3 KL, token-mean over the mask ([B, L] fp32 tensors)."""
    ratio = torch.exp(logp - old_logp)
    pg = torch.maximum(-adv[:, None] * ratio, -adv[:, None] * ratio.clamp(1 - eps_low, 1 + eps_high))
    x = ref_logp - logp
    kl = torch.exp(x) - x - 1
    return ((pg + beta * kl) * mask).sum() / mask.sum().clamp(min=1)


def medix_kernel_fwd(backend):
    if backend == "triton":
        return tk.logprob_fwd
    return torch.ops.medix.logprob_fwd


def medix_grpo_kernel_step(backend, logits, ids, old_logp, ref_logp, adv, mask, temperature=1.0):
    """GRPO forward + backward from the kernels: forward, [T]-sized loss math, in-place backward."""
    logp, lse, _ = medix_kernel_fwd(backend)(logits, ids, temperature, False)
    lp = logp.detach().requires_grad_(True)
    loss = grpo_token_loss(lp, old_logp, ref_logp, adv, mask)
    (g,) = torch.autograd.grad(loss, lp)
    if backend == "triton":
        tk.logprob_bwd(logits, ids, lse, g, None, None, temperature, out=logits)
    else:
        torch.ops.medix.logprob_bwd_(logits, ids, lse, g, None, None, temperature)
    return loss


def versions() -> dict:
    out = {"torch": torch.__version__}
    for mod in ("triton", "liger_kernel", "trl"):
        try:
            from importlib.metadata import version
            out[mod] = version(mod.replace("_", "-"))
        except Exception:  # not installed
            out[mod] = "-"
    return out


def main() -> int:
    dry = ARGS.dry_run_cpu
    if not dry and not torch.cuda.is_available():
        print("bench_policy_loss_gpu: no CUDA GPU here; nothing to measure (use --dry-run-cpu to check the "
              "script's logic on tiny CPU shapes)")
        return 0
    device = "cpu" if dry else "cuda"
    dtype = torch.float32 if dry else torch.bfloat16
    b = 4 if dry else 8
    tokens, vocab, hidden = (4 * 8, 1000, 64) if dry else (ARGS.tokens, ARGS.vocab, ARGS.hidden)
    seq = tokens // b
    gpu = torch.cuda.get_device_name() if device == "cuda" else "cpu (dry run)"
    peak = hardware.table_peak(gpu, str(dtype).replace("torch.", "")) if device == "cuda" else None
    bw = peak[0] if peak else hardware.measure_bandwidth(device)
    import medix_kernels as mk
    backends = ["triton"] + (["cuda"] if "cuda" in mk.backends() else [])
    if dry:
        backends = ["triton"]
    gen = torch.Generator(device=device).manual_seed(0)
    logits = (torch.randn(b, seq, vocab, device=device, generator=gen) * 2).to(dtype)
    ids = torch.randint(0, vocab, (b, seq), device=device, generator=gen)
    rows = []
    read_bytes = tokens * vocab * logits.element_size()

    def record(case, impl, ms, bytes_moved, peak=float("nan"), note=""):
        gbs = bytes_moved / (ms * 1e-3) / 1e9
        rows.append(dict(case=case, impl=impl, ms=round(ms, 4), gb_per_s=round(gbs, 1),
                         frac_peak_bw=round(gbs * 1e9 / bw, 3), peak_extra_mb=round(peak, 1), note=note))
        print(f"{case:34s} {impl:34s} {ms:9.3f} ms {gbs:8.1f} GB/s {gbs * 1e9 / bw:6.1%} {note}")

    logprob_rows(record, backends, logits, ids, device, read_bytes)
    policy = policy_inputs(logits, ids, device, gen)
    grpo_rows(record, backends, logits, ids, policy, device, read_bytes)
    fused_linear_rows(record, logits, ids, policy, tokens, hidden, device, gen)
    out = ARGS.out or (os.path.join(tempfile.mkdtemp(prefix="medix-bench-"), "policy_loss_gpu_dryrun.csv") if dry
                       else os.path.join(HERE, "results", "policy_loss_gpu.csv"))
    meta = dict(device=gpu, dtype=str(dtype).replace("torch.", ""), tokens=tokens, vocab=vocab,
                date=datetime.datetime.now().isoformat(timespec="seconds"),
                **{f"v_{k}": v for k, v in versions().items()})
    write_rows(out, meta, rows)
    return 0


def logprob_rows(record, backends, logits, ids, device, read_bytes) -> None:
    """1. Per-token log-prob + entropy, forward: medix's kernels vs TRL's functions."""
    for be in backends:
        fwd = medix_kernel_fwd(be)
        record("logprob+entropy fwd", f"medix-{be}", bench(lambda: fwd(logits, ids, 1.0, True), device), read_bytes)
    try:
        from trl.trainer import utils as trl_utils
        record("logprob+entropy fwd", "trl selective_log_softmax+entropy_from_logits",
               bench(lambda: (trl_utils.selective_log_softmax(logits, ids), trl_utils.entropy_from_logits(logits)),
                     device), read_bytes)
        if hasattr(trl_utils, "selective_log_softmax_and_entropy"):
            record("logprob+entropy fwd", "trl selective_log_softmax_and_entropy",
                   bench(lambda: trl_utils.selective_log_softmax_and_entropy(logits, ids, False), device), read_bytes)
    except ImportError as exc:
        print("trl not importable:", exc)


def policy_inputs(logits, ids, device, gen) -> dict:
    """Old and reference policies close to the current one (as in training), advantages and the mask."""
    b, seq = ids.shape
    logp0 = tk.logprob_fwd(logits, ids, 1.0, False)[0]
    old_logp = logp0 + torch.randn(b, seq, device=device, generator=gen) * 0.05
    ref_logp = logp0 + torch.randn(b, seq, device=device, generator=gen) * 0.05
    adv = torch.randn(b, device=device, generator=gen)
    mask = torch.ones(b, seq, device=device)
    return {"old_logp": old_logp, "ref_logp": ref_logp, "adv": adv, "mask": mask}


def grpo_rows(record, backends, logits, ids, policy: dict, device, read_bytes) -> None:
    """2. GRPO loss forward + backward over materialised logits (read, read, write): medix's kernels and its
    grpo_loss API vs Liger's Triton GRPO loss, all in place. The timed steps overwrite the logits with their
    gradient (small values), which keeps every later call finite too."""
    import medix_kernels as mk
    old_logp, ref_logp, adv, mask = policy["old_logp"], policy["ref_logp"], policy["adv"], policy["mask"]
    work = logits.clone()
    for be in backends:
        record("grpo fwd+bwd (in place)", f"medix-{be} kernels",
               bench(lambda: medix_grpo_kernel_step(be, work, ids, old_logp, ref_logp, adv, mask), device),
               3 * read_bytes, note="logits overwritten by their gradient each call")
    cfg = mk.LossConfig(beta=0.04, kl="k3")
    for be in backends:
        x = logits.clone().requires_grad_(True)

        def api_step():
            loss, _ = mk.grpo_loss(x, ids, mask, adv, old_logp=old_logp, ref_logp=ref_logp, config=cfg,
                                   backend=be, inplace_backward=True)
            loss.backward()
        record("grpo fwd+bwd (in place)", f"medix-{be} grpo_loss", bench(api_step, device), 3 * read_bytes)
    if device == "cuda":
        triton_grpo_loss = liger_peer.triton_grpo_loss(device)
        # Liger takes logits [B, L + 1, V] (it drops the last position) and writes the gradient in place.
        lg = torch.cat([logits, logits[:, :1]], dim=1).requires_grad_(True)

        def liger_step():
            loss, _ = triton_grpo_loss(lg, old_logp, ref_logp, ids, adv, mask, temperature=1.0, beta=0.04,
                                       eps_low=0.2, eps_high=0.28, inplace=True, loss_type="grpo", reduce=True)
            loss.backward()
        record("grpo fwd+bwd (in place)", "liger triton_grpo_loss", bench(liger_step, device), 3 * read_bytes)
        del lg


def fused_linear_rows(record, logits, ids, policy: dict, tokens, hidden, device, gen) -> None:
    """3. Fused-linear GRPO loss forward + backward from hidden states, with peak memory: medix vs Liger."""
    import medix_kernels as mk
    old_logp, ref_logp, adv, mask = policy["old_logp"], policy["ref_logp"], policy["adv"], policy["mask"]
    (b, seq), vocab, dtype, elem = ids.shape, logits.shape[-1], logits.dtype, logits.element_size()
    hs = torch.randn(b, seq, hidden, device=device, generator=gen).to(dtype) * 0.5
    w = (torch.randn(vocab, hidden, device=device, generator=gen) * hidden ** -0.5).to(dtype)
    hs.requires_grad_(True)
    w.requires_grad_(True)
    cfg = mk.LossConfig(beta=0.04, kl="k3")
    flop_bytes = (w.numel() + hs.numel()) * elem

    def medix_fused():
        loss, _ = mk.fused_linear_grpo_loss(hs, w, ids, mask, adv, old_logp=old_logp, ref_logp=ref_logp,
                                            config=cfg)
        loss.backward()
    record("fused-linear grpo fwd+bwd", "medix fused_linear_grpo_loss", bench(medix_fused, device), flop_bytes,
           peak_mb(medix_fused, device), note=f"{6 * tokens * vocab * hidden / 1e12:.1f} TFLOP per call")
    if device == "cuda":
        LigerFusedLinearGRPOLoss = liger_peer.fused_linear_grpo_loss_cls()
        liger = LigerFusedLinearGRPOLoss(beta=0.04, epsilon_low=0.2, epsilon_high=0.28, loss_type="grpo",
                                         use_ref_model=True, chunk_size=1)

        def liger_fused():
            loss, _ = liger(hs, w, ids, mask, adv, ref_per_token_logps=ref_logp, old_per_token_logps=old_logp)
            loss.backward()
        record("fused-linear grpo fwd+bwd", "liger LigerFusedLinearGRPOLoss", bench(liger_fused, device),
               flop_bytes, peak_mb(liger_fused, device))


def write_rows(out: str, meta: dict, rows: list[dict]) -> None:
    """The CSV: every row with the run's device, shape, date and versions in front."""
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(meta) + list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({**meta, **row})
    print(f"wrote {out} ({len(rows)} rows)")


if __name__ == "__main__":
    sys.exit(main())
