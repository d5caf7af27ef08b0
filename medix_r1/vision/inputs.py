"""What the trainer calls to feed image + text and text-only MediX records to a Qwen-VL policy.

Flow (one call each):
  is_vision_model(model)                          -> choose the VL path
  check_model_accepts_images(model, records)      -> clear error for images + text-only model
  prepare_vl_prompts(records, tokenizer, cfg, system_prompt, base_dir)
        -> per record {"record", "input_ids" (placeholders expanded), "pixel_values", "image_grid_thw"}
  vl_generate_inputs(item)                        -> kwargs for model.generate (hf rollout)
  collate_vl(items_per_row, response_ids, pad_id) -> right-padded batch with images, masks, pred_pos
  slice_vl_batch(batch, start, stop)              -> a micro-batch with the matching image rows
  freeze_vision_tower(model) / vision_parameters(model)
"""

from __future__ import annotations

import re

import torch

from medix_r1.vision.images import DEFAULT_MAX_DECODE_PIXELS, SkipLog, load_images_with_policy
from medix_r1.vision.qwen_vl_processor import (
    IMAGE_PAD, VLImageConfig, expand_image_placeholders, image_token_counts, preprocess_images,
)

# Marker a problem text may carry to place an image inside the text (LLaVA-style data).
IMAGE_MARKER = "<image>"
_MARKER_RE = re.compile(re.escape(IMAGE_MARKER))


def _config(model_or_config):
    return getattr(model_or_config, "config", model_or_config)


def is_vision_model(model_or_config) -> bool:
    """True for a model/config with a vision tower and an image token (Qwen2/2.5/3-VL and alike)."""
    cfg = _config(model_or_config)
    return getattr(cfg, "vision_config", None) is not None and getattr(cfg, "image_token_id", None) is not None


def check_model_accepts_images(model_or_config, records) -> None:
    """Raise ValueError naming the first record with images when the model is text-only."""
    if is_vision_model(model_or_config):
        return
    for record in records:
        if record.get("images"):
            model_type = getattr(_config(model_or_config), "model_type", type(model_or_config).__name__)
            raise ValueError(
                f"record {record.get('id', '?')!r} has {len(record['images'])} image(s) but the policy "
                f"({model_type}) is a text-only model; use a vision-language model (e.g. Qwen2.5-VL, "
                "Qwen3-VL) or drop image records from the data (keep records with images == [])")


def build_vl_messages(problem: str, n_images: int, system_prompt: str | None = None, record_id="?") -> list[dict]:
    """Chat messages in the Qwen-VL layout: a user turn of {"type": "image"} / {"type": "text"} parts.

    Images go before the text, unless the problem carries ``<image>`` markers: then one image is
    put at each marker, and the number of markers must equal n_images.
    """
    if not isinstance(problem, str):
        raise TypeError(f"record {record_id!r}: problem must be a str, got {type(problem).__name__}")
    if not isinstance(n_images, int) or n_images < 0:
        raise ValueError(f"n_images must be an int >= 0, got {n_images!r}")
    markers = len(_MARKER_RE.findall(problem))
    if markers:
        if markers != n_images:
            raise ValueError(
                f"record {record_id!r}: the problem has {markers} {IMAGE_MARKER} marker(s) but the record has "
                f"{n_images} image(s); make them match (one marker per image) or remove the markers")
        content = []
        for k, piece in enumerate(_MARKER_RE.split(problem)):
            if k:
                content.append({"type": "image"})
            if piece:
                content.append({"type": "text", "text": piece})
    else:
        content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": problem}]
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": content}]


def _template_ids(tokenizer, messages) -> list[int]:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _preprocess(images, processor):
    """(pixel_values, image_grid_thw, merge_size) from our VLImageConfig or a transformers image processor."""
    if isinstance(processor, VLImageConfig):
        out = preprocess_images(images, processor)
        return out["pixel_values"], out["image_grid_thw"], processor.merge_size
    out = processor(images=images, return_tensors="pt")  # transformers Qwen-VL image processor (GPU hosts)
    return out["pixel_values"], out["image_grid_thw"], int(processor.merge_size)


def prepare_vl_prompts(records, tokenizer, processor, system_prompt: str | None = None, base_dir=None,
                       on_bad_image: str = "error", skip_log: SkipLog | None = None,
                       max_decode_pixels: int = DEFAULT_MAX_DECODE_PIXELS) -> list[dict]:
    """Tokenised prompts with images for a list of MediX records (image and text-only mixed).

    processor: a ``VLImageConfig`` (e.g. ``config_for_model(model)``) or a transformers Qwen-VL image
    processor. Returns one dict per kept record: ``record``, ``input_ids`` (list[int], one
    ``<|image_pad|>`` expanded to t*h*w/merge^2 tokens per image), and for image records
    ``pixel_values`` [N, D] float32 + ``image_grid_thw`` [n_images, 3] (None for text-only).
    on_bad_image="skip" drops records whose image fails to load and counts them in skip_log.
    """
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    if image_token_id is None or image_token_id == getattr(tokenizer, "unk_token_id", None):
        raise ValueError(f"tokenizer has no {IMAGE_PAD} token: it is not a Qwen-VL tokenizer")
    records = list(records)
    pairs, _ = load_images_with_policy(records, base_dir, on_bad_image, max_decode_pixels, skip_log)
    items = []
    for record, images in pairs:
        record_id = record.get("id", "?")
        messages = build_vl_messages(record.get("problem", ""), len(images), system_prompt, record_id)
        ids = _template_ids(tokenizer, messages)
        pixel_values = grid = None
        if images:
            pixel_values, grid, merge = _preprocess(images, processor)
            counts = image_token_counts(grid, merge)
        else:
            counts = []
        items.append({"record": record, "input_ids": expand_image_placeholders(ids, image_token_id, counts, record_id),
                      "pixel_values": pixel_values, "image_grid_thw": grid})
    return items


