"""Every cuda / triton backend of every op against ``medix_kernels.reference``: values and gradients,
fp32 and bf16, on fresh random inputs (the seed is in each row).

    python -m benchmarks.gpu.correctness --out CSV [--dry-run] [--seed S] [--backends cuda,triton]

Error measure (benchmarks/gpu/README.md): ||out - ref|| / ||ref|| against a float64 reference
computed from the same (rounded) inputs; a NaN or inf where the reference is finite fails. On a
GPU the caching allocator is filled with NaN before every case, so an output element a kernel
never writes shows up as NaN. Bars: fp32 1e-4; bf16 inputs with fp32 outputs 1e-4; outputs
stored in bf16 (d logits, bf16 advantages) 1e-2; the fused-linear op in bf16 (its matmuls round
to bf16) 3e-2. Shapes: on a GPU large enough for several blocks per row and odd sizes (V =
152,064, T = 1,027; N = 1,048,576); with ``--dry-run`` tiny CPU shapes with Triton interpreted
(the cuda backend is skipped there: no GPU).

One CSV row per (case, output), written as it goes: a crash leaves the rows before it.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
import traceback

COLUMNS = ["case", "op", "backend", "dtype", "shape", "output", "rel_err", "bar", "ok", "seed", "seconds", "error"]
WEIGHTS = [0.5175, 0.3375, 0.045, 0.1]


def bar(kind: str, dtype) -> float:
    import torch
    low = dtype != torch.float32
    if kind == "fused":
        return 3e-2 if low else 1e-4
    if kind == "stored":  # an output in the input dtype
        return 1e-2 if low else 1e-4
    return 1e-4            # fp32 outputs


SCALAR_FLOOR = 1e-2


def rel_err(got, ref) -> float:
    import torch
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    if got.shape != ref.shape:
        return float("inf")
    fin = torch.isfinite(ref)
    if not bool(torch.isfinite(got[fin]).all()):
        return float("nan")
    num = (got[fin] - ref[fin]).norm().item()
    den = ref[fin].norm().item()
    if ref.numel() == 1:  # a loss: a mean of O(0.1-1) per-token terms that can cancel to ~0 (the relative
        den = max(den, SCALAR_FLOOR)  # error of a near-zero mean says nothing); below the floor it is absolute
    return num / den if den > 0 else num


def poison_allocator(device: str) -> None:
    """Fill the CUDA caching allocator's free blocks with NaN (large and small pools)."""
    import torch
    if device != "cuda":
        return
    big = torch.full((256 * 2**20,), float("nan"), device=device)  # 1 GiB of fp32 NaN
    small = [torch.full((2**17,), float("nan"), device=device) for _ in range(32)]  # 512 KiB blocks
    del big, small


# ----------------------------------------------------------------------------- cases

def _policy(b, l, logp0, gen, device):
    import torch
    mask = torch.rand(b, l, generator=gen, device=device) > 0.2
    mask[:, 0] = True
    adv = torch.randn(b, generator=gen, device=device)
    old = logp0 + 0.1 * torch.randn(b, l, generator=gen, device=device)
    ref = logp0 + 0.1 * torch.randn(b, l, generator=gen, device=device)
    return mask, adv, old, ref


def case_selective_log_softmax(backend, dtype, device, dry, gen):
    import torch

    import medix_kernels as mk
    from medix_kernels import reference
    t, v = (5, 300) if dry else (1027, 152064)
    logits = (torch.randn(t, v, generator=gen, device=device) * 3).to(dtype)
    ids = torch.randint(0, v, (t,), generator=gen, device=device)
    g1, g2 = torch.randn(t, generator=gen, device=device), torch.randn(t, generator=gen, device=device)
    x = logits.clone().requires_grad_(True)
    lp, ent = mk.selective_log_softmax(x, ids, temperature=0.8, return_entropy=True, backend=backend)
    (gx,) = torch.autograd.grad((lp * g1).sum() + (ent * g2).sum(), x)
    xr = logits.double().requires_grad_(True)
    rlp, rent = reference.selective_log_softmax(xr, ids, temperature=0.8, return_entropy=True)
    (rg,) = torch.autograd.grad((rlp * g1.double()).sum() + (rent * g2.double()).sum(), xr)
    return f"T={t} V={v}", [("logp", lp, rlp, bar("fp32", dtype)), ("entropy", ent, rent, bar("fp32", dtype)),
                            ("d_logits", gx, rg, bar("stored", dtype))]


