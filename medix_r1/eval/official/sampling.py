"""The sampling settings of the official evaluation, and where each value comes from.

The 17 tasks of ``eval/eval.py`` are answered by a ``vllm serve`` server: each chat request sets
``temperature=0.0``, ``top_p=1.0`` and ``max_tokens=2048`` (``generate`` in eval/utils.py), and the
server fills every setting a request leaves out from the checkpoint's ``generation_config.json``
(vLLM's ``--generation-config auto``, its default), else from vLLM's own defaults. Offline
``SamplingParams`` do not read that file, so :func:`served_sampling` reproduces the server's
choice, the way vLLM reads it (transformers' ``GenerationConfig`` and its ``to_diff_dict``: only
values that differ from transformers' defaults count). Greedy decoding makes top_p / top_k / min_p
moot; a repetition, presence or frequency penalty in that file still changes the answers.

MMMU's medical subsets run through MedEvalKit (``eval/eval_mmmu_med.sh``), whose offline engine
gets explicit ``SamplingParams`` (:data:`MMMU_REQUEST`); the file is not read there, so the other
settings are vLLM's defaults.
"""
from __future__ import annotations

from pathlib import Path

# eval/utils.py generate(), lines 178-185 at 94fd018
EVAL_PY_REQUEST = {"temperature": 0.0, "top_p": 1.0, "max_tokens": 2048}
# eval/eval_mmmu_med.sh lines 24-28: MAX_NEW_TOKENS, TEMPERATURE, TOP_P, REPETITION_PENALTY
MMMU_REQUEST = {"temperature": 0.0, "top_p": 0.0001, "repetition_penalty": 1.0, "max_tokens": 8192}
# what vLLM uses for a setting neither the request nor the checkpoint sets (its chat-request defaults)
VLLM_DEFAULTS = {"repetition_penalty": 1.0, "presence_penalty": 0.0, "frequency_penalty": 0.0, "temperature": 1.0,
                 "top_p": 1.0, "top_k": 0, "min_p": 0.0}
# the generation_config.json fields vLLM takes as sampling defaults (max_new_tokens = max_tokens)
FILE_KEYS = ("repetition_penalty", "presence_penalty", "frequency_penalty", "temperature", "top_k", "top_p", "min_p",
             "max_new_tokens")

FROM_REQUEST_EVAL = "request (eval/utils.py generate)"
FROM_REQUEST_MMMU = "request (eval/eval_mmmu_med.sh)"
FROM_FILE = "generation_config.json (applied by vllm serve)"
FROM_VLLM = "vLLM default"


def checkpoint_defaults(model_dir) -> dict:
    """The sampling values the checkpoint's generation config sets apart from transformers' defaults
    (vLLM's reading: ``GenerationConfig.from_pretrained(...).to_diff_dict()``, else the one derived
    from config.json); {} when neither exists."""
    from transformers import AutoConfig, GenerationConfig

    try:
        config = GenerationConfig.from_pretrained(str(model_dir))
    except OSError:
        try:
            config = GenerationConfig.from_model_config(AutoConfig.from_pretrained(str(model_dir)))
        except (OSError, ValueError):
            return {}
    diff = config.to_diff_dict()
    out = {k: diff[k] for k in FILE_KEYS if diff.get(k) is not None}
    if "max_new_tokens" in out:
        out["max_tokens"] = out.pop("max_new_tokens")
    return out


def served_sampling(model_dir: str | Path | None, request: dict = EVAL_PY_REQUEST) -> dict:
    """``{setting: {"value", "from"}}`` for a chat request that sets ``request`` to a ``vllm serve``
    of ``model_dir``: the request's value, else the checkpoint's, else vLLM's default. Without a
    model folder (a model already served, ``--generator openai``) the server adds its own defaults:
    only the request's settings are listed."""
    file = checkpoint_defaults(model_dir) if model_dir is not None else {}
    out = {k: {"value": v, "from": FROM_REQUEST_EVAL} for k, v in request.items()}
    if model_dir is None:
        return out
    for key, default in VLLM_DEFAULTS.items():
        if key not in out:
            out[key] = {"value": file[key], "from": FROM_FILE} if key in file else {"value": default,
                                                                                   "from": FROM_VLLM}
    return out


def mmmu_sampling() -> dict:
    """MedEvalKit's explicit SamplingParams for MMMU; vLLM's defaults for the rest (the file is not read)."""
    out = {k: {"value": v, "from": FROM_REQUEST_MMMU} for k, v in MMMU_REQUEST.items()}
    out.update({k: {"value": v, "from": FROM_VLLM} for k, v in VLLM_DEFAULTS.items() if k not in out})
    return out


def values(settings: dict) -> dict:
    """The plain ``{setting: value}`` a generator call takes."""
    return {k: v["value"] for k, v in settings.items()}
