"""An in-process judge: a causal LM (SmolLM2-135M-Instruct by default) through transformers.

Verdicts (:meth:`LocalJudge.judge_many`) need no generation: one batched forward pass over the
chat-formatted prompts gives the next-token logits, and the reply is YES when the log-sum-exp of
the logits of the YES-like first tokens ("YES", "Yes", "yes", with and without a leading space)
beats that of the NO-like ones. Several variants are pooled because SmolLM2's tokenizer splits
"YES" into "Y" + "ES" while "NO" is one token: comparing only "Y" with "NO" would favour NO.
The reply is therefore always YES or NO, so a local verdict never fails on parsing. Only the last
position's logits are computed, and the instruction prefix every judge prompt opens with runs once
and is kept (``share_prefix``, default on): on 16 PubMedQA prompts the pass takes ~35% less time,
margins within ~1e-5 of the full forward (tests/test_local_judge_prefix.py).

The prompt never loses its instructions or its reference: a prompt longer than
``max_prompt_tokens`` has its answer's end cut (:meth:`LocalJudge.fit_answer`, at a token
boundary, followed by an ellipsis), the verdict records how many characters were cut
(``JudgeVerdict.answer_cut``), and a prompt that is too long even with an empty answer fails as
too long (``judge_failed``). A policy cannot push the instructions out of view by writing more.

:meth:`LocalJudge.chat` (used by the evaluation harness with its own prompt) generates greedily;
the harness cuts its answer the same way (``fit_answer``), and a prompt still too long fails.
Model calls run in a worker thread (``asyncio.to_thread``) under a lock, one at a time: the event
loop stays free and memory stays bounded. A deadline stops the wait, not the forward pass that is
already running (PyTorch cannot interrupt it); the next call waits for that pass to end.
"""
from __future__ import annotations

import asyncio
import math
import threading
import time
from pathlib import Path

from .judge import JUDGE_MAX_TOKENS, ChatReply, JudgeBase, JudgeVerdict, judge_messages

YES_WORDS = ("YES", "Yes", "yes", " YES", " Yes", " yes")
NO_WORDS = ("NO", "No", "no", " NO", " No", " no")
CUT_MARK = " …"  # ends an answer cut to fit the prompt


class PromptTooLong(ValueError):
    """A judge prompt over ``max_prompt_tokens`` even without its answer (instructions, reference)."""