def vl_generate_inputs(item: dict, device=None) -> dict:
    """Keyword arguments for ``model.generate`` for one prepared prompt (batch of 1)."""
    x = torch.tensor([item["input_ids"]], dtype=torch.long, device=device)
    kwargs = {"input_ids": x, "attention_mask": torch.ones_like(x)}
    if item.get("pixel_values") is not None:
        kwargs["pixel_values"] = item["pixel_values"].to(device)
        kwargs["image_grid_thw"] = item["image_grid_thw"].to(device)
    return kwargs


def collate_vl(prompt_items: list[dict], response_ids: list[list[int]], pad_id: int) -> dict:
    """Right-padded prompt + response rows with their images, for the policy forward.

    prompt_items[b] is the prepared prompt of row b (repeat an item for each of its n samples).
    Returns input_ids / attention_mask [B, L]; response_mask [B, L] (1 on response tokens);
    ids / mask / pred_pos [B, R] (response ids, their mask, and the position whose hidden state
    predicts each, as the text trainer's batches have); pixel_values (rows of all image rows,
    in batch order) and image_grid_thw [n_images, 3]; image_counts [B] (images per row).
    """
    if len(prompt_items) != len(response_ids):
        raise ValueError(f"prompt_items ({len(prompt_items)}) and response_ids ({len(response_ids)}) "
                         "must have one entry per row")
    if not prompt_items:
        raise ValueError("collate_vl needs at least one row")
    B = len(prompt_items)
    L = max(len(it["input_ids"]) + len(r) for it, r in zip(prompt_items, response_ids))
    R = max(1, max(len(r) for r in response_ids))
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)
    attn = torch.zeros((B, L), dtype=torch.long)
    response_mask = torch.zeros((B, L), dtype=torch.float32)
    ids = torch.zeros((B, R), dtype=torch.long)
    mask = torch.zeros((B, R), dtype=torch.float32)
    pred_pos = torch.zeros((B, R), dtype=torch.long)
    pixels, grids, counts = [], [], []
    for b, (item, resp) in enumerate(zip(prompt_items, response_ids)):
        p = list(item["input_ids"])
        seq = p + list(resp)
        input_ids[b, :len(seq)] = torch.tensor(seq, dtype=torch.long)
        attn[b, :len(seq)] = 1
        response_mask[b, len(p):len(seq)] = 1.0
        ids[b, :len(resp)] = torch.tensor(list(resp), dtype=torch.long)
        mask[b, :len(resp)] = 1.0
        pred_pos[b] = torch.clamp(torch.arange(R) + len(p) - 1, max=L - 1)
        if item.get("pixel_values") is not None:
            pixels.append(item["pixel_values"])
            grids.append(item["image_grid_thw"])
            counts.append(item["image_grid_thw"].shape[0])
        else:
            counts.append(0)
    batch = {"input_ids": input_ids, "attention_mask": attn, "response_mask": response_mask,
             "ids": ids, "mask": mask, "pred_pos": pred_pos,
             "image_counts": torch.tensor(counts, dtype=torch.long)}
    if pixels:
        batch["pixel_values"] = torch.cat(pixels)
        batch["image_grid_thw"] = torch.cat(grids)
    return batch


def slice_vl_batch(batch: dict, start: int, stop: int) -> dict:
    """Rows [start, stop) of a collate_vl batch, with exactly those rows' images."""
    counts = batch["image_counts"]
    out = {k: v[start:stop] for k, v in batch.items() if k not in ("pixel_values", "image_grid_thw")}
    if "image_grid_thw" in batch:
        first, last = int(counts[:start].sum()), int(counts[:stop].sum())
        if last > first:
            grid = batch["image_grid_thw"]
            patches = grid.prod(dim=-1)
            p0, p1 = int(patches[:first].sum()), int(patches[:last].sum())
            out["image_grid_thw"] = grid[first:last]
            out["pixel_values"] = batch["pixel_values"][p0:p1]
    return out


def vision_tower(model) -> torch.nn.Module | None:
    """The vision tower (incl. its merger) of a Qwen-VL model (``.model.visual`` or ``.visual``), or None."""
    return getattr(getattr(model, "model", model), "visual", None) or getattr(model, "visual", None)


def vision_parameters(model) -> list[torch.nn.Parameter]:
    """Parameters of the vision tower (incl. its merger) of a Qwen-VL model."""
    visual = vision_tower(model)
    if visual is None:
        raise ValueError(f"{type(model).__name__} has no vision tower (.model.visual / .visual)")
    return list(visual.parameters())


def freeze_vision_tower(model, frozen: bool = True) -> int:
    """Set requires_grad=False (or True) on the vision tower; returns the number of parameters affected."""
    params = vision_parameters(model)
    for p in params:
        p.requires_grad_(not frozen)
    return sum(p.numel() for p in params)
