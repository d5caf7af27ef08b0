"""Plug-in reward functions (``reward.functions``) with TRL's reward-function signature.

A function is named by an import path, ``pkg.module:fn`` or ``path/to/file.py:fn``, and is called
like TRL calls its ``reward_funcs``: ``fn(prompts, completions, **columns)`` with one list entry
per sample (``prompts``: the problem text, ``completions``: the response text, ``columns``: the
record's other fields, e.g. ``solution``, ``id``, ``images``, and any extra column of the data),
returning one float (or None: not applicable, counts 0) per completion.

Where a function runs (:class:`FunctionCalls`): each function has threads of its own, never the
reward worker's event loop or the thread pool the judge and the embedding model use, so a function
that hangs or blocks cannot starve them. A plain function runs on a daemon thread of its own per
call; an ``async def`` (and an awaitable a plain function returns) runs on the function's own event
loop, in a daemon thread. Every call is waited for until the batch deadline at the latest; a call
still running then is left behind (daemon threads never keep the process from exiting), and once
:data:`MAX_RUNNING` calls of a function are left behind its next calls fail at once instead of
piling up threads.

A function never takes the run down. When a call on the batch raises or returns the wrong number
of values, the function is called again sample by sample to find the samples it fails on; a
sample whose value is missing, not a number, not finite or outside float32's range (the trainer
computes in float32: 1e39 would become inf), or whose call misses the batch deadline, scores 0 and
is flagged failed (the worker counts it like a failed judgement). Each failure is logged with the
function's name, the sample's index and its record id. ``sys.exit`` in a function is an error of
that call; at import it is a config error naming the file.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import importlib
import importlib.util
import inspect
import logging
import math
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
_FILE_MODULES: dict[Path, object] = {}  # a file's module is executed once per process
FLOAT32_MAX = 3.4028234663852886e38
MAX_RUNNING = 4  # calls of one function still running (past their deadline) before the next fail at once


def load_function(spec: str, key: str = "reward.functions"):
    """The callable named by ``pkg.module:fn`` or ``path/to/file.py:fn``; ValueError naming ``key``."""
    if not isinstance(spec, str) or spec.count(":") < 1 or not spec.rsplit(":", 1)[1].isidentifier():
        raise ValueError(f"{key}: expected 'pkg.module:function' or 'path/to/file.py:function', got {spec!r}")
    where, name = spec.rsplit(":", 1)
    if where.endswith(".py"):
        path = Path(where).expanduser().resolve()
        if not path.is_file():
            raise ValueError(f"{key}: {spec!r}: no file {path}")
        module = _FILE_MODULES.get(path)
        if module is None:
            module_name = f"medix_reward_plugin_{len(_FILE_MODULES)}"
            load = importlib.util.spec_from_file_location(module_name, path)
            module = importlib.util.module_from_spec(load)
            # registered while it runs, as import does: dataclasses (and pickling) look their module up there
            sys.modules[module_name] = module
            try:
                load.loader.exec_module(module)
            except (Exception, SystemExit) as e:
                sys.modules.pop(module_name, None)
                raise ValueError(f"{key}: {spec!r}: importing {path} failed: {_exc_text(e)}") from e
            _FILE_MODULES[path] = module
    else:
        try:
            module = importlib.import_module(where)
        except (Exception, SystemExit) as e:
            raise ValueError(f"{key}: {spec!r}: cannot import module {where!r}: {_exc_text(e)}") from e
    fn = getattr(module, name, None)
    if fn is None:
        public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise ValueError(f"{key}: {spec!r}: {where} has no {name!r} (callables there: {public})")
    if not callable(fn):
        raise ValueError(f"{key}: {spec!r}: {name!r} is a {type(fn).__name__}, not a function")
    return fn


def _exc_text(e: BaseException) -> str:
    if isinstance(e, SystemExit):
        return f"it called sys.exit({e.code!r})"
    return f"{type(e).__name__}: {e}"


def function_name(spec: str) -> str:
    """The short name of a function in metrics and results: the part after the last ':'."""
    return spec.rsplit(":", 1)[1]


def check_functions(specs, weights, medix: bool) -> None:
    """Config-time checks of ``reward.functions`` / ``function_weights`` / ``medix`` (imports each function)."""
    if not isinstance(specs, (list, tuple)):
        raise ValueError(f"reward.functions must be a list of import paths, got {specs!r}")
    names = [function_name(s) if isinstance(s, str) and ":" in s else s for s in specs]
    for i, spec in enumerate(specs):
        load_function(spec, f"reward.functions[{i}]")
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"reward.functions: two functions named {dupes} (metrics are keyed by name)")
    if weights and len(weights) != len(specs):
        raise ValueError(f"reward.function_weights has {len(weights)} weights for {len(specs)} reward.functions "
                         f"(one per function, or empty for all 1.0)")
    for i, w in enumerate(weights or ()):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise ValueError(f"reward.function_weights[{i}] must be a finite number, got {w!r}")
    if not medix and not specs:
        raise ValueError("reward.medix=false replaces the MediX reward with reward.functions, but none is set")


@dataclass
class FunctionScores:
    """One function's values over a batch: 0.0 where it returned None or failed; ``errors[i]`` says why."""
    name: str
    values: list[float]
    errors: list[str | None]