def _grpo(backend, dtype, device, dry, gen, inplace):
    import torch

    import medix_kernels as mk
    from medix_kernels import reference
    b, l, v = (2, 3, 300) if dry else (4, 257, 152064)
    logits = (torch.randn(b, l, v, generator=gen, device=device) * 3).to(dtype)
    ids = torch.randint(0, v, (b, l), generator=gen, device=device)
    logp0 = reference.selective_log_softmax(logits.float(), ids)
    mask, adv, old, ref = _policy(b, l, logp0, gen, device)
    cfg = mk.LossConfig.preset("grpo")  # PPO clip 0.2, k3 KL, beta 1e-2, token-mean
    x = logits.clone().requires_grad_(True)
    loss, _ = mk.grpo_loss(x * 1 if inplace else x, ids, mask, adv, old_logp=old, ref_logp=ref, config=cfg,
                           inplace_backward=inplace, backend=backend)
    (gx,) = torch.autograd.grad(loss, x)
    xr = logits.double().requires_grad_(True)
    rloss, _ = reference.grpo_loss(xr, ids, mask, adv.double(), old_logp=old.double(), ref_logp=ref.double(),
                                   config=cfg)
    (rg,) = torch.autograd.grad(rloss, xr)
    return f"B={b} L={l} V={v}", [("loss", loss, rloss, bar("fp32", dtype)), ("d_logits", gx, rg, bar("stored", dtype))]


def case_grpo_loss(backend, dtype, device, dry, gen):
    return _grpo(backend, dtype, device, dry, gen, inplace=False)


def case_grpo_loss_inplace(backend, dtype, device, dry, gen):
    return _grpo(backend, dtype, device, dry, gen, inplace=True)


def case_fused_linear(backend, dtype, device, dry, gen):
    import torch

    import medix_kernels as mk
    from medix_kernels import reference
    b, l, hd, v = (2, 5, 16, 300) if dry else (2, 300, 1024, 32768)
    h = (torch.randn(b, l, hd, generator=gen, device=device) * 0.5).to(dtype)
    w = (torch.randn(v, hd, generator=gen, device=device) * hd ** -0.5).to(dtype)
    ids = torch.randint(0, v, (b, l), generator=gen, device=device)
    logp0 = reference.selective_log_softmax(h.float() @ w.float().t(), ids)
    mask, adv, old, ref = _policy(b, l, logp0, gen, device)
    cfg = mk.LossConfig.preset("grpo")
    hh, ww = h.clone().requires_grad_(True), w.clone().requires_grad_(True)
    loss, _ = mk.fused_linear_grpo_loss(hh, ww, ids, mask, adv, old_logp=old, ref_logp=ref, config=cfg,
                                        chunk_size=3 if dry else None, backend=backend)
    gh, gw = torch.autograd.grad(loss, (hh, ww))
    lp = mk.fused_linear_selective_log_softmax(h, w, ids, chunk_size=3 if dry else None, backend=backend)
    hr, wr = h.double().requires_grad_(True), w.double().requires_grad_(True)
    # the reference forms fp32 logits from its inputs (reference.fused_linear_grpo_loss)
    rloss, _ = reference.fused_linear_grpo_loss(hr, wr, ids, mask, adv, old_logp=old, ref_logp=ref, config=cfg)
    rgh, rgw = torch.autograd.grad(rloss, (hr, wr))
    k = "fused"
    return f"B={b} L={l} H={hd} V={v}", [("loss", loss, rloss, bar(k, dtype)), ("d_hidden", gh, rgh, bar(k, dtype)),
                                         ("d_weight", gw, rgw, bar(k, dtype)), ("logp", lp, logp0, bar(k, dtype))]


