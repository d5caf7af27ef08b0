"""Which records each step's prompts come from: resumable, seeded samplers.

- :class:`PromptSampler` (the default): shuffled epochs over all records, the official trainer's
  order of things.
- :class:`BalancedPromptSampler` (``data.balance_by``): draws spread evenly over the values of one
  record field. Why: on PubMedQA (55% yes, 34% no, 11% maybe) a policy that always answers "yes"
  collects the judge's reward on most prompts, and a small policy finds that optimum within a few
  dozen steps (benchmarks/results/train_cpu_default.md). Drawing yes, no and maybe questions
  equally often makes that policy right on a third of the prompts only.

Both keep their position in a small dict (``state()``/``load_state()``) that the checkpoint
stores, so a resumed run draws exactly the prompts the killed run would have drawn.
"""
from __future__ import annotations

import logging

import numpy as np

from medix_r1.data.records import DataError

log = logging.getLogger("medix_r1.train")


class PromptSampler:
    """Shuffled epochs over ``n`` records; the state (epoch, index, seed) makes resumes exact."""

    def __init__(self, n: int, seed: int):
        if n < 1:
            raise ValueError(f"PromptSampler needs at least one record, got n={n}")
        self.n, self.seed, self.epoch, self.index = n, seed, 0, 0
        self._perm = self._permutation()

    def _permutation(self) -> np.ndarray:
        return np.random.default_rng([self.seed, self.epoch]).permutation(self.n)

    def take(self, k: int) -> list[int]:
        out = []
        while len(out) < k:
            if self.index >= self.n:
                self.epoch, self.index = self.epoch + 1, 0
                self._perm = self._permutation()
            out.append(int(self._perm[self.index]))
            self.index += 1
        return out

    def state(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed, "n": self.n}

    def load_state(self, state: dict) -> None:
        _same_balance(state, "")
        if state["n"] != self.n:
            raise ValueError(f"checkpoint data position is for {state['n']} records, the data has {self.n}")
        self.seed, self.epoch, self.index = state["seed"], state["epoch"], state["index"]
        self._perm = self._permutation()


class BalancedPromptSampler:
    """Draws spread evenly over the values of ``labels`` (one per record).

    Every run of k draws (k = the number of distinct values) holds each value once, in an order
    shuffled per run; the records of one value come in shuffled epochs of their own, so a rare
    value's records repeat sooner than a common one's. Draw t is a pure function of (seed, t), so
    the state is the draw count."""

    def __init__(self, labels: list, seed: int, field: str):
        if not labels:
            raise ValueError("BalancedPromptSampler needs at least one record")
        self.values = sorted(set(labels), key=str)  # None (no such field) is a value of its own
        self.groups = [np.flatnonzero([lab == v for lab in labels]) for v in self.values]
        self.n, self.seed, self.field, self.draws = len(labels), seed, field, 0

    def _draw(self, t: int) -> int:
        run, pos = divmod(t, len(self.groups))
        g = int(np.random.default_rng([self.seed, run]).permutation(len(self.groups))[pos])
        members = self.groups[g]
        epoch, j = divmod(run, len(members))  # the value's run-th draw: each run draws every value once
        return int(members[np.random.default_rng([self.seed, 1 + g, epoch]).permutation(len(members))[j]])

    def take(self, k: int) -> list[int]:
        out = [self._draw(t) for t in range(self.draws, self.draws + k)]
        self.draws += k
        return out

    def counts(self) -> dict:
        return {str(v): len(g) for v, g in zip(self.values, self.groups)}

    def state(self) -> dict:
        return {"balance_by": self.field, "draws": self.draws, "seed": self.seed, "n": self.n,
                "counts": self.counts()}

    def load_state(self, state: dict) -> None:
        _same_balance(state, self.field)
        if state["n"] != self.n or state["counts"] != self.counts():
            raise ValueError(f"checkpoint data position is for {state['n']} records with {self.field} counts "
                             f"{state['counts']}, the data has {self.n} with {self.counts()}")
        self.seed, self.draws = state["seed"], state["draws"]


def _same_balance(state: dict, field: str) -> None:
    if state.get("balance_by", "") != field:
        raise ValueError(f"the checkpoint was written with data.balance_by={state.get('balance_by', '')!r}, this "
                         f"run has {field!r}: resume with the same setting")


def make_sampler(records: list[dict], balance_by: str, seed: int):
    """The run's sampler: :class:`PromptSampler`, or with ``balance_by`` (a record field such as
    PubMedQA's ``decision``) a :class:`BalancedPromptSampler` over that field's values.

    Records without the field form one group of their own, so a recipe that balances PubMedQA's
    decisions still runs on data that has no such field: all its records are then one group, drawn
    like the plain sampler's, and a warning says so. A value that is not a string,
    number or bool is a DataError naming the record."""
    if not balance_by:
        return PromptSampler(len(records), seed)
    labels = []
    for r in records:
        value = r.get(balance_by)
        if value is not None and not isinstance(value, (str, int, float, bool)):
            raise DataError(f"data.balance_by={balance_by!r}: record {r.get('id')!r} has {type(value).__name__} "
                            f"{repr(value)[:40]} there (a string, number or bool is needed to group by)")
        labels.append(value)
    sampler = BalancedPromptSampler(labels, seed, balance_by)
    if labels.count(None) == len(labels):
        log.warning("data.balance_by=%r: no record has this field, so prompts are drawn from all records alike",
                    balance_by)
    else:
        log.info("data.balance_by=%r: prompts drawn evenly over %s", balance_by,
                 ", ".join(f"{v} ({n} records)" for v, n in sampler.counts().items()))
    return sampler
