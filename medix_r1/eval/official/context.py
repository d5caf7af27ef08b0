"""The engine's context for the official evaluation, sized from the model and the task's prompts.

The official client serves the model with ``--max-model-len 512000`` (eval/utils.py
``start_vllm_server``) and ``VLLM_ALLOW_LONG_MAX_MODEL_LEN=1`` (eval/eval.sh): no prompt is ever cut
or refused there. Here every prompt is counted before the engine starts (:func:`plan_context`): its
chat-templated text tokens plus, for Qwen-VL models, each image's tokens as the model's own image
processor will make them (``preprocessor_config.json``: patch and merge size, pixel bounds). The
engine gets the longest prompt plus its new tokens, at most the model's context
(``max_position_embeddings``); an item that would need more is left out, counted and listed in the
summary, never cut.
"""
from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

from medix_r1.data.prompts import chat_token_ids
from medix_r1.vision.qwen_vl_processor import IMAGE_PAD, smart_resize


@dataclass
class ContextPlan:
    max_model_len: int                                   # what the engine is built with
    model_limit: int | None                              # the model's context (None: not in its config)
    lengths: dict = field(default_factory=dict)          # item key -> prompt tokens (images included)
    too_long: list = field(default_factory=list)         # items whose prompt + new tokens exceed model_limit
    uncounted: int = 0                                   # image items whose image tokens could not be counted


def model_limit(model_dir) -> int | None:
    """The model's context: ``max_position_embeddings`` of its text config (a VL model's
    ``text_config``), else of its config; None when neither has one."""
    path = Path(model_dir) / "config.json"
    if not path.is_file():
        return None
    config = json.loads(path.read_text())
    for section in (config.get("text_config") or {}, config):
        if isinstance(section.get("max_position_embeddings"), int):
            return section["max_position_embeddings"]
    return None


def image_grid(model_dir) -> tuple[int, int, int, int] | None:
    """(patch, merge, min_pixels, max_pixels) of a Qwen-VL image processor (``preprocessor_config.json``:
    ``min_pixels`` / ``max_pixels``, else ``size.shortest_edge`` / ``longest_edge``), or None."""
    path = Path(model_dir) / "preprocessor_config.json"
    if not path.is_file():
        return None
    cfg = json.loads(path.read_text())
    size = cfg.get("size") or {}
    lo, hi = cfg.get("min_pixels") or size.get("shortest_edge"), cfg.get("max_pixels") or size.get("longest_edge")
    if not all(isinstance(v, int) for v in (cfg.get("patch_size"), cfg.get("merge_size"), lo, hi)):
        return None
    return cfg["patch_size"], cfg["merge_size"], lo, hi


def image_size(image) -> tuple[int, int]:
    """(height, width) of a PIL image, a path, encoded bytes or a datasets {'bytes', 'path'} dict,
    read from the header (no full decode)."""
    from PIL import Image

    if hasattr(image, "size") and hasattr(image, "mode"):
        return image.height, image.width
    if isinstance(image, dict):
        image = image.get("bytes") or image.get("path")
    source = io.BytesIO(image) if isinstance(image, (bytes, bytearray)) else image
    with Image.open(source) as img:
        return img.height, img.width


def image_tokens(image, grid: tuple[int, int, int, int]) -> int:
    """The tokens one image becomes: its grid after smart_resize, merged ``merge x merge``."""
    patch, merge, lo, hi = grid
    height, width = smart_resize(*image_size(image), patch * merge, lo, hi)
    return (height // patch) * (width // patch) // (merge * merge)


def prompt_tokens(tokenizer, record: dict, grid) -> int | None:
    """The prompt's tokens as the engine sees them (None: its images cannot be counted for this model)."""
    images = record["images"]
    content = record["problem"] if not images else \
        [{"type": "image"} for _ in images] + [{"type": "text", "text": record["problem"]}]
    ids = chat_token_ids(tokenizer, [{"role": "user", "content": content}])
    if not images:
        return len(ids)
    pad = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    if grid is None or ids.count(pad) != len(images):
        return None
    return len(ids) + sum(image_tokens(im, grid) - 1 for im in images)


def plan_context(records: list[dict], model_dir, tokenizer, new_tokens, key) -> ContextPlan:
    """Count every record's prompt (``new_tokens(record)``: its generation budget; ``key(record)``: its id)
    and size the engine; see the module docstring."""
    limit, grid = model_limit(model_dir), image_grid(model_dir)
    plan = ContextPlan(max_model_len=0, model_limit=limit)
    for record in records:
        n = prompt_tokens(tokenizer, record, grid)
        if n is None:
            plan.uncounted += 1
            continue
        plan.lengths[key(record)] = n
        if limit is not None and n + new_tokens(record) > limit:
            plan.too_long.append(record)
        else:
            plan.max_model_len = max(plan.max_model_len, n + new_tokens(record))
    if plan.uncounted:  # prompts of unknown length: the engine gets all the model has
        if limit is None:
            raise ValueError(f"{plan.uncounted} item(s) have images whose tokens cannot be counted for {model_dir} "
                             f"(no Qwen-VL preprocessor_config.json) and its config names no context length: "
                             f"the engine cannot be sized")
        plan.max_model_len = limit
    return plan
