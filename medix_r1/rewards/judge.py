"""The LLM judge: prompt, reply parsing, counters and the HTTP client (:class:`JudgeClient`).

The judge sees the predicted and the ground-truth answer and must reply YES (the content
matches) or NO, in upper case, with at most 4 new tokens at temperature 0 (MediX-R1's protocol).
The prompt text depends on the parity (:mod:`medix_r1.rewards.judge_prompts`): ``strict`` fences
the answer against prompt injection, ``official`` is the official prompt byte for byte.

Reply parsing (:func:`parse_verdict`):

- ``parity="official"``: any reply whose upper-cased text contains "YES" is correct, anything
  else (including transport errors) scores 0, like the official code.
- ``parity="strict"`` (default): the reply, with surrounding whitespace and punctuation removed
  and upper-cased, must be exactly YES or NO; anything else is a failed judgement (reward 0 and
  ``judge_failed``), never a silent NO.

:class:`JudgeClient` talks to any OpenAI-compatible chat endpoint with ``openai.AsyncOpenAI``.
The SDK's own retry loop is switched off (``max_retries=0``) and replaced by ours so that every
attempt is counted, retries stop at the caller's deadline, Retry-After is honoured up to
``timeout_s`` (a server asking for hours must not hang the run; the wait is capped) and
non-retryable errors (4xx other than 429, malformed 200 bodies) fail at once. Each attempt runs
under ``asyncio.wait_for`` as well as the SDK timeout: httpx's timeouts are per network phase,
so a server trickling bytes could otherwise hold a request far longer than ``timeout_s``.
"""
from __future__ import annotations

import asyncio
import email.utils
import os
import random
import string
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from .cache import ReplyCache, cache_key
from .decision import decision_mismatch, restatement_mismatch
from .judge_prompts import PROMPTS, STRICT_PROMPT, answer_cut

PROMPT_VERSION = PROMPTS["strict"][1]
LATENCY_WINDOW = 10_000
JUDGE_MAX_TOKENS = 4
JUDGE_PROMPT = STRICT_PROMPT
_STRIP = string.whitespace + string.punctuation


def judge_messages(answer: str, reference: str, parity: str = "strict") -> list[dict]:
    """The chat messages asking the judge whether ``answer`` matches ``reference``: one user
    message, its text from the parity's prompt (see :mod:`medix_r1.rewards.judge_prompts`)."""
    if parity not in PROMPTS:
        raise ValueError(f"parity must be one of {sorted(PROMPTS)}, got {parity!r}")
    build, _ = PROMPTS[parity]
    return [{"role": "user", "content": build(answer, reference)}]


def parse_verdict(reply, parity: str = "strict") -> bool | None:
    """True (YES), False (NO) or None (no usable verdict; strict mode only)."""
    if not isinstance(reply, str):
        return False if parity == "official" else None
    if parity == "official":
        return "YES" in reply.upper()
    word = reply.strip(_STRIP).upper()
    return True if word == "YES" else False if word == "NO" else None


@dataclass
class ChatReply:
    """One chat call's outcome: ``text`` is None when the call failed."""
    text: str | None
    failed: bool = False
    error: str | None = None
    attempts: int = 0
    latency: float = 0.0
    cached: bool = False


@dataclass
class JudgeVerdict:
    """One judgement: ``correct`` is None when the judge gave no usable verdict."""
    correct: bool | None
    failed: bool
    reply: str | None = None
    error: str | None = None
    cached: bool = False
    attempts: int = 0
    latency: float = 0.0
    answer_cut: int = 0   # characters of the answer's end the judge did not see (the prompt's budget)


