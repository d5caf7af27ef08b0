"""transformers ``generate`` on the training policy itself (``rollout.engine=hf``; nothing to sync)."""
from __future__ import annotations

import torch

from medix_r1.rollout.types import OOM_HINT, RolloutOutOfMemory, Rollouts, is_oom, sample_seed


class HfRollout:
    """n samples per prompt from the policy, with the sampled tokens' raw log-probs."""

    def __init__(self, model, tokenizer, cfg):
        from transformers import GenerationConfig

        self.model, self.cfg = model, cfg
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos = tokenizer.eos_token_id
        self.tokenizer = tokenizer
        self.gen = GenerationConfig(do_sample=True, top_k=0, pad_token_id=pad, eos_token_id=self.eos,
                                    output_logits=True, return_dict_in_generate=True)

    def _sampling(self):
        """The generation config with the sampling settings of ``self.cfg`` as it is now (validation
        swaps in its own rollout section)."""
        c = self.cfg
        # top_k 0, min_p 0 and a penalty of 1 are off: no logits processor for them, as before the knobs
        self.gen.update(temperature=c.temperature, top_p=c.top_p, max_new_tokens=c.max_tokens,
                        num_return_sequences=c.n, top_k=c.top_k, min_p=c.min_p or None,
                        repetition_penalty=None if c.repetition_penalty == 1.0 else c.repetition_penalty)
        return self.gen

    @torch.no_grad()
    def generate(self, prompt_ids: list, step: int, seed: int, attempt: int = 0, offset: int = 0) -> Rollouts:
        from medix_r1.vision.prompts import split_prompt

        r = Rollouts()
        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        gen = self._sampling()
        try:
            for i, prompt in enumerate(prompt_ids):
                p, images = split_prompt(prompt)  # a VL item brings pixel_values + image_grid_thw
                extra = {k: v.to(device) for k, v in images.items()} if images else {}
                # One prompt at a time (its n samples share it): no padding, exact log-probs, and a
                # per-prompt seed that a resumed run reproduces. The global RNG is left untouched.
                with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                    torch.manual_seed(sample_seed(seed, step, offset + i, attempt))
                    x = torch.tensor([p], device=device)
                    out = self.model.generate(input_ids=x, attention_mask=torch.ones_like(x),
                                              generation_config=gen, **extra)
                new = out.sequences[:, len(p):]
                logits = torch.stack(out.logits, dim=1).float()          # raw logits [n, T, V]
                logp = torch.log_softmax(logits, dim=-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
                for j in range(new.shape[0]):
                    ids = new[j].tolist()
                    end = ids.index(self.eos) + 1 if self.eos in ids else len(ids)
                    r.add(prompt_ids=p, images=images, response_ids=ids[:end], sample_logp=logp[j, :end].tolist(),
                          text=self.tokenizer.decode(ids[:end], skip_special_tokens=True), group=i,
                          truncated=self.eos not in ids)
        except Exception as e:
            if is_oom(e):
                raise RolloutOutOfMemory(f"{OOM_HINT} ({type(e).__name__}: {e})") from e
            raise
        finally:
            self.model.train(was_training)
        return r

    def suppress_tokens(self, token_ids) -> None:
        """Never sample these ids (see VllmRollout.suppress_tokens); ``out.logits`` stay unprocessed."""
        self.gen.suppress_tokens = [int(t) for t in token_ids] or None

    def sleep(self) -> None:
        pass

    def wake_up(self) -> None:
        pass

    def sync(self, model) -> None:
        """Nothing to do: generation runs on the policy itself."""
