"""Validation during training: the policy's responses to ``data.val``, scored by the training reward.

What MediX-R1's official trainer does (``_validate`` in
https://github.com/mbzuai-oryx/MediX-R1/blob/94fd0184b54d5e77abf909aef87aa6ada1310099/training/verl/trainer/ray_trainer.py
): every record of the validation split, the same prompt as in training, sampled with the validation settings
(``rollout.val_temperature`` / ``val_top_p`` / ``val_n``; officially 0.6 / 0.95 / 1), the reward
function as the metric; every ``train.eval_every`` steps, before the first step with
``train.eval_before_train`` (logged as step 0) and after the last step when it was not a validation
step. The means are logged under ``val/``.

Under torchrun each rank generates and scores its contiguous share of the records; the sums are
added over ranks, so the numbers are those of one process.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from contextlib import contextmanager

from medix_r1.data.prompts import prompt_token_ids
from medix_r1.data.records import load_records
from medix_r1.parallel import collectives as dist
from medix_r1.parallel import layout
from medix_r1.train.step import rollout, score

log = logging.getLogger("medix_r1.train")

VAL_ATTEMPT = 1_000_003  # the sampling seeds' "attempt": apart from every training round's
COMPONENTS = ("total", "format", "modality", "judge", "embedding")


@dataclasses.dataclass
class Validation:
    """The validation records and how their prompts are made (a VisionPrompts for a VL policy)."""
    records: list[dict]
    vision: object = None
    cache: dict = dataclasses.field(default_factory=dict)

    def prompt(self, run, i: int):
        """Record i's prompt as the engine takes it; ValueError (overlong, bad image) to skip it."""
        if self.vision is not None:
            return self.vision.prepare(i)
        if i not in self.cache:
            self.cache[i] = prompt_token_ids(run.tokenizer, self.records[i], run.cfg.data)
        return self.cache[i]


def load_validation_records(cfg) -> list[dict]:
    """``data.val`` (split ``data.val_split``), checked as training records are."""
    records, _ = load_records(cfg.data.val, split=cfg.data.val_split, on_malformed=cfg.data.on_malformed,
                              max_records=cfg.data.val_max_records, image_column=cfg.data.image_column,
                              any_solution=cfg.reward.parity == "official")
    return records


@contextmanager
def sampling(engine, section):
    """The engine samples with ``section`` (a rollout section) inside the block: every engine reads
    its sampling settings from ``engine.cfg`` at each ``generate``."""
    old, engine.cfg = engine.cfg, section
    try:
        yield
    finally:
        engine.cfg = old


def validate(run, step: int) -> dict:
    """Mean rewards of the policy's responses to the validation records, keyed ``val/...``."""
    cfg, v = run.cfg, run.validation
    r = cfg.rollout
    section = dataclasses.replace(r, n=r.val_n, temperature=r.val_temperature, top_p=r.val_top_p)
    lo, hi = layout.shard_range(len(v.records))
    chunk = max(1, cfg.data.prompts_per_step)
    rounds = math.ceil(math.ceil(len(v.records) / dist.world_size()) / chunk)  # the same count on every rank
    sums = dict.fromkeys(COMPONENTS, 0.0)
    responses = skipped = tokens = 0
    with sampling(run.engine, section):
        for k in range(rounds):
            idx, prompts = [], []
            for i in range(lo + k * chunk, min(hi, lo + (k + 1) * chunk)):
                try:
                    prompts.append(v.prompt(run, i))
                    idx.append(i)
                except ValueError as e:  # an overlong prompt (data.overlong=filter) or a bad image
                    skipped += 1
                    log.info("validation: skipping %s", e)
            got = rollout(run, prompts, step, VAL_ATTEMPT, offset=lo + k * chunk)
            if not len(got):
                continue
            results = score(run.reward_worker, got, [v.records[i] for i in idx], cfg).result()
            for x in results:
                for c in COMPONENTS:
                    sums[c] += float(getattr(x, c))
            responses += len(results)
            tokens += sum(len(ids) for ids in got.response_ids)
    totals = dist.sum_floats([*sums.values(), responses, skipped, tokens])
    n = max(totals[len(COMPONENTS)], 1.0)
    out = {f"val/reward_{c}": totals[j] / n for j, c in enumerate(COMPONENTS)}
    out.update({"val/responses": totals[-3], "val/skipped_records": totals[-2], "val/response_len": totals[-1] / n})
    log.info("validation at step %d: reward %.4f over %d responses", step, out["val/reward_total"],
             out["val/responses"])
    return out
