"""Rollouts: n sampled responses per prompt, with the sampled tokens' raw log-probs.

Two engines return the same :class:`Rollouts`:

- :class:`VllmRollout`: vLLM as a library in the trainer's process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``),
  fp32 on CPU, KV cache given explicitly. After each optimizer step :meth:`VllmRollout.sync` loads
  the policy's weights in place (no disk): the worker's ``reload_weights``, then the LM head's
  ``process_weights_after_loading`` (SmolLM2 ties it to the embeddings and the CPU backend keeps a
  repacked copy that would go stale), then ``reset_prefix_cache``.
- :class:`HfRollout`: transformers ``generate`` on the policy itself (nothing to sync).

Both report raw log-probs (log_softmax of the unscaled logits, before temperature), which is what
vLLM returns with ``logprobs=0``.
"""
from __future__ import annotations

import logging
import os
import zlib
from dataclasses import dataclass, field

import torch

log = logging.getLogger("medix_r1.train")

OOM_HINT = ("out of memory during rollouts: lower rollout.kv_cache_gb, rollout.max_tokens or "
            "data.prompts_per_step (e.g. --set rollout.max_tokens=64)")
OOM_START_HINT = ("out of memory while starting vLLM: lower rollout.kv_cache_gb (CPU) or "
                  "rollout.gpu_memory_utilization (GPU), or rollout.max_model_len")


class RolloutOutOfMemory(RuntimeError):
    """Rollouts ran out of memory; the message names the config knobs to turn."""


@dataclass
class Rollouts:
    """Flat lists, one entry per sample, laid out group by group (prompt 0's n samples first)."""
    prompt_ids: list[list[int]] = field(default_factory=list)
    response_ids: list[list[int]] = field(default_factory=list)
    sample_logp: list[list[float]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    group: list[int] = field(default_factory=list)      # index of the prompt in the step's list
    truncated: list[bool] = field(default_factory=list)  # hit max_tokens without EOS
    # per sample: the prompt's image inputs {"pixel_values", "image_grid_thw"} (shared by the group) or None
    images: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.response_ids)


def sample_seed(base: int, step: int, prompt_index: int, attempt: int = 0) -> int:
    """A per-request seed that depends only on (run seed, step, prompt, refill attempt): a resumed
    run samples exactly what the uninterrupted one did."""
    return zlib.crc32(f"{base}/{step}/{prompt_index}/{attempt}".encode()) & 0x7FFFFFFF


def _is_oom(err: BaseException) -> bool:
    text = str(err).lower()
    return isinstance(err, (MemoryError, torch.OutOfMemoryError)) or "out of memory" in text or \
        "not enough memory" in text or "insufficient memory" in text or "kv cache" in text and "memory" in text


class VllmRollout:
    """vLLM engine colocated with the trainer, weights synced in place."""

    def __init__(self, model_dir, cfg, seed: int, engine_kwargs: dict | None = None):
        # Must be set before vLLM builds its engine: keeps the worker in this process (FACTS §4).
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM

        self.cfg = cfg
        self.on_gpu = torch.cuda.is_available()
        kwargs = dict(model=str(model_dir), enforce_eager=True, max_model_len=cfg.max_model_len, seed=seed)
        if self.on_gpu:
            kwargs.update(dtype="bfloat16", gpu_memory_utilization=cfg.gpu_memory_utilization,
                          enable_sleep_mode=True)
        else:
            # No chunked prefill on CPU: when a prompt is prefilled in parts, vLLM discards the token
            # sampled for it and rewinds that request's seeded generator, which a CPU generator refuses
            # ("CPU Generator does not use offset"); it happened as soon as a step's prompts exceeded
            # the default token budget (e.g. 12 prompts x 4 samples x 190 tokens).
            kwargs.update(dtype="float32", kv_cache_memory_bytes=int(cfg.kv_cache_gb * (1 << 30)),
                          enable_chunked_prefill=False, max_num_batched_tokens=max(cfg.max_model_len, 8192))
            log.info("vLLM sleep/wake is not supported on CPU: the KV cache (%.2f GiB) stays "
                     "allocated during training", cfg.kv_cache_gb)
        kwargs.update(engine_kwargs or {})  # e.g. limit_mm_per_prompt for a vision-language policy
        try:
            self.llm = LLM(**kwargs)
        except Exception as e:
            if _is_oom(e):
                raise RolloutOutOfMemory(f"{OOM_START_HINT} ({type(e).__name__}: {e})") from e
            raise

    def generate(self, prompt_ids: list[list[int]], step: int, seed: int, attempt: int = 0) -> Rollouts:
        from vllm import SamplingParams

        from medix_r1.vision.trainer import check_vllm_prompt, split_prompt, vllm_request

        c = self.cfg
        params = [SamplingParams(n=c.n, temperature=c.temperature, top_p=c.top_p, max_tokens=c.max_tokens,
                                 logprobs=0, seed=sample_seed(seed, step, i, attempt),
                                 logit_bias=getattr(self, "logit_bias", None))
                  for i in range(len(prompt_ids))]
        # TokensPrompt dicts; a VL item adds multi_modal_data={"image": [...]} (see vllm_request)
        prompts = [vllm_request(p) for p in prompt_ids]
        try:
            outs = self.llm.generate(prompts, params, use_tqdm=False)
        except Exception as e:
            if _is_oom(e):
                raise RolloutOutOfMemory(f"{OOM_HINT} ({type(e).__name__}: {e})") from e
            raise
        r = Rollouts()
        for i, out in enumerate(outs):
            check_vllm_prompt(getattr(out, "prompt_token_ids", None), prompt_ids[i])
            trainer_ids, images = split_prompt(prompt_ids[i])
            for comp in out.outputs:
                ids = list(comp.token_ids)
                logps = [lp[t].logprob for t, lp in zip(ids, comp.logprobs)]
                r.prompt_ids.append(trainer_ids)
                r.images.append(images)
                r.response_ids.append(ids)
                r.sample_logp.append(logps)
                r.texts.append(comp.text)
                r.group.append(i)
                r.truncated.append(comp.finish_reason == "length")
        return r

    def suppress_tokens(self, token_ids) -> None:
        """Never sample these ids (VL policies: image placeholder / vision markers, which a training
        forward would take for image slots). The returned log-probs stay raw (bias not applied)."""
        self.logit_bias = {int(t): -100.0 for t in token_ids} or None

    def sleep(self) -> None:
        """Free the KV cache while training (GPU only; a no-op on CPU, logged once at start-up)."""
        if self.on_gpu:
            self.llm.sleep(level=1)

    def wake_up(self) -> None:
        if self.on_gpu:
            self.llm.wake_up()

    @torch.no_grad()
    def sync(self, model: torch.nn.Module) -> None:
        """Load ``model``'s current weights into the engine in place."""
        weights = ((name, p.detach()) for name, p in model.named_parameters())
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights,
                                                          "is_checkpoint_format": True})
        self.llm.apply_model(_refresh_lm_head)
        self.llm.reset_prefix_cache()


