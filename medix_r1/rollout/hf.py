"""transformers ``generate`` on the training policy itself (``rollout.engine=hf``; nothing to sync).

A step's prompts and their n samples generate together: one row per sample, left-padded (the
attention mask hides the pads and the position ids start at each row's first real token), with
the KV cache, in chunks of at most ``rollout.hf_batch_size`` rows. The tokens are drawn by
:mod:`medix_r1.rollout.sampling` as generation goes, which also records each chosen token's
log-prob under the distribution it was drawn from (what ``Rollouts.sample_logp`` holds), so no
step's full logits are kept. Image items (Qwen-VL) batch like the training
micro-batches do: the rows' ``pixel_values`` / ``image_grid_thw`` concatenated in row order.
"""
from __future__ import annotations

import contextlib

import torch

from medix_r1.rollout.sampling import Sampling, TokenSampler, row_generators
from medix_r1.rollout.types import OOM_HINT, RolloutOutOfMemory, Rollouts, is_oom

HF_OOM_HINT = "; with rollout.engine=hf also rollout.hf_batch_size (sequences generated at once)"


class HfRollout:
    """n samples per prompt from the policy, with the sampled tokens' log-probs under the distribution they
    were drawn from (suppressed ids, temperature, top-p: sampling.sampling_logits)."""

    sampling_logprobs = True

    def __init__(self, model, tokenizer, cfg):
        self.model, self.cfg, self.tokenizer = model, cfg, tokenizer
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos = tokenizer.eos_token_id
        self.suppress: tuple[int, ...] = ()

    def sampling(self) -> Sampling:
        """The sampling settings of ``self.cfg`` as it is now (validation swaps in its own section)."""
        c = self.cfg
        return Sampling(temperature=c.temperature, top_p=c.top_p, top_k=c.top_k, min_p=c.min_p,
                        repetition_penalty=c.repetition_penalty, suppress=self.suppress)

    @torch.no_grad()
    def generate(self, prompt_ids: list, step: int, seed: int, attempt: int = 0, offset: int = 0) -> Rollouts:
        from medix_r1.vision.prompts import split_prompt

        c = self.cfg
        prompts = [split_prompt(p) for p in prompt_ids]  # (ids, image inputs or None); a VL item brings images
        rows = [(i, j) for i in range(len(prompts)) for j in range(c.n)]
        device = next(self.model.parameters()).device
        gens = row_generators(seed, step, len(prompts), c.n, device, attempt, offset)
        # Longest prompts first: chunks of similar lengths pad less (the draws do not depend on the order).
        order = sorted(range(len(rows)), key=lambda k: -len(prompts[rows[k][0]][0]))
        chunk = c.hf_batch_size
        out: dict[int, tuple] = {}
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(order), chunk):
                part = order[start:start + chunk]
                got = self._generate_rows([prompts[rows[k][0]] for k in part], [gens[k] for k in part], device)
                out.update(zip(part, got))
        except Exception as e:
            if is_oom(e):
                raise RolloutOutOfMemory(f"{OOM_HINT}{HF_OOM_HINT} ({type(e).__name__}: {e})") from e
            raise
        finally:
            self.model.train(was_training)
        r = Rollouts()
        for k, (i, _) in enumerate(rows):  # group by group, as every engine returns them
            ids, _raw, logp = out[k]  # logp: under the distribution drawn from (the loss's rollout_logp)
            end = ids.index(self.eos) + 1 if self.eos in ids else len(ids)
            p, images = prompts[i]
            r.add(prompt_ids=p, images=images, response_ids=ids[:end], sample_logp=logp[:end],
                  text=self.tokenizer.decode(ids[:end], skip_special_tokens=True), group=i,
                  truncated=self.eos not in ids)
        return r

    def _generate_rows(self, prompts: list[tuple], gens: list, device) -> list[tuple[list, list, list]]:
        """One ``generate`` call over left-padded rows (each with its sample's generator); per row (new
        token ids, their raw log-probs, their log-probs under the distribution they were drawn from)."""
        from transformers import GenerationConfig, LogitsProcessorList

        max_tokens = self.cfg.max_tokens
        width = max(len(p) for p, _ in prompts)
        ids = torch.full((len(prompts), width), self.pad, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for b, (p, _) in enumerate(prompts):
            ids[b, width - len(p):] = torch.tensor(p, dtype=torch.long)
            mask[b, width - len(p):] = 1
        images = [x for _, x in prompts if x]
        extra = {k: torch.cat([x[k] for x in images]).to(device) for k in images[0]} if images else {}
        sampler = TokenSampler(self.sampling(), gens, max_tokens, device, prompts=[p for p, _ in prompts])
        # Greedy on the sampler's forced choice: transformers' own sampling and processors stay out of it.
        gen = GenerationConfig(do_sample=False, max_new_tokens=max_tokens, pad_token_id=self.pad,
                               eos_token_id=self.eos)
        with only_this_generation_config(self.model):
            seqs = self.model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=gen,
                                       logits_processor=LogitsProcessorList([sampler]), **extra)
        new = seqs[:, width:]
        logps = torch.stack([sampler.raw_logp, sampler.sampled_logp])[:, :, :new.shape[1]].tolist()  # one read
        return list(zip(new.tolist(), *logps))

    def suppress_tokens(self, token_ids) -> None:
        """Never sample these ids (see VllmRollout.suppress_tokens): -inf in the distribution whose log-probs
        come back."""
        self.suppress = tuple(int(t) for t in token_ids)

    def sleep(self) -> None:
        pass

    def wake_up(self) -> None:
        pass

    def sync(self, model) -> None:
        """Nothing to do: generation runs on the policy itself."""


@contextlib.contextmanager
def only_this_generation_config(model):
    """``generate`` fills the fields a passed config leaves unset from ``model.generation_config`` (a
    checkpoint's generation_config.json: Qwen2.5-VL's sets a repetition penalty): a blank one for the
    call, so that nothing but the sampler shapes the tokens."""
    from transformers import GenerationConfig

    saved = model.generation_config
    model.generation_config = GenerationConfig()
    try:
        yield
    finally:
        model.generation_config = saved
