"""The trainer on a GPU, measured (``bash benchmarks/gpu/train_check.sh OUT [--dry-run]`` calls it).

    python -m benchmarks.gpu.train_check OUT [--dry-run] [--steps N] [--budget-s S] [--phases a,b]

Phases, each a subprocess with its own time limit inside one budget (a failed phase is recorded,
the next still runs; OUT is rewritten after each), in this order:

- model: a Qwen2.5-1.5B-shaped causal LM built from its config (random bf16 weights: nothing can
  be downloaded on the GPU machine, and speed and memory do not depend on the values), saved as a
  Hugging Face folder with the bundled SmolLM2 tokenizer. Dry run: a 2-layer model of the same family.
- rollout: the ``hf`` engine batched (every row in one ``generate``) vs per prompt
  (``rollout.hf_batch_size = n``), side by side at 4 prompts x 8 samples x 256 tokens
  (benchmarks/gpu/train_rollout.py).
- update: the trainer's update at 1,024 and 2,048 response tokens, ``loss.impl`` fused vs plain, gradient
  checkpointing off and on, the same batch: time and peak memory (benchmarks/gpu/train_update.py matrix).
- breakdown: one micro-batch at 1,024 tokens split into the model's forward + backward and the loss's, the
  LM head's matmuls, the optimizer step and the advantages kernel: the kernels' share of the update.
- parity: three updates on one batch in a single process and under ``torchrun --nproc-per-node 1``
  (NCCL, FSDP2 mixed precision): step 1's loss compared, and what waited for the device in the update
  (PyTorch's sync debug mode).
- torchrun / fused: the trainer (``python -m medix_r1.train``'s command line, through
  ``benchmarks.gpu.train_parts train``) with ``--rollout hf``, bf16, the bundled PubMedQA prompts and
  rule rewards (the MediX format, modality and exact-match rules plus the share of letters in the
  response: random weights never earn the MediX rules, and all-zero rewards would train nothing), 3 steps
  under torchrun and in one process; ``plain`` (on request) the same with ``loss.impl=plain``.

Writes OUT/train_summary.md (the environment, the targets met or not with their figures, the tables),
OUT/train_check.json (every number), OUT/train_check.csv (one measurement a row), plus each run's logs
and metrics.jsonl as OUT/train_logs.tar.gz.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

from .train_report import environment, summary_markdown, targets, write_csv

ROOT = Path(__file__).resolve().parents[2]
PHASES = ("model", "rollout", "update", "breakdown", "parity", "torchrun", "fused", "plain")
DEFAULT_PHASES = PHASES[:-1]  # the plain trainer run only on request: the update phase compares the loss paths
# per phase: its time cap on a GPU (seconds; doubled in a dry run), in the order the phases run
CAPS = {"model": 60, "rollout": 100, "update": 110, "breakdown": 45, "parity": 100, "torchrun": 80, "fused": 70,
        "plain": 70}
# the shapes: on a GPU (the issue's) and in a dry run (this CPU machine, seconds)
SHAPES = {
    "rollout": {"gpu": dict(prompts=4, n=8, tokens=256), "dry": dict(prompts=2, n=2, tokens=8)},
    "update": {"gpu": dict(rows=32, samples=8, prompt=256, responses="1024,2048", micro=2, repeats=1),
               "dry": dict(rows=4, samples=2, prompt=16, responses="16,32", micro=2, repeats=1)},
    "breakdown": {"gpu": dict(rows=2, prompt=256, response=1024, repeats=3, micro_batches=16),
                  "dry": dict(rows=2, prompt=16, response=16, repeats=1, micro_batches=2)},
    "parity": {"gpu": dict(rows=16, samples=8, prompt=128, response=256, micro=4, steps=3),
               "dry": dict(rows=4, samples=2, prompt=16, response=16, micro=2, steps=3)},
}
TIME_KEYS = ("rollout", "reward_wait", "logp", "update", "sync", "step")

# Qwen2.5-1.5B-Instruct's config.json (public: huggingface.co/Qwen/Qwen2.5-1.5B-Instruct), the fields that
# set the compute; the dry run keeps the family and shrinks it.
QWEN25_15B = dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                  num_key_value_heads=2, vocab_size=151936, max_position_embeddings=32768, rope_theta=1e6,
                  rms_norm_eps=1e-6, tie_word_embeddings=True, hidden_act="silu")
TINY = dict(QWEN25_15B, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=2048)


def train_args(dry: bool, steps: int) -> list[str]:
    """The trainer's settings common to every run of the check."""
    sets = {
        "model.dtype": "bfloat16", "model.gradient_checkpointing": "false",
        "data.train": "pubmedqa", "data.max_prompt_tokens": 64 if dry else 384,
        "data.prompts_per_step": 2 if dry else 4, "rollout.n": 2 if dry else 8,
        "rollout.max_tokens": 8 if dry else 64, "rollout.temperature": 1.0,
        "reward.judge": "none", "reward.embedding_model": "none",
        "loss.loss_type": "grpo", "loss.clip_low": 0.2, "loss.clip_high": 0.2, "loss.kl": "k3",
        "loss.beta": 0.01, "optim.lr": 1e-6, "optim.micro_batch_size": 2 if dry else 8,
        "train.save_every": 0, "train.keep_last": 1, "train.tensorboard": "false", "train.plot": "false",
        "train.progress": "false",
    }
    args = ["--recipe", "grpo", "--max-steps", str(steps)]
    for k, v in sets.items():
        args += ["--set", f"{k}={v}"]
    return args


