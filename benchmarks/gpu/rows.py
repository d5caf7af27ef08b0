"""The benchmark rows of the GPU check, run through the suite (``benchmarks.suite.run``: interleaved
timing with CUDA events and a cold L2, allocator peak memory, the peers' own code), and the two
ceilings measured first.

    python -m benchmarks.gpu.rows --out-dir DIR [--ops a,b] [--name bench] [--ceilings] [--dry-run]

Rows (bf16; the shapes of the targets, benchmarks/gpu/targets.py):
- selective_log_softmax_entropy, T = 8,192 (8 x 1,024), V = 152,064: medix cuda / triton / auto,
  TRL's eager formula (``trl-eager``: TRL's own functions with its Triton path switched off), TRL
  (its Triton kernel), eager PyTorch;
- grpo_loss fwd+bwd, same logits, MediX GRPO (clip 0.2, k3 KL, beta 1e-2): medix (and in place),
  Liger's ``triton_grpo_loss``, torch.compile of the eager reference, eager;
- fused_linear_grpo_loss, same T and V, H = 4,096: medix, ``LigerFusedLinearGRPOLoss``;
- group_advantages N = 1,048,576, G = 16 and composite_advantages (K = 4): medix, eager;
- cosine_rewards [65,536, 1,024]: medix, eager.
Every op also gets ``medix-auto`` (backend="auto"; its row's backend says what it resolved to).

Ceilings (``--ceilings``, written to DIR/ceilings.json): the copy bandwidth (a 2 GiB ``copy_``,
bytes read + written, median of 20 CUDA-event samples) and the bf16 matrix rate (8,192^3 on
random data, median of 10 after 3 warm-ups). ``--dry-run``: CPU tensors, Triton interpreted
(TRITON_INTERPRET=1), torch.compile disabled (TORCH_COMPILE_DISABLE=1: the compile peers run
eagerly), tiny shapes, fp32 (bf16 matrix products crawl on a CPU without AVX-512 BF16), memory
not measured; the numbers mean nothing.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
from dataclasses import dataclass, field


@dataclass
class Row:
    op: str                      # a benchmarks.ops.OPS name
    params: dict                 # the GPU shape
    dry_params: dict             # the dry run's shape
    peers: tuple = ()            # the suite's peer implementations kept (by name)
    extra: tuple = field(default_factory=tuple)  # names of extra implementations (EXTRA below)


ROWS = (
    Row("selective_log_softmax_entropy", dict(tokens=8192, vocab=152064), dict(tokens=8, vocab=256),
        peers=("trl", "torch-eager"), extra=("trl-eager",)),
    Row("grpo_loss", dict(tokens=8192, vocab=152064), dict(tokens=8, vocab=256),
        peers=("liger-triton", "torch-compile", "torch-eager")),
    Row("fused_linear_grpo_loss", dict(tokens=8192, vocab=152064, hidden=4096), dict(tokens=16, vocab=256, hidden=32),
        peers=("liger-chunked",)),
    Row("group_advantages", dict(n=1 << 20, group=16), dict(n=64, group=16), peers=("torch-eager",)),
    Row("composite_advantages", dict(n=1 << 20, k=4, group=16), dict(n=64, k=4, group=16), peers=("torch-eager",)),
    Row("cosine_rewards", dict(n=65536, dim=1024), dict(n=8, dim=256), peers=("torch-eager",)),
)
OPS = tuple(r.op for r in ROWS)


# ----------------------------------------------------------------------------- extra implementations

def _no_grad(build):
    import torch

    def wrapped(x):
        fn = build(x)

        def run():
            with torch.no_grad():
                return fn()
        return run
    return wrapped


def _trl_eager_impl(device):
    """TRL's selective_log_softmax_and_entropy with its Triton path switched off: the eager formula
    (per-row log_softmax + gather for bf16, entropy_from_logits over chunks of 128 rows)."""
    from ..ops import Impl, Unavailable
    from ..peers import trl_peer

    def build(x):
        u = trl_peer.utils()
        if not hasattr(u, "is_triton_available"):
            raise Unavailable("this TRL has no is_triton_available switch: its eager formula cannot be forced")

        def run():
            saved = u.is_triton_available
            u.is_triton_available = lambda: False
            try:
                return u.selective_log_softmax_and_entropy(x["logits"], x["ids"], entropy_requires_grad=False)
            finally:
                u.is_triton_available = saved
        return run
    return Impl("trl-eager", "trl", "eager", _no_grad(build),
                note="trl.trainer.utils.selective_log_softmax_and_entropy, Triton path off (is_triton_available "
                     "-> False): per-row log_softmax + gather, entropy_from_logits")


EXTRA = {"trl-eager": _trl_eager_impl}


def _auto_impl(op: str, device: str):
    """medix with backend="auto"; the row's backend is "auto-><resolved>"."""
    import torch

    import medix_kernels as mk
    from medix_kernels import _backend

    from ..ops import Impl
    from ..ops import loss as L
    try:
        resolved = _backend.resolve_backend("auto", torch.empty(0, device=device), op)
    except Exception as exc:
        resolved = f"error:{type(exc).__name__}"
    cfg = L.config()
    if op == "selective_log_softmax_entropy":
        build = _no_grad(lambda x: (lambda: mk.selective_log_softmax(x["logits"], x["ids"], return_entropy=True,
                                                                     backend="auto")))
    elif op == "grpo_loss":
        def build(x):
            leaf = x["logits"].detach().requires_grad_(True)
            return lambda: L._grad_step(leaf, lambda t: mk.grpo_loss(t, x["ids"], x["mask"], x["adv"],
                                                                     old_logp=x["old"], ref_logp=x["ref"],
                                                                     config=cfg, backend="auto"))
    elif op == "fused_linear_grpo_loss":
        def build(x):
            h, w = x["hidden"].detach().requires_grad_(True), x["weight"].detach().requires_grad_(True)
            return lambda: L._grad_hw(h, w, lambda h, w: mk.fused_linear_grpo_loss(
                h, w, x["ids"], x["mask"], x["adv"], old_logp=x["old"], ref_logp=x["ref"], config=cfg,
                backend="auto"))
    elif op == "group_advantages":
        def build(x):
            return lambda: mk.group_advantages(x["r"], x["g"], backend="auto")
    elif op == "composite_advantages":
        def build(x):
            return lambda: mk.composite_advantages(x["c"], x["w"], x["g"], backend="auto")
    elif op == "cosine_rewards":
        def build(x):
            return lambda: mk.cosine_rewards(x["x"], x["y"], threshold=0.8, backend="auto")
    else:
        raise KeyError(op)
    return Impl("medix-auto", "medix", f"auto->{resolved}", build, note=f'backend="auto" (resolved to {resolved})')


