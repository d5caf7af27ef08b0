"""What a sweep CSV says: winners.md (the fastest correct variant per op and shape, the targets of
issue 25 met or not, what ``auto`` runs) and the medix_kernels/_defaults.py table it implies
(``python -m benchmarks.gpu.sweep --print-defaults OUT/sweep.csv``)."""
from __future__ import annotations

import json
from pathlib import Path

from medix_kernels._defaults import kernel_config

MEDIX = ("triton", "cuda", "torch")
AUTO_OP = {"logprob_fwd": "selective_log_softmax", "grpo_loss": "grpo_loss", "cosine_rewards": "cosine_rewards",
           "group_advantages": "group_advantages", "composite_advantages": "composite_advantages",
           "fused_linear_grpo_loss": "fused_linear_grpo_loss"}
KERNEL_OPS = {"logprob_fwd": "logprob_fwd", "logprob_bwd": "logprob_bwd", "cosine": "cosine_rewards"}


def _f(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def correct(r: dict) -> bool:
    return _f(r.get("max_err")) <= 1.0 and _f(r.get("time_ms")) > 0


def _timed(rows, op, shape=None, pick=lambda r: True, key="time_ms"):
    out = [r for r in rows if r["op"] == op and (shape is None or r["shape"] == shape) and correct(r) and pick(r)
           and _f(r.get(key)) > 0]
    return sorted(out, key=lambda r: _f(r[key]))


def _cases(rows):
    return list(dict.fromkeys((r["op"], r["shape"]) for r in rows))


def _medix(r) -> bool:
    return r["backend"] in MEDIX


def winners_table(rows) -> list[str]:
    L = ["| op | shape | fastest correct | ms | % copy | fastest medix | ms | fastest peer | ms | peer / medix |",
         "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for op, shape in _cases(rows):
        ok = _timed(rows, op, shape)
        if not ok:
            L.append(f"| {op} | {shape} | (no correct row) | | | | | | | |")
            continue
        best, med = ok[0], _timed(rows, op, shape, _medix)
        peer = _timed(rows, op, shape, lambda r: not _medix(r))
        m = med[0] if med else None
        p = peer[0] if peer else None
        ratio = f"x{_f(p['time_ms']) / _f(m['time_ms']):.2f}" if m and p else ""
        med_s = f"{m['variant']} ({m['backend']}) | {m['time_ms']}" if m else "- | "
        peer_s = f"{p['variant']} | {p['time_ms']}" if p else "- | "
        L.append(f"| {op} | {shape} | {best['variant']} ({best['backend']}) | {best['time_ms']} | "
                 f"{best.get('pct_ceiling', '')} | {med_s} | {peer_s} | {ratio} |")
    return L


def _ratio_target(rows, op, peer_pick, need, label):
    med, peer = _timed(rows, op, pick=_medix), _timed(rows, op, pick=peer_pick)
    if not med or not peer:
        return (label, "no correct medix or peer row", f">= x{need}", "n/a")
    x = _f(peer[0]["time_ms"]) / _f(med[0]["time_ms"])
    return (label, f"x{x:.2f} ({med[0]['variant']} {med[0]['time_ms']} ms vs {peer[0]['variant']} "
            f"{peer[0]['time_ms']} ms)", f">= x{need}", "met" if x >= need else "MISSED")


def _copy_target(rows, op, need, label):
    med = _timed(rows, op, pick=_medix)
    if not med:
        return (label, "no correct medix row", f">= {need}% of copy", "n/a")
    pct = _f(med[0].get("pct_ceiling"))
    return (label, f"{pct:.1f}% ({med[0]['variant']}, {med[0]['time_ms']} ms)", f">= {need}% of copy",
            "met" if pct >= need else "MISSED")


def _advantage_targets(rows, copy_gbps) -> list[tuple]:
    out = []
    for op in ("group_advantages", "composite_advantages"):
        for _, shape in [c for c in _cases(rows) if c[0] == op]:
            med = _timed(rows, op, shape, _medix, key="device_ms")
            eager = _timed(rows, op, shape, lambda r: r["backend"] == "eager", key="wall_ms")
            if med and copy_gbps:
                r = med[0]
                floor_ms = _f(r["rate"]) * _f(r["time_ms"]) / copy_gbps  # bytes / copy bandwidth
                x = _f(r["device_ms"]) / floor_ms
                out.append((f"{op} device time", f"{shape}: {r['device_ms']} ms = x{x:.1f} the floor {floor_ms:.4f} ms "
                            f"({r['variant']})", "<= x2 the floor", "met" if x <= 2 else "MISSED"))
            wall = _timed(rows, op, shape, _medix, key="wall_ms")
            if wall and eager:
                a, b = _f(wall[0]["wall_ms"]), _f(eager[0]["wall_ms"])
                out.append((f"{op} wall time", f"{shape}: {a:.4g} ms ({wall[0]['variant']}) vs eager {b:.4g} ms",
                            "<= eager", "met" if a <= b else "MISSED"))
    return out


def _auto_targets(rows, auto: dict) -> list[tuple]:
    out = []
    for key, resolved in auto.items():
        op, shape = key.split(" ", 1)
        api = _timed(rows, op, shape, lambda r: _medix(r) and r["variant"].startswith("api-"), key="wall_ms")
        if not api:
            continue
        best = api[0]["backend"]
        timed = {r["backend"] for r in api}
        status = ("met" if resolved == best else "MISSED") if resolved in timed else "n/a"
        out.append(("auto picks the fastest backend", f"{key}: auto -> {resolved}, fastest {best}"
                    + ("" if resolved in timed else f" ({resolved} not timed here)"), "same", status))
    return out


def targets(rows, meta) -> list[tuple]:
    copy = _f((meta.get("ceilings") or {}).get("copy_GBps"))
    t = [_copy_target(rows, "logprob_fwd", 85, "log-prob + entropy forward, % of copy"),
         _ratio_target(rows, "logprob_fwd", lambda r: r["backend"] == "trl", 1.5, "log-prob + entropy vs TRL Triton"),
         _ratio_target(rows, "grpo_loss", lambda r: r["backend"] == "liger", 1.2, "grpo_loss fwd+bwd vs Liger"),
         _copy_target(rows, "cosine_rewards", 85, "cosine_rewards, % of copy")]
    t += _advantage_targets(rows, copy)
    fl = [r for r in rows if r["op"] == "fused_linear_grpo_loss"]
    if fl:
        t.append(_copy_target(rows, "fused_linear_grpo_loss", 60, "fused_linear_grpo_loss, % of its ceiling"))
        t.append(_ratio_target(rows, "fused_linear_grpo_loss", lambda r: "liger" in r["backend"], 4,
                               "fused_linear_grpo_loss vs Liger"))
    for op in ("logprob_fwd", "logprob_bwd", "grpo_loss", "cosine_rewards", "group_advantages"):
        have = [r for r in rows if r["op"] == op and r["backend"] == "cuda" and _f(r.get("time_ms")) > 0]
        status = "met" if have else ("MISSED" if meta.get("cuda_backend") else "n/a")
        t.append((f"CUDA backend timed: {op}", f"{len(have)} row(s)" + ("" if meta.get("cuda_backend") else
                                                                         " (no cuda backend here)"), ">= 1", status))
    return t + _auto_targets(rows, meta.get("auto") or {})


def winners(rows: list[dict], meta: dict) -> str:
    v = meta.get("versions", {})
    c = meta.get("ceilings", {})
    L = [f"# Sweep: {v.get('gpu', {}).get('name', v.get('device', '?'))}, {v.get('date', '?')}", ""]
    if meta.get("dry_run"):
        L += ["**DRY RUN** (CPU, Triton interpreted, tiny shapes): every number is meaningless; only the "
              "correctness column and the plumbing are checked.", ""]
    L.append(f"torch {v.get('torch')} (CUDA {v.get('cuda')}), triton {v.get('triton')}, Liger "
             f"{v.get('liger_kernel')}, TRL {v.get('trl')}. Ceilings: copy {c.get('copy_GBps')} GB/s, bf16 matmul "
             f"{c.get('matmul_TFLOPs')} TFLOP/s. {len(rows)} rows, {meta.get('elapsed_s')} s.")
    L += ["", "## Fastest correct variant per op and shape", ""] + winners_table(rows)
    L += ["", "## Targets (issue 25)", "", "| target | measured | required | status |", "| --- | --- | --- | --- |"]
    L += [f"| {a} | {b} | {c_} | {d} |" for a, b, c_, d in targets(rows, meta)]
    bad = [r for r in rows if not correct(r)]
    if bad:
        L += ["", "## Rows that failed or are over their error bar", ""]
        L += [f"- {r['op']} {r['variant']} ({r['backend']}): max_err {r.get('max_err') or '-'}; {r['note']}"
              for r in bad]
    if meta.get("skipped"):
        L += ["", "## Skipped", ""] + [f"- {k}: {why}" for k, why in meta["skipped"].items()]
    return "\n".join(L) + "\n"


# ----------------------------------------------------------------------------- the defaults table

def _kernel_choice(rows, kernel: str, source: str) -> str | None:
    from medix_kernels.triton_kernels import configs
    names = configs.REGISTRIES[kernel]
    ok = _timed(rows, KERNEL_OPS[kernel], pick=lambda r: r["backend"] == "triton" and r["variant"] in names)
    if not ok:
        return None
    base = [r for r in ok if r["variant"] == "v1_baseline"]
    vs = f" vs v1_baseline {base[0]['time_ms']} ms" if base else ""
    return f'Choice("{ok[0]["variant"]}", "{source}: {ok[0]["time_ms"]} ms{vs} at {ok[0]["shape"]}")'


def _grpo_path(rows, source: str) -> str | None:
    """The fastest correct path with the default kernel configurations (the table sets those separately)."""
    names = {"lean fwd=" + kernel_config("logprob_fwd"): "lean", "single_pass": "single_pass", "composed": "composed"}
    ok = _timed(rows, "grpo_loss", pick=lambda r: r["variant"] in names)
    if not ok:
        return None
    path = names[ok[0]["variant"]]
    return f'Choice("{path}", "{source}: {ok[0]["variant"]} {ok[0]["time_ms"]} ms")'


def _auto_choice(rows, op: str, sizes: dict, source: str) -> str | None:
    """AutoRules for one op: the backends ranked by wall time per shape (small shapes first)."""
    rules = []
    for _, shape in [c for c in _cases(rows) if c[0] == op]:
        api = _timed(rows, op, shape, lambda r: _medix(r) and r["variant"].startswith("api-"), key="wall_ms")
        order = list(dict.fromkeys(r["backend"] for r in api))
        if not order:
            continue
        order += [b for b in ("torch",) if b not in order]
        rules.append((sizes.get(f"{op} {shape}"), tuple(order), shape))
    if not rules:
        return None
    rules.sort(key=lambda r: r[0] or 0)
    merged = []
    for n, order, shape in rules:  # consecutive sizes with the same ranking: one rule
        if merged and merged[-1][1] == order:
            merged[-1] = (n, order, merged[-1][2] + ", " + shape)
        else:
            merged.append((n, order, shape))
    parts = []
    for i, (n, order, _) in enumerate(merged):
        last = i == len(merged) - 1
        parts.append(f"AutoRule({order!r}" + ("" if last or n is None else f", max_numel={n}") + ")")
    return f"Choice(({', '.join(parts)},), \"{source}: wall time at {'; '.join(m[2] for m in merged)}\")"


def implied_defaults(rows: list[dict], source: str, meta: dict | None = None) -> str:
    """Python source of KERNEL_CONFIGS and AUTO_BACKENDS for medix_kernels/_defaults.py."""
    from medix_kernels import _defaults
    if meta is None and Path(str(source)).suffix == ".csv":
        mp = Path(str(source)).with_suffix(".meta.json")
        meta = json.loads(mp.read_text()) if mp.exists() else {}
    sizes = (meta or {}).get("auto_sizes", {})
    L = [f"# The table {source} implies (python -m benchmarks.gpu.sweep --print-defaults); paste into "
         "medix_kernels/_defaults.py.", "KERNEL_CONFIGS = {"]
    for kernel in ("logprob_fwd", "logprob_bwd", "cosine"):
        got = _kernel_choice(rows, kernel, source)
        L.append(f'    "{kernel}": {got or repr(_defaults.KERNEL_CONFIGS[kernel]) + "  # no correct row: unchanged"},')
    got = _grpo_path(rows, source)
    L.append(f'    "grpo_loss_triton": {got or repr(_defaults.KERNEL_CONFIGS["grpo_loss_triton"])},')
    L += ["}", "", "AUTO_BACKENDS = {"]
    for key, choice in _defaults.AUTO_BACKENDS.items():
        if key[1] == "*":
            L.append(f"    {key!r}: {choice!r},")
    for op, auto_op in AUTO_OP.items():
        got = _auto_choice(rows, op, sizes, source)
        if got:
            L.append(f'    ("cuda", "{auto_op}"): {got},')
    return "\n".join(L + ["}"]) + "\n"
