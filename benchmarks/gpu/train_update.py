"""The trainer's update at real lengths, measured in one process (the train check's update and parity phases).

    python -m benchmarks.gpu.train_update matrix MODEL_DIR [--rows 32] [--samples 8] [--prompt 256]
                                          [--responses 1024,2048] [--micro 2] [--repeats 1]
    [torchrun --nproc-per-node 1] python -m benchmarks.gpu.train_update parity MODEL_DIR [--rows 16] [--samples 8]
                                          [--prompt 128] [--response 256] [--steps 3]

matrix: ``medix_r1.train.step.update`` (one optimizer step over every row, micro-batches of ``--micro``)
on a synthetic batch of ``--rows`` rows (groups of ``--samples`` sharing a prompt) of ``--prompt`` +
``response`` tokens, for each response length x gradient checkpointing off / on x ``loss.impl``
fused / plain, on one loaded model (bf16 on a GPU): the update's time and peak memory, the memory
resident before it (weights, gradients' and optimizer's buffers), a first update of each setting
discarded (warm-up; the optimizer's state is created in the first). The shared-prompt forward is off
(it would not run with checkpointing on, and the comparison is about checkpointing alone).

parity: the same update for ``--steps`` steps on one batch (response lengths varied; fixed old and
reference log-probs, so that the loss depends on the policy's log-probs), in a single process or under
torchrun (FSDP2, mixed precision on a GPU): each step's loss and gradient norm, and what waited for the
device during the steps after the first (PyTorch's sync debug mode on a GPU; the ops that would wait,
counted, on the CPU). The check compares step 1 of the two.

Each prints one JSON line last (parity: rank 0).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch

from medix_r1.parallel import collectives as dist

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def config(model_dir: str, *sets: str):
    from medix_r1.config import load_config
    base = [f"model.policy={model_dir}", "model.dtype=bfloat16", "model.share_prompt_forward=false",
            "model.gradient_checkpointing=false", "loss.beta=0", "loss.loss_type=grpo", "optim.lr=1e-6",
            "optim.mini_batch_size=0", "optim.updates_per_step=1", "optim.grad_clip=1.0"]
    return load_config("grpo", base + list(sets))


def synthetic_batch(vocab: int, rows: int, n: int, prompt: int, lengths: list[int], seed: int = 0):
    """(batch on the device, the global row layout, advantages): ``rows // n`` random prompts of
    ``prompt`` tokens, n rows each, responses of ``lengths`` (one per row) random tokens."""
    from medix_r1.parallel import layout
    from medix_r1.train.batch import make_batch

    g = torch.Generator().manual_seed(seed)
    groups = rows // n
    prompts = [torch.randint(0, vocab, (prompt,), generator=g).tolist() for _ in range(groups)]
    prompts = [p for p in prompts for _ in range(n)]
    responses = [torch.randint(0, vocab, (k,), generator=g).tolist() for k in lengths]
    rewards = torch.rand(rows, generator=g).tolist()
    batch = layout.to_device(make_batch(prompts, responses, 0))
    # the engine's sampling log-probs, which the grpo recipe's rollout correction (token_truncate) reads
    batch["rollout_logp"] = (-5 * torch.rand(batch["mask"].shape, generator=g)).to(batch["mask"]) * batch["mask"]
    rows_layout = layout.row_layout(layout.owners(groups), n, [len(r) for r in responses], rewards)
    adv = torch.randn(rows, generator=g).to(dist.device())
    return batch, rows_layout, adv


def gib(x: int) -> float:
    return x / 2**30


def one_update(model, optimizer, batch, adv, cfg, lcfg, step: int, rows, old_logp=None, ref_logp=None) -> dict:
    from medix_r1.train.step import update

    dev = dist.device()
    cuda = dev.type == "cuda"
    optimizer.zero_grad(set_to_none=True)  # the previous update's gradients are not resident
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        resident = torch.cuda.memory_allocated()
    t = time.perf_counter()
    stats, skipped = update(model, optimizer, batch, adv, ref_logp, old_logp, cfg, lcfg, step, rows)
    if cuda:
        torch.cuda.synchronize()
    out = {"s": time.perf_counter() - t, "loss": stats["loss"], "grad_norm": stats["grad_norm"],
           "skipped": skipped}
    if cuda:
        peak = torch.cuda.max_memory_allocated()
        out.update(peak_gb=gib(peak), resident_gb=gib(resident), transient_gb=gib(peak - resident))
    return out


def matrix(model_dir: str, rows: int, n: int, prompt: int, responses: list[int], micro: int, repeats: int) -> dict:
    from medix_r1.train.optim import make_optimizer
    from medix_r1.train.policy import load_model, loss_config

    cfg0 = config(model_dir, f"optim.micro_batch_size={micro}")
    model = load_model(model_dir, cfg0, trainable=True)
    optimizer = make_optimizer((p for p in model.parameters() if p.requires_grad), cfg0.optim)
    vocab = model.get_output_embeddings().weight.shape[0]
    results, step = [], 0
    for length in responses:
        batch, lay, adv = synthetic_batch(vocab, rows, n, prompt, [length] * rows)
        for gc in (False, True):
            (model.gradient_checkpointing_enable if gc else model.gradient_checkpointing_disable)()
            for impl in ("fused", "plain"):
                cfg = config(model_dir, f"optim.micro_batch_size={micro}", f"loss.impl={impl}",
                             f"model.gradient_checkpointing={str(gc).lower()}")
                row = {"response": length, "gradient_checkpointing": gc, "impl": impl, "rows": rows,
                       "prompt": prompt, "micro": micro}
                try:
                    runs = []
                    for _ in range(repeats + 1):  # the first: warm-up (and the optimizer's state)
                        step += 1
                        runs.append(one_update(model, optimizer, batch, adv, cfg, loss_config(cfg), step, lay))
                    row.update(runs[-1], s=min(r["s"] for r in runs[1:]),
                               all_s=[r["s"] for r in runs])
                except torch.OutOfMemoryError as exc:
                    row.update(oom=True, error=str(exc).split("\n")[0][:200])
                    optimizer.zero_grad(set_to_none=True)
                if dist.device().type == "cuda":
                    torch.cuda.empty_cache()
                results.append(row)
                print(json.dumps(row), file=sys.stderr, flush=True)
        del batch, adv
    return {"rows": rows, "n": n, "prompt": prompt, "micro": micro, "repeats": repeats, "configs": results,
            "device": str(dist.device())}


def parity(model_dir: str, rows: int, n: int, prompt: int, response: int, steps: int, micro: int) -> dict:
    from medix_r1.testing.host_reads import HostReads, device_waits, no_counting
    from medix_r1.train.optim import make_optimizer
    from medix_r1.train.policy import load_model, loss_config

    own_group = dist.init()
    cfg = config(model_dir, f"optim.micro_batch_size={micro}", "loss.impl=fused", "loss.beta=0.01")
    model = load_model(model_dir, cfg, trainable=True)
    optimizer = make_optimizer((p for p in model.parameters() if p.requires_grad), cfg.optim)
    vocab = model.get_output_embeddings().weight.shape[0]
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(max(1, response // 4), response + 1, (rows,), generator=g).tolist()
    batch, lay, adv = synthetic_batch(vocab, rows, n, prompt, lengths)
    # Fixed old and reference log-probs near a random-weight model's (about -log V): the ratio and the
    # KL term then depend on the policy's own log-probs (on-policy with beta 0 the loss would be
    # -mean(advantage) whatever the model computes).
    shape = batch["mask"].shape
    old_logp = -math.log(vocab) + 0.1 * torch.randn(shape, generator=g)
    ref_logp = old_logp - 0.05 * torch.randn(shape, generator=g).abs()
    old_logp, ref_logp = (x.to(dist.device()) * batch["mask"] for x in (old_logp, ref_logp))
    logps = {"old_logp": old_logp, "ref_logp": ref_logp}
    out = {"torchrun": dist.enabled(), "world": dist.world_size(), "rows": rows, "prompt": prompt,
           "response": response, "micro": micro, "device": str(dist.device()), "steps": []}
    waits = device_waits(dist.device())
    for step in range(1, steps + 1):
        if step == 1:
            res = one_update(model, optimizer, batch, adv, cfg, loss_config(cfg), step, lay, **logps)
        else:  # what waits for the device, after the warm-up step
            real_step = optimizer.step
            if isinstance(waits, HostReads):  # AdamW's step counters live on the host: not a device read
                optimizer.step = lambda *a, **k: _uncounted(waits, no_counting, real_step, *a, **k)
            with waits:
                res = one_update(model, optimizer, batch, adv, cfg, loss_config(cfg), step, lay, **logps)
            optimizer.step = real_step
        out["steps"].append(res)
    out["finite"] = all(torch.isfinite(torch.tensor([s["loss"], s["grad_norm"]])).all().item() for s in out["steps"])
    by_file: dict[str, int] = {}
    for _, where, _ in waits.where:
        path = where.rsplit(":", 1)[0]
        key = path.split("site-packages/")[-1] if "site-packages/" in path else os.path.relpath(path, ROOT)
        by_file[key] = by_file.get(key, 0) + 1
    optimizer_steps = max(1, steps - 1)
    out["waits"] = {"kind": type(waits).__name__, "optimizer_steps": optimizer_steps, "count": len(waits.where),
                    "medix_r1": len(waits.by("medix_r1")), "by_file": by_file,
                    "medix_r1_where": sorted({os.path.relpath(w[1], ROOT) for w in waits.by("medix_r1")})}
    if own_group:
        dist.close()
    return out


def _uncounted(waits, no_counting, fn, *a, **k):
    with no_counting(waits):
        return fn(*a, **k)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu.train_update")
    sub = p.add_subparsers(dest="verb", required=True)
    m = sub.add_parser("matrix")
    m.add_argument("model_dir")
    for name, default in (("--rows", 32), ("--samples", 8), ("--prompt", 256), ("--micro", 2), ("--repeats", 1)):
        m.add_argument(name, type=int, default=default)
    m.add_argument("--responses", default="1024,2048")
    q = sub.add_parser("parity")
    q.add_argument("model_dir")
    for name, default in (("--rows", 16), ("--samples", 8), ("--prompt", 128), ("--response", 256), ("--steps", 3),
                          ("--micro", 4)):
        q.add_argument(name, type=int, default=default)
    a = p.parse_args(argv)
    if a.verb == "matrix":
        res = matrix(a.model_dir, a.rows, a.samples, a.prompt, [int(x) for x in a.responses.split(",")], a.micro,
                     a.repeats)
    else:
        res = parity(a.model_dir, a.rows, a.samples, a.prompt, a.response, a.steps, a.micro)
        if dist.env_rank() != 0:
            return 0
    print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
