"""medix_kernels: fused kernels for group-based RL (GRPO and its family).

Ops (each with a pure-PyTorch reference in ``medix_kernels.reference`` and backends
"torch", "cpu", "triton", "cuda"; ``backend="auto"`` picks the fastest available):

- ``group_advantages``, ``group_stats``, ``composite_advantages``: group-relative advantages.
- ``cosine_rewards``: batched cosine-similarity rewards.

``backends()`` lists the backends usable on this machine.
"""
from ._backend import backends, has_cpu_extension

if has_cpu_extension():  # importing medix_kernels._C registered torch.ops.medix; add fake kernels
    from . import _fake

    _fake.register()

from .cosine_rewards import cosine_rewards  # noqa: F401,E402
from .group_advantages import (  # noqa: F401,E402
    ADVANTAGE_PRESETS,
    GroupStats,
    composite_advantages,
    group_advantages,
    group_stats,
)