def case_group_advantages(backend, dtype, device, dry, gen):
    import torch

    import medix_kernels as mk
    from medix_kernels import reference
    n, g = (64, 16) if dry else (1 << 20, 16)
    r = torch.rand(n, generator=gen, device=device).to(dtype)
    r[:g] = 0.5  # one degenerate group (all equal: advantages exactly 0)
    checks = [("grpo", mk.group_advantages(r, g, backend=backend), reference.group_advantages(r, g))]
    checks.append(("grpo_batch_scale", mk.group_advantages(r, g, scale="batch", backend=backend),
                   reference.group_advantages(r, g, scale="batch")))
    # ragged groups (1..31 members, singletons included) for RLOO and verl's singleton rule
    sizes = torch.randint(1, 32, (n // 8,), generator=gen, device=device)
    gi = torch.repeat_interleave(torch.arange(sizes.numel(), device=device), sizes)[:n]
    rr = r[:gi.numel()]
    checks.append(("rloo_ragged", mk.group_advantages(rr, group_index=gi, mode="rloo", backend=backend),
                   reference.group_advantages(rr, group_index=gi, mode="rloo")))
    checks.append(("grpo_ragged_verl", mk.group_advantages(rr, group_index=gi, singleton="verl", backend=backend),
                   reference.group_advantages(rr, group_index=gi, singleton="verl")))
    return f"N={n} G={g}", [(name, got, ref, bar("stored", dtype)) for name, got, ref in checks]


def case_composite_advantages(backend, dtype, device, dry, gen):
    import torch

    import medix_kernels as mk
    from medix_kernels import reference
    n, k, g = (64, 4, 16) if dry else (1 << 20, 4, 16)
    c = torch.rand(n, k, generator=gen, device=device).to(dtype)
    w = torch.tensor(WEIGHTS, device=device)
    total, adv = mk.composite_advantages(c, w, g, backend=backend)
    rtotal = reference.composite_rewards(c, w)
    radv = reference.group_advantages(rtotal, g)
    return f"N={n} K={k} G={g}", [("total", total, rtotal, bar("fp32", dtype)),
                                  ("advantages", adv, radv, bar("stored", dtype))]


def case_cosine_rewards(backend, dtype, device, dry, gen):
    import torch

    import medix_kernels as mk
    from medix_kernels import reference
    n, d = (9, 100) if dry else (4097, 1024)
    x = torch.randn(n, d, generator=gen, device=device).to(dtype)
    y = (x.float() + 0.7 * torch.randn(n, d, generator=gen, device=device)).to(dtype)
    x[0] = 0  # a zero vector: 0, not NaN
    cos = mk.cosine_rewards(x, y, backend=backend)
    rcos = reference.cosine_rewards(x, y).double()
    thr = mk.cosine_rewards(x, y, threshold=0.8, backend=backend)
    rthr = reference.cosine_rewards(x, y, threshold=0.8)
    near = (rcos - 0.8).abs() < 1e-5  # on the threshold either side is right
    thr_got = torch.where(near.to(thr.device), rthr.to(thr.device), thr)
    return f"B={n} D={d}", [("cos", cos, rcos, bar("fp32", dtype)), ("thresholded", thr_got, rthr, 0.0)]


CASES = {
    "selective_log_softmax": case_selective_log_softmax,
    "grpo_loss": case_grpo_loss,
    "grpo_loss_inplace": case_grpo_loss_inplace,
    "fused_linear_grpo_loss": case_fused_linear,
    "group_advantages": case_group_advantages,
    "composite_advantages": case_composite_advantages,
    "cosine_rewards": case_cosine_rewards,
}


# ----------------------------------------------------------------------------- main

def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu.correctness", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="CSV path")
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--seed", type=int, default=None, help="default: from the clock (written in every row)")
    p.add_argument("--backends", default=None, help="default cuda,triton (dry run: triton)")
    p.add_argument("--cases", default=",".join(CASES))
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"
    import torch

    import medix_kernels as mk
    device = "cpu" if args.dry_run else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        print("benchmarks.gpu.correctness: no CUDA GPU here (--dry-run: Triton interpreted on CPU tensors)")
        return 2
    backends = (args.backends or ("triton" if args.dry_run else "cuda,triton")).split(",")
    seed = args.seed if args.seed is not None else int(time.time()) % 1_000_000
    found = mk.backends()
    print(f"correctness: device {device}, backends found {found}, checking {backends}, seed {seed}", flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    failures = 0
    with open(args.out, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=COLUMNS)
        writer.writeheader()
        fh.flush()
        k = 0
        for name in args.cases.split(","):
            fn = CASES[name]
            for backend in backends:
                for dtype in (torch.float32, torch.bfloat16):
                    k += 1
                    dt = str(dtype).replace("torch.", "")
                    base = {"case": name, "op": name.replace("_inplace", ""), "backend": backend, "dtype": dt,
                            "seed": seed + k}
                    if backend not in found:
                        writer.writerow({**base, "output": "-", "ok": "skipped",
                                         "error": f"backend {backend!r} not usable here (found {found})"})
                        fh.flush()
                        print(f"  {name:24s} {backend:6s} {dt:8s} skipped: backend not usable here", flush=True)
                        continue
                    print(f"START {name} {backend} {dt}", flush=True)
                    poison_allocator(device)
                    gen = torch.Generator(device=device).manual_seed(seed + k)
                    t0 = time.perf_counter()
                    try:
                        shape, checks = fn(backend, dtype, device, args.dry_run, gen)
                        if device == "cuda":
                            torch.cuda.synchronize()
                    except Exception as exc:
                        failures += 1
                        msg = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
                        writer.writerow({**base, "output": "-", "ok": "error", "error": msg,
                                         "seconds": round(time.perf_counter() - t0, 2)})
                        fh.flush()
                        print(f"  {name:24s} {backend:6s} {dt:8s} ERROR {msg}", flush=True)
                        traceback.print_exc()
                        if device == "cuda" and "CUDA error" in msg:
                            return 3  # the context is lost: the orchestrator records it
                        continue
                    secs = round(time.perf_counter() - t0, 2)
                    for out_name, got, ref, limit in checks:
                        err = rel_err(got, ref)
                        ok = math.isfinite(err) and err <= limit
                        failures += not ok
                        writer.writerow({**base, "shape": shape, "output": out_name,
                                         "rel_err": f"{err:.3g}", "bar": limit, "ok": "ok" if ok else "FAIL",
                                         "seconds": secs})
                        print(f"  {name:24s} {backend:6s} {dt:8s} {out_name:18s} rel err {err:.3g} "
                              f"(bar {limit:g}) {'ok' if ok else 'FAIL'}", flush=True)
                    fh.flush()
    print(f"correctness: {failures} failing output(s)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