def now() -> str:
    return datetime.datetime.now().isoformat(timespec="seconds")


class TrainCheck:
    def __init__(self, args):
        self.args, self.dry = args, args.dry_run
        self.out = Path(args.out).resolve()
        self.out.mkdir(parents=True, exist_ok=True)
        self.work = Path(args.work or tempfile.mkdtemp(prefix="medix-train-check-")).resolve()
        self.work.mkdir(parents=True, exist_ok=True)
        self.py = args.python or sys.executable
        self.t0 = time.monotonic()
        self.budget = args.budget_s
        self.steps = args.steps or (2 if self.dry else 3)
        self.result = {"started": now(), "dry_run": self.dry, "steps": self.steps, "env": environment(), "phases": {},
                       "runs": {}}

    def say(self, msg: str) -> None:
        print(f"[train-check {time.monotonic() - self.t0:6.1f}s] {msg}", flush=True)

    def remaining(self) -> float:
        return self.budget - (time.monotonic() - self.t0) - 5

    def env(self) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
        env.update(PYTHONUNBUFFERED="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        if self.dry:
            env["MEDIX_DEVICE"] = "cpu"
        return env

    def sh(self, cmd: list[str], log: Path, timeout: float) -> dict:
        """Run cmd in its own process group, output to log; kill the group at the timeout."""
        t = time.monotonic()
        with open(log, "w") as fh:
            fh.write("$ " + " ".join(cmd) + f"\n# {now()}, limit {timeout:.0f} s\n")
            fh.flush()
            proc = subprocess.Popen(cmd, cwd=ROOT, env=self.env(), stdout=fh, stderr=subprocess.STDOUT,
                                    start_new_session=True)
            try:
                rc, timed_out = proc.wait(timeout=max(1.0, timeout)), False
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                rc, timed_out = proc.wait(), True
        return {"rc": rc, "timed_out": timed_out, "wall_s": round(time.monotonic() - t, 1)}

    def tail(self, log: Path, n: int = 25) -> str:
        try:
            return "\n".join(log.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    # ------------------------------------------------------------------ phases
    def shape(self, phase: str) -> dict:
        return SHAPES[phase]["dry" if self.dry else "gpu"]

    def part(self, name: str, args: list[str], limit: float, launcher=None) -> tuple[dict | None, str]:
        """Run ``python -m benchmarks.gpu.ARGS``; (its last JSON line, '') or (None, why not)."""
        log = self.work / f"{name}.log"
        res = self.sh([*(launcher or [self.py]), "-m", *args], log, limit)
        if res["rc"] != 0:
            return None, f"{'timeout' if res['timed_out'] else 'exit ' + str(res['rc'])}:\n{self.tail(log)}"
        try:
            return json.loads(log.read_text().strip().splitlines()[-1]), ""
        except (json.JSONDecodeError, IndexError):
            return None, f"no result line:\n{self.tail(log)}"

    def phase_model(self, limit: float) -> tuple[str, str]:
        info, why = self.part("model", ["benchmarks.gpu.train_parts", "make-model", str(self.work / "model"),
                                        "--size", "tiny" if self.dry else "1.5b", "--tokenizer", self.args.tokenizer],
                              limit)
        if info is None:
            return "failed", why
        self.result["model"] = info
        return "ok", f"{info['params'] / 1e9:.3f} B parameters, vocab {info['vocab']}, in {info['build_s']} s"

    def phase_rollout(self, limit: float) -> tuple[str, str]:
        sh = self.shape("rollout")
        res, why = self.part("rollout", ["benchmarks.gpu.train_rollout", str(self.work / "model"), "--prompts",
                                         str(sh["prompts"]), "--n", str(sh["n"]), "--tokens", str(sh["tokens"])], limit)
        if res is None:
            return "failed", why
        self.result["rollout"] = res
        return "ok", (f"{sh['prompts']} prompts x {sh['n']} x {sh['tokens']} tokens: per-prompt "
                      f"{res['per_prompt']['s']:.2f} s, batched {res['batched']['s']:.2f} s (x{res['speedup']:.2f})")

    def phase_update(self, limit: float) -> tuple[str, str]:
        sh = self.shape("update")
        args = ["benchmarks.gpu.train_update", "matrix", str(self.work / "model")]
        for k in ("rows", "samples", "prompt", "responses", "micro", "repeats"):
            args += [f"--{k}", str(sh[k])]
        res, why = self.part("update", args, limit)
        if res is None:
            return "failed", why
        self.result["update"] = res
        ran = [c for c in res["configs"] if "s" in c]
        oom = len(res["configs"]) - len(ran)
        return ("ok" if ran else "failed"), f"{len(ran)} settings ran" + (f", {oom} out of memory" if oom else "")

    def phase_breakdown(self, limit: float) -> tuple[str, str]:
        sh = self.shape("breakdown")
        args = ["benchmarks.gpu.train_parts", "breakdown", str(self.work / "model")]
        for k in ("rows", "prompt", "response", "repeats", "micro_batches"):
            args += [f"--{k.replace('_', '-')}", str(sh[k])]
        res, why = self.part("breakdown", args, limit)
        if res is None:
            return "failed", why
        self.result["breakdown"] = res
        return "ok", f"fused loss + advantages: {res['impls']['fused']['kernels_share']:.1%} of an optimizer step"

    def phase_parity(self, limit: float) -> tuple[str, str]:
        sh = self.shape("parity")
        args = ["benchmarks.gpu.train_update", "parity", str(self.work / "model")]
        for k in ("rows", "samples", "prompt", "response", "micro", "steps"):
            args += [f"--{k}", str(sh[k])]
        single, why = self.part("parity_single", args, limit / 2)
        if single is None:
            return "failed", "single process " + why
        self.result["parity"] = {"single": single}
        launcher = [self.py, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"]
        ranked, why = self.part("parity_torchrun", args, self.remaining_for(limit), launcher)
        if ranked is None:
            return "failed", "torchrun " + why
        self.result["parity"]["torchrun"] = ranked
        a, b = single["steps"][0]["loss"], ranked["steps"][0]["loss"]
        return "ok", f"step-1 loss {a:.6g} (one process) vs {b:.6g} (torchrun)"

    def remaining_for(self, limit: float) -> float:
        return max(1.0, min(limit, self.remaining()))

    def run_trainer(self, name: str, limit: float, impl: str, torchrun: bool, steps: int) -> tuple[str, str]:
        out_dir = self.work / f"run_{name}"
        shutil.rmtree(out_dir, ignore_errors=True)
        launcher = ([self.py, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "1"]
                    if torchrun else [self.py])
        cmd = [*launcher, "-m", "benchmarks.gpu.train_parts", "train", *train_args(self.dry, steps), "--rollout", "hf",
               "--output-dir", str(out_dir), "--set", f"model.policy={self.work / 'model'}",
               "--set", f"loss.impl={impl}"]
        log = self.work / f"train_{name}.log"
        backends = subprocess.run([self.py, "-c", "import medix_kernels; print(','.join(medix_kernels.backends()))"],
                                  cwd=ROOT, env=self.env(), capture_output=True, text=True, timeout=60).stdout.strip()
        res = self.sh(cmd, log, limit)
        recs = read_metrics(out_dir / "metrics.jsonl")
        run = {"impl": impl, "torchrun": torchrun, "backends": backends, "rc": res["rc"], "wall_s": res["wall_s"],
               "steps": len(recs), "summary": summarize_steps(recs)}
        run["params_changed"] = params_changed(self.work / "model", out_dir)
        self.result["runs"][name] = run
        if res["timed_out"]:
            return "timeout", f"killed after {res['wall_s']} s with {len(recs)} steps logged"
        if res["rc"] != 0:
            return "failed", f"exit {res['rc']} after {len(recs)} steps:\n{self.tail(log)}"
        s = run["summary"]
        finite = all(math.isfinite(x) for x in s.get("losses", [])) and bool(s.get("losses"))
        ok = finite and run["params_changed"] is not False
        step_s = s.get("time/step", float("nan"))
        return ("ok" if ok else "failed"), (f"{len(recs)} steps, losses finite: {finite}, parameters changed: "
                                            f"{run['params_changed']}, mean step {step_s:.2f} s")

    def phase_torchrun(self, limit):
        return self.run_trainer("torchrun", limit, "fused", True, self.steps)

    def phase_fused(self, limit):
        return self.run_trainer("fused", limit, "fused", False, self.steps)

    def phase_plain(self, limit):
        return self.run_trainer("plain", limit, "plain", False, self.steps)

    # ------------------------------------------------------------------ driver
    def run(self) -> int:
        wanted = self.args.phases.split(",") if self.args.phases else DEFAULT_PHASES
        for name in PHASES:
            if name not in wanted:
                continue
            limit = min(CAPS[name] * (2 if self.dry else 1), self.remaining())
            if limit < 10:
                self.result["phases"][name] = {"status": "skipped", "note": "out of time budget"}
                continue
            if name != "model" and self.result["phases"].get("model", {}).get("status") != "ok":
                self.result["phases"][name] = {"status": "skipped", "note": "no model"}
                continue
            self.say(f"{name} (limit {limit:.0f} s)")
            t = time.monotonic()
            try:
                status, note = getattr(self, f"phase_{name}")(limit)
            except Exception as exc:  # a broken phase must not lose the others' results
                status, note = "error", f"{type(exc).__name__}: {exc}"
            self.result["phases"][name] = {"status": status, "note": note, "wall_s": round(time.monotonic() - t, 1)}
            self.say(f"{name}: {status}: {note.splitlines()[0] if note else ''}")
            self.write()
        self.write()
        bad = [n for n, p in self.result["phases"].items() if p["status"] not in ("ok",)]
        return 1 if bad else 0

    def write(self) -> None:
        self.result["finished"] = now()
        self.result["targets"] = targets(self.result)
        (self.out / "train_check.json").write_text(json.dumps(self.result, indent=1, default=str))
        (self.out / "train_summary.md").write_text(summary_markdown(self.result))
        write_csv(self.out / "train_check.csv", self.result)
        with tarfile.open(self.out / "train_logs.tar.gz", "w:gz") as tar:
            for p in sorted(self.work.glob("*.log")):
                tar.add(p, arcname=f"train_logs/{p.name}")
            for p in sorted(self.work.glob("run_*/metrics.jsonl")):
                tar.add(p, arcname=f"train_logs/{p.parent.name}.metrics.jsonl")


def read_metrics(path: Path) -> list[dict]:
    recs = []
    if path.exists():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec.get("time/step"), (int, float)):
                recs.append(rec)
    return recs


def summarize_steps(recs: list[dict]) -> dict:
    """Means over the steps after the first (its warm-up: allocator, Triton compilation), or all when
    there is only one."""
    used = recs[1:] or recs
    out = {"losses": [r.get("loss/loss", r.get("loss", float("nan"))) for r in recs]}
    for k in [f"time/{p}" for p in TIME_KEYS] + ["perf/tokens_per_s", "memory/update_peak_gb",
                                                  "memory/rollout_logp_peak_gb", "rollout/response_len",
                                                  "reward/total", "optim/grad_norm", "loss/grad_norm"]:
        vals = [r[k] for r in used if isinstance(r.get(k), (int, float))]
        if vals:
            out[k] = sum(vals) / len(vals)
    peaks = [r["memory/update_peak_gb"] for r in recs if isinstance(r.get("memory/update_peak_gb"), (int, float))]
    if peaks:
        out["max_update_peak_gb"] = max(peaks)
    return out


def params_changed(model_dir: Path, out_dir: Path):
    """Whether the final checkpoint's weights differ from the initial ones (a few tensors compared);
    None when no checkpoint was written."""
    try:
        from safetensors import safe_open
    except ImportError:
        return None
    finals = sorted(out_dir.glob("step_*/model/*.safetensors")) or sorted(out_dir.glob("step_*/*.safetensors"))
    firsts = sorted(model_dir.glob("*.safetensors"))
    if not finals or not firsts:
        return None
    with safe_open(str(firsts[0]), "pt") as a, safe_open(str(finals[0]), "pt") as b:
        first_keys, final_keys = a.keys(), set(b.keys())  # safe_open handles: keys() is their only listing
        names = [n for n in first_keys if n in final_keys and "layers.0." in n][:4]
        if not names:
            return None
        return any(not a.get_tensor(n).float().equal(b.get_tensor(n).float()) for n in names)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu.train_check")
    p.add_argument("out")
    p.add_argument("--dry-run", action="store_true", help="a tiny model on this CPU machine (the test suite)")
    p.add_argument("--steps", type=int, default=0, help="training steps per run (default 3; dry run 2)")
    p.add_argument("--budget-s", type=float, default=345.0, help="the whole check's time budget (6 minutes of "
                                                                   "GPU time with the machine's start)")
    p.add_argument("--phases", default="", help=f"comma-separated subset of {','.join(PHASES)} (default: all "
                                                  f"but {PHASES[-1]})")
    p.add_argument("--tokenizer", default="", help="tokenizer folder ('' = the bundled SmolLM2's)")
    p.add_argument("--work", default="", help="scratch folder (default: a new temporary one)")
    p.add_argument("--python", default="", help="interpreter for the phases (default: this one)")
    args = p.parse_args(argv)
    if args.steps < 0 or args.budget_s <= 0:
        p.error("--steps must be >= 0 and --budget-s > 0")
    unknown = set(filter(None, args.phases.split(","))) - set(PHASES)
    if unknown:
        p.error(f"--phases: unknown {sorted(unknown)}; known: {', '.join(PHASES)}")
    return TrainCheck(args).run()


if __name__ == "__main__":
    sys.exit(main())
