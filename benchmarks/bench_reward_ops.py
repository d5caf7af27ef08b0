"""Reward-side ops (group_advantages, composite_advantages, cosine_rewards): a wrapper over the
suite, ``python -m benchmarks --ops group_advantages,composite_advantages,cosine_rewards``, plus
ragged groups (``group_advantages_ragged``, defined here: group sizes uniform in 1..16, so
singletons occur; medix with ``group_index`` against an eager segment-sum formulation and
torch.compile of it). Writes benchmarks/results/reward_ops_cpu.csv (one CSV with every op's
rows; the ragged rows without peak memory) and .meta.json.

Besides the suite's sweep (``--no-anchors``: only it) the shapes this script measured before it
wrapped the suite: N = 1024 ... 1,048,576 with groups of 5, 8, 16 and 64, composite rewards with
groups of 5 and 8 (whole groups, N - N % G), cosine 256 x 384, 1024 x 1024, 8192 x 1024.

Each row: median of interleaved rounds (A B C, B C A, ...), the load average at the start and
end of its case, ``x_vs_compile`` / ``x_vs_eager`` = that peer's median / this row's median.
``medix-cpu`` is the public wrapper (argument checks included); the op alone, called through
``torch.ops.medix``, is in the ``medix-cpu-op`` rows (the difference is the wrapper's cost).

    python benchmarks/bench_reward_ops.py [--quick] [--report] [--no-ragged] [--no-anchors] [other suite options]
"""
import csv
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.__main__ import main

NAME = "reward_ops_cpu"
OPS = "group_advantages,composite_advantages,cosine_rewards"


def eager_ragged_group_advantages(r, seg, num_groups: int, eps: float = 1e-6):
    """Ragged GRPO advantages in plain PyTorch: seg[i] = dense group id (0..G-1) of sample i;
    segment sums by index_add_, a group of one gets 0."""
    import torch
    count = torch.zeros(num_groups, dtype=r.dtype, device=r.device).index_add_(0, seg, torch.ones_like(r))
    mean = torch.zeros(num_groups, dtype=r.dtype, device=r.device).index_add_(0, seg, r) / count
    dev = r - mean[seg]
    var = torch.zeros(num_groups, dtype=r.dtype, device=r.device).index_add_(0, seg, dev * dev)
    std = (var / (count - 1).clamp_min(1)).sqrt()
    adv = dev / (std[seg] + eps)
    return torch.where(count[seg] > 1, adv, torch.zeros_like(adv))


def _ragged_spec():
    import torch

    from benchmarks.ops.base import Impl, OpSpec, compiled, generator, medix_backends

    def cases(profile, device):
        sizes = {"smoke": [64], "quick": [1024, 65536]}.get(profile, [1024, 8192, 16384, 65536, 262144, 524288,
                                                                      1048576])
        return [dict(n=n, group=16) for n in sizes + ([4194304] if profile == "full" else [])]

    def inputs(p, dtype, device):
        g = generator(device)
        sizes = torch.randint(1, p["group"] + 1, (p["n"],), generator=g, device=device)
        sizes = sizes[: int((sizes.cumsum(0) <= p["n"]).sum())]
        rest = p["n"] - int(sizes.sum())
        if rest:
            sizes = torch.cat([sizes, sizes.new_tensor([rest])])
        seg = torch.repeat_interleave(torch.arange(sizes.numel(), device=device), sizes)
        return {"r": torch.rand(p["n"], generator=g, device=device), "seg": seg, "G": int(sizes.numel())}

    def impls(device):
        import medix_kernels as mk
        out = [Impl(f"medix-{b}", "medix", b, lambda x, b=b: (lambda: mk.group_advantages(x["r"], group_index=x["seg"],
                                                                                           backend=b)),
                    auto_candidate=True) for b in medix_backends(device)]
        if "cpu" in medix_backends(device):
            def op_build(x):
                offsets = torch.ops.medix.group_offsets(x["seg"])
                return lambda: torch.ops.medix.group_advantages(x["r"], None, offsets, 0, 0, 0, 0, 1e-6, False)
            out.append(Impl("medix-cpu-op", "medix", "cpu", op_build,
                            note="torch.ops.medix.group_advantages with precomputed offsets (no wrapper)"))
        out.append(Impl("torch-eager", "eager", "eager",
                        lambda x: (lambda: eager_ragged_group_advantages(x["r"], x["seg"], x["G"]))))
        out.append(Impl("torch-compile", "compile", "inductor",
                        lambda x: (lambda f=compiled(eager_ragged_group_advantages): f(x["r"], x["seg"], x["G"]))))
        return out

    return OpSpec(name="group_advantages_ragged", axis="n",
                  description="GRPO advantages over ragged groups (sizes 1..16) given by a group index",
                  cases=cases, make_inputs=inputs, impls=impls, bytes_moved=lambda p, e: 2 * p["n"] * 4 + p["n"] * 8,
                  footprint=lambda p, e: 10 * p["n"] * 4, label=lambda p: f"N={p['n']} G<={p['group']} ragged")


