"""Write the metrics of the trainer tests' 2-step tiny run (hf engine, the scripted 'e'-share reward) as
JSON lines, time/ and perf/ keys left out, computed by the checkout at CHECKOUT:

    PYTHONPATH=CHECKOUT python tests/data/default_run.py CHECKOUT > run.jsonl

tests/test_train_knobs.py compares a run of this tree with every issue-32 knob at its default against
the file made so from the commit before issue 32 (default_run_<commit>.json, as a JSON list)."""
import json
import sys
import tempfile
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, sys.argv[1])  # that checkout's medix_r1 and tests.train_helpers
    from medix_r1.train import train
    from tests.train_helpers import CharRewardWorker, make_tiny_model, tiny_run_config

    tmp = Path(tempfile.mkdtemp())
    cfg = tiny_run_config(make_tiny_model(tmp / "tiny"), tmp / "run", "optim.lr=1e-3", "train.tensorboard=false",
                          "train.plot=false")
    for h in train(cfg, reward_worker=CharRewardWorker())["history"]:
        print(json.dumps({k: v for k, v in h.items() if not k.startswith(("time/", "perf/"))}))
