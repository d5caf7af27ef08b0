"""Qwen2-VL / Qwen2.5-VL / Qwen3-VL image preprocessing, written from the published algorithm.

Why it lives here: transformers' Qwen-VL image processors need torchvision for their default
(fast) backend, and this CPU machine has none. The steps follow the transformers processor:

1. ``smart_resize``: each side to a multiple of ``factor = patch_size * merge_size``, area kept
   inside [min_pixels, max_pixels], aspect ratio kept as closely as possible;
2. resize with PIL bicubic, rescale by 1/255, normalise with the model's mean/std;
3. repeat the single frame ``temporal_patch_size`` times and cut it into patches ordered so that
   the ``merge_size x merge_size`` neighbours the vision merger fuses are consecutive rows.

Output per image list: ``pixel_values`` [sum(t*h*w), C*T*patch*patch] float32 and
``image_grid_thw`` [n_images, 3] int64 - the inputs ``Qwen2_5_VLForConditionalGeneration`` takes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGE_PAD = "<|image_pad|>"
VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"


@dataclass(frozen=True)
class VLImageConfig:
    """Preprocessing constants of one Qwen-VL family."""
    patch_size: int
    merge_size: int
    temporal_patch_size: int
    image_mean: tuple
    image_std: tuple
    min_pixels: int
    max_pixels: int

    @property
    def factor(self) -> int:
        return self.patch_size * self.merge_size

    def __post_init__(self):
        for name in ("patch_size", "merge_size", "temporal_patch_size", "min_pixels", "max_pixels"):
            value = getattr(self, name)
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"VLImageConfig.{name} must be a positive int, got {value!r}")
        if self.min_pixels > self.max_pixels:
            raise ValueError(f"min_pixels ({self.min_pixels}) must be <= max_pixels ({self.max_pixels})")
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise ValueError("image_mean and image_std need 3 values (RGB)")


# max_pixels 28*28*1280 (1280 visual tokens) is the usual training cap for Qwen2/2.5-VL.
QWEN2_VL = VLImageConfig(14, 2, 2, CLIP_MEAN, CLIP_STD, 56 * 56, 28 * 28 * 1280)
QWEN2_5_VL = QWEN2_VL
# Qwen3-VL: 16-pixel patches, mean/std 0.5, min_pixels 65536 as in its published preprocessor
# config; max_pixels: the same 1280-token training cap in 32-pixel merged cells.
QWEN3_VL = VLImageConfig(16, 2, 2, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 65536, 32 * 32 * 1280)


def config_for_model(model_or_config, min_pixels: int | None = None,
                     max_pixels: int | None = None) -> VLImageConfig:
    """The preset matching a model / config (by model_type), with patch/merge sizes read from it."""
    cfg = getattr(model_or_config, "config", model_or_config)
    model_type = getattr(cfg, "model_type", None)
    if model_type in ("qwen2_vl", "qwen2_5_vl"):
        base = QWEN2_VL
    elif model_type in ("qwen3_vl", "qwen3_vl_moe"):
        base = QWEN3_VL
    else:
        raise ValueError(f"no Qwen-VL image preset for model_type {model_type!r}; "
                         "expected qwen2_vl, qwen2_5_vl, qwen3_vl or qwen3_vl_moe")
    vision = getattr(cfg, "vision_config", None)
    return VLImageConfig(
        patch_size=int(getattr(vision, "patch_size", base.patch_size)),
        merge_size=int(getattr(vision, "spatial_merge_size", base.merge_size)),
        temporal_patch_size=int(getattr(vision, "temporal_patch_size", base.temporal_patch_size)),
        image_mean=base.image_mean, image_std=base.image_std,
        min_pixels=base.min_pixels if min_pixels is None else min_pixels,
        max_pixels=base.max_pixels if max_pixels is None else max_pixels,
    )


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56,
                 max_pixels: int = 28 * 28 * 1280) -> tuple[int, int]:
    """Target (height, width): multiples of ``factor``, area in [min_pixels, max_pixels].

    Each side is rounded to the nearest multiple of factor; if the area is then too large both
    sides are scaled by the same beta and floored, if too small scaled up and ceiled.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got height={height}, width={width}")
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"absolute aspect ratio must be smaller than 200, got "
                         f"{max(height, width) / min(height, width):.1f} for {height}x{width}; crop or pad the image")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def normalised_array(image: Image.Image, height: int, width: int, cfg: VLImageConfig) -> np.ndarray:
    """Resize (PIL bicubic) to height x width, rescale 1/255, normalise: float32 [C, H, W]."""
    if image.mode != "RGB":
        image = image.convert("RGB")
    if image.size != (width, height):
        image = image.resize((width, height), Image.BICUBIC)
    arr = np.asarray(image, dtype=np.float32) * np.float32(1 / 255)
    mean = np.asarray(cfg.image_mean, dtype=np.float32)
    std = np.asarray(cfg.image_std, dtype=np.float32)
    arr = (arr - mean) / std
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def patchify(chw: np.ndarray, cfg: VLImageConfig) -> tuple[np.ndarray, tuple[int, int, int]]:
    """[C, H, W] -> ([grid_t*grid_h*grid_w, C*T*p*p], (grid_t, grid_h, grid_w)).

    The frame is repeated T = temporal_patch_size times, then ordered
    (grid_t, grid_h/m, grid_w/m, m, m, C, T, p, p) so each m x m merge group is contiguous.
    """
    channels, height, width = chw.shape
    p, m, t = cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size
    if height % cfg.factor or width % cfg.factor:
        raise ValueError(f"image {height}x{width} is not a multiple of factor {cfg.factor}; call smart_resize first")
    frames = np.repeat(chw[None], t, axis=0)  # [T, C, H, W]
    grid_t, grid_h, grid_w = frames.shape[0] // t, height // p, width // p
    x = frames.reshape(grid_t, t, channels, grid_h // m, m, p, grid_w // m, m, p)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(grid_t * grid_h * grid_w, channels * t * p * p), (grid_t, grid_h, grid_w)


def preprocess_images(images, cfg: VLImageConfig = QWEN2_5_VL) -> dict:
    """PIL images -> {"pixel_values": float32 [N, C*T*p*p], "image_grid_thw": int64 [n, 3]}."""
    if not isinstance(cfg, VLImageConfig):
        raise TypeError(f"cfg must be a VLImageConfig, got {type(cfg).__name__}")
    patches, grids = [], []
    for i, image in enumerate(images):
        if not isinstance(image, Image.Image):
            raise TypeError(f"images[{i}] must be a PIL image, got {type(image).__name__}")
        height, width = smart_resize(image.height, image.width, cfg.factor, cfg.min_pixels, cfg.max_pixels)
        flat, grid = patchify(normalised_array(image, height, width, cfg), cfg)
        patches.append(flat)
        grids.append(grid)
    if not patches:
        raise ValueError("preprocess_images needs at least one image")
    return {"pixel_values": torch.from_numpy(np.concatenate(patches, axis=0)),
            "image_grid_thw": torch.tensor(grids, dtype=torch.long)}


def image_token_counts(image_grid_thw, merge_size: int) -> list[int]:
    """Number of <|image_pad|> tokens each image occupies: t*h*w / merge_size^2."""
    grid = torch.as_tensor(image_grid_thw)
    return [int(n) // (merge_size * merge_size) for n in grid.prod(dim=-1).tolist()]


def expand_image_placeholders(input_ids: list[int], image_token_id: int, token_counts: list[int],
                              record_id="?") -> list[int]:
    """Replace the k-th single ``image_token_id`` by ``token_counts[k]`` copies of it.

    Raises ValueError naming the record when the number of placeholders differs from the
    number of images.
    """
    n_placeholders = sum(1 for tok in input_ids if tok == image_token_id)
    if n_placeholders != len(token_counts):
        raise ValueError(
            f"record {record_id!r}: the prompt has {n_placeholders} image placeholder(s) ({IMAGE_PAD}) but "
            f"{len(token_counts)} image(s); put exactly one placeholder per image in the problem text or "
            "let build_vl_messages add them")
    out, k = [], 0
    for tok in input_ids:
        if tok == image_token_id:
            out.extend([image_token_id] * token_counts[k])
            k += 1
        else:
            out.append(tok)
    return out