def _check_values(out, n: int) -> list:
    if isinstance(out, (str, bytes)) or not hasattr(out, "__len__"):
        raise TypeError(f"returned a {type(out).__name__}, expected a list of {n} floats")
    if len(out) != n:
        raise ValueError(f"returned {len(out)} values for {n} completions")
    return list(out)


class FunctionCalls:
    """Where the calls of one plug-in function run (module docstring): a daemon thread of its own per
    call of a plain function, an event loop of its own (in a daemon thread) for coroutines. ``running``
    counts the calls not finished, stuck ones included (a coroutine queued on a blocked loop too)."""

    def __init__(self, fn):
        self.fn, self.running, self.loop = fn, 0, None
        self._lock = threading.Lock()

    def submit(self, prompts, completions, columns: dict) -> concurrent.futures.Future:
        """Start one call; its Future holds the values or the error. RuntimeError when ``MAX_RUNNING``
        earlier calls are still running."""
        with self._lock:
            if self.running >= MAX_RUNNING:
                raise RuntimeError(f"not called: {self.running} earlier calls have not returned (hung?)")
            self.running += 1
        if inspect.iscoroutinefunction(self.fn):
            try:
                return self._on_loop(self.fn(prompts, completions, **columns), self._done)
            except BaseException:
                self._done()
                raise
        fut = concurrent.futures.Future()
        fut.set_running_or_notify_cancel()  # a caller that gives up does not cancel it under the thread

        def work():
            try:
                out = self.fn(prompts, completions, **columns)
                if inspect.isawaitable(out):  # a plain function returning an awaitable: awaited on the loop
                    out = self._on_loop(out).result()
                fut.set_result(out)
            except BaseException as e:  # SystemExit too: it is this call's error, not the run's end
                fut.set_exception(RuntimeError(_exc_text(e)) if isinstance(e, SystemExit) else e)
            finally:
                self._done()
        threading.Thread(target=work, name=f"reward-fn-{getattr(self.fn, '__name__', 'fn')}", daemon=True).start()
        return fut

    def _done(self) -> None:
        with self._lock:
            self.running -= 1

    def _on_loop(self, awaitable, on_done=None) -> concurrent.futures.Future:
        """Run ``awaitable`` on the function's loop; ``on_done`` once its task has really ended (on a
        blocked loop the task does not even start, and the call stays counted)."""
        with self._lock:
            if self.loop is None:
                self.loop = asyncio.new_event_loop()
                threading.Thread(target=self.loop.run_forever, daemon=True,
                                 name=f"reward-fn-loop-{getattr(self.fn, '__name__', 'fn')}").start()
        loop, fut = self.loop, concurrent.futures.Future()

        def finished(task):
            if on_done is not None:
                on_done()
            if fut.done():  # the caller gave up (cancelled it)
                return
            try:
                error = task.exception()
                if error is not None:
                    fut.set_exception(error)
                else:
                    fut.set_result(task.result())
            except (asyncio.CancelledError, concurrent.futures.InvalidStateError):
                fut.cancel()

        def start():
            task = loop.create_task(_guarded(awaitable))
            task.add_done_callback(finished)
            fut.add_done_callback(lambda f: loop.call_soon_threadsafe(task.cancel) if f.cancelled() else None)
        loop.call_soon_threadsafe(start)
        return fut


