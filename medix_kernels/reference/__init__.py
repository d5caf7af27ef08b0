"""Pure-PyTorch references of every medix_kernels op (the "torch" backend and the tests' oracle)."""
from .advantages import composite_rewards, cosine_rewards, group_advantages, group_stats  # noqa: F401
from .policy_loss import (  # noqa: F401
    aggregate,
    fused_linear_grpo_loss,
    grpo_loss,
    kl_penalty,
    policy_loss,
    rollout_log_ratio,
    rollout_stats,
    rollout_weights,
    selective_log_softmax,
)
