"""Token sampling for the ``hf`` engine, one decode step at a time, with the chosen tokens' log-probs.

Each step takes the model's raw next-token logits [B, V] and:

1. turns them into the distribution to draw from with the transforms of :data:`TRANSFORMS`, in
   order (suppressed ids, temperature, top-p): each is a plain function of (logits, settings)
   that returns new logits with ``-inf`` outside what it keeps; a new knob is one function and one
   entry there;
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


# name -> transform, applied in this order (temperature before top-p, as vLLM and transformers do)
TRANSFORMS = {"suppress": suppress_ids, "temperature": scale_by_temperature, "top_p": nucleus}


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

    def __init__(self, s: Sampling, generators: list[torch.Generator], max_tokens: int, device):
        self.s, self.generators, self.t = s, generators, 0
        # one spare column: a decode loop that checks for its end a step late calls once more
        self.raw_logp = torch.zeros(len(generators), max_tokens + 1, device=device)
        self.sampled_logp = torch.zeros_like(self.raw_logp)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        raw = scores.float()
        logits = sampling_logits(raw, self.s)
        if self.s.greedy:
            token = logits.argmax(-1)
        else:
            noise = torch.empty(logits.shape, dtype=torch.float64, device=logits.device)
            for row, g in zip(noise, self.generators):
                row.exponential_(generator=g)
            token = draw(logits, noise)
        pick = token.unsqueeze(-1)
        col = min(self.t, self.raw_logp.shape[1] - 1)
        self.raw_logp[:, col] = raw.log_softmax(-1).gather(-1, pick).squeeze(-1)
        if not self.s.greedy:
            self.sampled_logp[:, col] = logits.log_softmax(-1).gather(-1, pick).squeeze(-1)
        self.t += 1
        return torch.full_like(scores, float("-inf")).scatter_(-1, pick, 0.0)
