"""A short run of each compiled CUDA kernel, for ``compute-sanitizer --tool memcheck``.

    compute-sanitizer --tool memcheck --error-exitcode 3 python3 -m benchmarks.gpu.sanitize
    python -m benchmarks.gpu.sanitize --backend cpu     # the same calls on the CPU (the dry run)

Every kernel of csrc/cuda is launched at small, awkward sizes: logprob_fwd (entropy on / off) and
logprob_bwd / logprob_bwd_ for fp32, bf16 and fp16, V = 1 / 7 / 1,001 (a row stride that breaks
16-byte alignment) / 4,099 and a 152,064-wide row; group_advantages with a fixed group size, ragged
groups (RLOO, verl singletons) and the batch-std scale (batch_std_kernel); composite_advantages;
cosine_rewards with odd D in three dtypes. Run it with PYTORCH_NO_CUDA_MEMORY_CACHING=1 so every
tensor is its own allocation and an out-of-bounds access hits unallocated memory. The script
synchronises after each group and prints SANITIZE-WORKLOAD-OK at the end.
"""
from __future__ import annotations

import argparse
import sys


def workload(backend: str, device: str, log=print) -> int:
    import torch

    import medix_kernels as mk
    gen = torch.Generator(device=device).manual_seed(0)
    calls = 0

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    # log-prob kernels, through the API (forward + backward, both backward flavours)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for t, v in ((3, 1), (5, 7), (17, 4099), (3, 152064)):
            x = (torch.randn(t, v, generator=gen, device=device) * 2).to(dtype)
            ids = torch.randint(0, v, (t,), generator=gen, device=device)
            for entropy in (False, True):
                for inplace in (False, True):
                    leaf = x.clone().requires_grad_(True)
                    out = mk.selective_log_softmax(leaf * 1 if inplace else leaf, ids, temperature=0.9,
                                                   return_entropy=entropy, inplace_backward=inplace, backend=backend)
                    loss = (out[0].sum() + out[1].sum()) if entropy else out.sum()
                    loss.backward()
                    calls += 2
        # a misaligned view: base pointer 2 bytes off, V odd (the vector path must fall back)
        wide = torch.randn(33, 1003, generator=gen, device=device).to(dtype)
        rows = wide[:, 1:1002]
        tok = torch.randint(0, 1001, (33,), generator=gen, device=device)
        leaf = rows.detach().clone().requires_grad_(True)
        mk.selective_log_softmax(leaf, tok, return_entropy=True, backend=backend)[0].sum().backward()
        calls += 2
        sync()
        log(f"  logprob kernels {str(dtype).replace('torch.', '')}: ok")
    # reward kernels
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        r = torch.rand(16 * 37, generator=gen, device=device).to(dtype)
        mk.group_advantages(r, 16, backend=backend)
        mk.group_advantages(r, 16, scale="batch", backend=backend)
        mk.group_advantages(r, 16, mode="dr_grpo", backend=backend)
        sizes = torch.tensor([1, 5, 2, 1, 31, 7], device=device)
        gi = torch.repeat_interleave(torch.arange(6, device=device), sizes)
        rr = torch.rand(gi.numel(), generator=gen, device=device).to(dtype)
        mk.group_advantages(rr, group_index=gi, mode="rloo", backend=backend)
        mk.group_advantages(rr, group_index=gi, singleton="verl", backend=backend)
        mk.group_stats(rr, group_index=gi, backend=backend)
        c = torch.rand(16 * 37, 4, generator=gen, device=device).to(dtype)
        mk.composite_advantages(c, [0.5, 0.3, 0.1, 0.1], 16, backend=backend)
        for n, d in ((1, 1), (3, 7), (33, 1100), (5, 1024)):
            a = torch.randn(n, d, generator=gen, device=device).to(dtype)
            b = torch.randn(n, d, generator=gen, device=device).to(dtype)
            mk.cosine_rewards(a, b, backend=backend)
            mk.cosine_rewards(a, b, threshold=0.8, backend=backend)
        calls += 7 + 8
        sync()
        log(f"  reward kernels {str(dtype).replace('torch.', '')}: ok")
    return calls


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu.sanitize", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", default="cuda", help="cuda (under compute-sanitizer) or cpu (the dry run)")
    args = p.parse_args(argv)
    import torch

    import medix_kernels as mk
    device = "cuda" if args.backend in ("cuda", "triton") else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        print("benchmarks.gpu.sanitize: no CUDA GPU here")
        return 2
    if args.backend not in mk.backends():
        print(f"benchmarks.gpu.sanitize: backend {args.backend!r} is not usable here (found {mk.backends()})")
        return 2
    calls = workload(args.backend, device, log=lambda m: print(m, flush=True))
    print(f"SANITIZE-WORKLOAD-OK ({calls} op calls, backend {args.backend})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
