"""Plug-in reward functions (``reward.functions``) with TRL's reward-function signature.

A function is named by an import path, ``pkg.module:fn`` or ``path/to/file.py:fn``, and is called
like TRL calls its ``reward_funcs``: ``fn(prompts, completions, **columns)`` with one list entry
per sample (``prompts``: the problem text, ``completions``: the response text, ``columns``: the
record's other fields, e.g. ``solution``, ``id``, ``images``, and any extra column of the data),
returning one float (or None: not applicable, counts 0) per completion. ``async def`` functions
are awaited on the reward worker's loop; plain ones run in a thread, so neither blocks the judge.

A function never takes the run down. When a call on the batch raises or returns the wrong number
of values, the function is called again sample by sample to find the samples it fails on; a
sample whose value is missing, not a number or not finite, or whose call misses the batch
deadline, scores 0 and is flagged failed (the worker counts it like a failed judgement). Each
failure is logged with the function's name, the sample's index and its record id.
"""
from __future__ import annotations

import asyncio
import importlib
import importlib.util
import inspect
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)
_FILE_MODULES: dict[Path, object] = {}  # a file's module is executed once per process


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
            load = importlib.util.spec_from_file_location(f"medix_reward_plugin_{len(_FILE_MODULES)}", path)
            module = importlib.util.module_from_spec(load)
            try:
                load.loader.exec_module(module)
            except Exception as e:
                raise ValueError(f"{key}: {spec!r}: importing {path} failed: {type(e).__name__}: {e}") from e
            _FILE_MODULES[path] = module
    else:
        try:
            module = importlib.import_module(where)
        except Exception as e:
            raise ValueError(f"{key}: {spec!r}: cannot import module {where!r}: {type(e).__name__}: {e}") from e
    fn = getattr(module, name, None)
    if fn is None:
        public = sorted(n for n, v in vars(module).items() if callable(v) and not n.startswith("_"))
        raise ValueError(f"{key}: {spec!r}: {where} has no {name!r} (callables there: {public})")
    if not callable(fn):
        raise ValueError(f"{key}: {spec!r}: {name!r} is a {type(fn).__name__}, not a function")
    return fn


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


async def _call(fn, prompts, completions, columns, timeout: float):
    """One call of ``fn``, awaited (async) or in a thread (sync), cut at ``timeout`` seconds."""
    if inspect.iscoroutinefunction(fn):
        return await asyncio.wait_for(fn(prompts, completions, **columns), timeout)
    out = await asyncio.wait_for(asyncio.to_thread(fn, prompts, completions, **columns), timeout)
    return await out if inspect.isawaitable(out) else out


def _value(v) -> tuple[float, str | None]:
    if v is None:
        return 0.0, None  # TRL: None = this function does not apply to the sample
    try:
        x = float(v)
    except (TypeError, ValueError):
        return 0.0, f"returned {v!r}, not a number"
    return (x, None) if math.isfinite(x) else (0.0, f"returned {x}")


async def score_function(spec: str, fn, prompts: list, completions: list, columns: dict,
                         deadline: float) -> FunctionScores:
    """``fn`` over a batch; failures are found sample by sample and never raised (module docstring)."""
    n, name = len(completions), function_name(spec)
    values, errors = [0.0] * n, [None] * n
    if n == 0:
        return FunctionScores(name, values, errors)
    try:
        outs = _check_values(await _call(fn, prompts, completions, columns, deadline - time.monotonic()), n)
    except asyncio.TimeoutError:
        return FunctionScores(name, values, ["missed the batch deadline"] * n)
    except Exception as batch_error:  # find the samples it fails on
        log.debug("reward function %s failed on the batch (%s); retrying sample by sample", name, batch_error)
        outs = []
        for i in range(n):
            one = {k: v[i:i + 1] for k, v in columns.items()}
            try:
                outs.append(_check_values(await _call(fn, prompts[i:i + 1], completions[i:i + 1], one,
                                                      deadline - time.monotonic()), 1)[0])
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
