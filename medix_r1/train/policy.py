"""The policy's forward passes: loading, hidden states, per-token log-probs and the loss.

Everything that runs the model lives here, so the step code never touches model internals. The
loss reads the last hidden state and ``lm_head.weight`` (the fused kernel never materialises the
full logits) or, with ``loss.impl=plain``, the logits.
"""
from __future__ import annotations

import contextlib

import torch

from medix_kernels import LossConfig, fused_linear_grpo_loss, fused_linear_selective_log_softmax, grpo_loss
from medix_r1.config import TrainConfig
from medix_r1.parallel import collectives as dist
from medix_r1.parallel import fsdp, lockstep
from medix_r1.train.batch import slice_batch
from medix_r1.train.shared_prompt import response_pass_needed, shared_prompt_hidden, worth_sharing
from medix_r1.utils.lora import adapters_disabled, add_lora, check_targets

EXTRA_MODEL_INPUTS = ("pixel_values", "image_grid_thw")  # passed through to the policy forward


def load_model(model_dir, cfg: TrainConfig, trainable: bool):
    """The policy (``trainable``) or the frozen reference, sharded under torchrun."""
    from medix_r1.vision.model import auto_model_class  # AutoModelForImageTextToText for Qwen-VL

    bf16 = cfg.model.dtype == "bfloat16"
    if trainable:
        # fp32 master weights with or without torchrun, unless the optimizer is the bf16 one (bf16 weights and
        # Kahan compensation): AdamW's lr-1e-6 update is below half a bf16 ulp of most weights and would round away
        dtype = torch.bfloat16 if cfg.optim.optimizer == "adamw_bf16" else torch.float32
    elif dist.enabled():
        dtype = fsdp.mixed_precision(cfg).param_dtype or torch.float32
    else:
        dtype = torch.bfloat16 if bf16 else torch.float32
    model = auto_model_class(model_dir).from_pretrained(str(model_dir), dtype=dtype,
                                                        attn_implementation=cfg.model.attn_implementation)
    lora = trainable and cfg.model.lora.r > 0
    if lora:  # adapters only train; the frozen base stays bit-identical (utils/lora.py)
        model = add_lora(model, cfg.model.lora, base_model=str(model_dir))
    model.train(trainable)  # no dropout in these models (but LoRA's); train() also matters for checkpointing
    if trainable and cfg.model.gradient_checkpointing:
        # non-reentrant checkpointing composes with FSDP's hooks (the recomputation gathers the layer again)
        # and gives LoRA's adapters gradients although the frozen embeddings' outputs need none
        model.gradient_checkpointing_enable(**({"gradient_checkpointing_kwargs": {"use_reentrant": False}}
                                               if dist.enabled() or lora else {}))
    if not trainable:
        model.requires_grad_(False)
    if not dist.enabled():
        model.to(dist.device())  # under torchrun FSDP places the shards on the rank's GPU
    # Read by policy_hidden. Off with checkpointing (a recomputed layer would append to the shared cache
    # twice) and for vision-language models (their multimodal rotary positions come from the whole sequence).
    model.medix_share_prompts = (cfg.model.share_prompt_forward and getattr(model.config, "vision_config", None) is None
                                 and not (trainable and cfg.model.gradient_checkpointing))
    # bf16 compute over fp32 master weights: FSDP's mixed precision under torchrun (on a GPU), autocast in one process
    compute = cfg.model.autocast or ("bfloat16" if bf16 and dtype == torch.float32 and not dist.enabled() else "")
    model.medix_autocast = getattr(torch, compute) if compute else None  # read by autocast()
    return fsdp.shard(model, cfg, trainable)  # FSDP2 under torchrun, else the model as loaded


def check_lora_targets(model_dir, cfg: TrainConfig) -> None:
    """model.lora.target_modules against the policy's module tree, built on the meta device (no weights)."""
    from transformers import AutoConfig

    from medix_r1.vision.model import auto_model_class

    config = AutoConfig.from_pretrained(str(model_dir))
    with torch.device("meta"):
        skeleton = auto_model_class(model_dir).from_config(config)
    check_targets(skeleton, cfg.model.lora.target_modules)


def loss_config(cfg: TrainConfig) -> LossConfig:
    """The kernel's LossConfig from the config's loss section (temperature from the rollouts)."""
    section = cfg.loss
    aggregation = None if section.aggregation == "auto" else section.aggregation  # None: the loss type's own
    return LossConfig(loss_type=section.loss_type, clip_low=section.clip_low, clip_high=section.clip_high,
                      dual_clip=section.dual_clip if section.dual_clip > 0 else None, kl=section.kl,
                      beta=section.beta, aggregation=aggregation, max_len=cfg.rollout.max_tokens,
                      temperature=cfg.rollout.temperature, entropy_coef=section.entropy_coef,
                      rollout_correction=section.rollout_correction, rollout_is_cap=section.rollout_is_cap,
                      rollout_is_lower=section.rollout_is_lower)


def autocast(model, device: torch.device):
    """torch.autocast in ``model.autocast``'s dtype, or a context that changes nothing (not a disabled
    autocast, which would switch off one the caller opened). Every forward of the policy runs under it
    (the no-grad log-prob passes too), so old and new log-probs share numerics."""
    dtype = getattr(model, "medix_autocast", None)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)


