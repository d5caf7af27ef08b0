"""The passes every rank must run together under torchrun, each rule with its reason.

FSDP2 gathers a layer's shards with a collective in every forward and reduces its gradients with
one in every backward: if one rank ran a forward the others did not, every rank would wait forever.
So whatever decides *how many* passes run, or *which* forward a pass takes, is agreed across ranks
here. Without torchrun every function is the plain single-process decision.
"""
from __future__ import annotations

import math

import torch

from medix_r1.parallel import collectives as dist
from medix_r1.parallel.layout import Layout
from medix_r1.vision.model import vision_tower


def micro_batches(layout: Layout, rows: list[int], micro: int):
    """This rank's micro-batches of the global mini-batch ``rows``: local row lists, then ``None`` for
    each zero-weight pass it adds. Every rank runs the busiest rank's number of passes (a rank with
    fewer rows, or none after DAPO's filter, runs passes whose loss weight is 0)."""
    mine = layout.mine(rows)
    counts = [0] * dist.world_size()
    for g in rows:
        counts[layout.owner[g]] += 1
    passes = max(math.ceil(c / micro) for c in counts)
    for start in range(0, passes * micro, micro):
        yield mine[start:start + micro] if start < len(mine) else None


def forward_slices(rows: int, micro: int):
    """Slices of ``rows`` for no-grad forwards (old / reference log-probs), then ``None`` for each extra
    forward this rank runs because another rank has more rows (computed on row 0, discarded)."""
    passes = dist.max_int(math.ceil(rows / micro))
    for start in range(0, passes * micro, micro):
        yield slice(start, start + micro) if start < rows else None


def all_finite(local: bool) -> bool:
    """Whether every rank's losses of a mini-batch were finite (``local``: this rank's, read once per
    optimizer step). A NaN on one rank skips the optimizer step on all of them: otherwise the ranks'
    weights would diverge."""
    return dist.all_true(local)


def share_prompt_forward(wanted: bool) -> bool:
    """Whether a micro-batch takes the shared-prompt forward: it runs two forwards where the padded
    one runs one, so a rank may share only when every rank does."""
    return dist.all_true(wanted)


def response_pass(needed: bool) -> bool:
    """The shared-prompt forward's second (response) pass runs on every rank when any rank needs it."""
    return dist.any_true(needed)


def vision_gradient_term(model, micro_batch: dict) -> torch.Tensor | None:
    """``0 * sum(vision parameters)`` for a sharded vision-language policy whose micro-batch has no
    image, else None (nothing to add). FSDP reduces the same gradients on every rank, and the vision tower lives in the
    root unit (see fsdp.shard): a rank without an image must still produce (zero) gradients for it."""
    if not dist.enabled() or "pixel_values" in micro_batch:
        return None
    visual = vision_tower(model)
    if visual is None:
        return None
    return 0.0 * sum(p.sum() for p in visual.parameters() if p.requires_grad)


def drop_unused_vision_gradients(model, saw_image: bool) -> None:
    """After a mini-batch in which no rank saw an image: clear the vision tower's (zero) gradients.
    A single process has no gradients there and AdamW skips those parameters (no decay, no moment
    update); the zeros :func:`vision_gradient_term` added must not make a sharded run differ."""
    visual = vision_tower(model) if dist.enabled() else None
    if visual is not None and not dist.any_true(saw_image):
        for p in visual.parameters():
            p.grad = None


def stop_requested(local: bool) -> bool:
    """A stop (signal) on any rank stops every rank after the same step, with one checkpoint."""
    return dist.any_true(local)
