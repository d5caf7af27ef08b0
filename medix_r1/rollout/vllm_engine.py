"""The one place a vLLM engine is configured, built and given new weights.

Used by the colocated rollout engine, the rollout server and the evaluation's generator alike:

- :func:`engine_kwargs`: the ``vllm.LLM`` arguments. Rollout engines ask for
  ``logprobs_mode="processed_logprobs"``: the sampled tokens' log-probs under the distribution they
  were drawn from (after logit bias, temperature and top-p), what the loss's rollout correction
  compares with the trainer's log-probs at the same temperature. On CPU: fp32 (bf16 sampling log-probs differ
  from the fp32 trainer's by up to 0.36), an explicit KV-cache size (skips vLLM's profiling warm-up
  and leaves the rest of the RAM to the trainer), eager mode, and no chunked prefill (when a prompt
  is prefilled in parts vLLM rewinds that request's seeded generator, which a CPU generator refuses
  with "CPU Generator does not use offset"). On a GPU: bf16 and a share of the GPU memory.
- :func:`build_llm`: the engine in this process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``: the worker
  stays in the trainer's process, which on a small CPU machine loads 5x faster and samples ~1.5x
  faster than a separate engine process), out-of-memory errors turned into a message naming the
  knobs.
- :func:`load_weights`: new weights in place, without touching the disk: the worker's
  ``reload_weights``, then the tied LM head's repacked copy is rebuilt (the CPU backend repacks
  linear weights after loading and ``reload_weights`` does not redo the tied head: its log-probs
  would be off by ~0.08 on average), then the prefix cache is reset. vLLM warns "RotaryEmbedding:
  Failed to load weights" and "ParallelLMHead: Failed to load weights" on every reload: neither
  layer has tensors of its own in the policy's weights (the rotary cos/sin cache is computed; a
  tied head is the input embedding), so vLLM keeps their tensors, which is right. Those two
  warnings are filtered and replaced by one line that says so (INFO the first time, DEBUG after);
  any other layer that fails to load still warns.
"""
from __future__ import annotations

import logging
import os
from contextlib import contextmanager

import torch

from medix_r1.rollout.types import OOM_START_HINT, RolloutOutOfMemory, is_oom

log = logging.getLogger("medix_r1.rollout")


def engine_kwargs(model, *, max_model_len: int, seed: int = 0, dtype: str = "auto", kv_cache_gb: float = 1.0,
                  gpu_memory_utilization: float = 0.9, enforce_eager: bool | None = None,
                  on_gpu: bool | None = None, sleep_mode: bool = False, logprobs_mode: str | None = None) -> dict:
    """``vllm.LLM(...)`` arguments (see the module docstring for each choice)."""
    on_gpu = torch.cuda.is_available() if on_gpu is None else on_gpu
    kw = {"model": str(model), "max_model_len": int(max_model_len), "seed": int(seed),
              "enforce_eager": (not on_gpu) if enforce_eager is None else bool(enforce_eager)}
    if logprobs_mode is not None:
        kw["logprobs_mode"] = logprobs_mode
    if on_gpu:
        kw.update(dtype="bfloat16" if dtype == "auto" else dtype, gpu_memory_utilization=gpu_memory_utilization)
        if sleep_mode:
            kw["enable_sleep_mode"] = True
    else:
        kw.update(dtype="float32" if dtype == "auto" else dtype, kv_cache_memory_bytes=int(kv_cache_gb * (1 << 30)),
                  enable_chunked_prefill=False, max_num_batched_tokens=max(int(max_model_len), 8192))
    return kw


def build_llm(kwargs: dict):
    """A ``vllm.LLM`` in this process; :class:`RolloutOutOfMemory` naming the knobs when it does not fit."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # read when vLLM builds its engine
    from vllm import LLM

    try:
        return LLM(**kwargs)
    except Exception as e:
        if is_oom(e):
            raise RolloutOutOfMemory(f"{OOM_START_HINT} ({type(e).__name__}: {e})") from e
        raise


#: The engines' log-probs: those of the distribution each token was drawn from (vLLM's --logprobs-mode).
SAMPLING_LOGPROBS = "processed_logprobs"


def sampled_logprobs(completion) -> list[float]:
    """The log-prob of each sampled token of a vLLM completion (requested with ``logprobs=0``): under the
    sampling distribution for an engine built with ``logprobs_mode=SAMPLING_LOGPROBS``, else raw."""
    return [lp[t].logprob for t, lp in zip(completion.token_ids, completion.logprobs)]


# the vLLM module whose reload warns for layers that got no tensors (vllm/model_executor/model_loader/reload)
VLLM_RELOAD_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"
_reported = False


class ExpectedReloadWarnings(logging.Filter):
    """Drops vLLM's "<Layer>: Failed to load weights" for the layers that have no weights of their own
    in a policy's state (rotary embeddings; the LM head, tied to the embeddings); keeps their names."""

    def __init__(self):
        super().__init__()
        self.layers: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        layer = message[:-len(": Failed to load weights")] if message.endswith(": Failed to load weights") else ""
        if layer.endswith("RotaryEmbedding") or layer == "ParallelLMHead":
            self.layers.append(layer)
            return False
        return True


@contextmanager
def expected_reload_warnings_as_one_line():
    """Around a weight reload: the expected warnings filtered, then one line saying what they meant."""
    global _reported
    quiet = ExpectedReloadWarnings()
    logger = logging.getLogger(VLLM_RELOAD_LOGGER)
    logger.addFilter(quiet)
    try:
        yield quiet
    finally:
        logger.removeFilter(quiet)
    if quiet.layers:
        names = ", ".join(f"{n} x{quiet.layers.count(n)}" for n in dict.fromkeys(quiet.layers))
        log.log(logging.DEBUG if _reported else logging.INFO,
                "weight sync: vLLM kept its own tensors of the layers that have none in the policy's weights "
                "(%s: the rotary cache is computed, a tied LM head is the embedding); nothing failed", names)
        _reported = True


def load_weights(llm, weights) -> None:
    """Load ``(name, tensor)`` pairs (checkpoint names; an iterator is consumed once) into the engine in place."""
    with expected_reload_warnings_as_one_line():
        llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights, "is_checkpoint_format": True})
    finish_weight_update(llm)


def finish_weight_update(llm) -> None:
    """After new weights: rebuild the tied LM head's repacked copy and drop cached prefixes."""
    llm.apply_model(_refresh_lm_head)
    llm.reset_prefix_cache()


def _refresh_lm_head(model) -> None:
    head = getattr(model, "lm_head", None)
    method = getattr(head, "quant_method", None)
    if method is not None and hasattr(method, "process_weights_after_loading"):
        method.process_weights_after_loading(head)
