"""The GPU-kernel targets, evaluated from the benchmark rows (the suite's CSV columns) and the
ceilings the check measured first (copy bandwidth, bf16 matrix rate). Standard library only.

Every target is judged per medix backend (cuda, triton) on the row of the same run, so ratios
against peers are side by side; ``status`` is "met", "missed" or "n/a" (a row that did not run,
with the reason). ``ratio`` is always "how far past the bar" (>= 1: met).

- bandwidth: bytes_moved / median (the op's minimum traffic) over the measured copy bandwidth
  (bytes read + written per second of a large device-to-device copy): >= the required fraction.
- speedup: the peer's median over medix's median: >= the factor ("ahead of": > 1).
- memory: medix's peak extra memory <= the peer's.
- compute: flops / median over the measured bf16 matrix rate: >= the required fraction.
- auto: per benchmarked shape, ``backend="auto"`` resolves to the faster of cuda / triton (or to
  one whose time is within the noise of the faster: its p10 not above the faster one's p90, or
  within 5%).
"""
from __future__ import annotations

import math

MEDIX_BACKENDS = ("cuda", "triton")

TARGETS = [
    dict(id="slse_bandwidth", op="selective_log_softmax_entropy", kind="bandwidth", need=0.85,
         text="selective_log_softmax + entropy forward: >= 85% of the copy bandwidth (one read of the logits)"),
    dict(id="slse_vs_trl_eager", op="selective_log_softmax_entropy", kind="speedup", peer="trl-eager", need=3.0,
         text="selective_log_softmax + entropy forward: >= 3x TRL's eager formula"),
    dict(id="grpo_bandwidth", op="grpo_loss", kind="bandwidth", need=0.85,
         text="grpo_loss fwd+bwd: >= 85% of the bandwidth floor (logits read twice, gradient written once)"),
    dict(id="grpo_vs_liger", op="grpo_loss", kind="speedup", peer="liger-triton", need=1.5,
         text="grpo_loss fwd+bwd: >= 1.5x Liger's triton_grpo_loss"),
    dict(id="grpo_vs_compile", op="grpo_loss", kind="speedup", peer="torch-compile", need=1.0, strict=True,
         text="grpo_loss fwd+bwd: ahead of torch.compile of the eager loss"),
    dict(id="fl_memory", op="fused_linear_grpo_loss", kind="memory", peer="liger-chunked", need=1.0,
         text="fused_linear_grpo_loss: peak memory <= Liger's LigerFusedLinearGRPOLoss"),
    dict(id="fl_vs_liger", op="fused_linear_grpo_loss", kind="speedup", peer="liger-chunked", need=1.3,
         text="fused_linear_grpo_loss: >= 1.3x LigerFusedLinearGRPOLoss"),
    dict(id="fl_matmul", op="fused_linear_grpo_loss", kind="compute", need=0.70,
         text="fused_linear_grpo_loss: matmuls >= 70% of the measured bf16 matrix rate (6 T V H FLOPs)"),
    dict(id="adv_vs_eager", op="group_advantages", kind="speedup", peer="torch-eager", need=20.0,
         text="group_advantages N = 1M, G = 16: >= 20x eager"),
    dict(id="comp_vs_eager", op="composite_advantages", kind="speedup", peer="torch-eager", need=20.0,
         text="composite_advantages N = 1M, G = 16: >= 20x eager"),
    dict(id="cos_bandwidth", op="cosine_rewards", kind="bandwidth", need=0.80,
         text="cosine_rewards [65,536, 1,024]: >= 80% of the bandwidth floor"),
    dict(id="auto_choice", op=None, kind="auto", need=1.0,
         text="backend='auto' picks the faster of cuda / triton at every benchmarked shape"),
]

COLUMNS = ["target", "op", "shape", "impl", "measured", "value", "required", "ratio", "status", "detail", "text"]


