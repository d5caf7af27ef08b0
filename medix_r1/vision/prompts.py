"""What ``medix_r1.train`` calls to train a Qwen-VL policy on image + text and text-only records.

The trainer stays one code path; for a vision-language policy it calls:

- :func:`setup_vision` (before the models load): errors clearly when records carry images and the
  policy is text-only; returns ``None`` for a text-only policy, else a :class:`VisionPrompts`.
- :func:`medix_r1.vision.model.auto_model_class`: ``AutoModelForImageTextToText`` for a Qwen-VL folder.
- :meth:`VisionPrompts.take` per step: draws records from the sampler, loads their images lazily
  (PIL, validated, normalised to RGB), resizes them to the patch grid, preprocesses them and
  expands the image placeholders. A record whose image is missing/corrupt/unusable is skipped,
  remembered and counted (``vision.on_bad_image=skip``), and another record is drawn in its place;
  with ``fail`` the error (naming the record and the fix) stops the run.
- rollout engines: :func:`split_prompt` (hf ``generate`` inputs), :func:`vllm_request` /
  :func:`check_vllm_prompt` (vLLM ``multi_modal_data`` request, GPU).
- training batches: :func:`select_rows` builds ``pixel_values`` / ``image_grid_thw`` for exactly
  the rows of a micro-batch (a step's batch only keeps references to each prompt's tensors).

Images are resized once to the grid (``smart_resize`` under vision.min/max_pixels, PIL bicubic)
before any processor sees them, so the project's processor, transformers' processor and vLLM's
processor all keep that size: every engine expands a record to the same number of image tokens.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from PIL import Image

from medix_r1.data.prompts import OverlongPrompt, chat_token_ids, check_prompt_chars, fit_prompt, record_messages
from medix_r1.data.templates import content_with_images
from medix_r1.vision.images import ImageError, _image_bytes_or_path, load_record_images
from medix_r1.vision.model import (
    check_model_accepts_images,
    freeze_vision_tower,
    is_vision_model,
    model_config,
    torchvision_importable,
)
from medix_r1.vision.qwen_vl_processor import (
    IMAGE_PAD,
    VISION_END,
    VISION_START,
    VLImageConfig,
    config_for_model,
    expand_image_placeholders,
    image_token_counts,
    preprocess_images,
    smart_resize,
)

log = logging.getLogger("medix_r1.train")

IMAGE_KEYS = ("pixel_values", "image_grid_thw")


# ----------------------------------------------------------------------------- set-up

def data_base_dir(source: str) -> str | None:
    """Folder that relative image paths in records are resolved against: the data file's folder
    (or the data folder itself); None for bundled / hub data (images there are bytes or PIL)."""
    path = Path(source)
    if path.is_dir():
        return str(path)
    if path.is_file():
        return str(path.parent)
    return None


def setup_vision(records, model_dir, tokenizer, cfg, counters: dict, source: str | None = None):
    """``None`` for a text-only policy (after checking no record has images), else VisionPrompts.
    ``source``: where the records come from (relative image paths), data.train by default."""
    config = model_config(model_dir)
    check_model_accepts_images(config, records)  # images + text-only policy: error naming the record
    if not is_vision_model(config):
        return None
    if cfg.rollout.engine == "vllm" and not torchvision_importable():
        raise ValueError(
            f"rollout.engine=vllm with a vision-language policy ({config.model_type}) needs torchvision (vLLM's "
            "Qwen-VL input processor imports it) and torchvision cannot be imported here (no CPU build of it "
            "on this machine); use --set rollout.engine=hf (transformers generate), or run on a GPU machine "
            "with torchvision installed")
    return VisionPrompts(records, config, model_dir, tokenizer, cfg, counters, source)


def image_processor_for(model_dir, config, vcfg):
    """(VLImageConfig for the grid, processor to call): transformers' image processor of the model
    folder when it loads (vision.processor=auto|transformers), else the project's preprocessing."""
    grid_cfg = config_for_model(config, min_pixels=vcfg.min_pixels or None, max_pixels=vcfg.max_pixels or None)
    if vcfg.processor == "project":
        return grid_cfg, grid_cfg
    try:
        from transformers import AutoImageProcessor
        proc = AutoImageProcessor.from_pretrained(
            str(model_dir), size={"shortest_edge": grid_cfg.min_pixels, "longest_edge": grid_cfg.max_pixels},
            min_pixels=grid_cfg.min_pixels, max_pixels=grid_cfg.max_pixels)
        if int(getattr(proc, "patch_size", grid_cfg.patch_size)) != grid_cfg.patch_size or \
                int(getattr(proc, "merge_size", grid_cfg.merge_size)) != grid_cfg.merge_size:
            raise ValueError(f"its patch/merge sizes ({proc.patch_size}/{proc.merge_size}) differ from the model "
                             f"config's ({grid_cfg.patch_size}/{grid_cfg.merge_size})")
    except Exception as e:
        if vcfg.processor == "transformers":
            raise ValueError(f"vision.processor=transformers: cannot load the image processor of {model_dir} "
                             f"({type(e).__name__}: {e}); use vision.processor=project") from None
        log.info("vision: no transformers image processor for %s (%s); using the project's Qwen-VL "
                 "preprocessing", model_dir, type(e).__name__)
        return grid_cfg, grid_cfg
    log.info("vision: using transformers' %s", type(proc).__name__)
    return grid_cfg, proc


