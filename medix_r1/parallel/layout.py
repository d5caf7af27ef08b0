"""Who holds which rows of a step under torchrun, in a single process's order.

How a step is split (what makes an N-rank run compute what one process computes):

- every rank draws the same global prompt list from the seeded sampler and takes its contiguous
  slice (:func:`shard_range`); sampling seeds use the global prompt index, so the samples are the
  single process's samples;
- :func:`row_layout` gathers every rank's per-row token counts and rewards, so each rank knows the
  whole batch in a single process's row order: advantages, mini-batches and loss weights are the
  single process's; each rank runs its own rows of each mini-batch, weighted by its share of the
  global token count, and FSDP sums the gradients (divide factor 1).

Without torchrun there is one rank holding every row, in order.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from medix_r1.parallel.collectives import all_gather, device, rank, world_size


def shard_range(count: int, r: int | None = None, world: int | None = None) -> tuple[int, int]:
    """Rank ``r``'s contiguous [lo, hi) of ``count`` items (the first ``count % world`` ranks get one more)."""
    r = rank() if r is None else r
    world = world_size() if world is None else world
    base, extra = divmod(count, world)
    lo = r * base + min(r, extra)
    return lo, lo + base + (1 if r < extra else 0)


def owners(count: int) -> list[int]:
    """The rank holding each of ``count`` items split by :func:`shard_range`."""
    out = []
    for r in range(world_size()):
        lo, hi = shard_range(count, r)
        out += [r] * (hi - lo)
    return out


@dataclass
class Layout:
    """The step's global batch, row by row in a single process's order: which rank holds the row, its
    index in that rank's batch, its response tokens and its reward."""
    owner: list[int]
    local: list[int]
    tokens: list[int]
    rewards: list[float]

    def mine(self, rows) -> list[int]:
        """This rank's local indices of the global ``rows``, in the given order."""
        me = rank()
        return [self.local[g] for g in rows if self.owner[g] == me]

    def own_rows(self) -> list[int]:
        """The global indices of this rank's rows, in its local order."""
        me = rank()
        pairs = sorted((j, g) for g, (o, j) in enumerate(zip(self.owner, self.local)) if o == me)
        return [g for _, g in pairs]

    def micro_steps(self, rows, micro: int) -> int:
        """Micro-batches every rank runs for the global ``rows``: the busiest rank's count."""
        counts = [0] * world_size()
        for g in rows:
            counts[self.owner[g]] += 1
        return max(math.ceil(c / micro) for c in counts)


def row_layout(group_owner: list[int], n: int, tokens: list[int], rewards: list[float]) -> Layout:
    """The global :class:`Layout` from each kept group's rank (in global order; ``n`` rows per group)
    and this rank's per-row ``tokens`` and ``rewards`` (one all-gather)."""
    parts = all_gather((list(tokens), [float(x) for x in rewards]))
    taken = [0] * len(parts)
    lay = Layout([], [], [], [])
    for o in group_owner:
        for _ in range(n):
            j = taken[o]
            taken[o] += 1
            lay.owner.append(o)
            lay.local.append(j)
            lay.tokens.append(parts[o][0][j])
            lay.rewards.append(parts[o][1][j])
    return lay


def to_device(batch: dict) -> dict:
    """The batch's tensors on this rank's device (no copy on the CPU)."""
    dev = device()
    return {k: (v.to(dev) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}
