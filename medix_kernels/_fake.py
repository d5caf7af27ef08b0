"""Fake (meta) kernels of the compiled reward ops, so torch.compile can trace them."""
from __future__ import annotations

import torch


def register() -> None:
    @torch.library.register_fake("medix::group_advantages")
    def _group_advantages_fake(values, weights, offsets, group_size, mode, scale, singleton, eps, nan_to_zero):
        n = values.shape[0]
        g = offsets.shape[0] - 1 if offsets is not None else n // group_size
        f32 = dict(dtype=torch.float32, device=values.device)
        return (values.new_empty((n,)), torch.empty((n if weights is not None else 0,), **f32), torch.empty((g,), **f32),
                torch.empty((g,), **f32), torch.empty((g,), dtype=torch.bool, device=values.device))

    @torch.library.register_fake("medix::cosine_rewards")
    def _cosine_rewards_fake(pred, ref, eps, threshold):
        return torch.empty((pred.shape[0],), dtype=torch.float32, device=pred.device)