def resize_to_grid(image: Image.Image, cfg: VLImageConfig) -> Image.Image:
    """Resize (PIL bicubic) to the smart_resize target: every later processor keeps this size."""
    height, width = smart_resize(image.height, image.width, cfg.factor, cfg.min_pixels, cfg.max_pixels)
    return image if image.size == (width, height) else image.resize((width, height), Image.BICUBIC)


def build_vl_messages(problem: str, n_images: int, system_prompt: str | None = None, record_id="?") -> list[dict]:
    """Chat messages in the Qwen-VL layout: a user turn of {"type": "image"} / {"type": "text"} parts.

    Images go before the text, unless the problem carries ``<image>`` markers: then one image is
    put at each marker, and the number of markers must equal n_images (data/templates.py)."""
    content = content_with_images(problem, n_images, record_id)
    if isinstance(content, str):
        content = [{"type": "text", "text": content}]
    messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return messages + [{"role": "user", "content": content}]


def _preprocess(images, processor):
    """(pixel_values, image_grid_thw, merge_size) from our VLImageConfig or a transformers image processor."""
    if isinstance(processor, VLImageConfig):
        out = preprocess_images(images, processor)
        return out["pixel_values"], out["image_grid_thw"], processor.merge_size
    out = processor(images=images, return_tensors="pt")  # transformers Qwen-VL image processor (GPU hosts)
    return out["pixel_values"], out["image_grid_thw"], int(processor.merge_size)


# ----------------------------------------------------------------------------- per-step prompts

