"""Image loading/normalisation of MediX records: path/bytes/base64, modes -> RGB, errors, skip policy."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from medix_r1.vision.images import (
    ImageError,
    downscale_to_budget,
    load_image,
    load_record_images,
    to_rgb,
)


def png_bytes(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def test_relative_absolute_bytes_and_base64_give_the_same_pixels(tmp_path):
    img = Image.fromarray(np.arange(30 * 20 * 3, dtype=np.uint8).reshape(20, 30, 3))
    (tmp_path / "sub").mkdir()
    img.save(tmp_path / "sub" / "a.png")
    data = png_bytes(img)
    record = {"id": "r1", "images": ["sub/a.png", str(tmp_path / "sub" / "a.png"), data,
                                     {"bytes": base64.b64encode(data).decode()}, {"bytes": data},
                                     {"path": "sub/a.png"}]}
    loaded = load_record_images(record, base_dir=tmp_path)
    assert len(loaded) == 6
    for out in loaded:
        assert out.mode == "RGB" and out.size == (30, 20)
        np.testing.assert_array_equal(np.asarray(out), np.asarray(img))


def test_text_only_record_has_no_images():
    assert load_record_images({"id": "t", "images": []}) == []
    assert load_record_images({"id": "t"}) == []


def test_greyscale_palette_cmyk_become_rgb_with_expected_values():
    grey = Image.new("L", (4, 3), 77)
    assert np.asarray(to_rgb(grey)).tolist() == [[[77, 77, 77]] * 4] * 3
    pal = Image.new("RGB", (4, 4), (10, 200, 30)).quantize(colors=4)
    assert pal.mode == "P"
    assert tuple(np.asarray(to_rgb(pal))[0, 0]) == (10, 200, 30)
    cmyk = Image.new("CMYK", (2, 2), (0, 255, 255, 0))  # pure red in CMYK
    assert tuple(np.asarray(to_rgb(cmyk))[1, 1]) == (255, 0, 0)


def test_rgba_is_composited_on_white():
    rgba = Image.new("RGBA", (2, 1))
    rgba.putpixel((0, 0), (255, 0, 0, 255))   # opaque red stays red
    rgba.putpixel((1, 0), (0, 0, 255, 0))     # fully transparent -> white background
    out = np.asarray(to_rgb(rgba))
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[0, 1]) == (255, 255, 255)


def test_16bit_greyscale_is_stretched_to_8bit(tmp_path):
    arr = np.array([[0, 1000], [3000, 4000]], dtype=np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(arr).save(path)
    assert Image.open(path).mode.startswith("I")
    out = load_image(str(path))
    assert out.mode == "RGB"
    # linear map of [0, 4000] onto [0, 255]: 1000 -> 63.75 -> 64, 3000 -> 191.25 -> 191
    assert np.asarray(out)[:, :, 0].tolist() == [[0, 64], [191, 255]]


def test_huge_image_is_downscaled_under_the_budget_keeping_aspect(tmp_path):
    Image.new("RGB", (3000, 1000), (1, 2, 3)).save(tmp_path / "big.png")
    out = load_image("big.png", base_dir=tmp_path, max_pixels=300_000)
    assert out.width * out.height <= 300_000
    assert out.size == (948, 316)  # scale sqrt(0.1) = 0.3162..., floored per side
    assert downscale_to_budget(Image.new("RGB", (10, 10)), 100).size == (10, 10)


def test_missing_file_names_record_index_path_and_fix(tmp_path):
    with pytest.raises(ImageError) as err:
        load_record_images({"id": "rec-7", "images": ["nope/missing.png"]}, base_dir=tmp_path)
    msg = str(err.value)
    assert "rec-7" in msg and "image 0" in msg and "missing.png" in msg and "fix the path" in msg
    assert isinstance(err.value, ValueError)


def test_corrupt_and_truncated_files_raise_image_error(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"this is not an image")
    good = png_bytes(Image.new("RGB", (64, 64), (5, 5, 5)))
    (tmp_path / "cut.png").write_bytes(good[: len(good) // 2])
    for name in ("junk.png", "cut.png"):
        with pytest.raises(ImageError, match=r"record 'bad'.*cannot decode.*valid PNG/JPEG"):
            load_record_images({"id": "bad", "images": [name]}, base_dir=tmp_path)


def test_bad_entries_raise_clear_errors():
    with pytest.raises(ImageError, match="not valid base64"):
        load_image({"bytes": "%%%not base64%%%"}, record_id="b64")
    with pytest.raises(ImageError, match="needs a 'bytes' or 'path' key"):
        load_image({"url": "x"}, record_id="d")
    with pytest.raises(ImageError, match="expected a path, bytes"):
        load_image(12, record_id="n")
    with pytest.raises(ImageError, match="'images' must be a list"):
        load_record_images({"id": "s", "images": "a.png"})
    with pytest.raises(ValueError, match="max_pixels"):
        load_image(b"", max_pixels=0)


