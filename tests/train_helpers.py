"""Shared pieces of the trainer tests: a tiny Llama policy and a reward worker with varied rewards."""
from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass

import torch


def make_tiny_model(folder) -> str:
    """A 2-layer, 32-wide Llama with SmolLM2's tokenizer (and chat template), saved to ``folder``."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from medix_r1.models import smollm2_hf_dir

    tok = AutoTokenizer.from_pretrained(str(smollm2_hf_dir()))
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def tiny_run_config(tiny, out, *more):
    """The trainer tests' run: the tiny policy, HF rollouts of 3 x 6 tokens for 2 prompts of the first
    20 bundled records, 2 steps, output in ``out``; ``more`` adds or overrides ``key=value`` settings."""
    from medix_r1.config import load_config

    return load_config("cpu_smollm2", [f"model.policy={tiny}", "rollout.engine=hf", "rollout.max_tokens=6",
                                       "rollout.n=3", "data.prompts_per_step=2", "data.max_records=20",
                                       "train.max_steps=2", f"train.output_dir={out}", "train.progress=false",
                                       *more])


@dataclass
class Result:
    total: float
    format: float = 0.0
    modality: float = 0.0
    judge: float = 0.0
    embedding: float = 0.0
    judge_failed: bool = False
    exact_match: bool = False
    invalid_answer: bool = False


class CharRewardWorker:
    """Reward = share of the letter 'e' in the response: varies between samples, so advantages and
    gradients are non-zero even for a random tiny model. Same interface as RewardWorker."""

    def __init__(self, judge_failed: bool = False, on_submit=None):
        self.judge_failed, self.on_submit, self.calls = judge_failed, on_submit, 0

    def submit(self, problems, responses, solutions) -> Future:
        self.calls += 1
        if self.on_submit is not None:
            self.on_submit(self.calls)
        fut = Future()
        fut.set_result([Result(total=r.count("e") / max(1, len(r)), judge_failed=self.judge_failed)
                        for r in responses])
        return fut

    def stats(self):
        return {"calls": self.calls}

    def close(self):
        pass
