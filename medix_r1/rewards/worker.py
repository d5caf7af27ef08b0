"""The reward worker: scores batches in the background so training overlaps judging.

Design: one daemon thread running its own asyncio event loop. ``submit`` validates the batch in
the caller's thread (so caller mistakes raise at once, with the sample index) and hands the
scoring coroutine (:func:`.scoring.score_samples`) to the loop with
``asyncio.run_coroutine_threadsafe``, which returns exactly the ``concurrent.futures.Future`` the
trainer waits on. Why a thread and not a process:

- the judge work is I/O (HTTP requests waiting on a vLLM server); one event loop keeps hundreds
  of requests in flight with no extra memory, and the GIL is released while waiting;
- the CPU-heavy parts (the embedding model, the local judge's forward pass) run in PyTorch
  kernels that release the GIL, in ``asyncio.to_thread``, so they overlap the trainer too;
- a process would have to load the embedding and judge models a second time (memory is tight on
  the CPU box) and pickle every batch and result across, for no gain here.

Deadline: every component is awaited with ``asyncio.wait_for`` against the batch deadline
(``deadline_s`` after submission; the judge backends cut each item off at the deadline and a
last-resort guard abandons the whole judge call ``GUARD_S`` = 0.2 s later); what is not done by
then counts as failed (judge reward 0 and
``judge_failed``; embedding 0 and ``embedding_failed``). Format and modality are computed first
and never wait. Plug-in functions run on threads of their own (:mod:`.plugins`), never on this
loop or its thread pool. The Future ``submit`` returns is bounded by itself: if the loop is blocked
(a judge object whose coroutine runs blocking code), it is completed ``LATE_S`` after the guard
with every sample failed, so the trainer's wait ends. The batch never fails as a whole: an
unexpected error inside a component fails that component for the affected samples, and the error
text is kept in ``judge_error``.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from concurrent.futures import Future

from .config import RewardConfig, RewardResult
from .plugins import load_function
from .scoring import GUARD_S, Sample, check_columns, clean_text, prepare, score_samples

log = logging.getLogger(__name__)
LATE_S = 2.0  # after the guard, before the caller's Future is failed if the worker's loop is blocked
# the batch checks and scoring live in .scoring; importable from here as before
__all__ = ["GUARD_S", "LATE_S", "RewardWorker", "Sample", "check_columns", "clean_text", "compute_rewards",
           "make_judge", "prepare", "score_samples"]


def make_judge(cfg: RewardConfig, attn_implementation: str = "sdpa"):
    """The judge backend the config asks for (None for judge='none'); ``attn_implementation``: the local
    judge's attention backend (the trainer's model.attn_implementation)."""
    if cfg.judge == "none":
        return None
    common = {"concurrency": cfg.judge_concurrency, "timeout_s": cfg.judge_timeout_s,
              "max_retries": cfg.judge_max_retries, "cache_path": cfg.judge_cache_path, "parity": cfg.parity,
              "decision_gate": cfg.judge_decision_gate}
    if cfg.judge == "http":
        from .judge import JudgeClient
        return JudgeClient(cfg.judge_url, cfg.judge_model, api_key_env=cfg.judge_api_key_env, **common)
    from .local_judge import LocalJudge
    return LocalJudge(cfg.judge_model, threshold=cfg.judge_threshold, attn_implementation=attn_implementation,
                      **common)


class RewardWorker:
    """Background scorer: ``submit(problems, responses, solutions)`` -> Future[list[RewardResult]].

    ``judge`` / ``embedder`` override the backends built from ``cfg`` (tests, shared models).
    Models are loaded lazily on the worker's thread on the first batch that needs them (their
    loading time counts against that batch's deadline), or up front with :meth:`preload`.
    ``stats()``: batch/sample counts, flag counts, ``deadline_reached`` (batches in which something
    was cut off by the deadline), ``deadline_misses`` (batches returned late: a bug), ``busy_s`` and
    the judge's counters prefixed ``judge_`` (calls, requests, retries, failures, cache_hits, latency
    percentiles).
    """

    def __init__(self, cfg: RewardConfig | None = None, *, judge=None, embedder=None,
                 attn_implementation: str = "sdpa"):
        self.cfg = cfg if cfg is not None else RewardConfig()
        self.attn_implementation = attn_implementation  # of a local judge's model
        self.cfg.validate()
        if judge is not None and getattr(judge, "parity", self.cfg.parity) != self.cfg.parity:
            raise ValueError(f"judge parity {judge.parity!r} differs from cfg.parity {self.cfg.parity!r}")
        self._judge, self._embedder = judge, embedder
        weights = self.cfg.function_weights or [1.0] * len(self.cfg.functions)
        self._functions = [(spec, load_function(spec, f"reward.functions[{i}]"), float(w))
                           for i, (spec, w) in enumerate(zip(self.cfg.functions, weights))]
        self._load_lock = threading.Lock()
        self._stats = {"batches": 0, "samples": 0, "judge_failed": 0, "embedding_failed": 0,
                       "exact_match": 0, "invalid_answer": 0, "function_failed": 0, "deadline_reached": 0,
                       "deadline_misses": 0, "busy_s": 0.0}
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="medix-reward-worker", daemon=True)
        self._thread.start()
        self._closed = False

    # models -------------------------------------------------------------------------------
    def _get_judge(self):
        with self._load_lock:
            if self._judge is None and self.cfg.judge != "none":
                self._judge = make_judge(self.cfg, self.attn_implementation)
            if self._judge is not None and hasattr(self._judge, "bind"):
                self._judge.bind(self._loop)  # the HTTP client is built here, off the event loop
            return self._judge

    def _get_embedder(self):
        with self._load_lock:
            if self._embedder is None:
                from .embedding import Embedder
                self._embedder = Embedder(self.cfg.embedding_model, batch_size=self.cfg.embedding_batch_size)
            return self._embedder

    def preload(self) -> Future:
        """Load the judge and the embedding model now, in the background (they are otherwise
        loaded by the first batch, and their loading time counts against its deadline).
        Returns a Future that is done (or holds the loading error) when both are ready."""
        def load():
            if self._judge_enabled():
                self._get_judge()
            if self._embedding_enabled():
                self._get_embedder()
        return asyncio.run_coroutine_threadsafe(asyncio.to_thread(load), self._loop)

    def _judge_enabled(self) -> bool:
        return self.cfg.medix and (self.cfg.judge != "none" or self._judge is not None)

    def _embedding_enabled(self) -> bool:
        # None is the bundled MiniLM (on); only the string "none" turns the embedding reward off
        if not self.cfg.medix:  # reward.medix=false: the plug-in functions alone, no models
            return False
        model = self.cfg.embedding_model
        return self._embedder is not None or model is None or str(model).strip().lower() != "none"

    # scoring ------------------------------------------------------------------------------
    def submit(self, problems, responses, solutions, columns: dict | None = None) -> Future:
        """Validate now (raises on caller mistakes), score in the background. ``columns``: the records'
        other fields, one list per name, for ``reward.functions`` (default: ``solution`` only)."""
        if self._closed:
            raise RuntimeError("RewardWorker is closed")
        samples = prepare(problems, responses, solutions, self.cfg)
        columns = check_columns(columns, len(samples))
        if self._functions:
            columns.setdefault("solution", list(solutions))
        deadline = time.monotonic() + self.cfg.deadline_s
        return self._bounded(asyncio.run_coroutine_threadsafe(self._score(samples, deadline, columns), self._loop),
                             len(samples), deadline)

    def _bounded(self, inner: Future, n: int, deadline: float) -> Future:
        """The batch's Future, done by ``deadline + GUARD_S + LATE_S`` whatever the event loop does: a
        coroutine that blocks the loop (a judge passed in, a bug) cannot make the caller wait for ever.
        Then every sample is failed (``judge_failed``, counted in ``deadline_misses``)."""
        outer, lock = Future(), threading.Lock()

        def settle(how, *value) -> None:
            with lock:
                if not outer.done():
                    how(*value)

        def copy(f: Future) -> None:
            if f.cancelled():
                settle(outer.cancel)
            elif f.exception() is not None:
                settle(outer.set_exception, f.exception())
            else:
                settle(outer.set_result, f.result())

        def late() -> None:
            if outer.done():
                return
            log.warning("a reward batch of %d samples was not scored %.1f s after its deadline (the reward worker's "
                        "event loop is blocked): every sample scores 0 and is flagged judge_failed", n,
                        GUARD_S + LATE_S)
            self._stats["deadline_misses"] += 1
            error = "the reward worker did not return by the batch deadline (its event loop is blocked)"
            settle(outer.set_result, [RewardResult(judge_failed=True, judge_error=error) for _ in range(n)])

        timer = threading.Timer(max(0.0, deadline - time.monotonic()) + GUARD_S + LATE_S, late)
        timer.daemon = True
        timer.start()
        inner.add_done_callback(copy)
        outer.add_done_callback(lambda f: (timer.cancel(), f.cancelled() and inner.cancel()))
        return outer

    async def _score(self, samples, deadline, columns=None) -> list[RewardResult]:
        t0 = time.monotonic()
        judge = None
        if self._judge_enabled():
            try:  # loading may take a while (LocalJudge): off the loop, within the deadline
                judge = await asyncio.wait_for(asyncio.to_thread(self._get_judge),
                                               timeout=max(0.0, deadline - time.monotonic()))
            except Exception as exc:
                judge = _FailingJudge(f"judge unavailable: {type(exc).__name__}: {exc}")
        embedder_fn = self._get_embedder if self._embedding_enabled() else None
        results = await score_samples(samples, self.cfg, judge, embedder_fn, deadline, self._functions,
                                      columns or None)
        s = self._stats
        s["batches"] += 1
        s["samples"] += len(results)
        for key in ("judge_failed", "embedding_failed", "exact_match", "invalid_answer", "function_failed"):
            s[key] += sum(bool(getattr(r, key)) for r in results)
        now = time.monotonic()
        s["deadline_reached"] += now >= deadline  # something was cut off at the deadline
        s["deadline_misses"] += now > deadline + GUARD_S + 0.5  # returned late: should never happen
        s["busy_s"] += now - t0
        return results

    def score(self, problems, responses, solutions, columns: dict | None = None) -> list[RewardResult]:
        """Blocking ``submit(...).result()``."""
        return self.submit(problems, responses, solutions, columns).result()

    def stats(self) -> dict:
        out = dict(self._stats)
        judge = self._judge
        if judge is not None and hasattr(judge, "stats"):
            out.update({f"judge_{k}": v for k, v in judge.stats().items()})
        return out

    def close(self) -> None:
        """Cancel the batches still running (their futures raise CancelledError instead of never
        completing), close the judge's HTTP client and stop the thread (idempotent)."""
        if self._closed:
            return
        self._closed = True

        async def shutdown():
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=2)
            judge = self._judge
            if judge is not None and hasattr(judge, "aclose"):
                await judge.aclose()
        try:
            asyncio.run_coroutine_threadsafe(shutdown(), self._loop).result(timeout=10)
        except Exception as exc:  # closing must not raise in a finally block
            log.debug("reward worker shutdown: %s", exc)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self._loop.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _FailingJudge:
    """Stands in for a judge that could not be built: every verdict fails with the reason."""

    def __init__(self, error: str):
        self.error = error

    async def judge_many(self, items, *, deadline=None):
        from .judge import JudgeVerdict
        return [JudgeVerdict(correct=None, failed=True, error=self.error) for _ in items]


def compute_rewards(problems, responses, solutions, cfg: RewardConfig | None = None, *, judge=None,
                    embedder=None) -> list[RewardResult]:
    """Synchronous convenience: score one batch with a temporary worker."""
    with RewardWorker(cfg, judge=judge, embedder=embedder) as worker:
        return worker.score(problems, responses, solutions)
