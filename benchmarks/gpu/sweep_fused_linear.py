"""The fused-linear sweep: every chunk configuration of ``fused_linear_grpo_loss`` next to the plain
path and the peers, forward + backward, timed side by side in one process.

    rows = run("cuda", dry_run=False, budget_s=90)   # benchmarks/gpu/sweep.py calls this
    rows = run("cpu", dry_run=True, budget_s=30)     # tiny shapes on the CPU, seconds (the test)

Variants (bf16, T = 8,192 (8 x 1,024), V = 152,064, H = 4,096: the row of the first H200 run):
- ``medix-<config>``: each named chunk configuration of medix_kernels/_fused_linear_chunks.py
  (``weight-x1`` is the GPU default: a chunk of logits as large as the weight; ``gpu-32mb-temp``
  the old default, 96-token chunks with a fp32 [V, H] temporary per chunk), on the backend
  ``auto`` picks; the default configuration also on every other GPU backend. The note names the
  tokens per chunk, the number of chunks, the d W accumulation that ran and the predicted peak
  (``peak_bytes``).
- ``plain``: full logits ``h @ W^T`` (bf16, [T, V]) then ``grpo_loss(inplace_backward=True)``;
  autograd does the two backward GEMMs over all tokens at once: the matmul-bound ideal, at
  T V s bytes of logits.
- ``liger``: Liger-Kernel's ``LigerFusedLinearGRPOLoss`` (its defaults, bnpo), when importable.
- ``cce``: Cut Cross-Entropy's ``linear_cross_entropy`` (impl "cce", its default gradient
  filter), when importable: cross-entropy, not GRPO, in the same FLOP class (one projection
  forward and backward); it recomputes the logits in its backward (8 T V H FLOPs executed, fewer
  where its filter skips blocks), but every row's rate is credited with 6 T V H.

Columns (``KEYS``): time_ms = median of CUDA-event samples (CPU: wall clock), L2 flushed before
each sample, variants interleaved round by round; wall_ms = median host wall time of the same
calls (synchronised); rate = 6 T V H / time in TFLOP/s; pct_ceiling = rate over the bf16 matmul
rate measured here first (one 8,192^3 ``torch.mm``); peak_mem_mb = peak extra memory of one call
(GPU: ``max_memory_allocated``; CPU: the allocator tracker of benchmarks/memory.py), inputs
excluded, gradients included, MiB; max_err = the largest of |x - ref|.max() / |ref|.max() over
the loss, d hidden and d W against the float32 full-logits reference (``cce`` against a float32
full-logits cross-entropy); registers / spills: None (cuBLAS and Triton underneath).
"""
from __future__ import annotations

import gc
import statistics
import time

import torch

OP = "fused_linear_grpo_loss"
KEYS = ("op", "variant", "backend", "shape", "dtype", "time_ms", "wall_ms", "device_ms", "rate", "rate_unit",
        "pct_ceiling", "registers", "spills", "max_err", "peak_mem_mb", "note")
SHAPE = {"tokens": 8192, "vocab": 152064, "hidden": 4096}
DRY_SHAPE = {"tokens": 64, "vocab": 257, "hidden": 32}
# the GPU's configurations, fastest expected first (a short budget keeps the likely winners)
GPU_CONFIGS = ("weight-x1", "weight-x2", "weight-x0.5", "weight-x1-temp", "gpu-32mb-temp")
# the dry run's: the CPU default, the GPU default's budget, the old GPU default, and 16-token chunks
DRY_CONFIGS = ("cpu-12mb", "weight-x1", "gpu-32mb-temp", 16)
IGNORE = -100


# ----------------------------------------------------------------------------- variants

def _leaves(x):
    return x["hidden"].detach().requires_grad_(True), x["weight"].detach().requires_grad_(True)


def _with_grads(h, w, loss_fn):
    """A step: the loss and its gradients (loss, d hidden, d W)."""
    def step():
        loss = loss_fn(h, w)
        loss = loss[0] if isinstance(loss, tuple) else loss
        return (loss.detach(), *torch.autograd.grad(loss, (h, w)))
    return step


def _medix(config, backend):
    import medix_kernels as mk

    from ..ops import loss as L

    def build(x):
        h, w = _leaves(x)
        return _with_grads(h, w, lambda h, w: mk.fused_linear_grpo_loss(
            h, w, x["ids"], x["mask"], x["adv"], old_logp=x["old"], ref_logp=x["ref"], config=L.config(),
            chunk_size=config, backend=backend))
    return build


def _plain(backend):
    import medix_kernels as mk

    from ..ops import loss as L

    def build(x):
        h, w = _leaves(x)
        return _with_grads(h, w, lambda h, w: mk.grpo_loss(
            h @ w.t(), x["ids"], x["mask"], x["adv"], old_logp=x["old"], ref_logp=x["ref"], config=L.config(),
            inplace_backward=True, backend=backend))
    return build


