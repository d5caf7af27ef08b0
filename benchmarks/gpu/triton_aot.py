"""Compile every configuration of the Triton kernels for a GPU architecture without a GPU, and read
registers and stack (spills) from the cubin: the CPU-side half of the sweep's register / spill
columns (on a GPU the sweep reads ``n_regs`` / ``n_spills`` from the launched kernel instead).

    python -m benchmarks.gpu.triton_aot [--arch 90] [--dtype bf16]

Triton's NVIDIA backend compiles to PTX and a cubin on any machine (its own ptxas);
``cuobjdump --dump-resource-usage`` (shipped with Triton) reads the registers and the stack
frame, which is where spills go. Pointer and size arguments are marked 16-divisible, as Triton
specialises them at the issue's shapes (V = 152,064, D = 1,024), so the loads vectorise as they
would there.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile

_KERNELS = {}  # kernel name -> (jit function, {arg: type}, divisible arg names)


def _specs():
    if _KERNELS:
        return _KERNELS
    from medix_kernels.triton_kernels import cosine, logprob_kernels, policy, single_pass
    _KERNELS.update({
        "grpo_row": (single_pass.grpo_row_kernel,
                     dict(logits_ptr="*{dt}", out_ptr="*{dt}", ids_ptr="*i64", mask_ptr="*i1", adv_ptr="*fp32",
                          old_ptr="*fp32", ref_ptr="*fp32", coef_ptr="*fp32", logp_ptr="*fp32", ent_ptr="*fp32",
                          V="i32", L="i32", stride_row="i64", out_stride_row="i64", adv_stride_b="i64",
                          adv_stride_l="i64", inv_temp="fp32", scale="fp32", clip_low="fp32", clip_high="fp32",
                          dual_clip="fp32", beta="fp32"),
                     ("logits_ptr", "out_ptr", "V", "stride_row", "out_stride_row")),
        "policy_weights": (single_pass.policy_weights_kernel,
                           dict(mask_ptr="*i1", coef_ptr="*fp32", B="i32", L="i32", norm="fp32"), ()),
        "scale_unless_one": (single_pass.scale_unless_one_kernel,
                             dict(x_ptr="*{dt}", g_ptr="*fp32", n_cols="i32", stride_row="i64"),
                             ("x_ptr", "n_cols", "stride_row")),
        "logprob_fwd": (logprob_kernels.logprob_fwd_kernel,
                        dict(logits_ptr="*{dt}", ids_ptr="*i64", row_mask_ptr="*i1", logp_ptr="*fp32",
                             lse_ptr="*fp32", ent_ptr="*fp32", T="i32", V="i32", stride_row="i64", scale="fp32"),
                        ("logits_ptr", "V", "stride_row")),
        "logprob_bwd": (logprob_kernels.logprob_bwd_kernel,
                        dict(logits_ptr="*{dt}", out_ptr="*{dt}", ids_ptr="*i64", lse_ptr="*fp32", glp_ptr="*fp32",
                             ent_ptr="*fp32", gent_ptr="*fp32", gscale_ptr="*fp32", seqcoef_ptr="*fp32", V="i32",
                             L="i32", seg_len="i64", stride_row="i64", out_stride_row="i64", inv_temp="fp32",
                             scale="fp32"),
                        ("logits_ptr", "out_ptr", "V", "seg_len", "stride_row", "out_stride_row")),
        "cosine": (cosine._cosine_kernel,
                   dict(x_ptr="*{dt}", y_ptr="*{dt}", out_ptr="*fp32", B="i32", D="i32", x_stride="i64",
                        y_stride="i64", eps="fp32", threshold="fp32"),
                   ("x_ptr", "y_ptr", "D", "x_stride", "y_stride")),
        "policy_seq": (policy.policy_seq_kernel,
                       dict(logp_ptr="*fp32", old_ptr="*fp32", ref_ptr="*fp32", adv_ptr="*fp32", mask_ptr="*i1",
                            ent_ptr="*fp32", dlt_ptr="*fp32", part_ptr="*fp32", L="i32", adv_stride_b="i64",
                            adv_stride_l="i64", clip_low="fp32", clip_high="fp32", dual_clip="fp32", beta="fp32"),
                       ()),
        "policy_finalize": (policy.policy_finalize_kernel,
                            dict(part_ptr="*fp32", coef_ptr="*fp32", out_ptr="*fp32", B="i32", norm="fp32"), ()),
    })
    return _KERNELS


def constexprs(kernel: str, cfg, dtype: str = "bf16") -> tuple[dict, int]:
    """The compile-time arguments and warps of one launch of ``kernel`` with config ``cfg`` at the
    issue's shapes (what the launchers in medix_kernels.triton_kernels pass)."""
    if kernel == "logprob_fwd":
        return dict(WITH_ENTROPY=True, HAS_ROW_MASK=False, ROWS=cfg.rows, BLOCK_V=cfg.block_v, ACC=cfg.acc,
                    NUM_STAGES=cfg.num_stages, EXP2=cfg.exp2, PEEL_TAIL=cfg.peel_tail), cfg.num_warps
    if kernel == "logprob_bwd":
        return dict(HAS_GRAD_ENTROPY=False, SCALED=False, BLOCK_V=cfg.block_v, NUM_STAGES=cfg.num_stages,
                    EXP2=cfg.exp2, EVICT="evict_first" if cfg.evict_first else ""), cfg.num_warps
    if kernel == "cosine":
        from medix_kernels.triton_kernels.cosine import launch_shape
        rows, block_d, warps = launch_shape(cfg, 65536, 1024, 2 if dtype in ("bf16", "fp16") else 4)
        return dict(HAS_THRESHOLD=True, BLOCK_B=rows, BLOCK_D=block_d, TRACK_MAX=cfg.track_max), warps
    if kernel == "policy_seq":
        return dict(HAS_OLD=True, WITH_ENTROPY=True, RATIO="token", CISPO=False, DUAL_CLIP=True, KL="k3",
                    BLOCK_L=1024), 4
    if kernel == "policy_finalize":
        return dict(AGG="seq-mean-token-mean", BLOCK_B=256), 4
    if kernel == "grpo_row":  # the single pass launches with the forward's configuration (one row per program)
        return dict(WITH_ENTROPY=False, HAS_OLD=True, CISPO=False, DUAL_CLIP=True, KL="k3", BLOCK_V=cfg.block_v,
                    ACC=cfg.acc, NUM_STAGES=cfg.num_stages, EXP2=cfg.exp2), cfg.num_warps
    if kernel == "policy_weights":
        return dict(AGG="seq-mean-token-mean", BLOCK_B=16, BLOCK_L=256), 4
    if kernel == "scale_unless_one":
        return dict(BLOCK=4096), 8
    raise KeyError(kernel)


