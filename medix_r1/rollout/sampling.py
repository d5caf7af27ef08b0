"""Token sampling for the ``hf`` engine, one decode step at a time, with the chosen tokens' log-probs.

Each step takes the model's raw next-token logits [B, V] and:

1. turns them into the distribution to draw from with the transforms of :data:`TRANSFORMS`, in
   order (suppressed ids, temperature, top-p): each is a plain function of (logits, settings)
   that returns new logits with ``-inf`` outside what it keeps; a new knob is one function and one
   entry there;
2. draws one token per row by the inverse CDF at a uniform drawn before generation started
   (:func:`draw`), or takes the arg-max at temperature 0;
3. records the token's raw log-prob (log-softmax of the unprocessed logits: what every engine
   reports in ``Rollouts.sample_logp``) and its log-prob under the distribution it was drawn from.

The uniforms come from one CPU generator per prompt, seeded like every engine's per-prompt seed
(``rollout.types.sample_seed``), one row of ``max_tokens`` values per sample: what a sample draws
depends only on (run seed, step, prompt, attempt, sample), not on which other prompts share its
batch, how the rows are split into ``rollout.hf_batch_size`` chunks, or how many ranks there are.
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
    ids = torch.tensor(s.suppress, device=logits.device)
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


def draw(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One token per row of ``logits`` [B, V] at the uniforms ``u`` [B] in [0, 1): the first token
    whose cumulative probability exceeds ``u``. The CDF is summed in float64 so that a token's share
    of it is its probability to well below float32's resolution; a token of probability 0 is never
    drawn (its CDF step is empty)."""
    cdf = logits.double().softmax(-1).cumsum(-1)
    x = (u.double() * cdf[:, -1]).unsqueeze(-1)
    return torch.searchsorted(cdf, x, right=True).squeeze(-1).clamp_(max=logits.shape[-1] - 1)


def uniforms(seed: int, step: int, prompts: int, n: int, steps: int, attempt: int = 0, offset: int = 0):
    """[prompts * n, steps] float64 uniforms, rows group by group: prompt i's generator is seeded with
    ``sample_seed(seed, step, offset + i, attempt)`` and draws its n samples' rows."""
    rows = []
    for i in range(prompts):
        g = torch.Generator().manual_seed(sample_seed(seed, step, offset + i, attempt))
        rows.append(torch.rand(n, steps, generator=g, dtype=torch.float64))
    return torch.cat(rows) if rows else torch.zeros(0, steps, dtype=torch.float64)


class TokenSampler:
    """A transformers logits processor that samples the next token itself and forces ``generate``'s
    greedy step to take it (0 at the token, ``-inf`` elsewhere). ``raw_logp`` / ``sampled_logp``
    [B, steps] hold, per step, the chosen token's raw log-prob and its log-prob under the
    distribution it was drawn from (0 when greedy); they stay on the device until read."""

    def __init__(self, s: Sampling, u: torch.Tensor):
        self.s, self.u, self.t = s, u, 0
        # one spare column: a decode loop that checks for its end a step late calls once more
        self.raw_logp = torch.zeros(u.shape[0], u.shape[1] + 1, device=u.device)
        self.sampled_logp = torch.zeros_like(self.raw_logp)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        raw = scores.float()
        logits = sampling_logits(raw, self.s)
        t = min(self.t, self.u.shape[1] - 1)
        token = logits.argmax(-1) if self.s.greedy else draw(logits, self.u[:, t])
        pick = token.unsqueeze(-1)
        col = min(self.t, self.raw_logp.shape[1] - 1)
        self.raw_logp[:, col] = raw.log_softmax(-1).gather(-1, pick).squeeze(-1)
        if not self.s.greedy:
            self.sampled_logp[:, col] = logits.log_softmax(-1).gather(-1, pick).squeeze(-1)
        self.t += 1
        return torch.full_like(scores, float("-inf")).scatter_(-1, pick, 0.0)
