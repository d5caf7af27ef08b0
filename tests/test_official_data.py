"""MBZUAI/medix-rl-data's schema, offline: a generated parquet with the official columns (problem,
solution, image: a list of images, possibly empty; some RGBA), read lazily and decoded to RGB."""
import io

import pytest
from PIL import Image

from medix_r1.config import load_config
from medix_r1.data.records import LazyImages, load_records
from medix_r1.data.sampling import PromptSampler
from medix_r1.testing.tiny_qwen_vl import build_tiny_qwen2_5_vl
from medix_r1.vision.images import ImageError, load_record_images
from medix_r1.vision.model import model_config
from medix_r1.vision.prompts import VisionPrompts


def png(mode, size=(40, 30), color=(200, 30, 30, 128)):
    img = Image.new("RGBA", size, color)
    img = img.convert(mode) if mode != "P" else img.convert("RGB").convert("P", palette=Image.ADAPTIVE)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def official_parquet(tmp_path_factory):
    """Rows in the official schema (Image features inside a list, no id column): text only, one RGB,
    two images (RGBA + palette), a corrupt image."""
    import datasets

    features = datasets.Features({"image": datasets.List(datasets.Image()), "problem": datasets.Value("string"),
                                  "solution": datasets.Value("string")})
    rows = {"image": [[], [{"bytes": png("RGB"), "path": None}],
                      [{"bytes": png("RGBA"), "path": None}, {"bytes": png("P"), "path": None}],
                      [{"bytes": b"\x89PNG\r\n\x1a\n truncated", "path": None}]],
            "problem": ["What is the first-line drug for anaphylaxis?", "What modality is this?",
                        "Compare the two images.", "What is shown?"],
            "solution": ["<OTHER> Epinephrine", "<X_RAY> Chest X-ray", "<CT_SCAN> Same lesion", "<MRI_SCAN> Brain"]}
    path = tmp_path_factory.mktemp("medix_rl") / "train.parquet"
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))
    return path


def test_official_parquet_loads_with_its_images_left_encoded(official_parquet):
    records, skipped = load_records(str(official_parquet))
    assert skipped == 0 and [len(r["images"]) for r in records] == [0, 1, 2, 1]
    assert [r["id"] for r in records] == ["train-0", "train-1", "train-2", "train-3"]  # no id column: row index
    assert all(isinstance(r["images"], LazyImages) and "image" not in r for r in records)
    first = records[2]["images"][0]
    assert set(first) == {"bytes", "path"} and first["bytes"].startswith(b"\x89PNG")  # still encoded
    assert records[2]["images"][1]["bytes"] != first["bytes"] and records[2]["images"][-1] == records[2]["images"][1]


def test_rgba_and_palette_images_decode_to_rgb_and_a_corrupt_one_names_its_record(official_parquet):
    records, _ = load_records(str(official_parquet))
    assert load_record_images(records[0]) == []
    rgba, palette = load_record_images(records[2])
    assert (rgba.mode, rgba.size, palette.mode) == ("RGB", (40, 30), "RGB")
    r, g, b = rgba.getpixel((0, 0))  # (200, 30, 30) at alpha 128 over white
    assert abs(r - 227) <= 2 and abs(g - 142) <= 2 and abs(b - 142) <= 2
    with pytest.raises(ImageError, match=r"record 'train-3', image 0.*cannot decode"):
        load_record_images(records[3])


def test_named_image_column_and_bad_columns_are_clear_errors(official_parquet, tmp_path):
    import datasets

    assert [len(r["images"]) for r in load_records(str(official_parquet), image_column="image")[0]] == [0, 1, 2, 1]
    with pytest.raises(ValueError, match=r"data.image_column 'scan' is not a column of the data"):
        load_records(str(official_parquet), image_column="scan")
    ints = tmp_path / "ints.parquet"
    datasets.Dataset.from_dict({"image": [[1, 2]], "problem": ["q"], "solution": ["<OTHER> a"]}).to_parquet(str(ints))
    with pytest.raises(ValueError, match=r"column 'image' holds list<item: int64>, not images"):
        load_records(str(ints))
    nosol = tmp_path / "nosol.parquet"
    datasets.Dataset.from_dict({"image": [[]], "problem": ["q"], "answer": ["a"]}).to_parquet(str(nosol))
    with pytest.raises(ValueError, match=r"no column\(s\) \['solution'\]"):
        load_records(str(nosol))


def test_official_records_become_vl_prompts_with_the_official_template(official_parquet, tmp_path):
    from transformers import AutoTokenizer

    tiny = build_tiny_qwen2_5_vl(tmp_path / "tiny_vl")
    cfg = load_config("cpu_smollm2", [f"model.policy={tiny}", f"data.train={official_parquet}",
                                      "rollout.engine=hf", "data.prompt_template=official", "data.image_column=image",
                                      f"vision.max_pixels={28 * 28 * 16}", "data.max_prompt_tokens=600",
                                      "rollout.max_model_len=1000"])
    records = load_records(cfg.data.train, image_column="image")[0]
    tok = AutoTokenizer.from_pretrained(tiny)
    vp = VisionPrompts(records, model_config(tiny), tiny, tok, cfg, {})
    two = vp.prepare(2)
    assert two["image_grid_thw"].shape[0] == 2 and two["pixel_values"] is not None
    text = tok.decode(two["engine_ids"])
    assert "Question: \n<|vision_start|><|image_pad|><|vision_end|><|vision_start|><|image_pad|><|vision_end|>" \
           "Compare the two images." in text
    assert cfg.data.system_prompt not in text  # no system turn of ours (Qwen's template adds its default one)
    assert vp.prepare(0)["pixel_values"] is None
    idx, items = vp.take(PromptSampler(4, 0), 4)
    assert 3 not in idx and vp.counters["skipped_image_records"] == 1  # the corrupt image's record is skipped