class LocalJudge(JudgeBase):
    """Same interface as :class:`JudgeClient`; ``max_retries`` is accepted for symmetry and unused
    (a local forward pass has no transient faults worth retrying)."""

    def __init__(self, model_dir=None, *, concurrency: int = 1, timeout_s: float = 120.0, max_retries: int = 0,
                 cache_path=None, parity: str = "strict", batch_size: int = 16, max_prompt_tokens: int = 768,
                 device: str = "cpu", threshold: float = 0.0, decision_gate: bool = False,
                 share_prefix: bool = True, attn_implementation: str = "sdpa"):
        super().__init__(cache_path, parity, decision_gate)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if model_dir is None:
            from medix_r1.models import smollm2_hf_dir
            model_dir = smollm2_hf_dir()
        if not Path(model_dir).is_dir():
            raise ValueError(f"model_dir must be a Hugging Face model folder, got {str(model_dir)!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
            raise ValueError(f"threshold must be a finite number, got {threshold!r}")
        self.threshold = float(threshold)
        # the threshold changes verdicts: a persistent reply cache must not mix replies across thresholds
        self.model_id = f"local:{Path(model_dir).name}" + (f"@margin>{threshold:g}" if threshold else "")
        self.timeout_s, self.batch_size, self.max_prompt_tokens = float(timeout_s), batch_size, max_prompt_tokens
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.tokenizer.padding_side = "left"  # the last position is then every row's next token
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32,
                                                          attn_implementation=attn_implementation).to(device).eval()
        self.device = device
        self.yes_ids = self._first_tokens(YES_WORDS)
        self.no_ids = self._first_tokens(NO_WORDS)
        self._lock = threading.Lock()
        self.share_prefix = bool(share_prefix)
        self._prefix_cache: tuple | None = None  # (prefix token ids, per-layer KV) of the last shared prefix
        self.prefix_passes = 0  # forward passes over a shared prefix (each distinct prefix once)

    def _first_tokens(self, words) -> list[int]:
        return sorted({self.tokenizer.encode(w, add_special_tokens=False)[0] for w in words})

    def _chat_ids(self, messages) -> list[int]:
        ids = self.tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
        if isinstance(ids, dict) or hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)

    def _prompt_ids(self, messages) -> list[int]:
        """The prompt's token ids; PromptTooLong past ``max_prompt_tokens`` (never cut here: cutting
        from either end would drop the instructions or the question; see :meth:`fit_answer`)."""
        ids = self._chat_ids(messages)
        if len(ids) > self.max_prompt_tokens:
            raise PromptTooLong(f"the judge prompt has {len(ids)} tokens, over max_prompt_tokens="
                                f"{self.max_prompt_tokens}")
        return ids

    def fit_answer(self, build, answer: str) -> tuple[str, int]:
        """(the answer to send, characters cut from its end) so that ``build(answer)`` (the chat
        messages of a prompt holding ``answer``) fits ``max_prompt_tokens``; everything else in the
        prompt is kept whole. PromptTooLong when it does not fit even with an empty answer."""
        if len(self._chat_ids(build(answer))) <= self.max_prompt_tokens:
            return answer, 0
        fixed = len(self._chat_ids(build(CUT_MARK)))
        if fixed > self.max_prompt_tokens:
            raise PromptTooLong(f"the judge prompt needs {fixed} tokens without its answer (instructions, "
                                f"reference), over max_prompt_tokens={self.max_prompt_tokens}; not judged")
        tokens = self.tokenizer.encode(answer, add_special_tokens=False)
        keep = min(len(tokens), self.max_prompt_tokens - fixed)
        while keep > 0:
            kept = self.tokenizer.decode(tokens[:keep])
            over = len(self._chat_ids(build(kept + CUT_MARK))) - self.max_prompt_tokens
            if over <= 0:
                return kept + CUT_MARK, max(1, len(answer) - len(kept))
            keep -= over  # escaping (&, <, >) or merges across the cut can add tokens: try again shorter
        return CUT_MARK, len(answer)

    # ------------------------------------------------------------------ verdicts (batched logits)
    def yes_no_margins(self, messages_list) -> list[float]:
        """log P(YES-like first token) - log P(NO-like first token) for each prompt (blocking, batched)."""
        import torch

        out = []
        with self._lock, torch.inference_mode():
            for start in range(0, len(messages_list), self.batch_size):
                rows = [self._prompt_ids(m) for m in messages_list[start:start + self.batch_size]]
                logits = self._last_logits(rows)
                yes = torch.logsumexp(logits[:, self.yes_ids], dim=-1)
                no = torch.logsumexp(logits[:, self.no_ids], dim=-1)
                out += (yes - no).tolist()
                self.counters.requests += len(rows)
        return out

    def _last_logits(self, rows: list[list[int]]):
        """Next-token logits [B, V] after each row. Rows that open with the same tokens (every judge
        prompt opens with the same instructions, ~half its length) run that prefix once, kept between
        calls (``share_prefix``); only the rest of each row is computed, on the prefix's KV cache."""
        prefix = self._shared_prefix(rows) if self.share_prefix else 0
        if prefix == 0:
            batch = self.tokenizer.pad({"input_ids": rows}, return_tensors="pt").to(self.device)
            # only the last position's logits: the LM head over every position would be ~20% of the
            # pass's FLOPs and a [batch, length, vocab] tensor (~1 GB for 16 prompts of 300 tokens)
            return self.model(**batch, logits_to_keep=1).logits[:, -1, :].float()
        import torch
        from transformers.cache_utils import DynamicCache

        kv = self._prefix_kv(tuple(rows[0][:prefix]))
        # the rest of each row, left-padded: every row's last token is then the last position; the
        # padding sits between prefix and row, masked, and the row's positions continue the prefix's
        batch = self.tokenizer.pad({"input_ids": [r[prefix:] for r in rows]}, return_tensors="pt").to(self.device)
        mask = batch["attention_mask"]
        positions = (prefix + mask.cumsum(1) - 1).clamp(min=prefix)
        full_mask = torch.cat([mask.new_ones(len(rows), prefix), mask], 1)
        cache = DynamicCache(ddp_cache_data=[(k.expand(len(rows), -1, -1, -1), v.expand(len(rows), -1, -1, -1))
                                             for k, v in kv])
        out = self.model(input_ids=batch["input_ids"], attention_mask=full_mask, position_ids=positions,
                         past_key_values=cache, use_cache=True, logits_to_keep=1)
        return out.logits[:, -1, :].float()

    def _shared_prefix(self, rows: list[list[int]]) -> int:
        """Tokens every row opens with, leaving each row at least one of its own; 0 when under 32 (not worth it)."""
        n = min(len(r) for r in rows) - 1
        known = self._prefix_cache[0] if self._prefix_cache else ()
        if known and len(known) <= n and all(tuple(r[:len(known)]) == known for r in rows):
            return len(known)  # the prefix of an earlier call (a batch of one has no other row to compare)
        first = rows[0]
        for r in rows[1:]:
            n = next((i for i, (a, b) in enumerate(zip(first[:n], r[:n])) if a != b), n)
        return n if n >= 32 and len(rows) > 1 else 0

    def _prefix_kv(self, prefix: tuple) -> list:
        """The prefix's per-layer (key, value) [1, heads, P, d], computed once per distinct prefix."""
        if self._prefix_cache is None or self._prefix_cache[0] != prefix:
            import torch
            out = self.model(input_ids=torch.tensor([prefix], device=self.device), use_cache=True, logits_to_keep=1)
            self._prefix_cache = (prefix, [(k, v) for k, v, *_ in out.past_key_values])
            self.prefix_passes += 1
        return self._prefix_cache[1]

    def yes_no_replies(self, messages_list) -> list[str]:
        """'YES' or 'NO' for each prompt: YES when its margin is above ``threshold``."""
        return ["YES" if m > self.threshold else "NO" for m in self.yes_no_margins(messages_list)]

    async def judge(self, question: str, reference: str, answer: str, *, deadline=None) -> JudgeVerdict:
        return (await self.judge_many([(question, reference, answer)], deadline=deadline))[0]

    def verdict_prompt(self, reference: str, answer: str):
        """(chat messages, characters of the answer cut) of the verdict prompt, fitted to the budget;
        PromptTooLong when the reference alone does not fit."""
        def build(text):
            return judge_messages(text, reference, self.parity)
        text, cut = self.fit_answer(build, answer)
        return build(text), cut

    async def judge_many(self, items, *, deadline=None) -> list[JudgeVerdict]:
        items = list(items)
        gated = [self._gated(r, a) for _, r, a in items]
        keys = [self.verdict_key(q, r, a) for q, r, a in items]
        prompts: list = [None] * len(items)  # (messages, chars cut), or the PromptTooLong error
        for i, (_, reference, answer) in enumerate(items):
            if not gated[i]:  # tokenizing only (~1 ms a prompt): done here, so cached verdicts record cuts too
                try:
                    prompts[i] = self.verdict_prompt(reference, answer)
                except PromptTooLong as exc:
                    prompts[i] = exc
        replies: list[ChatReply | None] = [None if g else self._cached(k) for g, k in zip(gated, keys)]
        for i, p in enumerate(prompts):
            if isinstance(p, PromptTooLong) and replies[i] is None:
                self.counters.failures += 1
                replies[i] = ChatReply(text=None, failed=True, error=str(p), attempts=0)
        todo = [i for i, rep in enumerate(replies) if rep is None and not gated[i]]
        if todo:
            t0 = time.monotonic()
            messages = [prompts[i][0] for i in todo]
            try:
                texts = await asyncio.wait_for(asyncio.to_thread(self.yes_no_replies, messages),
                                               timeout=self._remaining(deadline))
                latency = time.monotonic() - t0
                for i, text in zip(todo, texts):
                    self.cache.put(keys[i], text)
                    self.counters.latencies.append(latency)
                    replies[i] = ChatReply(text=text, attempts=1, latency=latency)
            except Exception as exc:  # deadline or a model error: every pending item fails
                error = "deadline reached" if isinstance(exc, asyncio.TimeoutError) else f"{type(exc).__name__}: {exc}"
                self.counters.failures += len(todo)
                for i in todo:
                    replies[i] = ChatReply(text=None, failed=True, error=error, attempts=1,
                                           latency=time.monotonic() - t0)
        return [self.gate_verdict() if g else
                self.record_cut(self._verdict(rep), p[1] if isinstance(p, tuple) else 0)
                for g, rep, p in zip(gated, replies, prompts)]

    def _remaining(self, deadline) -> float:
        if deadline is None:
            return self.timeout_s
        return max(0.0, deadline - time.monotonic())

    # ------------------------------------------------------------------ generic chat (greedy)
    def generate(self, messages, max_tokens: int) -> str:
        """Greedy generation of at most ``max_tokens`` new tokens (blocking)."""
        import torch

        with self._lock, torch.inference_mode():
            ids = torch.tensor([self._prompt_ids(messages)], device=self.device)
            out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                      max_new_tokens=max_tokens, pad_token_id=self.tokenizer.pad_token_id)
            self.counters.requests += 1
        return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    async def chat(self, messages, *, max_tokens: int = JUDGE_MAX_TOKENS, cache_key=None, deadline=None) -> ChatReply:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
            raise ValueError(f"max_tokens must be an integer >= 1, got {max_tokens!r}")
        hit = self._cached(cache_key)
        if hit is not None:
            return hit
        t0 = time.monotonic()
        try:
            text = await asyncio.wait_for(asyncio.to_thread(self.generate, messages, max_tokens),
                                          timeout=self._remaining(deadline))
        except Exception as exc:
            self.counters.failures += 1
            error = "deadline reached" if isinstance(exc, asyncio.TimeoutError) else f"{type(exc).__name__}: {exc}"
            return ChatReply(text=None, failed=True, error=error, attempts=1, latency=time.monotonic() - t0)
        latency = time.monotonic() - t0
        self.counters.latencies.append(latency)
        if cache_key is not None:
            self.cache.put(cache_key, text)
        return ChatReply(text=text, attempts=1, latency=latency)

    async def aclose(self) -> None:
        return None
