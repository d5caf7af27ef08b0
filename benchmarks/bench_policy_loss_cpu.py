"""CPU benchmark of the policy loss: grpo_loss and fused_linear_grpo_loss, forward + backward.

fp32 [4, 1024, 49,152] (SmolLM2's vocabulary), side by side in one run:
  - grpo_loss on the compiled C++ backend (plain and with inplace_backward)
  - the eager reference (materialised log-softmax) and torch.compile of that reference
  - fused_linear_grpo_loss (H = 576) vs the full-logits path (hidden @ W^T, then grpo_loss)
Time: median of repeats. Memory: peak RSS growth during one call in a fresh process, after its
inputs exist and after one warm-up call at the same shape (steady state, as every step of a
training loop sees it; the kernel's peak-RSS mark VmHWM is reset just before the measured call),
reported against the size of the logits tensor. Gradients are taken with torch.autograd.grad. Writes benchmarks/results/policy_loss_cpu.csv and a PNG.

    python benchmarks/bench_policy_loss_cpu.py [--quick]
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import bench, environment, write_csv  # noqa: E402

B, L, V, H = 4, 1024, 49152, 576


def make_inputs(b, l, v, h, seed=0):
    import medix_kernels  # noqa: F401
    from medix_kernels import reference as ref
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, l, v, generator=g)
    ids = torch.randint(0, v, (b, l), generator=g)
    mask = torch.rand(b, l, generator=g) > 0.1
    adv = torch.randn(b, generator=g)
    old = ref.selective_log_softmax(logits[:1, :8], ids[:1, :8]).mean() + torch.zeros(b, l)  # cheap stand-in values
    hidden = torch.randn(b, l, h, generator=g)
    weight = torch.randn(v, h, generator=g) * 0.05
    return logits, ids, mask, adv, old, hidden, weight


def build(name, inputs):
    """A closure running one forward + backward of implementation `name`."""
    import medix_kernels as mk
    from medix_kernels import reference as ref
    logits, ids, mask, adv, old, hidden, weight = inputs
    cfg = mk.LossConfig.preset("grpo", beta=0.0)
    if name in ("medix-cpu", "medix-cpu-inplace", "torch-eager", "torch-compile"):
        x = logits.requires_grad_(True)

        def run():
            if name == "torch-eager":
                loss, _ = ref.grpo_loss(x, ids, mask, adv, old_logp=old, config=cfg)
            elif name == "torch-compile":
                loss, _ = build.compiled(x, ids, mask, adv, old_logp=old, config=cfg)
            else:
                # inplace: the logits' storage receives their gradient (in training the logits are
                # the LM head's output, needed by nothing else; here x.grad aliases x afterwards,
                # which changes later repeats' values but not their cost)
                loss, _ = mk.grpo_loss(x, ids, mask, adv, old_logp=old, config=cfg,
                                       inplace_backward=name == "medix-cpu-inplace", backend="cpu")
            # autograd.grad, not backward(): a leaf's .grad would be a clone of a gradient that
            # aliases the leaf itself (in-place), a copy real training never makes (there the
            # logits are the LM head's output and their gradient flows on into the matmul).
            torch.autograd.grad(loss, x)
        if name == "torch-compile":
            build.compiled = torch.compile(ref.grpo_loss, dynamic=False)
        return run
    h = hidden.requires_grad_(True)
    w = weight.requires_grad_(True)

    def run():
        if name == "fused-linear":
            loss, _ = mk.fused_linear_grpo_loss(h, w, ids, mask, adv, old_logp=old, config=cfg, backend="cpu")
        else:  # full logits, then the fused log-prob kernel (the best non-chunked path)
            loss, _ = mk.grpo_loss(h @ w.t(), ids, mask, adv, old_logp=old, config=cfg, inplace_backward=True,
                                   backend="cpu")
        torch.autograd.grad(loss, (h, w))
    return run


def _rss_kb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _reset_peak():
    """Reset the kernel's peak-RSS mark (VmHWM) of this process (Linux: clear_refs 5)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _peak_kb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def _peak_child(name, shape, queue):
    inputs = make_inputs(*shape)
    run = build(name, inputs)
    run()  # steady state, as in a training loop: compiled, allocator and thread pools warm
    before = _rss_kb()
    _reset_peak()
    run()
    queue.put(max(0, _peak_kb() - before) * 1024)


def peak_extra_bytes(name, shape):
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_peak_child, args=(name, shape, q))
    p.start()
    p.join()
    return q.get() if p.exitcode == 0 else float("nan")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a small shape (smoke run)")
    args = ap.parse_args()
    shape = (2, 128, 4096, 64) if args.quick else (B, L, V, H)
    logits_bytes = shape[0] * shape[1] * shape[2] * 4
    inputs = make_inputs(*shape)
    rows = []
    groups = {"grpo_loss": ["torch-eager", "torch-compile", "medix-cpu", "medix-cpu-inplace"],
              "fused_linear_grpo_loss": ["full-logits", "fused-linear"]}
    for op, names in groups.items():
        base = None
        for name in names:
            run = build(name, inputs)
            seconds = bench(run, warmup=1, min_time_s=1.0, max_reps=10)
            base = base or seconds
            extra = peak_extra_bytes(name, shape)
            rows.append({"op": op, "shape": f"{shape[0]}x{shape[1]}x{shape[2]}" + (f" H={shape[3]}" if "linear" in op else ""),
                         "impl": name, "time_ms": round(seconds * 1e3, 1), "speedup_vs_first": round(base / seconds, 2),
                         "peak_extra_MB": round(extra / 2**20, 1), "peak_extra_vs_logits": round(extra / logits_bytes, 3)})
            print(rows[-1], flush=True)
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                       "policy_loss_cpu_quick.csv" if args.quick else "policy_loss_cpu.csv")
    write_csv(out, rows)
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        labels = [f"{r['op'].split('_')[0]}\n{r['impl']}" for r in rows]
        axes[0].bar(labels, [r["time_ms"] for r in rows])
        axes[0].set_ylabel("forward + backward (ms)")
        axes[1].bar(labels, [r["peak_extra_vs_logits"] for r in rows])
        axes[1].set_ylabel("peak extra memory / logits size")
        for ax in axes:
            ax.tick_params(axis="x", labelsize=7, rotation=45)
        fig.suptitle(f"policy loss, CPU fp32 {rows[0]['shape']} ({environment()['device']})", fontsize=9)
        fig.tight_layout()
        fig.savefig(out.replace(".csv", ".png"), dpi=110)
    except ImportError:
        pass
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
