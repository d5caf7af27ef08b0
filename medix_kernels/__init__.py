"""medix_kernels: fused kernels for group-based RL (GRPO and its family).

Ops (each with a pure-PyTorch reference in ``medix_kernels.reference`` and backends
"torch", "cpu", "triton", "cuda"; ``backend="auto"`` picks the fastest available):

- ``group_advantages``, ``group_stats``, ``composite_advantages``: group-relative advantages.
- ``cosine_rewards``: batched cosine-similarity rewards.
- ``selective_log_softmax``: fused per-token log-probs (and entropy) of sampled ids.
- ``grpo_loss`` / ``LossConfig``: the clipped-ratio policy loss with KL (GRPO, DAPO, Dr. GRPO,
  GSPO, CISPO) from logits; ``fused_linear_grpo_loss`` / ``fused_linear_selective_log_softmax``:
  the same from hidden states and the LM head, chunked so full logits never exist.

``backends()`` lists the backends usable on this machine.
"""
from ._backend import backends as backends
from ._backend import has_cpu_extension

if has_cpu_extension():  # importing medix_kernels._C registered torch.ops.medix; add fake kernels
    from . import _fake

    _fake.register()
    _fake.register_logprob()

from .cosine_rewards import cosine_rewards  # noqa: F401
from .fused_linear import fused_linear_grpo_loss, fused_linear_selective_log_softmax  # noqa: F401
from .group_advantages import (  # noqa: F401
    ADVANTAGE_PRESETS,
    GroupStats,
    composite_advantages,
    group_advantages,
    group_stats,
)
from .grpo_loss import grpo_loss  # noqa: F401
from .loss_config import LossConfig  # noqa: F401
from .selective_log_softmax import selective_log_softmax  # noqa: F401
