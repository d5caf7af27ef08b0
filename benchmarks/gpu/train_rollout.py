"""Batched vs per-prompt ``hf`` rollouts, side by side in one process (the train check's rollout phase;
on the CPU with the bundled SmolLM2 too).

    python -m benchmarks.gpu.train_rollout MODEL_DIR [--prompts 4] [--n 8] [--tokens 256] [--repeats 1]
                                           [--dtype bfloat16|float32] [--threads N]

Both run the trainer's engine (``medix_r1.rollout.HfRollout``) on the same prompts (the bundled PubMedQA
items, chat-templated) with the same seeds: *per-prompt* with ``rollout.hf_batch_size = n`` (one
prompt's n samples per ``generate`` call: how the engine generated before batching), *batched* with
every row in one call. Each repeat runs both, alternating which goes first; the times are the
medians. The draws do not depend on the batching, so both variants generate the same tokens (the
share of identical responses is reported: bf16 rounding can move a rare draw). MODEL_DIR ``smollm2``
is the bundled SmolLM2-135M-Instruct. Prints one JSON line last.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time

import torch

from benchmarks.common import device_name, load_avg
from medix_r1.parallel.collectives import device


def rollout_section(n: int, tokens: int, batch: int):
    from medix_r1.config import load_config
    cfg = load_config("cpu_smollm2", ["rollout.engine=hf", f"rollout.n={n}", f"rollout.max_tokens={tokens}",
                                      "rollout.temperature=1.0", "rollout.top_p=1.0"])
    return dataclasses.replace(cfg.rollout, hf_batch_size=batch), cfg.data


def bundled_prompts(tokenizer, data_cfg, count: int) -> list[list[int]]:
    from medix_r1.data.prompts import prompt_token_ids
    from medix_r1.data.records import load_records
    records, _ = load_records("pubmedqa", max_records=count)
    return [prompt_token_ids(tokenizer, r, data_cfg) for r in records]


def timed(engine, prompts, step: int) -> tuple[float, object]:
    dev = device()
    if dev.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    r = engine.generate(prompts, step, 0)
    if dev.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t, r


def measure(model_dir: str, prompts: int, n: int, tokens: int, repeats: int, dtype: str) -> dict:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medix_r1.models import resolve_model_dir
    from medix_r1.rollout import HfRollout

    path = str(resolve_model_dir(model_dir))
    dev = device()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).to(dev)
    tok = AutoTokenizer.from_pretrained(path)
    section, data_cfg = rollout_section(n, tokens, n)
    ps = bundled_prompts(tok, data_cfg, prompts)
    engines = {"per_prompt": HfRollout(model, tok, section),
               "batched": HfRollout(model, tok, dataclasses.replace(section, hf_batch_size=prompts * n))}
    warm = HfRollout(model, tok, dataclasses.replace(section, max_tokens=4, hf_batch_size=prompts * n))
    timed(warm, ps, 0)  # allocator, cuBLAS handles, kernels' first launches
    times = {k: [] for k in engines}
    peaks = dict.fromkeys(engines, 0.0)
    out = {}
    for rep in range(repeats):
        names = list(engines) if rep % 2 == 0 else list(engines)[::-1]
        for name in names:
            s, out[name] = timed(engines[name], ps, 1)
            times[name].append(s)
            if dev.type == "cuda":
                peaks[name] = max(peaks[name], torch.cuda.max_memory_allocated() / 2**30)
    a, b = out["per_prompt"], out["batched"]
    same = sum(x == y for x, y in zip(a.response_ids, b.response_ids)) / max(1, len(a))
    res = {"prompts": prompts, "n": n, "max_tokens": tokens, "repeats": repeats, "dtype": dtype,
           "prompt_tokens": [len(p) for p in ps], "device": str(dev),
           "device_name": device_name(dev.type), "load_avg": list(load_avg()), "same_responses": same}
    for name in engines:
        s = statistics.median(times[name])
        gen = sum(len(x) for x in out[name].response_ids)
        res[name] = {"s": s, "all_s": times[name], "generated_tokens": gen, "tokens_per_s": gen / s,
                     "generate_calls": prompts if name == "per_prompt" else 1,
                     **({"peak_gb": peaks[name]} if dev.type == "cuda" else {})}
    res["speedup"] = res["per_prompt"]["s"] / res["batched"]["s"]
    return res


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu.train_rollout")
    p.add_argument("model_dir")
    p.add_argument("--prompts", type=int, default=4)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--dtype", choices=("bfloat16", "float32"), default="bfloat16")
    p.add_argument("--threads", type=int, default=0, help="torch threads on the CPU (0 = torch's default)")
    a = p.parse_args(argv)
    if min(a.prompts, a.n, a.tokens, a.repeats) < 1:
        p.error("--prompts, --n, --tokens and --repeats must be >= 1")
    if a.threads:
        torch.set_num_threads(a.threads)
    print(json.dumps(measure(a.model_dir, a.prompts, a.n, a.tokens, a.repeats, a.dtype)), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