class VisionPrompts:
    """Prompt items (ids with expanded image placeholders + image tensors) for sampled records."""

    def __init__(self, records, config, model_dir, tokenizer, cfg, counters: dict, source: str | None = None):
        self.records, self.tokenizer, self.cfg, self.counters = records, tokenizer, cfg, counters
        self.vcfg = cfg.vision
        self.base_dir = data_base_dir(source or cfg.data.train)
        self.grid_cfg, self.processor = image_processor_for(model_dir, config, self.vcfg)
        self.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
        if self.image_token_id is None or self.image_token_id == getattr(tokenizer, "unk_token_id", None):
            raise ValueError(f"the tokenizer of {model_dir} has no {IMAGE_PAD} token: not a Qwen-VL tokenizer")
        if self.image_token_id != getattr(config, "image_token_id", self.image_token_id):
            raise ValueError(f"tokenizer {IMAGE_PAD} id {self.image_token_id} != model config image_token_id "
                             f"{config.image_token_id}: the tokenizer does not belong to {model_dir}")
        self.keep_pil = cfg.rollout.engine == "vllm"  # vLLM takes PIL images (multi_modal_data)
        self.bad = {int(i) for i in counters.get("bad_image_records", [])}
        self._sync_counters()
        self.max_images = max((len(r.get("images") or []) for r in records), default=0)
        if self.vcfg.check_files_at_start:
            self.check_files()

    # -- bad records
    def attach(self, counters: dict) -> None:
        """Keep the skip record in the trainer's (checkpointed) counters, merged with a resumed run's."""
        self.bad |= {int(i) for i in counters.get("bad_image_records", [])}
        self.counters = counters
        self._sync_counters()

    def _sync_counters(self) -> None:
        self.counters["bad_image_records"] = sorted(self.bad)
        self.counters["skipped_image_records"] = len(self.bad) - self.counters.get("filtered_overlong", 0)

    def _bad(self, index: int, err: Exception) -> None:
        # data.overlong=filter skips an overlong prompt whatever vision.on_bad_image says (the official filter)
        filtered = isinstance(err, OverlongPrompt) and self.cfg.data.overlong == "filter"
        if self.vcfg.on_bad_image == "fail" and not filtered:
            raise err
        if index not in self.bad:
            self.bad.add(index)
            if filtered:
                self.counters["filtered_overlong"] = self.counters.get("filtered_overlong", 0) + 1
            self._sync_counters()
            log.warning("skipping record (vision.on_bad_image=skip, %d skipped so far): %s", len(self.bad), err)

    def check_files(self) -> int:
        """Stat every image path once before training (no decoding): missing files fail or are skipped now."""
        missing = 0
        for i, record in enumerate(self.records):
            if i in self.bad:
                continue
            for k, ref in enumerate(record.get("images") or []):
                if isinstance(ref, (str, os.PathLike)) or (isinstance(ref, dict) and ref.get("bytes") is None):
                    try:
                        _image_bytes_or_path(ref, record.get("id", "?"), k, self.base_dir)
                    except ImageError as e:
                        missing += 1
                        self._bad(i, e)
                        break
        return missing

    # -- items
    def prepare(self, index: int) -> dict:
        """One prompt item; raises ValueError (ImageError for image problems) naming the record."""
        record, c = self.records[index], self.cfg
        rid = record.get("id", "?")
        check_prompt_chars(self.tokenizer, record, c.data)  # data.overlong_measure=chars: before any image decodes
        images = [resize_to_grid(img, self.grid_cfg)
                  for img in load_record_images(record, self.base_dir, self.vcfg.max_decode_pixels,
                                                self.vcfg.rgb_conversion)]
        ids = chat_token_ids(self.tokenizer, record_messages(record, c.data, len(images)))
        budget = c.data.max_prompt_tokens
        item = {"record_index": index, "pixel_values": None, "image_grid_thw": None}
        if images:
            pixel_values, grid, merge = _preprocess(images, self.processor)
            expanded = expand_image_placeholders(ids, self.image_token_id, image_token_counts(grid, merge), rid)
            if len(expanded) > budget:  # with its images a prompt is never cut: skipped, whatever data.overlong
                raise OverlongPrompt(f"record {rid!r}: the prompt with its {len(images)} image(s) is {len(expanded)} "
                                 f"tokens, over data.max_prompt_tokens ({budget}); raise data.max_prompt_tokens or "
                                 f"lower vision.max_pixels (now {self.grid_cfg.max_pixels})")
            item.update(pixel_values=pixel_values, image_grid_thw=grid)
            if self.keep_pil:
                item["images"] = images
        else:
            expanded = expand_image_placeholders(ids, self.image_token_id, [], rid)  # stray <|image_pad|>: error
            expanded = ids = fit_prompt(expanded, c.data, rid)  # text only: as the text path does
        item["input_ids"] = expanded   # what the policy sees (one pad per image token)
        item["engine_ids"] = ids       # one pad per image: vLLM expands it from the image itself
        return item

    def take(self, sampler, k: int) -> tuple[list[int], list[dict]]:
        """k record indices from ``sampler`` and their prompt items; bad records are replaced."""
        idx, items = [], []
        while len(idx) < k:
            if len(self.bad) >= len(self.records):
                raise ValueError(f"every one of the {len(self.records)} records has a bad image or prompt "
                                 f"(see the warnings above); fix the data")
            for i in sampler.take(k - len(idx)):
                if i in self.bad:
                    continue
                try:
                    item = self.prepare(i)
                except ValueError as e:  # ImageError, placeholder/marker mismatch, aspect ratio, too long
                    self._bad(i, e)
                    continue
                idx.append(i)
                items.append(item)
        self.last_image_prompts = sum(it["pixel_values"] is not None for it in items)
        return idx, items

    # -- model and engine
    def configure_policy(self, policy) -> None:
        n = freeze_vision_tower(policy, self.vcfg.freeze_tower)
        log.info("vision tower %s (%.1fM parameters)", "frozen" if self.vcfg.freeze_tower else "trained", n / 1e6)

    def suppress_ids(self) -> list[int]:
        """Vision tokens a response must not contain: a sampled <|image_pad|> would be taken for an
        image slot by the training forward (features/tokens mismatch), a <|vision_start|> would shift
        the multimodal rope positions."""
        ids = {self.image_token_id}
        for name in (VISION_START, VISION_END, "<|video_pad|>"):
            tid = self.tokenizer.convert_tokens_to_ids(name)
            if isinstance(tid, int) and tid != getattr(self.tokenizer, "unk_token_id", None):
                ids.add(tid)
        return sorted(ids)

    def vllm_engine_kwargs(self) -> dict:
        return {"limit_mm_per_prompt": {"image": max(1, self.max_images)}}

    def metrics(self) -> dict:
        return {"data/skipped_image_records": self.counters["skipped_image_records"],
                "data/filtered_overlong": self.counters.get("filtered_overlong", 0),
                "data/image_prompts": getattr(self, "last_image_prompts", 0)}  # of the last draw


