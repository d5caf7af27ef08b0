"""The train check's in-process parts (benchmarks/gpu/train_check.py runs each as a subprocess).

    python -m benchmarks.gpu.train_parts make-model DIR --size 1.5b|tiny [--tokenizer DIR]
    python -m benchmarks.gpu.train_parts breakdown MODEL_DIR --rows B --prompt P --response R [--repeats N]
                                               [--micro-batches K]
    python -m benchmarks.gpu.train_parts train TRAINER_ARGS...   (python -m medix_r1.train + a rule reward)

make-model and breakdown print one JSON line last.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from medix_r1.parallel.collectives import device  # the trainer's own choice (MEDIX_DEVICE=cpu honoured)

from .train_check import QWEN25_15B, TINY


def make_model(out_dir: str, size: str, tokenizer_dir: str) -> dict:
    """A Qwen2.5-1.5B-shaped (or tiny) Qwen2 causal LM with seeded random bf16 weights, saved with a
    tokenizer. The model's vocabulary (151,936) is larger than the SmolLM2 tokenizer's: random weights
    sample ids beyond it, which decode to nothing; the compute and memory are the real model's."""
    import transformers
    from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

    from medix_r1.models import smollm2_hf_dir

    tok = AutoTokenizer.from_pretrained(tokenizer_dir or str(smollm2_hf_dir()))
    shape = QWEN25_15B if size == "1.5b" else TINY
    cfg = Qwen2Config(**shape, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    torch.manual_seed(0)
    t = time.perf_counter()
    with device():  # initialise on the GPU where there is one (seconds instead of a minute on the CPU)
        model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return {"name": f"Qwen2.5-{size}-shaped (random weights)", "params": sum(p.numel() for p in model.parameters()),
            "vocab": cfg.vocab_size, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
            "torch": torch.__version__, "cuda": torch.version.cuda, "transformers": transformers.__version__,
            "build_s": round(time.perf_counter() - t, 1)}


def _timed_parts(base, weight, ids_in, ids, mask, adv, ref, loss_fn, P, R):
    """One micro-batch, forward + backward, split at the last hidden state: (model ms, loss ms, peak GiB)."""
    dev = device()
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        ev = [torch.cuda.Event(enable_timing=True) for _ in range(4)]
        ev[0].record()
    t0 = time.perf_counter()
    hidden = base(input_ids=ids_in).last_hidden_state[:, P - 1:P + R - 1]
    if cuda:
        ev[1].record()
    t1 = time.perf_counter()
    h = hidden.detach().requires_grad_(True)
    loss = loss_fn(h, weight, ids, mask, adv, ref)
    loss.backward()
    if cuda:
        ev[2].record()
    t2 = time.perf_counter()
    hidden.backward(h.grad)
    if cuda:
        ev[3].record()
        torch.cuda.synchronize()
        model_ms = ev[0].elapsed_time(ev[1]) + ev[2].elapsed_time(ev[3])
        return model_ms, ev[1].elapsed_time(ev[2]), torch.cuda.max_memory_allocated() / 2**30
    t3 = time.perf_counter()
    return 1e3 * ((t1 - t0) + (t3 - t2)), 1e3 * (t2 - t1), float("nan")


def _timed(fn, repeats: int) -> float:
    """Median ms of ``fn()`` over ``repeats`` calls after one warm-up (device events on a GPU)."""
    dev = device()
    times = []
    for _ in range(repeats + 1):
        if dev.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t = time.perf_counter()
            fn()
            times.append(1e3 * (time.perf_counter() - t))
    return statistics.median(times[1:] or times)


def breakdown(model_dir: str, rows: int, prompt: int, response: int, repeats: int, micro_batches: int = 1) -> dict:
    """One micro-batch of ``rows`` rows split into the model's forward + backward and the loss's (fused:
    the fused linear GRPO kernel; plain: the LM head matmul + grpo_loss), the LM head's matmuls alone,
    the optimizer step and the advantages kernel; ``micro_batches`` per optimizer step for the shares."""
    from transformers import AutoModelForCausalLM

    import medix_kernels as mk

    dev = device()
    dtype = torch.bfloat16 if dev.type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).to(dev)
    base, weight = model.model, model.lm_head.weight
    V = weight.shape[0]
    g = torch.Generator(device="cpu").manual_seed(0)
    ids_in = torch.randint(0, V, (rows, prompt + response), generator=g).to(dev)
    ids = ids_in[:, prompt:]
    mask = torch.ones(rows, response, device=dev)
    adv = torch.randn(rows, generator=g).to(dev)
    ref = (-torch.rand(rows, response, generator=g) * 12).to(dev)
    cfg = mk.LossConfig(loss_type="grpo", clip_low=0.2, clip_high=0.2, kl="k3", beta=0.01)

    def fused(h, w, ids, mask, adv, ref):
        return mk.fused_linear_grpo_loss(h, w, ids, mask, adv, ref_logp=ref, config=cfg)[0]

    def plain(h, w, ids, mask, adv, ref):
        return mk.grpo_loss(torch.nn.functional.linear(h, w), ids, mask, adv, ref_logp=ref, config=cfg)[0]

    impls = {}
    for name, fn in (("fused", fused), ("plain", plain)):
        runs = []
        for _ in range(repeats + 1):  # the first is warm-up (Triton compilation, cuBLAS handles)
            model.zero_grad(set_to_none=True)
            runs.append(_timed_parts(base, weight, ids_in, ids, mask, adv, ref, fn, prompt, response))
        runs = runs[1:] or runs
        m_ms = statistics.median(r[0] for r in runs)
        l_ms = statistics.median(r[1] for r in runs)
        impls[name] = {"model_ms": m_ms, "loss_ms": l_ms, "loss_share": l_ms / (m_ms + l_ms),
                       "peak_gb": max(r[2] for r in runs)}
    # the LM head's two matmuls alone (forward, and the backward's input gradient + weight gradient)
    h = torch.randn(rows, response, weight.shape[1], generator=g, dtype=dtype).to(dev).requires_grad_(True)
    head_ms = _timed(lambda: torch.nn.functional.linear(h, weight).sum().backward(), repeats)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    for p in model.parameters():
        p.grad = torch.zeros_like(p) if p.grad is None else p.grad
    opt_ms = _timed(optimizer.step, repeats)  # the first step (its state created) is the warm-up
    # the advantages kernel on a step's rewards (prompts x n rows)
    rewards = torch.rand(64, generator=g).to(dev)
    adv_ms = _timed(lambda: mk.group_advantages(rewards, 8), max(repeats, 20))
    for v in impls.values():  # the loss and advantage kernels' share of one optimizer step's update
        step_ms = micro_batches * (v["model_ms"] + v["loss_ms"]) + opt_ms + adv_ms
        v["kernels_share"] = (micro_batches * v["loss_ms"] + adv_ms) / step_ms
        v["kernels_share_without_head"] = (micro_batches * max(0.0, v["loss_ms"] - head_ms) + adv_ms) / step_ms
    return {"rows": rows, "tokens_per_row": prompt + response, "response": response, "repeats": repeats,
            "micro_batches": micro_batches, "impls": impls, "head_ms": head_ms, "opt_ms": opt_ms,
            "adv_rows": 64, "adv_ms": adv_ms, "backends": mk.backends(), "device": str(dev)}