def _refresh_lm_head(model) -> None:
    # The CPU backend repacks linear weights after loading; the tied LM head's packed copy is not
    # redone by reload_weights, so redo it (mean log-prob error 0.08 otherwise, FACTS §4).
    head = getattr(model, "lm_head", None)
    method = getattr(head, "quant_method", None)
    if method is not None and hasattr(method, "process_weights_after_loading"):
        method.process_weights_after_loading(head)


class HfRollout:
    """transformers ``generate`` on the training policy (no weight sync needed)."""

    def __init__(self, model, tokenizer, cfg):
        from transformers import GenerationConfig

        self.model, self.cfg = model, cfg
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos = tokenizer.eos_token_id
        self.tokenizer = tokenizer
        self.gen = GenerationConfig(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, top_k=0,
                                    max_new_tokens=cfg.max_tokens, num_return_sequences=cfg.n,
                                    pad_token_id=pad, eos_token_id=self.eos, output_logits=True,
                                    return_dict_in_generate=True)

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], step: int, seed: int, attempt: int = 0) -> Rollouts:
        from medix_r1.vision.trainer import split_prompt

        r = Rollouts()
        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        try:
            for i, prompt in enumerate(prompt_ids):
                p, images = split_prompt(prompt)  # a VL item brings pixel_values + image_grid_thw
                extra = {k: v.to(device) for k, v in images.items()} if images else {}
                # One prompt at a time (its n samples share it): no padding, exact log-probs, and a
                # per-prompt seed that a resumed run reproduces. The global RNG is left untouched.
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(sample_seed(seed, step, i, attempt))
                    x = torch.tensor([p], device=device)
                    out = self.model.generate(input_ids=x, attention_mask=torch.ones_like(x),
                                              generation_config=self.gen, **extra)
                new = out.sequences[:, len(p):]
                logits = torch.stack(out.logits, dim=1).float()          # raw logits [n, T, V]
                logp = torch.log_softmax(logits, dim=-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
                for j in range(new.shape[0]):
                    ids = new[j].tolist()
                    end = ids.index(self.eos) + 1 if self.eos in ids else len(ids)
                    r.prompt_ids.append(list(p))
                    r.images.append(images)
                    r.response_ids.append(ids[:end])
                    r.sample_logp.append(logp[j, :end].tolist())
                    r.texts.append(self.tokenizer.decode(ids[:end], skip_special_tokens=True))
                    r.group.append(i)
                    r.truncated.append(self.eos not in ids)
        except Exception as e:
            if _is_oom(e):
                raise RolloutOutOfMemory(f"{OOM_HINT} ({type(e).__name__}: {e})") from e
            raise
        finally:
            self.model.train(was_training)
        return r

    def suppress_tokens(self, token_ids) -> None:
        """Never sample these ids (see VllmRollout.suppress_tokens); ``out.logits`` stay unprocessed."""
        self.gen.suppress_tokens = [int(t) for t in token_ids] or None

    def sleep(self) -> None:
        pass

    def wake_up(self) -> None:
        pass

    def sync(self, model) -> None:
        """Nothing to do: generation runs on the policy itself."""
