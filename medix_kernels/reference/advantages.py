"""Pure-PyTorch references for the reward-side ops (the "torch" backend and the tests' oracle).

They read like the maths, in float64, with segment sums over contiguous groups:
    mean_g = sum_{i in g} r_i / n_g
    std_g  = sqrt(sum_{i in g} (r_i - mean_g)^2 / (n_g - 1))          (unbiased, as TRL and verl)
    grpo:    A_i = (r_i - mean_g) / (std_g + eps)      (or the batch std with scale="batch")
    dr_grpo: A_i = r_i - mean_g
    rloo:    A_i = r_i - (sum_g - r_i) / (n_g - 1)
A group of one, or whose rewards are all equal, gets A = 0 (verl's convention for a group of
one, mean 0 and std 1, with singleton="verl").
"""
from __future__ import annotations

import torch

from .._groups import group_offsets


def _segments(n, group_size, group_index, device):
    offsets = group_offsets(n, group_size, group_index).to(device)
    counts = offsets.diff()
    seg = torch.repeat_interleave(torch.arange(counts.numel(), device=device), counts)
    return seg, counts


def _segment_sum(x, seg, num_groups):
    return torch.zeros(num_groups, dtype=x.dtype, device=x.device).index_add_(0, seg, x)


def _group_stats64(rewards, group_size=None, group_index=None):
    """group_stats in float64 (rewards near 3e38 have a std above the float32 range)."""
    r = rewards.double()
    seg, counts = _segments(r.numel(), group_size, group_index, r.device)
    g = counts.numel()
    n = counts.double()
    mean = _segment_sum(r, seg, g) / n.clamp_min(1)
    dev2 = (r - mean[seg]) ** 2
    std = (_segment_sum(dev2, seg, g) / (n - 1).clamp_min(1)).sqrt() * (counts > 1)
    lo = torch.full((g,), float("inf"), dtype=r.dtype, device=r.device).scatter_reduce(0, seg, r, "amin")
    hi = torch.full((g,), -float("inf"), dtype=r.dtype, device=r.device).scatter_reduce(0, seg, r, "amax")
    degenerate = (lo == hi) & (counts > 0)
    return mean, std, degenerate


def group_stats(rewards, group_size=None, *, group_index=None):
    """Per-group mean, unbiased std (0 for a group of one) and the 'all rewards equal' mask."""
    mean, std, degenerate = _group_stats64(rewards, group_size, group_index)
    return mean.float(), std.float(), degenerate


def group_advantages(rewards, group_size=None, *, group_index=None, mode="grpo", scale="group",
                     eps=1e-6, singleton="zero"):
    """A_i for every reward (see medix_kernels.group_advantages for the arguments)."""
    r = rewards.double()
    seg, counts = _segments(r.numel(), group_size, group_index, r.device)
    mean, std, degenerate = _group_stats64(rewards, group_size, group_index)
    n = counts.double()[seg]
    centred = r - mean[seg]
    batch_std = r.std() if r.numel() > 1 else r.new_zeros(())
    if mode == "rloo":
        adv = r - (n * mean[seg] - r) / (n - 1).clamp_min(1)
    elif mode == "dr_grpo" or scale == "none":
        adv = centred
    elif scale == "batch":
        adv = centred / (batch_std + eps)
    else:
        adv = centred / (std[seg] + eps)
    adv = torch.where(degenerate[seg], torch.zeros_like(adv), adv)
    single = counts[seg] == 1
    if singleton == "verl" and mode != "rloo":
        # verl: a group of one has mean 0 and std 1
        if mode == "grpo" and scale == "group":
            verl = r / (1.0 + eps)
        elif mode == "grpo" and scale == "batch":
            verl = r / (batch_std + eps)
        else:
            verl = r
        adv = torch.where(single, verl, adv)
    else:
        adv = torch.where(single, torch.zeros_like(adv), adv)
    return adv.to(rewards.dtype)


def composite_rewards(components, weights):
    """Weighted total reward of every sample: components [N, K] . weights [K]."""
    return (components.double() * weights.double()).sum(dim=1).float()


def cosine_rewards(pred, ref, *, threshold=None, eps=1e-8):
    """Row-wise cosine similarity, each norm clamped to eps (zero vectors give 0, not NaN, as in
    torch.nn.functional.cosine_similarity); with a threshold, 1.0 where cos >= threshold else 0."""
    x, y = pred.double(), ref.double()
    cos = (x * y).sum(1) / (x.norm(dim=1).clamp_min(eps) * y.norm(dim=1).clamp_min(eps))
    if threshold is not None:
        return (cos >= threshold).float()
    return cos.float()
