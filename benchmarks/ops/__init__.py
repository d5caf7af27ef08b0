"""The ops of the suite, in the order they run (``--ops`` selects by name)."""
from .base import Impl, OpSpec, Unavailable  # noqa: F401
from .logprob import SELECTIVE_LOG_SOFTMAX, SELECTIVE_LOG_SOFTMAX_ENTROPY
from .loss import FUSED_LINEAR_GRPO_LOSS, FUSED_LINEAR_SELECTIVE_LOG_SOFTMAX, GRPO_LOSS
from .rewards import COMPOSITE_ADVANTAGES, COSINE_REWARDS, GROUP_ADVANTAGES

OPS = {spec.name: spec for spec in (GROUP_ADVANTAGES, COMPOSITE_ADVANTAGES, COSINE_REWARDS, SELECTIVE_LOG_SOFTMAX,
                                    SELECTIVE_LOG_SOFTMAX_ENTROPY, GRPO_LOSS, FUSED_LINEAR_GRPO_LOSS,
                                    FUSED_LINEAR_SELECTIVE_LOG_SOFTMAX)}
