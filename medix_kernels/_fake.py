"""Fake (meta) kernels of the compiled reward ops, so torch.compile can trace them."""
from __future__ import annotations

import torch


def register() -> None:
    @torch.library.register_fake("medix::group_advantages")
    def _group_advantages_fake(values, weights, offsets, group_size, mode, scale, singleton, eps, nan_to_zero):
        n = values.shape[0]
        g = offsets.shape[0] - 1 if offsets is not None else n // group_size
        f32 = dict(dtype=torch.float32, device=values.device)
        return (values.new_empty((n,)), torch.empty((n if weights is not None else 0,), **f32),
                torch.empty((g,), **f32), torch.empty((g,), **f32),
                torch.empty((g,), dtype=torch.bool, device=values.device))

    @torch.library.register_fake("medix::group_offsets")
    def _group_offsets_fake(group_index):
        groups = torch.library.get_ctx().new_dynamic_size()  # data-dependent: the number of id changes + 1
        return group_index.new_empty((groups + 1,), dtype=torch.int64)

    @torch.library.register_fake("medix::cosine_rewards")
    def _cosine_rewards_fake(pred, ref, eps, threshold):
        return torch.empty((pred.shape[0],), dtype=torch.float32, device=pred.device)


def register_logprob() -> None:
    @torch.library.register_fake("medix::logprob_fwd")
    def _logprob_fwd_fake(logits, ids, temperature, with_entropy):
        f32 = dict(dtype=torch.float32, device=logits.device)
        ent = torch.empty(ids.shape, **f32) if with_entropy else torch.empty((0,), **f32)
        return torch.empty(ids.shape, **f32), torch.empty(ids.shape, **f32), ent

    @torch.library.register_fake("medix::logprob_bwd")
    def _logprob_bwd_fake(logits, ids, lse, grad_logp, entropy, grad_entropy, temperature):
        return torch.empty_like(logits, memory_format=torch.contiguous_format)

    @torch.library.register_fake("medix::logprob_bwd_")
    def _logprob_bwd_inplace_fake(logits, ids, lse, grad_logp, entropy, grad_entropy, temperature):
        return None
