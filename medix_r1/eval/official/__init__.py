"""MediX-R1's official evaluation protocol (``python -m medix_r1.eval --protocol official``):
``tasks`` (the 17 loaders), ``judge`` (prompts, rounds, verdicts), ``run`` (the pipeline)."""
