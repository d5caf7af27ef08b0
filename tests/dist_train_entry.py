"""``python -m medix_r1.train`` with the scripted reward of the trainer tests (no judge, no embedder):
what tests/test_distributed.py launches under torchrun. Same arguments as the real CLI.

``MEDIX_TEST_ONE_RANK_FAULTS=1`` injects faults on rank 1 only: a non-finite loss in its first
micro-batch and a SIGTERM while step 2 is scored (the other ranks must follow both decisions)."""
import os
import signal
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.*, medix_r1.*

import medix_r1.rewards
from medix_r1.train import cli, step
from tests.train_helpers import CharRewardWorker


def faulty_rank() -> bool:
    return os.environ.get("MEDIX_TEST_ONE_RANK_FAULTS") == "1" and os.environ.get("RANK") == "1"


def make_worker(cfg, **kwargs):  # what train() builds when it is given no worker
    if not faulty_rank():
        return CharRewardWorker()
    return CharRewardWorker(on_submit=lambda call: os.kill(os.getpid(), signal.SIGTERM) if call == 2 else None)


if faulty_rank():
    real_loss, calls = step.policy_loss, []

    def policy_loss(*args, **kwargs):
        loss, stats = real_loss(*args, **kwargs)
        calls.append(1)
        return (loss * float("nan") if len(calls) == 1 else loss), stats

    step.policy_loss = policy_loss

medix_r1.rewards.RewardWorker = make_worker

if __name__ == "__main__":
    sys.exit(cli.main(sys.argv[1:]))
