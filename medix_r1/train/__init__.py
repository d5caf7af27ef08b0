"""The GRPO-family trainer: ``python -m medix_r1.train`` (:mod:`~medix_r1.train.cli`) or :func:`train`.

Modules, in the order one step uses them: :mod:`~medix_r1.train.build` (the run, built once),
:mod:`~medix_r1.train.loop` (the step loop), :mod:`~medix_r1.train.step` (collect, advantages,
update), :mod:`~medix_r1.train.policy` (forward passes and the loss), :mod:`~medix_r1.train.batch`,
:mod:`~medix_r1.train.shared_prompt`, :mod:`~medix_r1.train.metrics`.
"""
import os

# OpenMP threads that busy-wait between parallel regions burn the CPU other threads (vLLM's
# decode loop, the reward worker, other jobs on a shared box) need: on a 2-core machine under
# load, passive waiting made rollouts and log-probs 5-10x faster. libgomp reads this when torch
# loads, so it only takes effect if torch is not imported yet; an explicit setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from medix_r1.train.loop import TrainingStopped, train  # noqa: F401
