"""Pure-PyTorch references of every medix_kernels op (the "torch" backend and the tests' oracle)."""
from .advantages import composite_rewards, cosine_rewards, group_advantages, group_stats  # noqa: F401