def letter_share(response: str) -> float:
    """A rule reward with spread on random-weight models: the share of the response's characters that
    are letters. The MediX rules alone (format, modality) give every random-weight response 0, so every
    advantage would be 0 and no parameter would move."""
    return sum(c.isalpha() for c in response) / max(1, len(response))


class RuleRewardWorker:
    """The MediX composite of ``cfg`` (format, modality, exact-match judge: no model) plus
    ``letter_share``; the trainer's reward-worker interface (``submit`` -> Future, ``close``)."""

    def __init__(self, cfg):
        from medix_r1.rewards.worker import RewardWorker
        self.inner = RewardWorker(cfg)

    def submit(self, problems, responses, solutions):
        import dataclasses
        from concurrent.futures import Future
        out = Future()
        inner = self.inner.submit(problems, responses, solutions)

        def done(f):
            try:
                out.set_result([dataclasses.replace(r, total=r.total + letter_share(text))
                                for r, text in zip(f.result(), responses)])
            except BaseException as exc:  # the trainer sees the worker's error where it waits
                out.set_exception(exc)
        inner.add_done_callback(done)
        return out

    def __getattr__(self, name):  # stats(), close(), preload(): the inner worker's
        return getattr(self.inner, name)


def train_with_rule_reward(argv) -> int:
    """``python -m medix_r1.train ARGS`` with :class:`RuleRewardWorker` as the reward worker."""
    from medix_r1.train import cli, loop

    def train(cfg, **kw):
        worker = RuleRewardWorker(cfg.reward)
        try:
            return loop.train(cfg, reward_worker=worker, **kw)
        finally:
            worker.close()
    cli.train = train
    return cli.main(argv)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["train"]:
        return train_with_rule_reward(argv[1:])
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu.train_parts")
    sub = p.add_subparsers(dest="verb", required=True)
    m = sub.add_parser("make-model")
    m.add_argument("out_dir")
    m.add_argument("--size", choices=("1.5b", "tiny"), default="1.5b")
    m.add_argument("--tokenizer", default="")
    b = sub.add_parser("breakdown")
    b.add_argument("model_dir")
    for name, default in (("--rows", 8), ("--prompt", 384), ("--response", 256), ("--repeats", 5),
                          ("--micro-batches", 1)):
        b.add_argument(name, type=int, default=default)
    a = p.parse_args(argv)
    if a.verb == "make-model":
        res = make_model(a.out_dir, a.size, a.tokenizer)
    else:
        res = breakdown(a.model_dir, a.rows, a.prompt, a.response, a.repeats, a.micro_batches)
    print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