def spec_for(row: Row, dry: bool):
    """The suite's OpSpec of ``row.op`` at the row's one shape, with the implementations the targets
    need: the medix cuda / triton backends (plain and in place), medix-auto, the kept peers, extras."""
    from ..ops import OPS as SUITE_OPS
    base = SUITE_OPS[row.op]
    params = dict(row.dry_params if dry else row.params)

    def impls(device):
        out = []
        for imp in base.impls(device):
            if imp.role == "ours":
                if imp.backend in ("cuda", "triton") and not imp.name.endswith("-unfused"):
                    out.append(imp)
            elif imp.name in row.peers:
                out.append(imp)
        out.append(_auto_impl(row.op, device))
        out += [EXTRA[name](device) for name in row.extra]
        return out
    return dataclasses.replace(base, cases=lambda profile, device: [dict(params)], impls=impls)


# ----------------------------------------------------------------------------- ceilings

def ceilings(device: str, dry: bool) -> dict:
    """Copy bandwidth (bytes read + written per second) and bf16 matrix rate, measured here."""
    import torch

    from .. import common
    timer = common.Timer(device, flush_l2=False)
    nbytes = (64 if dry else 2048) * 2**20
    src = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        timer.sample(lambda: dst.copy_(src))
    copies = [timer.sample(lambda: dst.copy_(src)) for _ in range(5 if dry else 20)]
    src = dst = None  # free the 4 GiB before the matrix product
    n = 128 if dry else 8192
    a = torch.randn(n, n, device=device).to(torch.bfloat16)
    b = torch.randn(n, n, device=device).to(torch.bfloat16)
    c = torch.empty(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        timer.sample(lambda: torch.mm(a, b, out=c))
    mms = [timer.sample(lambda: torch.mm(a, b, out=c)) for _ in range(3 if dry else 10)]
    copy_s, mm_s = statistics.median(copies), statistics.median(mms)
    return {"copy_GBps": round(2 * nbytes / copy_s / 1e9, 1), "copy_bytes": nbytes, "copy_samples": len(copies),
            "copy_p10_p90_us": [round(common.quantile(copies, q) * 1e6, 2) for q in (0.1, 0.9)],
            "matmul_TFLOPs": round(2 * n ** 3 / mm_s / 1e12, 3), "matmul_n": n, "matmul_samples": len(mms),
            "device": common.device_name(device),
            "method": (f"copy_ of {nbytes >> 20} MiB uint8 (2 x bytes per copy), median of {len(copies)}; "
                       f"torch.mm {n}^3 bf16 random, median of {len(mms)} after 3 warm-ups; "
                       + ("CUDA events" if device == "cuda" else "wall clock (dry run: meaningless)"))}


# ----------------------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu.rows", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--ops", default=",".join(OPS))
    p.add_argument("--name", default="bench")
    p.add_argument("--ceilings", action="store_true", help="measure the ceilings first (DIR/ceilings.json)")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--rounds", type=int, default=None)
    p.add_argument("--budget-s", type=float, default=None, help="timing budget per case (s)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.dry_run:  # before torch / triton load
        os.environ["TRITON_INTERPRET"] = "1"
        os.environ["TORCH_COMPILE_DISABLE"] = "1"
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import torch

    from .. import suite
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("benchmarks.gpu.rows: no CUDA GPU here (--dry-run runs the same rows on tiny CPU shapes)")
        return 2
    os.makedirs(args.out_dir, exist_ok=True)
    if args.ceilings:
        c = ceilings(device, args.dry_run)
        print(f"ceilings: copy {c['copy_GBps']} GB/s, bf16 matmul {c['matmul_TFLOPs']} TFLOP/s ({c['method']})",
              flush=True)
        with open(os.path.join(args.out_dir, "ceilings.json"), "w") as fh:
            json.dump(c, fh, indent=1)
    ops = [o for o in args.ops.split(",") if o]
    rows = {r.op: r for r in ROWS}
    unknown = [o for o in ops if o not in rows]
    if unknown:
        print(f"unknown row(s) {unknown}; choose from {list(rows)}", file=sys.stderr)
        return 2
    if not ops:
        return 0
    s = suite.Settings(profile="smoke" if args.dry_run else "quick", device=device,
                       dtype="float32" if args.dry_run else "bfloat16",  # bf16 matmuls crawl on the CPU
                       ops=tuple(ops), peers=None, memory="none" if args.dry_run else "auto",
                       out_dir=args.out_dir, name=args.name,
                       rounds_min=args.rounds or (1 if args.dry_run else 5),
                       budget_s=args.budget_s if args.budget_s is not None else (0.0 if args.dry_run else 1.5),
                       dry_run=args.dry_run, specs={o: spec_for(rows[o], args.dry_run) for o in ops})
    out_csv, got, meta = suite.run(s, log=lambda m: print(m, flush=True))
    print(f"rows: {len(got)} in {out_csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