def _liger(dry_run):
    from ..ops import loss as L
    from ..peers import liger_peer

    def build(x):
        cls = liger_peer.fused_linear_grpo_loss_cls()
        kw = {"compiled": False} if dry_run else {}  # compiling its loss math takes a minute on a CPU
        mod = cls(beta=L.BETA, epsilon_low=L.CLIP, epsilon_high=L.CLIP, loss_type="bnpo", use_ref_model=True, **kw)
        h, w = _leaves(x)
        return _with_grads(h, w, lambda h, w: mod(h, w, x["ids"], x["mask"], x["adv"], ref_per_token_logps=x["ref"],
                                                  old_per_token_logps=x["old"]))
    return build


def _cce(device):
    from ..ops.base import Unavailable

    def build(x):
        if device != "cuda":  # its kernels fail in the Triton interpreter; its torch_compile impl is not CCE
            raise Unavailable("Cut Cross-Entropy's Triton kernels need a CUDA GPU")
        try:
            from cut_cross_entropy import linear_cross_entropy
        except Exception as exc:
            raise Unavailable(f"cut_cross_entropy is not importable ({type(exc).__name__}: {exc})") from exc
        h, w = _leaves(x)
        return _with_grads(h, w, lambda h, w: linear_cross_entropy(h, w, x["ce_targets"], impl="cce"))
    return build


def variants(device: str, dry_run: bool) -> list[dict]:
    """[{variant, backend, build, ref, note / config}]: ref names the reference of its error."""
    from medix_kernels import _backend

    from ..ops.base import medix_backends
    auto = _backend.resolve_backend("auto", torch.empty(0, device=device), OP)
    configs = DRY_CONFIGS if dry_run else GPU_CONFIGS
    out = []
    for i, cfg in enumerate(configs):
        name = f"medix-chunk{cfg}" if isinstance(cfg, int) else f"medix-{cfg}"
        for b in ([auto] + [b for b in medix_backends(device) if b not in (auto, "torch")]) if i == 0 else [auto]:
            out.append({"variant": name, "backend": b, "build": _medix(cfg, b), "ref": "grpo", "config": cfg})
    out.append({"variant": "plain", "backend": auto, "build": _plain(auto), "ref": "grpo", "note": NOTES["plain"]})
    out.append({"variant": "liger", "backend": "liger (torch, chunked)", "build": _liger(dry_run), "ref": "grpo",
                "note": NOTES["liger"] + ("; compiled=False (dry run)" if dry_run else "; its defaults (compiled)")})
    out.append({"variant": "cce", "backend": "cce (triton)", "build": _cce(device), "ref": "ce", "note": NOTES["cce"]})
    return out


# ----------------------------------------------------------------------------- measuring

def matmul_tflops(device: str, dry_run: bool) -> float:
    """The bf16 matrix rate of one big ``torch.mm`` (the dry run: fp32, 256^3: meaningless)."""
    n, dtype = (256, torch.float32) if dry_run else (8192, torch.bfloat16)
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    c = torch.empty(n, n, device=device, dtype=dtype)
    times = [_sample(lambda: torch.mm(a, b, out=c), device)[0] for _ in range(8 if dry_run else 13)][3:]
    return 2 * n ** 3 / (statistics.median(times) * 1e-3) / 1e12


def _sample(fn, device, flush=None) -> tuple[float, float]:
    """(ms by CUDA events, or wall clock on the CPU; host wall ms) of one synchronised call."""
    if device != "cuda":
        t0 = time.perf_counter()
        fn()
        ms = (time.perf_counter() - t0) * 1e3
        return ms, ms
    if flush is not None:
        flush.zero_()  # a cold L2 for every sample
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end), (time.perf_counter() - t0) * 1e3


def _peak_call(fn, device) -> tuple[float, tuple]:
    """(peak extra MiB of one call, its outputs)."""
    gc.collect()
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        out = fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - before) / 2**20, out
    from ..memory import allocator_peak_extra
    peak, out = allocator_peak_extra(fn, device)
    return peak / 2**20, out


def _max_err(got, want) -> float:
    return max(((g.float() - r.float()).abs().max() / r.float().abs().max().clamp_min(1e-30)).item()
               for g, r in zip(got, want))


def _inputs(shape, dtype, device):
    from ..ops import loss as L
    x = L._fused_inputs(shape, dtype, device)
    x["ce_targets"] = x["ids"].masked_fill(~x["mask"], IGNORE)
    return x


def _references(x, names) -> dict:
    """The float32 full-logits references: (loss, d hidden, d W) per name."""
    from medix_kernels import reference

    from ..ops import loss as L
    h, w = (t.detach().float().requires_grad_(True) for t in (x["hidden"], x["weight"]))
    fns = {"grpo": lambda h, w: reference.fused_linear_grpo_loss(h, w, x["ids"], x["mask"], x["adv"], old_logp=x["old"],
                                                                 ref_logp=x["ref"], config=L.config()),
           "ce": lambda h, w: torch.nn.functional.cross_entropy((h @ w.t()).flatten(0, 1), x["ce_targets"].flatten(),
                                                                ignore_index=IGNORE)}
    out = {}
    for name in names:
        try:
            out[name] = tuple(t.detach() for t in _with_grads(h, w, fns[name])())
        except Exception as exc:  # e.g. out of memory: the rows say so
            out[name] = f"{type(exc).__name__}: {exc}"[:200]
    return out


