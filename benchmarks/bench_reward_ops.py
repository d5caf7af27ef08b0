"""Reward-side ops (group_advantages, composite_advantages, cosine_rewards): a thin wrapper over
the suite, ``python -m benchmarks --ops group_advantages,composite_advantages,cosine_rewards``.

    python benchmarks/bench_reward_ops.py [--quick] [other python -m benchmarks options]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.__main__ import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["--ops", "group_advantages,composite_advantages,cosine_rewards", *sys.argv[1:]]))
