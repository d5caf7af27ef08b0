"""Rollouts: n sampled responses per prompt, with the sampled tokens' raw log-probs.

Every engine returns the same :class:`~medix_r1.rollout.types.Rollouts` and has the same five
methods (``generate``, ``suppress_tokens``, ``sleep``, ``wake_up``, ``sync``):

- :class:`~medix_r1.rollout.colocated.VllmRollout` (``rollout.engine=vllm``): vLLM in the trainer's
  process, weights loaded in place after each optimizer step;
- :class:`~medix_r1.rollout.hf.HfRollout` (``hf``): transformers ``generate`` on the policy itself;
- :class:`~medix_r1.rollout.client.ServerRollout` (``server``): a separate rollout server
  (:mod:`medix_r1.rollout.server`), weights pushed over :mod:`medix_r1.rollout.weight_sync`;
- :class:`~medix_r1.rollout.vllm_server.VllmServerRollout` (``vllm-server``): ``vllm serve`` with vLLM's
  own weight-transfer API (NCCL, GPUs; untested on a real GPU).

A vLLM engine is configured in one place, :mod:`medix_r1.rollout.vllm_engine`. Engines import
vLLM only when built, so this package imports without it.
"""
from medix_r1.rollout.client import ServerRollout
from medix_r1.rollout.colocated import VllmRollout
from medix_r1.rollout.hf import HfRollout
from medix_r1.rollout.types import SAMPLING_KNOBS as _KNOBS
from medix_r1.rollout.types import (  # noqa: F401
    RolloutOutOfMemory,
    Rollouts,
    RolloutServerError,
    is_oom,
    sample_seed,
    sampling_extras,
)
from medix_r1.rollout.vllm_server import VllmServerRollout

# name -> builder(model_dir, policy, tokenizer, cfg, seed, extra_engine_kwargs); add an engine here
ENGINES = {
    "vllm": lambda model_dir, policy, tokenizer, cfg, seed, extra: VllmRollout(model_dir, cfg, seed, extra),
    "hf": lambda model_dir, policy, tokenizer, cfg, seed, extra: HfRollout(policy, tokenizer, cfg),
    "server": lambda model_dir, policy, tokenizer, cfg, seed, extra: ServerRollout(cfg, seed, model_dir=model_dir),
    "vllm-server": lambda model_dir, policy, tokenizer, cfg, seed, extra: VllmServerRollout(cfg, seed),
}

# name -> the sampling knobs it honours (rollout.top_k, min_p, repetition_penalty); a config that sets
# another is refused naming it (config_checks). The rollout server says which it takes in /health too.
SAMPLING_KNOBS = {"vllm": tuple(_KNOBS), "hf": tuple(_KNOBS), "server": tuple(_KNOBS), "vllm-server": tuple(_KNOBS)}


def make_engine(cfg, *, model_dir, policy, tokenizer, seed: int, extra_engine_kwargs=None):
    """The rollout engine named by ``cfg.engine`` (``cfg`` is the config's rollout section)."""
    return ENGINES[cfg.engine](model_dir, policy, tokenizer, cfg, seed, extra_engine_kwargs)
