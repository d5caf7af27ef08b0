"""What torchrun adds to the single-process trainer, behind a few names.

- :mod:`~medix_r1.parallel.collectives`: the process group and the handful of collectives;
- :mod:`~medix_r1.parallel.layout`: which rank holds which prompts and rows, in one process's order;
- :mod:`~medix_r1.parallel.lockstep`: the passes and decisions every rank must share;
- :mod:`~medix_r1.parallel.fsdp`: FSDP2 sharding of the policy and the gathers for weight syncs.

Without torchrun each of them is the identity, so the training loop reads as single-process code.
"""