def head_inputs(model, hidden: torch.Tensor):
    """(hidden, LM head weight, bias) for the fused kernels, in the autocast dtype when it is on: the
    kernels take one dtype and accumulate in float32; the casts' gradients flow back in model.dtype."""
    weight, bias = lm_head_params(model)
    dtype = getattr(model, "medix_autocast", None)
    if dtype is None:
        return hidden, weight, bias
    return hidden.to(dtype), weight.to(dtype), None if bias is None else bias.to(dtype)


def policy_hidden(model, batch: dict) -> torch.Tensor:
    """Last hidden states at the positions that predict each response token: [B, R, H].

    The one place the policy runs forward: extra model inputs (``pixel_values``,
    ``image_grid_thw``) in the batch are passed through, so image items need no other change.
    Text rows that share a prompt run it once (``model.share_prompt_forward``, see shared_prompt.py)."""
    with autocast(model, batch["input_ids"].device):
        return _policy_hidden(model, batch)


def _policy_hidden(model, batch: dict) -> torch.Tensor:
    extra = {k: batch[k] for k in EXTRA_MODEL_INPUTS if k in batch}
    if lockstep.share_prompt_forward(not extra and getattr(model, "medix_share_prompts", False)
                                     and worth_sharing(batch)):
        return shared_prompt_hidden(model.base_model, batch,
                                    response_pass=lockstep.response_pass(response_pass_needed(batch)))
    out = model.base_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           use_cache=False, **extra)
    hidden = out.last_hidden_state
    idx = batch["pred_pos"].unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
    return hidden.gather(1, idx)


def lm_head_params(model):
    head = model.get_output_embeddings()
    return head.weight, getattr(head, "bias", None)


def micro_logp(model, mb: dict, temperature: float) -> torch.Tensor:
    hidden, weight, bias = head_inputs(model, policy_hidden(model, mb))
    return fused_linear_selective_log_softmax(hidden, weight, mb["ids"], bias=bias, temperature=temperature)


def reference_logp(ref, policy, batch: dict, temperature: float, micro: int, base_of_policy: bool):
    """The reference policy's log-probs: ``ref``'s, or with ``base_of_policy`` (LoRA with no other
    reference) the policy's own with its adapters off; None when the loss needs none."""
    if ref is not None:
        return sequence_logp(ref, batch, temperature, micro)
    if not base_of_policy:
        return None
    with adapters_disabled(policy):
        return sequence_logp(policy, batch, temperature, micro)


@torch.no_grad()
def sequence_logp(model, batch: dict, temperature: float, micro: int) -> torch.Tensor:
    """Per-token log-probs [B, R] of the response ids under ``model`` (no grad), micro-batched."""
    parts = []
    for rows in lockstep.forward_slices(batch["ids"].shape[0], micro):
        logp = fsdp.run(model, micro_logp, slice_batch(batch, rows or slice(0, 1)), temperature)
        if rows is not None:
            parts.append(logp)
    return torch.cat(parts) * batch["mask"]


@torch.no_grad()
def approx_kl(hidden, weight, bias, mb: dict, old_logp, temperature: float) -> torch.Tensor:
    """KL(old || new) over the micro-batch's response tokens, k3 estimate from the sampled tokens: the
    mean of r - 1 - log r with r = p_new / p_old (one more no-grad pass over the LM head, off-policy only)."""
    new = fused_linear_selective_log_softmax(hidden.detach(), weight.detach(), mb["ids"],
                                             bias=None if bias is None else bias.detach(), temperature=temperature)
    x = (new - old_logp).clamp(-20.0, 20.0)
    mask = mb["mask"]
    return ((x.exp() - 1.0 - x) * mask).sum() / mask.sum().clamp_min(1)


def policy_loss(model, mb: dict, advantages, old_logp, ref_logp, lcfg: LossConfig, impl: str, chunk: int):
    """Loss and stats (the mean entropy among them, logged every step) for one micro-batch. With the engine's
    sampling log-probs in the batch (``rollout_logp``) the loss applies loss.rollout_correction and reports
    the rollout/trainer mismatch in its stats (no second pass over the logits)."""
    hidden, weight, bias = head_inputs(model, policy_hidden(model, mb))
    rollout_logp = mb.get("rollout_logp")
    if impl == "fused":
        extra = {"lm_head_bias": bias} if bias is not None else {}
        loss, stats = fused_linear_grpo_loss(hidden, weight, mb["ids"], mb["mask"], advantages,
                                             old_logp=old_logp, ref_logp=ref_logp, rollout_logp=rollout_logp,
                                             config=lcfg, chunk_size=chunk or None, return_entropy=True, **extra)
    else:
        logits = torch.nn.functional.linear(hidden, weight, bias)
        loss, stats = grpo_loss(logits, mb["ids"], mb["mask"], advantages, old_logp=old_logp, ref_logp=ref_logp,
                                rollout_logp=rollout_logp, config=lcfg, return_entropy=True)
    if old_logp is not None:  # off-policy: how far the policy has moved from the one that sampled (k3)
        stats["approx_kl_old"] = approx_kl(hidden, weight, bias, mb, old_logp, lcfg.temperature)
    zero_vision_grads = lockstep.vision_gradient_term(model, mb)
    if zero_vision_grads is not None:
        loss = loss + zero_vision_grads
    return loss, stats