def _f(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def _ok(x) -> bool:
    return isinstance(x, float) and math.isfinite(x)


def _median_s(r: dict) -> float:
    return _f(r.get("median_us")) * 1e-6


def _medix_row(rows: list[dict], backend: str, kind: str):
    """The medix row judged for a backend: medix-<b>, or its in-place variant when faster (both are the
    same kernels; the in-place backward is what a trainer uses for grpo_loss)."""
    cands = [r for r in rows if r["impl"] in (f"medix-{backend}", f"medix-{backend}-inplace")]
    cands = [r for r in cands if _ok(_median_s(r))]
    if not cands:
        return None
    if kind == "memory":
        plain = [r for r in cands if r["impl"] == f"medix-{backend}"]
        return plain[0] if plain else cands[0]
    return min(cands, key=_median_s)


def _why_missing(name: str, op: str, meta: dict) -> str:
    for section in ("skipped", "errors"):
        found = meta.get(section) or {}
        if isinstance(found, dict):
            for key, reason in found.items():
                if key == f"{op} / {name}":
                    return f"{name}: {reason}"
        else:
            for line in found:
                if f" {name}:" in line and line.startswith(op):
                    return line
    if name.startswith("medix-"):
        return (f"no {name} row: the {name[6:]} backend did not run (no GPU here, or no CUDA build: see the build "
                "phase)")
    return f"no {name} row (did not run)"


def _result(t, op, shape, impl, measured, value, required, ratio, status, detail=""):
    return {"target": t["id"], "op": op or "", "shape": shape, "impl": impl, "measured": measured,
            "value": round(value, 4) if _ok(value) else "", "required": required,
            "ratio": round(ratio, 3) if _ok(ratio) else "", "status": status, "detail": detail, "text": t["text"]}


def _judge(ratio: float, strict: bool = False) -> str:
    if not _ok(ratio):
        return "n/a"
    return "met" if (ratio > 1.0 if strict else ratio >= 1.0) else "missed"


def evaluate(rows: list[dict], ceilings: dict, meta: dict | None = None) -> list[dict]:
    """One result per (target, medix backend) (the auto target: one per benchmarked op and shape)."""
    meta = meta or {}
    copy_gbps = _f(ceilings.get("copy_GBps"))
    mm_tflops = _f(ceilings.get("matmul_TFLOPs"))
    out = []
    for t in TARGETS:
        if t["kind"] == "auto":
            out += _auto(t, rows)
            continue
        op_rows = [r for r in rows if r["op"] == t["op"]]
        shapes = list(dict.fromkeys(r["shape"] for r in op_rows)) or [""]
        for shape in shapes:
            case = [r for r in op_rows if r["shape"] == shape]
            for b in MEDIX_BACKENDS:
                mine = _medix_row(case, b, t["kind"])
                if mine is None:
                    out.append(_result(t, t["op"], shape, f"medix-{b}", "", float("nan"), t["need"], float("nan"),
                                       "n/a", _why_missing(f"medix-{b}", t["op"], meta)))
                    continue
                out.append(_one(t, case, mine, shape, copy_gbps, mm_tflops, meta))
    return out


def _one(t, case, mine, shape, copy_gbps, mm_tflops, meta):
    med = _median_s(mine)
    impl = mine["impl"]
    if t["kind"] == "bandwidth":
        gbps = _f(mine["bytes_moved"]) / med / 1e9
        frac = gbps / copy_gbps if copy_gbps > 0 else float("nan")
        floor_us = _f(mine["bytes_moved"]) / (copy_gbps * 1e9) * 1e6 if copy_gbps > 0 else float("nan")
        measured = (f"{gbps:.1f} GB/s = {frac:.1%} of copy {copy_gbps:.0f} GB/s "
                    f"({med * 1e3:.3f} ms; floor {floor_us / 1e3:.3f} ms)")
        return _result(t, t["op"], shape, impl, measured, frac, t["need"], frac / t["need"], _judge(frac / t["need"]))
    if t["kind"] == "compute":
        tflops = _f(mine["flops"]) / med / 1e12
        frac = tflops / mm_tflops if mm_tflops > 0 else float("nan")
        measured = f"{tflops:.1f} TFLOP/s = {frac:.1%} of matmul {mm_tflops:.0f} TFLOP/s ({med * 1e3:.2f} ms)"
        return _result(t, t["op"], shape, impl, measured, frac, t["need"], frac / t["need"], _judge(frac / t["need"]))
    peer = next((r for r in case if r["impl"] == t["peer"]), None)
    if peer is None:
        return _result(t, t["op"], shape, impl, "", float("nan"), t["need"], float("nan"), "n/a",
                       _why_missing(t["peer"], t["op"], meta))
    if t["kind"] == "speedup":
        x = _median_s(peer) / med
        measured = f"x{x:.2f} ({impl} {med * 1e3:.3f} ms vs {t['peer']} {_median_s(peer) * 1e3:.3f} ms)"
        return _result(t, t["op"], shape, impl, measured, x, t["need"], x / t["need"],
                       _judge(x / t["need"], t.get("strict", False)))
    # memory: medix's peak <= the peer's
    mine_mb, peer_mb = _f(mine.get("peak_mem_MB")), _f(peer.get("peak_mem_MB"))
    if not (_ok(mine_mb) and _ok(peer_mb)):
        notes = [part for r in (mine, peer) for part in (r.get("note") or "").split("; ")
                 if part.startswith("memory not measured")]
        return _result(t, t["op"], shape, impl, "", float("nan"), t["need"], float("nan"), "n/a",
                       "; ".join(notes) or "peak memory not measured (no allocator counters: a dry run)")
    ratio = peer_mb / mine_mb if mine_mb > 0 else float("inf")
    measured = f"{mine_mb:.0f} MB vs {t['peer']} {peer_mb:.0f} MB"
    return _result(t, t["op"], shape, impl, measured, mine_mb / peer_mb if peer_mb > 0 else float("nan"), t["need"],
                   ratio, _judge(ratio))


def _auto(t, rows):
    out = []
    cases = {}
    for r in rows:
        if r["role"] == "ours":
            cases.setdefault((r["op"], r["shape"]), []).append(r)
    for (op, shape), case in cases.items():
        cands = {b: next((r for r in case if r["impl"] == f"medix-{b}" and _ok(_median_s(r))), None)
                 for b in MEDIX_BACKENDS}
        cands = {b: r for b, r in cands.items() if r is not None}
        auto = next((r for r in case if r["impl"] == "medix-auto"), None)
        resolved = auto["backend"].split("->", 1)[1].split(" ")[0] if auto and "->" in auto["backend"] else ""
        times = ", ".join(f"{b} {_median_s(r) * 1e3:.3f} ms" for b, r in cands.items())
        if len(cands) < 2:
            out.append(_result(t, op, shape, "medix-auto", f"auto -> {resolved or '?'}; {times}", float("nan"), 1.0,
                               float("nan"), "n/a", "needs both medix-cuda and medix-triton rows"))
            continue
        best_b, best = min(cands.items(), key=lambda kv: _median_s(kv[1]))
        chosen = cands.get(resolved)
        if chosen is None:
            out.append(_result(t, op, shape, "medix-auto", f"auto -> {resolved or '?'}; {times}", float("nan"), 1.0,
                               float("nan"), "n/a", "auto resolved to a backend without a row"))
            continue
        slowdown = _median_s(chosen) / _median_s(best)
        noise = _f(chosen["p10_us"]) <= _f(best["p90_us"]) or slowdown <= 1.05
        status = "met" if chosen is best or noise else "missed"
        detail = "" if chosen is best else (f"{best_b} faster by x{slowdown:.3f}" + (" (within the noise)" if noise
                                                                                     else ""))
        if auto is not None and _ok(_median_s(auto)):
            detail = (detail + "; " if detail else "") + f"medix-auto measured {_median_s(auto) * 1e3:.3f} ms"
        out.append(_result(t, op, shape, "medix-auto", f"auto -> {resolved}; fastest {best_b}; {times}",
                           slowdown, 1.0, 1.0 / slowdown, status, detail))
    if not out:
        out.append(_result(t, None, "", "medix-auto", "", float("nan"), 1.0, float("nan"), "n/a", "no medix rows"))
    return out


def markdown(results: list[dict]) -> str:
    lines = ["| target | op / shape | medix | measured | required | ratio | status |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in results:
        req = r["required"]
        kind = next((t["kind"] for t in TARGETS if t["id"] == r["target"]), "")
        req_s = {"bandwidth": f">= {req:.0%} of copy", "compute": f">= {req:.0%} of matmul",
                 "memory": "<= peer", "auto": "fastest"}.get(kind)
        if req_s is None:
            req_s = "> x1 (ahead)" if r["target"] == "grpo_vs_compile" else f">= x{req:g}"
        status = {"met": "**met**", "missed": "**MISSED**"}.get(r["status"], r["status"])
        measured = r["measured"] or r["detail"]
        if r["measured"] and r["detail"]:
            measured += f" ({r['detail']})"
        lines.append(f"| {r['target']} | {r['op']} {r['shape']} | {r['impl']} | {measured} | {req_s} | "
                     f"{r['ratio']} | {status} |")
    return "\n".join(lines)


def counts(results: list[dict]) -> dict:
    c = {"met": 0, "missed": 0, "n/a": 0}
    for r in results:
        c[r["status"]] = c.get(r["status"], 0) + 1
    return c
