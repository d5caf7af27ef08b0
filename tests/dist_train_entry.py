"""``python -m medix_r1.train`` with the scripted reward of the trainer tests (no judge, no embedder):
what tests/test_distributed.py launches under torchrun. Same arguments as the real CLI."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root: tests.*, medix_r1.*

import medix_r1.rewards  # noqa: E402
from tests.train_helpers import CharRewardWorker  # noqa: E402

medix_r1.rewards.RewardWorker = lambda cfg: CharRewardWorker()  # what train() builds when given none

from medix_r1.train import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