@dataclass
class JudgeCounters:
    """Counters shared by both judge backends (see :meth:`snapshot`)."""
    calls: int = 0        # chat() calls
    requests: int = 0     # attempts actually sent (HTTP requests / local forward passes per item)
    retries: int = 0
    failures: int = 0     # calls that ended without a reply
    cache_hits: int = 0
    gated: int = 0        # verdicts given by the decision gate without asking the model (rewards.decision)
    answers_cut: int = 0  # verdicts on an answer whose end was cut to fit the prompt
    # the latest LATENCY_WINDOW paid (non-cached) calls: bounded memory and a cheap snapshot
    # over a long training run (hundreds of thousands of calls)
    latencies: deque = field(default_factory=lambda: deque(maxlen=LATENCY_WINDOW))

    def snapshot(self) -> dict:
        lat = sorted(self.latencies)
        out = {"calls": self.calls, "requests": self.requests, "retries": self.retries,
               "failures": self.failures, "cache_hits": self.cache_hits, "gated": self.gated,
               "answers_cut": self.answers_cut}
        for q in (50, 90, 99):
            # nearest-rank percentile of the latest paid (non-cached) calls' latencies, in seconds
            out[f"latency_p{q}_s"] = lat[min(len(lat) - 1, max(0, -(-q * len(lat) // 100) - 1))] if lat else None
        return out


class JudgeBase:
    """What both backends share: the verdict API, the cache and the counters."""
    model_id = "judge"

    def __init__(self, cache_path=None, parity: str = "strict", decision_gate: bool = False):
        if parity not in ("strict", "official"):
            raise ValueError(f"parity must be 'strict' or 'official', got {parity!r}")
        if not isinstance(decision_gate, bool):
            raise ValueError(f"decision_gate must be true or false, got {decision_gate!r}")
        self.parity = parity
        # strict parity only: the official protocol asks the model about every pair
        self.decision_gate = decision_gate and parity == "strict"
        self.cache = ReplyCache(cache_path)
        self.counters = JudgeCounters()

    async def chat(self, messages, *, max_tokens: int, cache_key=None, deadline=None) -> ChatReply:
        raise NotImplementedError

    def verdict_key(self, question: str, reference: str, answer: str) -> str:
        return cache_key("verdict", self.model_id, PROMPTS[self.parity][1], question, reference, answer)

    async def judge(self, question: str, reference: str, answer: str, *, deadline=None) -> JudgeVerdict:
        """Ask whether ``answer`` matches ``reference``; never raises for judge-side faults."""
        if self._gated(reference, answer):
            return self.gate_verdict()
        reply = await self.chat(judge_messages(answer, reference, self.parity), max_tokens=JUDGE_MAX_TOKENS,
                                cache_key=self.verdict_key(question, reference, answer), deadline=deadline)
        return self.record_cut(self._verdict(reply), answer_cut(answer, self.parity))

    def record_cut(self, verdict: JudgeVerdict, chars: int) -> JudgeVerdict:
        """``verdict`` marked with the characters of its answer the judge did not see (counted)."""
        verdict.answer_cut = chars
        self.counters.answers_cut += chars > 0
        return verdict

    async def judge_many(self, items, *, deadline=None) -> list[JudgeVerdict]:
        """Judge (question, reference, answer) triples concurrently (bounded by the backend).

        Each item is also cut off at ``deadline`` on its own (e.g. while queued for a slot), so one
        stuck request never costs the verdicts of the others."""
        async def one(q, r, a):
            if deadline is None:
                return await self.judge(q, r, a)
            try:
                return await asyncio.wait_for(self.judge(q, r, a, deadline=deadline),
                                              timeout=max(0.0, deadline - time.monotonic()))
            except asyncio.TimeoutError:
                self.counters.failures += 1
                return self._verdict(ChatReply(text=None, failed=True, error="deadline reached"))
        return list(await asyncio.gather(*(one(q, r, a) for q, r, a in items)))

    def _gated(self, reference: str, answer: str) -> bool:
        """True when the decision gate (with its restatement checks) answers NO for this pair (counted;
        see rewards.decision)."""
        if self.decision_gate and (decision_mismatch(answer, reference) or restatement_mismatch(answer, reference)):
            self.count_gated()
            return True
        return False

    def count_gated(self, n: int = 1) -> None:
        """Count ``n`` verdicts a gate gave without asking the model (this decision gate, or the reward
        worker's topic gate): calls the judge answered, none of them a request."""
        self.counters.calls += n
        self.counters.gated += n

    @staticmethod
    def gate_verdict() -> JudgeVerdict:
        return JudgeVerdict(correct=False, failed=False, reply="NO", error=None)

    def _verdict(self, reply: ChatReply) -> JudgeVerdict:
        common = {"reply": reply.text, "cached": reply.cached, "attempts": reply.attempts, "latency": reply.latency}
        if reply.failed:  # transport failure: official scores it 0; both modes flag it
            return JudgeVerdict(correct=False if self.parity == "official" else None, failed=True,
                                error=reply.error, **common)
        correct = parse_verdict(reply.text, self.parity)
        if correct is None:  # strict mode only: neither YES nor NO
            return JudgeVerdict(correct=None, failed=True, error=f"reply is not YES or NO: {reply.text!r}",
                                **common)
        return JudgeVerdict(correct=correct, failed=False, **common)

    def _cached(self, key) -> ChatReply | None:
        self.counters.calls += 1
        if key is None:
            return None
        text = self.cache.get(key)
        if text is None:
            return None
        self.counters.cache_hits += 1
        return ChatReply(text=text, cached=True)

    def stats(self) -> dict:
        return self.counters.snapshot()


def retry_after_seconds(headers) -> float | None:
    """Seconds asked for by a Retry-After (or retry-after-ms) header, or None."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:  # an HTTP date
        when = email.utils.parsedate_to_datetime(value)
        return max(0.0, when.timestamp() - time.time())
    except (TypeError, ValueError, IndexError):
        return None


class JudgeClient(JudgeBase):
    """Asynchronous judge over an OpenAI-compatible ``/v1/chat/completions`` endpoint.

    ``api_key``: explicit, else the environment variable ``api_key_env``
    (``MEDIX_JUDGE_API_KEY``), else ``"EMPTY"`` (what a local vLLM server accepts).
    ``call_deadline_s``: the overall time one :meth:`chat` call may take, retries and waits included,
    counted from when it gets a concurrency slot, for callers that give no deadline of their own.
    """

    def __init__(self, base_url: str, model: str, api_key: str | None = None, *, concurrency: int = 16,
                 timeout_s: float = 30.0, max_retries: int = 3, cache_path=None, parity: str = "strict",
                 api_key_env: str = "MEDIX_JUDGE_API_KEY", backoff_base_s: float = 0.5,
                 backoff_max_s: float = 8.0, chat_template_kwargs: dict | None = None, seed: int | None = None,
                 call_deadline_s: float | None = None, decision_gate: bool = False):
        super().__init__(cache_path, parity, decision_gate)
        if not isinstance(base_url, str) or not base_url.startswith(("http://", "https://")):
            raise ValueError(f"base_url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {base_url!r}")
        if not isinstance(model, str) or not model:
            raise ValueError(f"model must be the served model name, got {model!r}")
        if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
            raise ValueError(f"concurrency must be an integer >= 1, got {concurrency!r}")
        if not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
            raise ValueError(f"timeout_s must be a number > 0, got {timeout_s!r}")
        if isinstance(max_retries, bool) or not isinstance(max_retries, int) or max_retries < 0:
            raise ValueError(f"max_retries must be an integer >= 0, got {max_retries!r}")
        if call_deadline_s is not None and not (isinstance(call_deadline_s, (int, float)) and call_deadline_s > 0):
            raise ValueError(f"call_deadline_s must be a number > 0 or None, got {call_deadline_s!r}")
        self.call_deadline_s = call_deadline_s
        self.base_url, self.model, self.model_id = base_url.rstrip("/"), model, model
        self.api_key = api_key or os.environ.get(api_key_env) or "EMPTY"
        self.concurrency, self.timeout_s, self.max_retries = concurrency, float(timeout_s), max_retries
        self.backoff_base_s, self.backoff_max_s = backoff_base_s, backoff_max_s
        # Qwen3 judges: thinking off in the chat template (vLLM passes these to the template).
        self.chat_template_kwargs = {"enable_thinking": False} if chat_template_kwargs is None \
            else chat_template_kwargs
        self.seed = seed
        self._rng = random.Random(seed)
        self._loop = None  # the SDK client and the semaphore belong to one event loop
        self._state_lock = threading.Lock()

    def _state(self, loop=None):
        loop = loop if loop is not None else asyncio.get_running_loop()
        with self._state_lock:
            if self._loop is not loop:
                from openai import AsyncOpenAI
                self._client = AsyncOpenAI(base_url=self.base_url, api_key=self.api_key, timeout=self.timeout_s,
                                           max_retries=0)
                self._sem = asyncio.Semaphore(self.concurrency)
                self._loop = loop
            return self._client, self._sem

    def bind(self, loop) -> None:
        """Build the HTTP client for ``loop`` now, from any thread. Building it takes a while (the SDK
        import, an SSL context): done on the loop itself it would stall every timer, deadlines too."""
        self._state(loop)

    async def aclose(self) -> None:
        if self._loop is asyncio.get_running_loop():
            await self._client.close()
            self._loop = None

    async def chat(self, messages, *, max_tokens: int, cache_key=None, deadline=None) -> ChatReply:
        """One chat completion with retries; ``deadline`` is a ``time.monotonic()`` value.

        Never raises for server-side faults: a failed call returns ``ChatReply(failed=True)``.
        """
        hit = self._cached(cache_key)
        if hit is not None:
            return hit
        client, sem = self._state()
        t0, attempts, error = time.monotonic(), 0, "no attempt"
        async with sem:
            if deadline is None and self.call_deadline_s is not None:  # from now: queueing is not the call
                deadline = time.monotonic() + self.call_deadline_s
            while True:
                remaining = (deadline - time.monotonic()) if deadline is not None else self.timeout_s
                if remaining <= 0:
                    error = f"deadline reached after {attempts} attempts (last error: {error})"
                    break
                attempts += 1
                self.counters.requests += 1
                try:
                    text = await asyncio.wait_for(self._request(client, messages, max_tokens,
                                                                min(self.timeout_s, remaining)),
                                                  timeout=min(self.timeout_s, remaining) + 0.05)
                    latency = time.monotonic() - t0
                    self.counters.latencies.append(latency)
                    if cache_key is not None:
                        self.cache.put(cache_key, text)
                    return ChatReply(text=text, attempts=attempts, latency=latency)
                except Exception as exc:  # classified below; nothing escapes to the batch
                    retry, wait, error = self._classify(exc, attempts)
                if not retry or attempts > self.max_retries:
                    break
                if deadline is not None and time.monotonic() + wait >= deadline:
                    error = f"{error}; no time left before the deadline for a retry"
                    break
                self.counters.retries += 1
                await asyncio.sleep(wait)
        self.counters.failures += 1
        return ChatReply(text=None, failed=True, error=error, attempts=attempts, latency=time.monotonic() - t0)

    async def _request(self, client, messages, max_tokens, timeout) -> str:
        kwargs = {"seed": self.seed} if self.seed is not None else {}
        if self.chat_template_kwargs:
            kwargs["extra_body"] = {"chat_template_kwargs": self.chat_template_kwargs}
        resp = await client.chat.completions.create(
            model=self.model, messages=messages, max_tokens=max_tokens, temperature=0.0, top_p=1.0,
            timeout=timeout, **kwargs)
        try:
            text = resp.choices[0].message.content
        except (AttributeError, IndexError, TypeError):
            raise MalformedReply(f"malformed reply body: {str(resp)[:200]!r}") from None
        if not isinstance(text, str):
            raise MalformedReply(f"reply has no text content: {str(resp)[:200]!r}")
        return text

    def _classify(self, exc: Exception, attempt: int) -> tuple[bool, float, str]:
        """(retry?, seconds to wait, error text) for a failed attempt."""
        import openai

        backoff = min(self.backoff_max_s, self.backoff_base_s * 2 ** (attempt - 1))
        backoff *= 0.5 + 0.5 * self._rng.random()  # jitter: spread the retries of a burst
        if isinstance(exc, (asyncio.TimeoutError, openai.APITimeoutError)):
            return True, backoff, f"timeout after {self.timeout_s:g}s"
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            text = f"HTTP {status}: {str(exc)[:200]}"
            if status == 429 or status >= 500:
                asked = retry_after_seconds(getattr(exc.response, "headers", None))
                return True, (backoff if asked is None else min(asked, self.timeout_s)), text
            return False, 0.0, text
        if isinstance(exc, openai.APIConnectionError):
            return True, backoff, f"connection error: {exc.__cause__ or exc}"
        return False, 0.0, f"{type(exc).__name__}: {str(exc)[:200]}"


class MalformedReply(Exception):
    """A 200 reply without a chat message text."""
