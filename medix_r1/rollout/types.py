"""What every rollout engine returns, and the errors and seeds they share."""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import torch

OOM_HINT = ("out of memory during rollouts: lower rollout.kv_cache_gb, rollout.max_tokens or "
            "data.prompts_per_step (e.g. --set rollout.max_tokens=64)")
OOM_START_HINT = ("out of memory while starting vLLM: lower rollout.kv_cache_gb (CPU) or "
                  "rollout.gpu_memory_utilization (GPU), or rollout.max_model_len")


# The sampling knobs beyond temperature / top-p, each with its neutral value (the knob is off). An engine
# is sent only the knobs a config moves away from neutral, so a run that sets none samples as before.
SAMPLING_KNOBS = {"top_k": 0, "min_p": 0.0, "repetition_penalty": 1.0}


def sampling_extras(cfg) -> dict:
    """The knobs of the rollout section ``cfg`` that are set (not neutral), by name."""
    return {k: getattr(cfg, k) for k, neutral in SAMPLING_KNOBS.items() if getattr(cfg, k, neutral) != neutral}


class RolloutOutOfMemory(RuntimeError):
    """Rollouts ran out of memory; the message names the config knobs to turn."""


class RolloutServerError(RuntimeError):
    """The rollout server is unreachable, refused a request or failed; the message names the URL
    and what to do."""


@dataclass
class Rollouts:
    """Flat lists, one entry per sample, laid out group by group (prompt 0's n samples first)."""
    prompt_ids: list[list[int]] = field(default_factory=list)
    response_ids: list[list[int]] = field(default_factory=list)
    # the sampled tokens' log-probs: under the distribution they were drawn from (temperature, top-p and logit
    # bias applied) when the engine's ``sampling_logprobs`` is True, as every engine here returns them
    sample_logp: list[list[float]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    group: list[int] = field(default_factory=list)      # index of the prompt in the step's list
    truncated: list[bool] = field(default_factory=list)  # hit max_tokens without EOS
    # per sample: the prompt's image inputs {"pixel_values", "image_grid_thw"} (shared by the group) or None
    images: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.response_ids)

    def add(self, *, prompt_ids, response_ids, sample_logp, text: str, group: int, truncated: bool,
            images=None) -> None:
        """Append one sample (the one way engines build a :class:`Rollouts`)."""
        if len(response_ids) != len(sample_logp):
            raise ValueError(f"sample of prompt {group}: {len(response_ids)} tokens but {len(sample_logp)} log-probs")
        self.prompt_ids.append(list(prompt_ids))
        self.response_ids.append(list(response_ids))
        self.sample_logp.append([float(x) for x in sample_logp])
        self.texts.append(text)
        self.group.append(group)
        self.truncated.append(bool(truncated))
        self.images.append(images)

    def select(self, rows) -> Rollouts:
        """The samples at ``rows``, in that order."""
        out = Rollouts()
        for j in rows:
            out.add(prompt_ids=self.prompt_ids[j], response_ids=self.response_ids[j], sample_logp=self.sample_logp[j],
                    text=self.texts[j], group=self.group[j], truncated=self.truncated[j], images=self.images[j])
        return out

    def extend(self, other: Rollouts, group: int | None = None) -> None:
        """Append ``other``'s samples; ``group`` renumbers them as that prompt of this batch."""
        for j in range(len(other)):
            self.add(prompt_ids=other.prompt_ids[j], response_ids=other.response_ids[j],
                     sample_logp=other.sample_logp[j], text=other.texts[j],
                     group=other.group[j] if group is None else group, truncated=other.truncated[j],
                     images=other.images[j])


def sample_seed(base: int, step: int, prompt_index: int, attempt: int = 0) -> int:
    """A per-request seed that depends only on (run seed, step, prompt, refill attempt): a resumed
    run samples exactly what the uninterrupted one did. ``prompt_index`` is the prompt's index in the
    step's global list: the engines' ``generate(..., offset=)`` adds the position of a torchrun rank's
    slice, so N ranks sample what one process samples."""
    return zlib.crc32(f"{base}/{step}/{prompt_index}/{attempt}".encode()) & 0x7FFFFFFF


def is_oom(err: BaseException) -> bool:
    """Whether an exception from an engine means it ran out of memory (CPU or GPU, any wording)."""
    text = str(err).lower()
    return isinstance(err, (MemoryError, torch.OutOfMemoryError)) or "out of memory" in text or \
        "not enough memory" in text or "insufficient memory" in text or "kv cache" in text and "memory" in text
