"""Qwen-VL image preprocessing written in the project: smart_resize grids by hand, patch order vs a
slow loop, normalisation values, placeholder expansion, and equality with transformers' processors."""

import importlib.util

import numpy as np
import pytest
import torch
from PIL import Image

from medix_r1.vision.qwen_vl_processor import (
    CLIP_MEAN,
    CLIP_STD,
    QWEN2_5_VL,
    QWEN3_VL,
    VLImageConfig,
    config_for_model,
    expand_image_placeholders,
    image_token_counts,
    normalised_array,
    patchify,
    preprocess_images,
    smart_resize,
)


def random_image(h, w, seed=0):
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.mark.parametrize("hw, expected", [
    ((224, 224), (224, 224)),      # already multiples of 28, inside the range
    ((123, 301), (112, 308)),      # rounded per side: 4.39 -> 4, 10.75 -> 11
    ((20, 30), (56, 84)),          # 600 px < 56*56: beta = sqrt(3136/600) = 2.286, ceil(1.63)=2, ceil(2.45)=3
    ((2000, 3000), (812, 1204)),   # > 28*28*1280: beta = sqrt(6e6/1003520) = 2.445, floor(29.2)=29, floor(43.8)=43
    ((10, 2000), (28, 812)),       # aspect exactly 200 is allowed; height rounds to 0 so the area (0) is
    # below min: beta = sqrt(3136/20000) = 0.396, ceil(0.14)=1 -> 28, ceil(28.28)=29 -> 812
])
def test_smart_resize_qwen2_5_by_hand(hw, expected):
    h, w = smart_resize(*hw, factor=28, min_pixels=56 * 56, max_pixels=28 * 28 * 1280)
    assert (h, w) == expected
    assert h % 28 == 0 and w % 28 == 0 and 56 * 56 <= h * w <= 28 * 28 * 1280


def test_smart_resize_qwen3_by_hand():
    # factor 32, min 65536: beta = sqrt(65536/15000) = 2.090, ceil(6.53)=7 -> 224, ceil(9.80)=10 -> 320
    assert smart_resize(100, 150, 32, QWEN3_VL.min_pixels, QWEN3_VL.max_pixels) == (224, 320)


def test_smart_resize_rejects_extreme_aspect_and_empty_sides():
    with pytest.raises(ValueError, match="aspect ratio must be smaller than 200"):
        smart_resize(1, 201)
    with pytest.raises(ValueError, match="must be positive"):
        smart_resize(0, 10)


def test_grids_of_preprocessed_images_match_hand_values():
    out = preprocess_images([random_image(123, 301), random_image(20, 30, 1), random_image(2000, 3000, 2)])
    assert out["image_grid_thw"].tolist() == [[1, 8, 22], [1, 4, 6], [1, 58, 86]]
    assert out["image_grid_thw"].dtype == torch.long
    assert out["pixel_values"].shape == (8 * 22 + 4 * 6 + 58 * 86, 3 * 2 * 14 * 14)
    assert out["pixel_values"].dtype == torch.float32