def compile_kernel(kernel: str, const: dict, num_warps: int, dtype: str = "bf16", arch: int = 90):
    """Triton's CompiledKernel (ptx, cubin) for ``kernel`` with these compile-time arguments."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    fn, types, divisible = _specs()[kernel]
    sig = {name: t.format(dt=dtype) for name, t in types.items()}
    names = list(sig)
    sig.update(dict.fromkeys(const, "constexpr"))
    attrs = {(names.index(n),): [["tt.divisibility", 16]] for n in divisible}
    src = ASTSource(fn=fn, signature=sig, constexprs=const, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})


def _cuobjdump():
    import triton.backends.nvidia as nv
    path = os.path.join(os.path.dirname(nv.__file__), "bin", "cuobjdump")
    return path if os.path.exists(path) else None


def resource_usage(compiled) -> dict:
    """{"registers", "stack", "shared"} of a compiled kernel's cubin (cuobjdump), or {} without the tool."""
    tool = _cuobjdump()
    if tool is None:
        return {}
    with tempfile.NamedTemporaryFile("wb", suffix=".cubin", delete=False) as fh:
        fh.write(compiled.asm["cubin"])
    try:
        out = subprocess.run([tool, "--dump-resource-usage", fh.name], capture_output=True, text=True,
                             timeout=60).stdout
    finally:
        os.unlink(fh.name)
    m = re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+)", out)
    return {"registers": int(m.group(1)), "stack": int(m.group(2)), "shared": int(m.group(3))} if m else {}


def report(dtype: str = "bf16", arch: int = 90, kernels=None) -> list[dict]:
    """One row per (kernel, config): registers, stack (bytes; > 0 means spills), shared, or the error."""
    from medix_kernels.triton_kernels import configs
    rows = []
    one = {"default": None}
    extra = {"policy_seq": one, "policy_finalize": one, "policy_weights": one, "scale_unless_one": one,
             "grpo_row": {k: c for k, c in configs.LOGPROB_FWD_CONFIGS.items() if c.rows == 1}}
    for kernel in kernels or ("logprob_fwd", "logprob_bwd", "cosine", "policy_seq", "policy_finalize", "grpo_row",
                              "policy_weights", "scale_unless_one"):
        table = configs.REGISTRIES.get(kernel) or extra[kernel]
        for name, cfg in table.items():
            row = {"kernel": kernel, "config": name, "arch": f"sm_{arch}", "dtype": dtype}
            try:
                const, warps = constexprs(kernel, cfg, dtype)
                row.update(resource_usage(compile_kernel(kernel, const, warps, dtype, arch)))
            except Exception as exc:  # a config that does not compile is a finding, reported
                row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
            rows.append(row)
    return rows


