"""CPU policy loss (grpo_loss and fused_linear_grpo_loss, forward + backward): a thin wrapper over
the suite. Without options it measures the shape this script always used, fp32 4 x 1024 tokens x
49,152 vocabulary (SmolLM2) with H = 576; ``--quick`` runs the suite's quick sweep instead.

    python benchmarks/bench_policy_loss_cpu.py [--quick] [other python -m benchmarks options]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.__main__ import main  # noqa: E402

if __name__ == "__main__":
    args = sys.argv[1:]
    if not any(a in ("--quick", "--smoke", "--medium", "--full") or a.startswith("--shape") for a in args):
        args = ["--shape", "tokens=4096,vocab=49152,hidden=576", "--name", "policy_loss_cpu", *args]
    sys.exit(main(["--device", "cpu", "--ops", "grpo_loss,fused_linear_grpo_loss", *args]))
