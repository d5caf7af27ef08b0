"""LoRA against full fine-tuning: the trainer's update (forward + backward + AdamW) on the CPU recipe's step.

    python -m benchmarks.lora_vs_full [--steps 4] [--rounds 2] [--r 16] [--alpha 32] [--out FILE.md]

Each measurement is a fresh process (``--worker full|lora``) that loads the bundled SmolLM2-135M the
way the trainer does (``cpu_smollm2``; LoRA: ``model.lora.r/alpha``, all-linear), builds one step of
the recipe at its largest (4 prompts of the bundled records x n=4, 112 response tokens each) and runs
``medix_r1.train.step.update`` ``--steps`` times. Time: seconds per update, wall and the CPU time of
all the process's threads (on a shared machine the second moves less with the load), the first
(AdamW's states are allocated there) reported apart. Memory: the process's peak resident set during the
updates above its resident set right before them (Linux ``VmHWM`` after resetting it through
``/proc/self/clear_refs``), i.e. what the update adds on top of the loaded model: activations,
gradients, optimizer states. Rounds alternate the two modes (full, lora, full, lora, ...) so a
change of machine load hits both; the report gives every round and the medians.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _status_kb(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def worker(mode: str, steps: int, r: int, alpha: float, threads: int) -> dict:
    import torch

    if threads:
        torch.set_num_threads(threads)
    from transformers import AutoTokenizer

    from medix_r1.config import load_config
    from medix_r1.data.prompts import prompt_token_ids
    from medix_r1.data.records import load_records
    from medix_r1.models import resolve_model_dir
    from medix_r1.parallel import layout
    from medix_r1.train.batch import make_batch
    from medix_r1.train.optim import make_optimizer
    from medix_r1.train.policy import load_model, loss_config
    from medix_r1.train.step import update

    extra = [f"model.lora.r={r}", f"model.lora.alpha={alpha}"] if mode == "lora" else []
    cfg = load_config("cpu_smollm2", extra)
    model_dir = resolve_model_dir(cfg.model.policy)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    records, _ = load_records("pubmedqa", max_records=cfg.data.prompts_per_step)
    prompts = [prompt_token_ids(tok, rec, cfg.data) for rec in records]
    n, length = cfg.rollout.n, cfg.rollout.max_tokens
    gen = torch.Generator().manual_seed(0)
    responses = [torch.randint(100, len(tok) - 100, (length,), generator=gen).tolist() for _ in range(len(prompts) * n)]
    batch = make_batch([p for p in prompts for _ in range(n)], responses, tok.eos_token_id)
    adv = torch.randn(len(responses), generator=gen)
    count = len(responses)
    rows = layout.Layout(owner=[0] * count, local=list(range(count)), tokens=[length] * count, rewards=[0.0] * count)
    torch.manual_seed(cfg.train.seed)
    model = load_model(model_dir, cfg, trainable=True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, cfg.optim)
    lcfg = loss_config(cfg)
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS from here on
    before_kb = _status_kb("VmRSS")
    times, cpu_times = [], []
    for s in range(1, steps + 1):
        t, c = time.perf_counter(), time.process_time()
        update(model, opt, batch, adv, None, None, cfg, lcfg, s, rows)
        times.append(time.perf_counter() - t)
        cpu_times.append(time.process_time() - c)
    state_bytes = sum(v.numel() * v.element_size() for st in opt.state.values() for v in st.values()
                      if isinstance(v, torch.Tensor))
    return {"mode": mode, "update_s": times, "update_cpu_s": cpu_times, "rss_before_mb": before_kb / 1024,
            "update_peak_extra_mb": (_status_kb("VmHWM") - before_kb) / 1024,
            "trainable_params": sum(p.numel() for p in params),
            "all_params": sum(p.numel() for p in model.parameters()), "optimizer_state_mb": state_bytes / 2**20,
            "sequences": len(responses), "response_tokens": length, "prompt_tokens": [len(p) for p in prompts],
            "threads": torch.get_num_threads()}


def cpu_flags() -> str:
    flags = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    model = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                  if ln.startswith("model name")), "?")
    wanted = sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma"))
    return f"{model}; {os.cpu_count()} cores; flags: {' '.join(wanted)}"


def report(runs: list[dict], load: list[tuple], args) -> str:
    by = {m: [x for x in runs if x["mode"] == m] for m in ("full", "lora")}
    med = {m: {"first": statistics.median(x["update_s"][0] for x in xs),
               "rest": statistics.median(statistics.mean(x["update_s"][1:]) for x in xs),
               "cpu": statistics.median(statistics.mean(x["update_cpu_s"][1:]) for x in xs),
               "peak": statistics.median(x["update_peak_extra_mb"] for x in xs)} for m, xs in by.items()}
    f, lo = by["full"][0], by["lora"][0]
    lines = [
        "# LoRA vs full fine-tuning: the trainer's update on the CPU recipe's step",
        "",
        f"`python -m benchmarks.lora_vs_full --steps {args.steps} --rounds {args.rounds} --r {args.r} "
        f"--alpha {args.alpha} --threads {args.threads}` (benchmarks/lora_vs_full.py says what is measured and how).",
        "",
        f"- CPU: {cpu_flags()}; torch threads {f['threads']}",
        f"- load average (1, 5, 15 min) at the start {load[0]}, at the end {load[1]}: "
        + ("a busy shared machine, times are noisy" if max(load[0][0], load[1][0]) > 2.5 else "a quiet machine"),
        f"- the step: {f['sequences']} sequences (prompts of {f['prompt_tokens']} tokens, each x n), "
        f"{f['response_tokens']} response tokens each; SmolLM2-135M fp32, fused loss, micro-batches of 4",
        f"- LoRA: r={args.r}, alpha={args.alpha}, all-linear: {lo['trainable_params']:,} trainable of "
        f"{lo['all_params']:,} parameters ({lo['trainable_params'] / lo['all_params']:.2%}); full: "
        f"{f['trainable_params']:,}",
        "",
        "| | full | LoRA | LoRA / full |",
        "|---|---|---|---|",
        f"| first update (s, AdamW states allocated) | {med['full']['first']:.2f} | {med['lora']['first']:.2f} | "
        f"{med['lora']['first'] / med['full']['first']:.2f} |",
        f"| later updates (s, median of the rounds' means) | {med['full']['rest']:.2f} | {med['lora']['rest']:.2f} | "
        f"{med['lora']['rest'] / med['full']['rest']:.2f} |",
        f"| later updates, CPU time of all threads (s; what the load changes least) | {med['full']['cpu']:.1f} | "
        f"{med['lora']['cpu']:.1f} | {med['lora']['cpu'] / med['full']['cpu']:.2f} |",
        f"| peak RSS added by the updates (MiB) | {med['full']['peak']:.0f} | {med['lora']['peak']:.0f} | "
        f"{med['lora']['peak'] / med['full']['peak']:.2f} |",
        f"| AdamW states (MiB) | {f['optimizer_state_mb']:.0f} | {lo['optimizer_state_mb']:.1f} | "
        f"{lo['optimizer_state_mb'] / f['optimizer_state_mb']:.3f} |",
        f"| RSS before the updates (MiB: model, batch, libraries) | {f['rss_before_mb']:.0f} | "
        f"{lo['rss_before_mb']:.0f} | |",
        "",
        "Every round (wall and CPU seconds per update, in order; peak RSS added in MiB):",
        "",
        "| round | mode | updates, wall (s) | updates, CPU (s) | peak added (MiB) |",
        "|---|---|---|---|---|",
    ]
    for i, x in enumerate(runs):
        lines.append(f"| {i // 2 + 1} | {x['mode']} | {', '.join(f'{t:.1f}' for t in x['update_s'])} | "
                     f"{', '.join(f'{t:.1f}' for t in x['update_cpu_s'])} | {x['update_peak_extra_mb']:.0f} |")
    lines += ["", "What it means: the frozen base is held in fp32 in both modes (docs/lora.md); LoRA saves the "
              "base weights' gradients and AdamW's two moments, and the weight-gradient matmuls of the base "
              "layers (the backward still goes through every layer for the activations' gradients, and the "
              "adapters add two thin matmuls per layer). The forward is the same work in both."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.lora_vs_full", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--r", type=int, default=16)
    p.add_argument("--alpha", type=float, default=32.0)
    p.add_argument("--threads", type=int, default=0, help="torch threads of the workers (0: torch's default)")
    p.add_argument("--out", default=str(RESULTS / "lora_vs_full_cpu.md"))
    p.add_argument("--worker", choices=("full", "lora"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.steps < 2 or args.rounds < 1:
        p.error("--steps must be >= 2 (the first update is reported apart) and --rounds >= 1")
    if args.worker:
        print(json.dumps(worker(args.worker, args.steps, args.r, args.alpha, args.threads)))
        return 0
    load = [os.getloadavg()]
    runs = []
    for _ in range(args.rounds):
        for mode in ("full", "lora"):
            cmd = [sys.executable, "-m", "benchmarks.lora_vs_full", "--worker", mode, "--steps", str(args.steps),
                   "--r", str(args.r), "--alpha", str(args.alpha), "--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, check=True,
                                 cwd=Path(__file__).resolve().parents[1]).stdout
            runs.append(json.loads(out.strip().splitlines()[-1]))
            print(mode, [round(t, 2) for t in runs[-1]["update_s"]], f"{runs[-1]['update_peak_extra_mb']:.0f} MiB",
                  flush=True)
    load.append(os.getloadavg())
    text = report(runs, [tuple(round(v, 2) for v in x) for x in load], args)
    Path(args.out).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