# ----------------------------------------------------------------------------- engines

def split_prompt(prompt) -> tuple[list[int], dict | None]:
    """(token ids the policy sees, image inputs or None) for a text prompt (ids) or a VL item."""
    if isinstance(prompt, dict):
        images = {k: prompt[k] for k in IMAGE_KEYS if prompt.get(k) is not None}
        return list(prompt["input_ids"]), (images or None)
    return list(prompt), None


def vllm_request(prompt) -> dict:
    """The vLLM prompt for one text prompt (ids) or VL item: a ``TokensPrompt`` dict, with
    ``multi_modal_data={"image": [PIL, ...]}`` and one ``<|image_pad|>`` per image (vLLM's processor
    expands each to the image's token count; the images are already at their grid size)."""
    if not isinstance(prompt, dict):
        return {"prompt_token_ids": list(prompt)}
    request = {"prompt_token_ids": list(prompt["engine_ids"])}
    if prompt.get("pixel_values") is not None:
        if not prompt.get("images"):
            raise ValueError("a VL prompt for vLLM needs its PIL images (VisionPrompts keeps them when "
                             "rollout.engine=vllm)")
        request["multi_modal_data"] = {"image": list(prompt["images"])}
    return request


def check_vllm_prompt(engine_prompt_ids, prompt) -> None:
    """vLLM must expand the images to as many tokens as the trainer does (else log-probs mismatch)."""
    if not isinstance(prompt, dict) or engine_prompt_ids is None:
        return
    if len(engine_prompt_ids) != len(prompt["input_ids"]):
        raise RuntimeError(
            f"record index {prompt.get('record_index')}: vLLM expanded the prompt to {len(engine_prompt_ids)} tokens, "
            f"the trainer to {len(prompt['input_ids'])}: vLLM's image processor resized the images differently; "
            "set vision.min_pixels/max_pixels inside the bounds of the model's preprocessor_config.json")


# ----------------------------------------------------------------------------- training batches

def select_rows(batch: dict, rows) -> dict:
    """Rows of a training batch (slice or index tensor) with exactly those rows' image inputs.

    ``batch["images"]`` is a list (one entry per row: {"pixel_values", "image_grid_thw"} or None);
    the selection gets the concatenated ``pixel_values`` / ``image_grid_thw`` the model takes."""
    n = len(batch["images"])
    index = torch.arange(n)[rows] if isinstance(rows, slice) else torch.as_tensor(rows, dtype=torch.long).reshape(-1)
    out = {k: v[index] for k, v in batch.items() if isinstance(v, torch.Tensor)}
    picked = [batch["images"][i] for i in index.tolist()]
    out["images"] = picked
    present = [x for x in picked if x is not None]
    if present:
        out["pixel_values"] = torch.cat([x["pixel_values"] for x in present])
        out["image_grid_thw"] = torch.cat([x["image_grid_thw"] for x in present])
    return out
