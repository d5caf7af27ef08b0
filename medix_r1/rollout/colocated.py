"""vLLM as a library in the trainer's process (``rollout.engine=vllm``), weights synced in place.

fp32 on CPU with an explicit KV cache, bf16 on a GPU (see :mod:`medix_r1.rollout.vllm_engine`).
After each optimizer step :meth:`VllmRollout.sync` loads the policy's weights without touching the
disk. The sampled tokens' log-probs come back with ``logprobs=0``, under the distribution they
were drawn from (vLLM's processed log-probs: logit bias, temperature and top-p applied), so the loss
can compare them with its own at the same temperature (``sampling_logprobs``).
"""
from __future__ import annotations

import logging

import torch

from medix_r1.rollout.types import OOM_HINT, RolloutOutOfMemory, Rollouts, is_oom, sample_seed, sampling_extras
from medix_r1.rollout.vllm_engine import SAMPLING_LOGPROBS, build_llm, engine_kwargs, load_weights, sampled_logprobs

log = logging.getLogger("medix_r1.rollout")


class VllmRollout:
    """vLLM engine colocated with the trainer, weights synced in place."""

    logit_bias: dict | None = None  # token id -> bias (suppress_tokens)
    sampling_logprobs = True  # Rollouts.sample_logp are the sampling distribution's log-probs

    def __init__(self, model_dir, cfg, seed: int, extra_engine_kwargs: dict | None = None):
        self.cfg = cfg
        self.on_gpu = torch.cuda.is_available()
        kwargs = engine_kwargs(model_dir, max_model_len=cfg.max_model_len, seed=seed, kv_cache_gb=cfg.kv_cache_gb,
                               gpu_memory_utilization=cfg.gpu_memory_utilization, enforce_eager=True,
                               on_gpu=self.on_gpu, sleep_mode=True, logprobs_mode=SAMPLING_LOGPROBS)
        if not self.on_gpu:
            log.info("vLLM sleep/wake is not supported on CPU: the KV cache (%.2f GiB) stays "
                     "allocated during training", cfg.kv_cache_gb)
        kwargs.update(extra_engine_kwargs or {})  # e.g. limit_mm_per_prompt for a vision-language policy
        self.llm = build_llm(kwargs)

    def generate(self, prompt_ids: list, step: int, seed: int, attempt: int = 0, offset: int = 0) -> Rollouts:
        from vllm import SamplingParams

        from medix_r1.vision.prompts import check_vllm_prompt, split_prompt, vllm_request

        c = self.cfg
        params = [SamplingParams(n=c.n, temperature=c.temperature, top_p=c.top_p, max_tokens=c.max_tokens,
                                 logprobs=0, seed=sample_seed(seed, step, offset + i, attempt),
                                 logit_bias=self.logit_bias, **sampling_extras(c))
                  for i in range(len(prompt_ids))]
        # TokensPrompt dicts; a VL item adds multi_modal_data={"image": [...]} (see vllm_request)
        prompts = [vllm_request(p) for p in prompt_ids]
        try:
            outs = self.llm.generate(prompts, params, use_tqdm=False)
        except Exception as e:
            if is_oom(e):
                raise RolloutOutOfMemory(f"{OOM_HINT} ({type(e).__name__}: {e})") from e
            raise
        r = Rollouts()
        for i, out in enumerate(outs):
            check_vllm_prompt(getattr(out, "prompt_token_ids", None), prompt_ids[i])
            trainer_ids, images = split_prompt(prompt_ids[i])
            for comp in out.outputs:
                r.add(prompt_ids=trainer_ids, images=images, response_ids=comp.token_ids,
                      sample_logp=sampled_logprobs(comp), text=comp.text, group=i,
                      truncated=comp.finish_reason == "length")
        return r

    def suppress_tokens(self, token_ids) -> None:
        """Never sample these ids (VL policies: image placeholder / vision markers, which a training
        forward would take for image slots). The bias of -100 is part of the sampling distribution whose
        log-probs come back (it takes those ids' probability, ~e^-100 of it, out of the normaliser)."""
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
        load_weights(self.llm, ((name, p.detach()) for name, p in model.named_parameters()))
