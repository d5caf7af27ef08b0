"""Lazy loading and validation of the images of MediX-R1 records.

A record's ``images`` list holds, per image, one of:
  - a path (relative to the folder of the data file, or absolute),
  - raw ``bytes`` of an encoded image,
  - a dict ``{"bytes": <base64 str or bytes>}`` (the layout HF datasets export), or ``{"path": ...}``,
  - a PIL image (what ``datasets`` yields for an ``Image`` column).
For Parquet / hub data the list is a :class:`~medix_r1.data.records.LazyImages`: the encoded images
stay in the memory-mapped dataset until a record is sampled.

Images are opened only when asked for (records stay small in memory) and made 8-bit RGB by one of
:data:`RGB_CONVERSIONS` (``vision.rgb_conversion``): ``project`` (:func:`to_rgb`: alpha composited
on white, palettes through their transparency, 16-bit greyscale stretched to 0..255) or
``official`` (:func:`pil_rgb`: PIL's ``convert("RGB")``, what the official ``process_image`` calls:
alpha dropped, 16-bit values above 255 clipped); images above a pixel budget are downscaled
keeping their aspect ratio.
Every failure is an ``ImageError`` that names the record id, the image and the fix.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import os
import warnings

import numpy as np
from PIL import Image

from medix_r1.data.records import LazyImages

# A generous ceiling: anything above is downscaled before the model processor sees it (the model
# processor then resizes to its own min/max pixels). 4096 x 4096 keeps decode memory < 64 MB.
DEFAULT_MAX_DECODE_PIXELS = 4096 * 4096


class ImageError(ValueError):
    """An image of a record cannot be used; the message names the record, the image and the fix."""


def _where(record_id, index, ref) -> str:
    shown = ref if isinstance(ref, str) else f"<{type(ref).__name__}>"
    return f"record {record_id!r}, image {index} ({shown})"


def _image_bytes_or_path(ref, record_id, index, base_dir):
    """Return ("path", abs_path) or ("bytes", data) for one entry of a record's ``images``."""
    if isinstance(ref, (bytes, bytearray)):
        return "bytes", bytes(ref)
    if isinstance(ref, dict):
        if ref.get("bytes") is not None:
            data = ref["bytes"]
            if isinstance(data, str):
                try:
                    data = base64.b64decode(data, validate=True)
                except (binascii.Error, ValueError) as exc:
                    raise ImageError(
                        f"{_where(record_id, index, ref)}: 'bytes' is not valid base64 ({exc}); "
                        "store the encoded image file base64-encoded, or as a path"
                    ) from None
            if not isinstance(data, (bytes, bytearray)):
                raise ImageError(f"{_where(record_id, index, ref)}: 'bytes' must be bytes or a base64 string")
            return "bytes", bytes(data)
        if ref.get("path"):
            ref = ref["path"]
        else:
            raise ImageError(
                f"{_where(record_id, index, ref)}: a dict image needs a 'bytes' or 'path' key, got keys {sorted(ref)}"
            )
    if isinstance(ref, (str, os.PathLike)):
        path = os.fspath(ref)
        if not os.path.isabs(path):
            path = os.path.join(base_dir or ".", path)
        if not os.path.isfile(path):
            raise ImageError(
                f"{_where(record_id, index, os.fspath(ref))}: file not found at {path!r}; paths are relative "
                "to the folder of the data file (or absolute) - fix the path or drop the image from the record"
            )
        return "path", path
    raise ImageError(
        f"{_where(record_id, index, ref)}: expected a path, bytes or {{'bytes': base64}}, got {type(ref).__name__}"
    )


def to_rgb(img: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (why: the Qwen-VL processors expect 3 channels of 0..255)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # 16/32-bit greyscale: stretch the actual value range to 0..255 (a plain convert("L") clips).
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        scaled = np.zeros_like(arr) if hi <= lo else (arr - lo) * (255.0 / (hi - lo))
        return Image.fromarray(np.round(scaled).astype(np.uint8), mode="L").convert("RGB")
    if mode == "P":
        img = img.convert("RGBA")  # palettes may carry transparency
        mode = "RGBA"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def pil_rgb(img: Image.Image) -> Image.Image:
    """PIL's own conversion, as the official ``process_image`` (training/verl/utils/dataset.py,
    ``image.convert("RGB")`` for any other mode): the colour under a transparent pixel is kept,
    a palette's transparency is ignored, 16-bit and 32-bit greyscale clip at 255."""
    return img if img.mode == "RGB" else img.convert("RGB")


# vision.rgb_conversion -> the function making an image 8-bit RGB
RGB_CONVERSIONS = {"project": to_rgb, "official": pil_rgb}


def downscale_to_budget(img: Image.Image, max_pixels: int) -> Image.Image:
    """Shrink ``img`` (aspect kept, bicubic) so that width * height <= max_pixels."""
    w, h = img.size
    if w * h <= max_pixels:
        return img
    scale = math.sqrt(max_pixels / (w * h))
    new_w, new_h = max(1, math.floor(w * scale)), max(1, math.floor(h * scale))
    return img.resize((new_w, new_h), Image.BICUBIC)


def load_image(ref, *, record_id="?", index=0, base_dir=None,
               max_pixels: int = DEFAULT_MAX_DECODE_PIXELS, conversion: str = "project") -> Image.Image:
    """Open one image entry of a record and return it as RGB (``conversion``, a name in
    :data:`RGB_CONVERSIONS`) under ``max_pixels``."""
    if not isinstance(max_pixels, int) or max_pixels <= 0:
        raise ValueError(f"max_pixels must be a positive int, got {max_pixels!r}")
    if conversion not in RGB_CONVERSIONS:
        raise ValueError(f"vision.rgb_conversion must be one of {list(RGB_CONVERSIONS)}, got {conversion!r}")
    convert = RGB_CONVERSIONS[conversion]
    if isinstance(ref, Image.Image):  # already decoded (datasets' Image feature)
        if ref.width < 1 or ref.height < 1:
            raise ImageError(f"{_where(record_id, index, ref)}: image has zero size {ref.size}")
        return downscale_to_budget(convert(ref), max_pixels)
    kind, value = _image_bytes_or_path(ref, record_id, index, base_dir)
    source = io.BytesIO(value) if kind == "bytes" else value
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(source) as img:
                img.load()  # forces a full decode: truncated files fail here, not later
                out = img.copy()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as exc:
        raise ImageError(
            f"{_where(record_id, index, value if kind == 'path' else ref)}: cannot decode the image "
            f"({type(exc).__name__}: {exc}); replace the file with a valid PNG/JPEG or drop it from the record"
        ) from None
    if out.width < 1 or out.height < 1:
        raise ImageError(f"{_where(record_id, index, ref)}: image has zero size {out.size}")
    return downscale_to_budget(convert(out), max_pixels)


def load_record_images(record: dict, base_dir=None, max_pixels: int = DEFAULT_MAX_DECODE_PIXELS,
                       conversion: str = "project") -> list[Image.Image]:
    """All images of a record as RGB PIL images ([] for a text-only record)."""
    if not isinstance(record, dict):
        raise TypeError(f"record must be a dict, got {type(record).__name__}")
    record_id = record.get("id", "?")
    images = record.get("images") or []
    if not isinstance(images, (list, tuple, LazyImages)):
        raise ImageError(f"record {record_id!r}: 'images' must be a list, got {type(images).__name__}")
    return [load_image(ref, record_id=record_id, index=i, base_dir=base_dir, max_pixels=max_pixels,
                       conversion=conversion) for i, ref in enumerate(images)]