# The shapes this script measured before it wrapped the suite (the anchors): every size
# with groups of 5, 8, 16 and 64 (whole groups: N - N % G), composite rewards with groups of 5 and 8.
ANCHOR_SIZES = [1024, 16384, 65536, 262144, 1048576]


def _extend_suite(anchors: bool = True):
    """Add to the suite's reward ops (in this process; the memory worker rebuilds a case from its
    parameters, so added cases get their peak memory too): the anchor shapes, whole groups only
    (the suite's composite cases with G = 5 at N = 2^k cannot run), and medix-cpu-op rows (the op
    through torch.ops.medix without the Python wrapper; no peak memory: the worker rebuilds
    implementations from benchmarks.ops)."""
    import torch

    from benchmarks.ops import OPS as SUITE_OPS
    from benchmarks.ops.base import Impl

    def wrap(spec, build, extra_cases):
        orig_impls, orig_cases = spec.impls, spec.cases

        def impls(device):
            out = orig_impls(device)
            if device == "cpu" and any(i.name == "medix-cpu" for i in out):
                out.append(Impl("medix-cpu-op", "medix", "cpu", build, note="torch.ops.medix op called directly"))
            return out

        def cases(profile, device):
            base = orig_cases(profile, device)
            if "group" in base[0]:
                base = [{**c, "n": c["n"] - c["n"] % c["group"]} for c in base]
            if anchors and profile not in ("smoke", "quick"):
                base = base + [c for c in extra_cases if c not in base]
            return base
        spec.impls, spec.cases = impls, cases

    ops = torch.ops.medix
    wrap(SUITE_OPS["group_advantages"],
         lambda x: (lambda: ops.group_advantages(x["r"], None, None, x["g"], 0, 0, 0, 1e-6, False)),
         [dict(n=n - n % g, group=g) for n in ANCHOR_SIZES for g in (5, 8, 16, 64)])
    wrap(SUITE_OPS["composite_advantages"],
         lambda x: (lambda: ops.group_advantages(x["c"], x["w"], None, x["g"], 0, 0, 0, 1e-6, False)),
         [dict(n=n - n % g, k=4, group=g) for n in ANCHOR_SIZES for g in (5, 8)])
    wrap(SUITE_OPS["cosine_rewards"], lambda x: (lambda: ops.cosine_rewards(x["x"], x["y"], 1e-8, 0.8)),
         [dict(n=256, dim=384), dict(n=1024, dim=1024), dict(n=8192, dim=1024)])


def _merge(main_csv: str, extra_csv: str | None) -> None:
    """extra_csv's rows appended to main_csv; medix-cpu-op notes say why they have no peak memory."""
    rows, fields = [], None
    for path in (main_csv, extra_csv):
        if path is None:
            continue
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            fields = fields or list(reader.fieldnames)
            rows += list(reader)
    for r in rows:  # the worker rebuilds implementations from benchmarks.ops: it has no medix-cpu-op
        if r["impl"] == "medix-cpu-op" and "memory not measured" in r["note"]:
            r["note"] = r["note"].split("; memory not measured")[0] + "; peak memory not measured (row of this script)"
    with open(main_csv, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=fields)
        w.writeheader()
        w.writerows(rows)
    if extra_csv is None:
        return
    os.remove(extra_csv)
    for suffix in (".meta.json", ".memlog"):
        p = extra_csv.replace(".csv", suffix)
        if os.path.exists(p):
            os.remove(p)


def run(argv: list[str]) -> int:
    report = "--report" in argv
    ragged = "--no-ragged" not in argv
    anchors = "--no-anchors" not in argv
    args = [a for a in argv if a not in ("--report", "--no-ragged", "--no-anchors")]
    custom_name = "--name" in args
    if not custom_name:
        args = ["--name", NAME, *args]
    if not report:
        args = ["--no-report", *args]
    # as the suite does, before torch loads libgomp (torch is imported here before the suite runs)
    policy = args[args.index("--omp-wait-policy") + 1] if "--omp-wait-policy" in args else "PASSIVE"
    if policy != "keep":
        os.environ["OMP_WAIT_POLICY"] = policy
    import medix_kernels  # noqa: F401  (registers torch.ops.medix)
    _extend_suite(anchors)
    code = main(["--ops", OPS, *args])
    name = args[args.index("--name") + 1]
    out_dir = args[args.index("--out-dir") + 1] if "--out-dir" in args else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "results")
    stem = name[:-4] if name.endswith(".csv") else name
    if code or not ragged:
        if not code:
            _merge(os.path.join(out_dir, stem + ".csv"), None)
        return code
    from benchmarks.ops import OPS as SUITE_OPS
    SUITE_OPS["group_advantages_ragged"] = _ragged_spec()
    extra = list(args)
    extra[extra.index("--name") + 1] = stem + "-ragged"
    # the memory worker process rebuilds cases from benchmarks.ops and does not know this op
    code = main(["--ops", "group_advantages_ragged", "--memory", "none", *extra])
    _merge(os.path.join(out_dir, stem + ".csv"), os.path.join(out_dir, stem + "-ragged.csv"))
    return code


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:]))