# ----------------------------------------------------------------------------- the sweep

NOTES = {
    "plain": "full logits h @ W^T ([T, V] in the input dtype) + grpo_loss(inplace_backward=True)",
    "liger": "LigerFusedLinearGRPOLoss (bnpo, use_ref_model)",
    "cce": "Cut Cross-Entropy linear_cross_entropy(impl='cce', default filter): cross-entropy, not GRPO; "
           "executes ~8 T V H FLOPs (logits recomputed in the backward), rate credited with 6 T V H",
}


def _chunk_note(v, x, device) -> str:
    """Tokens per chunk, chunks, the d W accumulation that ran and the predicted peak."""
    from medix_kernels._fused_linear_chunks import accumulate_mode, peak_bytes
    from medix_kernels.fused_linear import _resolve_chunk
    w = x["weight"]
    t = x["ids"].numel()
    rows, requested = _resolve_chunk(v["config"], t, w, w.dtype, w.device)
    mode = accumulate_mode(requested, w.device, w.dtype)
    pred = peak_bytes(t, w.shape[0], w.shape[1], w.dtype, rows, device=torch.device(device).type,
                      accumulate=mode, bias=False)["peak"]
    return (f"{min(rows, t)} tokens x {-(-t // rows)} chunks; d W accumulation: {mode}; "
            f"predicted peak {pred / 2**20:.1f} MiB (peak_bytes)")


def _prepare(v, x, refs, device) -> tuple[dict, object]:
    """The row's memory, error and note, and the callable to time (None: skipped or failed)."""
    from ..ops.base import Unavailable
    row = {"note": v.get("note", "")}
    try:
        fn = v["build"](x)
        fn()  # warm-up: compiles, autotunes, probes the d W accumulation
        peak, out = _peak_call(fn, device)
    except Unavailable as exc:
        return {"note": f"skipped: {exc}"}, None
    except Exception as exc:  # out of memory, an unsupported shape: reported, not faked
        return {"note": f"error: {type(exc).__name__}: {exc}"[:300]}, None
    ref = refs[v["ref"]]
    row["peak_mem_mb"] = round(peak, 2)
    row["max_err"] = _max_err(out, ref) if isinstance(ref, tuple) else None
    if not isinstance(ref, tuple):
        row["note"] += f"; no reference: {ref}"
    if "config" in v:
        row["note"] = _chunk_note(v, x, device)
    return row, fn


def _time_rounds(fns: dict, device: str, deadline: float, rounds: int) -> dict:
    """{key: [(ms, wall ms)]}: one sample of every variant per round, the order rotated."""
    flush = torch.empty(256 * 2**20, dtype=torch.uint8, device=device) if device == "cuda" else None
    keys = list(fns)
    samples = {k: [] for k in keys}
    last = 0.0
    for r in range(rounds):
        if r > 0 and time.perf_counter() + last > deadline:
            break
        t0 = time.perf_counter()
        for k in keys[r % len(keys):] + keys[:r % len(keys)]:
            samples[k].append(_sample(fns[k], device, flush))
        last = time.perf_counter() - t0
    return samples


def run(device: str, dry_run: bool, budget_s: float) -> list[dict]:
    """Every variant at the GPU shape (dry run: the tiny CPU shape), one dict of ``KEYS`` each."""
    deadline = time.perf_counter() + budget_s
    shape, dtype = (DRY_SHAPE, torch.float32) if dry_run else (SHAPE, torch.bfloat16)
    t, v, hdim = shape["tokens"], shape["vocab"], shape["hidden"]
    flops = 6 * t * v * hdim
    ceiling = matmul_tflops(device, dry_run)
    x = _inputs(shape, dtype, device)
    vs = variants(device, dry_run)
    refs = _references(x, {e["ref"] for e in vs})
    rows, fns = {}, {}
    for e in vs:
        key = (e["variant"], e["backend"])
        rows[key] = dict.fromkeys(KEYS) | {
            "op": OP, "variant": e["variant"], "backend": e["backend"], "dtype": str(dtype).removeprefix("torch."),
            "shape": f"T={t} V={v} H={hdim}", "rate_unit": "TFLOP/s", "note": ""}
        if time.perf_counter() > deadline:
            rows[key]["note"] = "skipped: the sweep's time budget ran out"
            continue
        got, fn = _prepare(e, x, refs, device)
        rows[key].update(got)
        if fn is not None:
            fns[key] = fn
    for key, samples in _time_rounds(fns, device, deadline, 2 if dry_run else 5).items():
        ms = statistics.median(s[0] for s in samples)
        rate = flops / (ms * 1e-3) / 1e12
        rows[key].update(time_ms=round(ms, 4), wall_ms=round(statistics.median(s[1] for s in samples), 4),
                         rate=round(rate, 4), pct_ceiling=round(100 * rate / ceiling, 2))
        rows[key]["note"] += f"; {len(samples)} samples; bf16 matmul ceiling {ceiling:.1f} TFLOP/s" \
            if not dry_run else f"; {len(samples)} samples"
    return list(rows.values())