def slow_patchify(chw, p, m, t):
    """Independent reference: walk merge groups row by row, then channel, time, patch pixels."""
    c, h, w = chw.shape
    gh, gw = h // p, w // p
    rows = []
    for bh in range(gh // m):
        for bw in range(gw // m):
            for mh in range(m):
                for mw in range(m):
                    y0, x0 = (bh * m + mh) * p, (bw * m + mw) * p
                    row = []
                    for ch in range(c):
                        for _ in range(t):  # the single frame is repeated T times
                            row.extend(chw[ch, y0:y0 + p, x0:x0 + p].reshape(-1).tolist())
                    rows.append(row)
    return np.array(rows, dtype=np.float32)


@pytest.mark.parametrize("cfg, hw", [
    (VLImageConfig(2, 2, 2, CLIP_MEAN, CLIP_STD, 1, 10 ** 6), (8, 12)),
    (VLImageConfig(3, 2, 3, CLIP_MEAN, CLIP_STD, 1, 10 ** 6), (6, 18)),
    (QWEN2_5_VL, (56, 84)),
])
def test_patch_order_matches_slow_loop(cfg, hw):
    chw = np.random.default_rng(3).standard_normal((3, *hw)).astype(np.float32)
    flat, grid = patchify(chw, cfg)
    assert grid == (1, hw[0] // cfg.patch_size, hw[1] // cfg.patch_size)
    np.testing.assert_array_equal(flat, slow_patchify(chw, cfg.patch_size, cfg.merge_size, cfg.temporal_patch_size))


def test_patchify_rejects_sizes_off_the_grid():
    with pytest.raises(ValueError, match="not a multiple of factor 28"):
        patchify(np.zeros((3, 30, 56), np.float32), QWEN2_5_VL)


def test_normalisation_values_for_a_solid_colour():
    img = Image.new("RGB", (56, 56), (255, 0, 128))
    arr = normalised_array(img, 56, 56, QWEN2_5_VL)
    expected = [(1.0 - CLIP_MEAN[0]) / CLIP_STD[0], (0.0 - CLIP_MEAN[1]) / CLIP_STD[1],
                (128 / 255 - CLIP_MEAN[2]) / CLIP_STD[2]]
    for ch in range(3):
        np.testing.assert_allclose(arr[ch], expected[ch], rtol=1e-6)
    assert abs(expected[0] - 1.9303) < 1e-4   # (1 - 0.48145) / 0.26863
    # Qwen3-VL mean/std 0.5 maps 0..255 onto -1..1
    arr3 = normalised_array(img, 64, 64, QWEN3_VL)
    np.testing.assert_allclose(arr3[:, 0, 0], [1.0, -1.0, 128 / 255 * 2 - 1], atol=1e-6)
    # every row of pixel_values holds T identical copies of the frame's patch
    pv = preprocess_images([img], QWEN2_5_VL)["pixel_values"].reshape(16, 3, 2, 14 * 14)
    assert torch.equal(pv[:, :, 0], pv[:, :, 1])


def test_placeholder_expansion_counts_and_mismatch_errors():
    grid = torch.tensor([[1, 8, 22], [1, 4, 6]])
    counts = image_token_counts(grid, merge_size=2)
    assert counts == [44, 6]
    ids = [1, 2, 9, 3, 9, 4]
    out = expand_image_placeholders(ids, 9, counts, record_id="r")
    assert len(out) == 4 + 50 and out[:2] == [1, 2] and out[-1] == 4
    assert out[2:46] == [9] * 44 and out[46] == 3 and out[47:53] == [9] * 6
    with pytest.raises(ValueError, match=r"record 'r9'.*1 image placeholder.*2 image"):
        expand_image_placeholders([1, 9, 2], 9, counts, record_id="r9")
    with pytest.raises(ValueError, match=r"record 'r0'.*2 image placeholder.*0 image"):
        expand_image_placeholders(ids, 9, [], record_id="r0")


def test_config_for_model_reads_sizes_and_rejects_text_models():
    from transformers import LlamaConfig, Qwen2_5_VLConfig

    cfg = config_for_model(Qwen2_5_VLConfig(vision_config={"patch_size": 14, "spatial_merge_size": 2}),
                           max_pixels=28 * 28 * 64)
    assert (cfg.patch_size, cfg.merge_size, cfg.max_pixels, cfg.image_mean) == (14, 2, 28 * 28 * 64, CLIP_MEAN)
    with pytest.raises(ValueError, match="no Qwen-VL image preset"):
        config_for_model(LlamaConfig())
    with pytest.raises(ValueError, match="min_pixels"):
        VLImageConfig(14, 2, 2, CLIP_MEAN, CLIP_STD, 100, 10)
    with pytest.raises(TypeError, match="PIL image"):
        preprocess_images([np.zeros((4, 4, 3))])


def test_equal_to_transformers_pil_processor_qwen2_5_and_qwen3():
    """transformers' PIL-backend Qwen2VLImageProcessorPil needs no torchvision: compare exactly."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    images = [random_image(123, 301), random_image(20, 30, 1), random_image(700, 500, 2).convert("L").convert("RGB")]
    ref = Qwen2VLImageProcessorPil()(images=images, return_tensors="np")
    ours = preprocess_images(images, QWEN2_5_VL)
    np.testing.assert_array_equal(ours["image_grid_thw"].numpy(), ref["image_grid_thw"])
    np.testing.assert_allclose(ours["pixel_values"].numpy(), ref["pixel_values"], atol=1e-5, rtol=0)

    ref3 = Qwen2VLImageProcessorPil(patch_size=16, image_mean=[0.5] * 3, image_std=[0.5] * 3,
                                    size={"shortest_edge": QWEN3_VL.min_pixels, "longest_edge": QWEN3_VL.max_pixels})(
        images=images, return_tensors="np")
    ours3 = preprocess_images(images, QWEN3_VL)
    np.testing.assert_array_equal(ours3["image_grid_thw"].numpy(), ref3["image_grid_thw"])
    np.testing.assert_allclose(ours3["pixel_values"].numpy(), ref3["pixel_values"], atol=1e-5, rtol=0)


def _torchvision_importable():
    if importlib.util.find_spec("torchvision") is None:
        return False
    try:
        import torchvision  # noqa: F401
        return True
    except Exception:  # the PyPI torchvision is a CUDA build that fails to import against the CPU torch
        return False


@pytest.mark.skipif(not _torchvision_importable(),
                    reason="torchvision cannot be imported on this CPU machine (no CPU torchvision build), so "
                           "transformers' default torchvision-backed Qwen2VLImageProcessor does not load")
def test_close_to_transformers_torchvision_processor():
    """The torchvision backend resizes with tensor bicubic (antialiased), not PIL: grids equal, values close."""
    from transformers.models.qwen2_vl.image_processing_qwen2_vl import Qwen2VLImageProcessor

    images = [random_image(123, 301), random_image(224, 224, 1)]
    ref = Qwen2VLImageProcessor()(images=images, return_tensors="pt")
    ours = preprocess_images(images, QWEN2_5_VL)
    assert torch.equal(ours["image_grid_thw"], ref["image_grid_thw"])
    # 224x224 needs no resize: identical up to float rounding
    n0 = 8 * 22
    torch.testing.assert_close(ours["pixel_values"][n0:], ref["pixel_values"][n0:], atol=1e-5, rtol=0)
    assert (ours["pixel_values"][:n0] - ref["pixel_values"][:n0]).abs().mean() < 0.05
