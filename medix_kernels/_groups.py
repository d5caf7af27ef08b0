"""Group layout helpers: a fixed group size or a ragged group index, turned into offsets."""
from __future__ import annotations

import torch


def _is_compiling() -> bool:
    return torch.compiler.is_compiling()


def validate_group_args(n: int, group_size, group_index, device, op: str) -> None:
    """Shape-level checks of the group layout (no host sync)."""
    if (group_size is None) == (group_index is None):
        raise ValueError(f"{op}: pass exactly one of 'group_size' (fixed groups) or 'group_index' "
                         "(ragged groups)")
    if group_size is not None:
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
            raise ValueError(f"{op}: 'group_size' must be a positive int, got {group_size!r}")
        if n % group_size != 0:
            raise ValueError(f"{op}: the number of rewards ({n}) must be divisible by 'group_size' "
                             f"({group_size})")
        return
    if not isinstance(group_index, torch.Tensor):
        raise TypeError(f"{op}: 'group_index' must be a 1-D integer tensor, got {type(group_index).__name__}")
    if group_index.dtype.is_floating_point or group_index.dtype.is_complex or group_index.dtype == torch.bool:
        raise TypeError(f"{op}: 'group_index' must be an integer tensor, got {group_index.dtype}")
    if group_index.dim() != 1 or group_index.numel() != n:
        raise ValueError(f"{op}: 'group_index' must be 1-D of length N={n} (one group id per reward), "
                         f"got shape {tuple(group_index.shape)}")
    if group_index.device != device:
        raise ValueError(f"{op}: 'group_index' is on {group_index.device} but the rewards are on {device}")


def group_offsets(n: int, group_size=None, group_index=None) -> torch.Tensor:
    """Offsets [G + 1] (int64) of contiguous groups. Ragged ids must be non-decreasing."""
    if group_size is not None:
        return torch.arange(0, n + 1, group_size, dtype=torch.int64)
    ids = group_index
    if ids.numel() > 1 and not _is_compiling():
        bad = (ids[1:] < ids[:-1]).nonzero()
        if bad.numel():
            i = int(bad[0, 0]) + 1
            raise ValueError(f"'group_index' must be non-decreasing (rewards laid out group by group); "
                             f"position {i} has id {int(ids[i])} after {int(ids[i - 1])}")
    _, counts = torch.unique_consecutive(ids, return_counts=True)
    offsets = torch.zeros(counts.numel() + 1, dtype=torch.int64, device=ids.device)
    torch.cumsum(counts, 0, out=offsets[1:])
    return offsets
