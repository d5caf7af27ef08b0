"""Token sampling for the ``hf`` engine, one decode step at a time, with the chosen tokens' log-probs.

Each step takes the model's raw next-token logits [B, V] and:

1. turns them into the distribution to draw from: the repetition penalty first (on the raw logits,
   as vLLM and transformers apply it; it needs the ids already in each row, which the sampler
   keeps), then the transforms of :data:`TRANSFORMS`, in order (suppressed ids, temperature, top-k,
   top-p, min-p): each is a plain function of (logits, settings) that returns new logits with
   ``-inf`` outside what it keeps; a new knob is one function and one entry there;
2. draws one token per row with the exponential race (:func:`draw`) on noise from the row's own
   generator, or takes the arg-max at temperature 0;
3. records the token's raw log-prob (log-softmax of the unprocessed logits) and its log-prob under
   the distribution it was drawn from (what every engine reports in ``Rollouts.sample_logp``, the
   loss's rollout correction compares with the trainer's at the same temperature).

Every sample has its own generator, seeded from the engines' per-prompt seed
(``rollout.types.sample_seed``) and the sample's index (:func:`row_generators`): what a sample draws
depends on (run seed, step, prompt, attempt, sample), not on which other prompts share its batch,
how the rows are split into ``rollout.hf_batch_size`` chunks, or how many ranks there are.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from medix_r1.rollout.types import sample_seed


@dataclass(frozen=True)
class Sampling:
    """What one ``generate`` samples with (a rollout section's fields; ``temperature`` 0 = greedy)."""
    temperature: float
    top_p: float = 1.0
    top_k: int = 0                   # 0 = off
    min_p: float = 0.0               # 0 = off
    repetition_penalty: float = 1.0  # 1 = off
    suppress: tuple[int, ...] = ()   # ids never sampled (the raw log-probs are not affected)

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def suppress_ids(logits: torch.Tensor, s: Sampling) -> torch.Tensor:
    if not s.suppress:
        return logits
    ids = torch.tensor(s.suppress).to(logits.device, non_blocking=True)  # no wait for the device's queue
    return logits.index_fill(-1, ids, float("-inf"))


def scale_by_temperature(logits: torch.Tensor, s: Sampling) -> torch.Tensor:
    return logits if s.greedy or s.temperature == 1.0 else logits / s.temperature


def nucleus(logits: torch.Tensor, s: Sampling) -> torch.Tensor:
    """Keep the most likely tokens whose mass reaches ``top_p`` (the first token always): a token is
    dropped when the tokens ranked above it already hold ``top_p``."""
    if s.greedy or s.top_p >= 1.0:
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    mass_before = probs.cumsum(-1) - probs
    drop_sorted = mass_before >= s.top_p
    drop_sorted[..., 0] = False
    drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def top_k(logits: torch.Tensor, s: Sampling) -> torch.Tensor:
    """Keep the ``top_k`` most likely tokens (and any tied with the k-th)."""
    if s.greedy or s.top_k <= 0 or s.top_k >= logits.shape[-1]:
        return logits
    kth = logits.topk(s.top_k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def min_p(logits: torch.Tensor, s: Sampling) -> torch.Tensor:
    """Keep the tokens whose probability is at least ``min_p`` times the most likely one's."""
    if s.greedy or s.min_p <= 0:
        return logits
    threshold = logits.max(dim=-1, keepdim=True).values + torch.log(torch.tensor(s.min_p))
    return logits.masked_fill(logits < threshold, float("-inf"))


def penalize_repeats(raw: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """The repetition penalty of vLLM and transformers: the logit of a token already in the row (prompt
    or response; ``seen`` [B, V]) is divided by ``penalty`` when positive, multiplied when negative."""
    return torch.where(seen, torch.where(raw > 0, raw / penalty, raw * penalty), raw)


# name -> transform, applied in this order (temperature, then top-k, top-p, min-p, as transformers does)
TRANSFORMS = {"suppress": suppress_ids, "temperature": scale_by_temperature, "top_k": top_k, "top_p": nucleus,
              "min_p": min_p}


def sampling_logits(raw: torch.Tensor, s: Sampling) -> torch.Tensor:
    """The logits of the distribution the next token is drawn from (``-inf`` where it cannot be)."""
    logits = raw
    for transform in TRANSFORMS.values():
        logits = transform(logits, s)
    return logits


def draw(logits: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """One token per row of ``logits`` [B, V]: the arg-max of ``logits - log(noise)`` with ``noise``
    [B, V] standard exponentials, which picks token k with probability softmax(logits)[k] (the
    exponential race, i.e. the Gumbel-max trick). A token of probability 0 is never drawn. Unlike
    an inverse CDF, a choice moves only when two tokens' perturbed scores are within the logits'
    rounding of each other: left padding or another batch changes no draw in practice."""
    noise = noise.clamp(min=torch.finfo(noise.dtype).tiny)  # an exact 0 would make -inf - log(0) NaN
    return (logits.to(noise.dtype) - noise.log()).argmax(-1)


def row_generators(seed: int, step: int, prompts: int, n: int, device, attempt: int = 0,
                   offset: int = 0) -> list[torch.Generator]:
    """One generator per sample, rows group by group, on ``device``: sample j of prompt i is seeded
    from ``sample_seed(seed, step, offset + i, attempt)`` and j. Each step draws one exponential per
    token of the vocabulary from it, so a sample's draws do not depend on the other rows."""
    gens = []
    for i in range(prompts):
        base = sample_seed(seed, step, offset + i, attempt)
        gens += [torch.Generator(device=device).manual_seed(base * 65_536 + j) for j in range(n)]
    return gens


class TokenSampler:
    """A transformers logits processor that samples the next token itself and forces ``generate``'s
    greedy step to take it (0 at the token, ``-inf`` elsewhere). ``raw_logp`` / ``sampled_logp``
    [B, max_tokens] hold, per step, the chosen token's raw log-prob and its log-prob under the
    distribution it was drawn from (0 when greedy); they stay on the device until read."""

    def __init__(self, s: Sampling, generators: list[torch.Generator], max_tokens: int, device,
                 prompts: list[list[int]] | None = None):
        self.s, self.generators, self.t = s, generators, 0
        # the repetition penalty's ids so far, per row: its prompt (without the left padding), then each
        # token drawn; built at the first step, when the vocabulary size is known
        self.prompts, self.seen = prompts, None
        # one spare column: a decode loop that checks for its end a step late calls once more
        self.raw_logp = torch.zeros(len(generators), max_tokens + 1, device=device)
        self.sampled_logp = torch.zeros_like(self.raw_logp)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        raw = scores.float()
        penalized = raw
        if self.s.repetition_penalty != 1.0:
            if self.seen is None:
                self.seen = torch.zeros_like(raw, dtype=torch.bool)
                for row, ids in enumerate(self.prompts or []):
                    self.seen[row, torch.tensor(ids, dtype=torch.long)] = True
            penalized = penalize_repeats(raw, self.seen, self.s.repetition_penalty)
        logits = sampling_logits(penalized, self.s)
        if self.s.greedy:
            token = logits.argmax(-1)
        else:
            noise = torch.empty(logits.shape, dtype=torch.float64, device=logits.device)
            for row, g in zip(noise, self.generators):
                row.exponential_(generator=g)
            token = draw(logits, noise)
        pick = token.unsqueeze(-1)
        if self.seen is not None:
            self.seen.scatter_(-1, pick, True)
        col = min(self.t, self.raw_logp.shape[1] - 1)
        self.raw_logp[:, col] = raw.log_softmax(-1).gather(-1, pick).squeeze(-1)
        if not self.s.greedy:
            self.sampled_logp[:, col] = logits.log_softmax(-1).gather(-1, pick).squeeze(-1)
        self.t += 1
        return torch.full_like(scores, float("-inf")).scatter_(-1, pick, 0.0)