def switch_matrix() -> list[tuple[str, dict, int, str]]:
    """(kernel, constexprs, warps, dtype) for every compile-time path the public ops can take with the
    default configurations: each logits dtype, entropy on / off, row mask, the lean loss's scaled
    backward, every loss type / KL / aggregation switch of the policy kernels, cosine with and
    without a threshold (the interpreter runs these paths; this checks that they also compile)."""
    from medix_kernels._defaults import kernel_config
    from medix_kernels.triton_kernels import configs
    fwd = configs.lookup("logprob_fwd", kernel_config("logprob_fwd"))
    bwd = configs.lookup("logprob_bwd", kernel_config("logprob_bwd"))
    cos = configs.lookup("cosine", kernel_config("cosine"))
    out = []
    for dt in ("fp32", "bf16", "fp16"):
        const, warps = constexprs("logprob_fwd", fwd, dt)
        for ent in (False, True):
            for mask in (False, True):
                out.append(("logprob_fwd", {**const, "WITH_ENTROPY": ent, "HAS_ROW_MASK": mask}, warps, dt))
        const, warps = constexprs("logprob_bwd", bwd, dt)
        for ge, scaled in ((False, False), (True, False), (False, True)):
            out.append(("logprob_bwd", {**const, "HAS_GRAD_ENTROPY": ge, "SCALED": scaled}, warps, dt))
        const, warps = constexprs("cosine", cos, dt)
        for thr in (False, True):
            out.append(("cosine", {**const, "HAS_THRESHOLD": thr}, warps, dt))
    base, warps = constexprs("policy_seq", None)
    for ratio, cispo in (("token", False), ("token", True), ("gspo", False), ("gspo_token", False)):
        for kl in ("", "k1", "k2", "k3"):
            for has_old in (False, True):
                out.append(("policy_seq", {**base, "RATIO": ratio, "CISPO": cispo, "KL": kl, "HAS_OLD": has_old,
                                           "DUAL_CLIP": not cispo, "WITH_ENTROPY": has_old}, warps, "bf16"))
    for kernel in ("policy_finalize", "policy_weights"):
        base, warps = constexprs(kernel, None)
        for agg in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum", "seq-mean-token-sum-norm"):
            out.append((kernel, {**base, "AGG": agg}, warps, "bf16"))
    for dt in ("fp32", "bf16", "fp16"):
        base, warps = constexprs("grpo_row", fwd)
        for cispo, kl, has_old, ent in ((False, "k3", True, True), (True, "", False, False), (False, "k1", True, False),
                                        (False, "k2", False, True)):
            out.append(("grpo_row", {**base, "CISPO": cispo, "DUAL_CLIP": not cispo, "KL": kl, "HAS_OLD": has_old,
                                     "WITH_ENTROPY": ent}, warps, dt))
        base, warps = constexprs("scale_unless_one", None)
        out.append(("scale_unless_one", base, warps, dt))
    return out


def compile_matrix(arch: int = 90) -> list[dict]:
    """switch_matrix() compiled: one row per entry with its registers / stack, or its error."""
    rows = []
    for kernel, const, warps, dt in switch_matrix():
        row = {"kernel": kernel, "dtype": dt, "switches": {k: v for k, v in const.items()
                                                           if k not in ("BLOCK_V", "BLOCK_L", "BLOCK_B", "BLOCK_D")}}
        try:
            row.update(resource_usage(compile_kernel(kernel, const, warps, dt, arch)))
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        rows.append(row)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu.triton_aot", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", type=int, default=90)
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--matrix", action="store_true", help="also every compile-time path of the default configs")
    args = p.parse_args(argv)
    rows = report(args.dtype, args.arch)
    for r in rows:
        print(f"{r['kernel']:16s} {r['config']:32s} regs {r.get('registers', '?'):>4} stack {r.get('stack', '?'):>4} "
              f"shared {r.get('shared', '?'):>6} {r.get('error', '')}")
    if args.matrix:
        rows += compile_matrix(args.arch)
        for r in rows[-len(switch_matrix()):]:
            print(f"{r['kernel']:16s} {r['dtype']:5s} regs {r.get('registers', '?'):>4} stack {r.get('stack', '?'):>4} "
                  f"{r.get('error', '')} {r['switches']}")
    return 1 if any("error" in r for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