async def _guarded(awaitable):
    try:
        return await awaitable
    except SystemExit as e:  # raised through a task it would stop the function's loop
        raise RuntimeError(_exc_text(e)) from None


_CALLS: dict[int, tuple[object, FunctionCalls]] = {}
_CALLS_LOCK = threading.Lock()


def calls_of(fn) -> FunctionCalls:
    """The one :class:`FunctionCalls` of ``fn`` in this process."""
    with _CALLS_LOCK:
        got = _CALLS.get(id(fn))
        if got is None or got[0] is not fn:
            got = _CALLS[id(fn)] = (fn, FunctionCalls(fn))
        return got[1]


async def _call(fn, prompts, completions, columns, deadline: float):
    """One call of ``fn`` on its own threads, waited for until ``deadline`` (asyncio.TimeoutError after)."""
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise asyncio.TimeoutError
    fut = calls_of(fn).submit(prompts, completions, columns)
    return await asyncio.wait_for(asyncio.wrap_future(fut), remaining)


def _value(v) -> tuple[float, str | None]:
    if v is None:
        return 0.0, None  # TRL: None = this function does not apply to the sample
    try:
        x = float(v)
    except OverflowError:  # an int beyond float64, e.g. 10**400
        return 0.0, f"returned {str(v)[:20]}... ({len(str(v))} digits), too large for a float"
    except (TypeError, ValueError):
        return 0.0, f"returned {v!r}, not a number"
    if not math.isfinite(x):
        return 0.0, f"returned {x}"
    if abs(x) > FLOAT32_MAX:
        return 0.0, f"returned {x:g}, outside float32's range (the trainer's rewards are float32)"
    return x, None


async def score_function(spec: str, fn, prompts: list, completions: list, columns: dict,
                         deadline: float) -> FunctionScores:
    """``fn`` over a batch; failures are found sample by sample and never raised (module docstring)."""
    n, name = len(completions), function_name(spec)
    values, errors = [0.0] * n, [None] * n
    if n == 0:
        return FunctionScores(name, values, errors)
    try:
        outs = _check_values(await _call(fn, prompts, completions, columns, deadline), n)
    except asyncio.TimeoutError:
        return FunctionScores(name, values, ["missed the batch deadline"] * n)
    except Exception as batch_error:  # find the samples it fails on
        log.debug("reward function %s failed on the batch (%s); retrying sample by sample", name, batch_error)
        outs = []
        for i in range(n):
            one = {k: v[i:i + 1] for k, v in columns.items()}
            try:
                outs.append(_check_values(await _call(fn, prompts[i:i + 1], completions[i:i + 1], one, deadline),
                                          1)[0])
            except asyncio.TimeoutError:
                outs.append(None)
                errors[i] = "missed the batch deadline"
            except Exception as e:
                outs.append(None)
                errors[i] = f"raised {type(e).__name__}: {e}"
    for i, v in enumerate(outs):
        if errors[i] is None:
            values[i], errors[i] = _value(v)
    return FunctionScores(name, values, errors)


def report_failures(scores: FunctionScores, ids: list) -> None:
    """One warning per function and batch, naming the function and each failed sample (index, id)."""
    bad = [i for i, e in enumerate(scores.errors) if e is not None]
    if not bad:
        return
    shown = "; ".join(f"sample {i} (id {ids[i] if i < len(ids) else '?'}): {scores.errors[i]}" for i in bad[:5])
    more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
    log.warning("reward function %r failed on %d of %d samples (scored 0, counted as failed): %s%s",
                scores.name, len(bad), len(scores.errors), shown, more)


def add_functions(r, weighted: list) -> None:
    """Add the plug-in values of a RewardResult (``r.functions``, name -> value), weighted, to ``r.total``.
    Each value is within float32's range, but their sum may not be (two of 3e38): then every plug-in
    value of the sample scores 0 and is flagged, as a NaN would be, and the total is the MediX part
    alone (the trainer's rewards are float32)."""
    extra = sum(weight * r.functions[name] for name, weight in weighted)
    if abs(r.total + extra) <= FLOAT32_MAX:
        r.total += extra
        return
    for name, _ in weighted:
        r.functions[name] = 0.0
    r.function_failed, r.judge_failed = True, True
    r.judge_error = (f"reward functions {[n for n, _ in weighted]}: their weighted sum {r.total + extra:g} is "
                     f"outside float32's range; scored 0")
