"""Tiny Qwen2.5-VL + offline tokenizer, synthetic shape QA, and the trainer's VL input path:
VisionPrompts.prepare -> hf rollouts with images -> make_batch -> forward -> fused GRPO loss -> step."""

import json
import os

import pytest
import torch
from PIL import Image

import medix_kernels
from medix_r1.config import load_config
from medix_r1.data.sampling import PromptSampler
from medix_r1.rollout import HfRollout
from medix_r1.testing.synthetic import SHAPES, draw_shape, generate_synthetic_set
from medix_r1.testing.tiny_qwen_vl import MARKUP_TOKENS, build_tiny_qwen2_5_vl, load_tiny_qwen2_5_vl
from medix_r1.train.batch import make_batch, slice_batch
from medix_r1.vision.images import load_record_images
from medix_r1.vision.model import check_model_accepts_images, freeze_vision_tower, is_vision_model, vision_parameters
from medix_r1.vision.prompts import VisionPrompts, build_vl_messages
from medix_r1.vision.qwen_vl_processor import image_token_counts

SYSTEM = "You are a medical assistant. First name the image modality tag, then think, then answer."


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny_vl"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shapes")
    path = generate_synthetic_set(folder, n_image=10, n_text=4, seed=1)
    return folder, [json.loads(line) for line in open(path)]


def prompts_for(tiny_dir, folder, records, *more):
    """The trainer's VisionPrompts over ``records`` (images at most 16 merged tokens: fast on a CPU)."""
    from transformers import AutoConfig, AutoTokenizer

    cfg = load_config("cpu_smollm2", [f"model.policy={tiny_dir}", f"data.train={folder / 'records.jsonl'}",
                                      "rollout.engine=hf", "rollout.n=2", "rollout.max_tokens=6",
                                      f"data.system_prompt={SYSTEM}", f"vision.max_pixels={28 * 28 * 16}", *more])
    return VisionPrompts(records, AutoConfig.from_pretrained(tiny_dir), tiny_dir,
                         AutoTokenizer.from_pretrained(tiny_dir), cfg, {})


def test_synthetic_set_records_and_images(data):
    folder, records = data
    assert len(records) == 14
    image_recs = [r for r in records if r["images"]]
    assert len(image_recs) == 10 and sum(len(r["images"]) == 2 for r in records) == 2
    modes = set()
    for r in records:
        assert set(r) == {"id", "images", "source", "problem", "solution"}
        assert r["solution"].startswith("<OTHER> ")
        for rel in r["images"]:
            assert not os.path.isabs(rel)
            modes.add(Image.open(folder / rel).mode)
        if r["images"] and "shape" in r["problem"]:
            assert r["solution"].split()[1] in SHAPES
    assert {"RGB", "L", "RGBA", "P"} <= modes
    for r in image_recs:
        assert all(img.mode == "RGB" for img in load_record_images(r, folder))


def test_draw_shape_pixels():
    img = draw_shape("square", "red", (60, 40))
    assert img.getpixel((30, 20)) == (220, 30, 30) and img.getpixel((1, 1)) == (245, 245, 245)
    tri = draw_shape("triangle", "blue", (100, 100))
    assert tri.getpixel((50, 80)) == (40, 70, 220) and tri.getpixel((20, 20)) == (245, 245, 245)
    with pytest.raises(ValueError, match="shape must be one of"):
        draw_shape("hexagon", "red", (10, 10))


def test_tiny_checkpoint_loads_like_a_real_one(tiny_dir):
    from transformers import AutoConfig, AutoTokenizer

    config = AutoConfig.from_pretrained(tiny_dir)
    assert config.model_type == "qwen2_5_vl" and is_vision_model(config)
    text = config.text_config
    assert (text.hidden_size, text.num_attention_heads, text.num_hidden_layers) == (128, 2, 2)
    assert sum(text.rope_parameters["mrope_section"]) == 128 // 2 // 2
    assert config.vision_config.depth == 2 and config.vision_config.out_hidden_size == 128
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    assert config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert config.text_config.eos_token_id == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    response = "<OTHER> <thinking> I see a red circle. </thinking> <answer> circle </answer>"
    ids = tok(response, add_special_tokens=False)["input_ids"]
    for t in ("<OTHER>", "<thinking>", "</answer>"):
        assert tok.convert_tokens_to_ids(t) in ids  # markup is one token each
    assert tok.decode(ids, skip_special_tokens=True) == response  # byte-level: exact round trip
    assert all(len(tok(t, add_special_tokens=False)["input_ids"]) == 1 for t in MARKUP_TOKENS)
    text_out = tok.apply_chat_template(build_vl_messages("What shape?", 1, "sys"), tokenize=False,
                                       add_generation_prompt=True)
    assert text_out == ("<|im_start|>system\nsys<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|>"
                        "<|vision_end|>What shape?<|im_end|>\n<|im_start|>assistant\n")


def test_build_vl_messages_places_images():
    msgs = build_vl_messages("Compare <image> with <image> please", 2, None, "m")
    assert msgs == [{"role": "user", "content": [
        {"type": "text", "text": "Compare "}, {"type": "image"}, {"type": "text", "text": " with "},
        {"type": "image"}, {"type": "text", "text": " please"}]}]
    plain = build_vl_messages("Q?", 2, "S")
    assert plain[0] == {"role": "system", "content": "S"}
    assert plain[1]["content"] == [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "Q?"}]
    with pytest.raises(ValueError, match=r"record 'x'.*1 <image> marker.*2 image"):
        build_vl_messages("look <image>", 2, None, "x")


def test_text_only_model_rejects_image_records():
    from transformers import LlamaConfig

    text_cfg = LlamaConfig(num_hidden_layers=1, hidden_size=8, intermediate_size=8, num_attention_heads=1)
    assert not is_vision_model(text_cfg)
    check_model_accepts_images(text_cfg, [{"id": "t", "images": []}])  # text-only data is fine
    with pytest.raises(ValueError, match=r"record 'img-3' has 1 image.*text-only model.*vision-language"):
        check_model_accepts_images(text_cfg, [{"id": "t", "images": []}, {"id": "img-3", "images": ["a.png"]}])


def test_prepare_expands_placeholders_per_image_and_handles_bad_records(tiny_dir, data):
    model, tok = load_tiny_qwen2_5_vl(tiny_dir)
    folder, records = data
    vp = prompts_for(tiny_dir, folder, records)
    pad = model.config.image_token_id
    for i, record in enumerate(records):
        item = vp.prepare(i)
        n_img, n_pad = len(record["images"]), item["input_ids"].count(pad)
        if n_img:
            grid = item["image_grid_thw"]
            assert grid.shape == (n_img, 3)
            assert n_pad == sum(image_token_counts(grid, 2)) == int(grid.prod(-1).sum()) // 4
            assert item["pixel_values"].shape == (int(grid.prod(-1).sum()), 3 * 2 * 14 * 14)
            assert item["input_ids"].count(tok.convert_tokens_to_ids("<|vision_start|>")) == n_img
            assert item["engine_ids"].count(pad) == n_img  # vLLM expands one placeholder per image itself
        else:
            assert n_pad == 0 and item["pixel_values"] is None and item["image_grid_thw"] is None
    # a missing image: the error names the record; with on_bad_image=skip the record is replaced and counted
    bad = dict(records[0], id="broken", images=["images/none.png"])
    failing = prompts_for(tiny_dir, folder, [bad] + records[:3], "vision.on_bad_image=fail",
                          "vision.check_files_at_start=false")
    with pytest.raises(ValueError, match="record 'broken'"):
        failing.prepare(0)
    skipping = prompts_for(tiny_dir, folder, [bad] + records[:3], "vision.check_files_at_start=false")
    idx, _ = skipping.take(PromptSampler(4, 0), 3)
    assert sorted(idx) == [1, 2, 3] and skipping.counters["skipped_image_records"] == 1
    # more images than <image> markers in the problem
    two = next(r for r in records if len(r["images"]) == 2)
    marked = prompts_for(tiny_dir, folder, [dict(two, problem="See <image>.")], "vision.on_bad_image=fail")
    with pytest.raises(ValueError, match="1 <image> marker"):
        marked.prepare(0)


def _inputs(item):
    x = torch.tensor([item["input_ids"]])
    extra = {k: item[k] for k in ("pixel_values", "image_grid_thw") if item[k] is not None}
    return {"input_ids": x, "attention_mask": torch.ones_like(x), **extra}


def test_image_content_changes_the_logits(tiny_dir, tmp_path):
    model, _ = load_tiny_qwen2_5_vl(tiny_dir)
    records = [{"id": colour, "images": [_png(draw_shape("circle", colour, (56, 56)))], "problem": "What shape?",
                "solution": "<OTHER> circle"} for colour in ("red", "blue")]
    vp = prompts_for(tiny_dir, tmp_path, records)
    with torch.no_grad():
        out = [model(**_inputs(vp.prepare(i))).logits[0, -1] for i in range(2)]
    assert torch.isfinite(out[0]).all()
    assert (out[0] - out[1]).abs().max() > 1e-4  # the vision tower feeds the language model


def _png(img):
    import io
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


@pytest.mark.parametrize("frozen", [False, True])
def test_mixed_batch_rollout_batch_loss_step(tiny_dir, data, frozen):
    model, tok = load_tiny_qwen2_5_vl(tiny_dir)
    folder, records = data
    picked = [next(i for i, r in enumerate(records) if len(r["images"]) == k) for k in (2, 1, 0)]
    vp = prompts_for(tiny_dir, folder, records)
    items = [vp.prepare(i) for i in picked]
    r = HfRollout(model, tok, vp.cfg.rollout).generate(items, step=0, seed=0)
    assert len(r) == 6 and r.group == [0, 0, 1, 1, 2, 2] and all(len(x) >= 1 for x in r.response_ids)
    batch = slice_batch(make_batch(r.prompt_ids, r.response_ids, tok.pad_token_id, r.images), slice(0, 6))
    assert batch["image_grid_thw"].shape == (6, 3)  # two rows x two images, two rows x one image
    assert batch["pixel_values"].shape[0] == int(batch["image_grid_thw"].prod(-1).sum())
    for b, (p, resp) in enumerate(zip(r.prompt_ids, r.response_ids)):  # right padding, prompt then response
        assert batch["input_ids"][b, :len(p)].tolist() == p == items[b // 2]["input_ids"]
        assert batch["input_ids"][b, len(p):len(p) + len(resp)].tolist() == resp == batch["ids"][b, :len(resp)].tolist()

    freeze_vision_tower(model, frozen)
    model.train()
    vision_before = [p.detach().clone() for p in vision_parameters(model)]
    head_before = model.lm_head.weight.detach().clone()
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"],
                output_hidden_states=True, use_cache=False)
    hidden = out.hidden_states[-1]
    torch.testing.assert_close(model.lm_head(hidden), out.logits)  # last hidden state is post-norm
    gathered = hidden.gather(1, batch["pred_pos"].unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))
    advantages = torch.tensor([1.0, -1.0, 0.5, -0.5, 1.0, -1.0])
    loss, _ = medix_kernels.fused_linear_grpo_loss(gathered, model.lm_head.weight, batch["ids"], batch["mask"],
                                                   advantages)
    assert torch.isfinite(loss)
    loss.backward()
    torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3).step()
    changed = [not torch.equal(a, p) for a, p in zip(vision_before, vision_parameters(model))]
    assert not torch.equal(head_before, model.lm_head.weight)
    if frozen:
        assert not any(changed) and all(p.grad is None for p in vision_parameters(model))
    else:
        assert sum(changed) > len(changed) // 2  # gradients reach the vision tower through the merger


def test_micro_batch_slices_carry_their_own_images(tiny_dir, data):
    model, tok = load_tiny_qwen2_5_vl(tiny_dir)
    folder, records = data
    picked = [next(i for i, r in enumerate(records) if not r["images"]),
              next(i for i, r in enumerate(records) if len(r["images"]) == 2)] + \
        [i for i, r in enumerate(records) if len(r["images"]) == 1][:2]
    vp = prompts_for(tiny_dir, folder, records)
    items = [vp.prepare(i) for i in picked]
    response = tok("<OTHER> <answer> circle </answer>", add_special_tokens=False)["input_ids"]
    batch = make_batch([it["input_ids"] for it in items], [response] * 4, tok.pad_token_id,
                       [{k: it[k] for k in ("pixel_values", "image_grid_thw")} if it["pixel_values"] is not None
                        else None for it in items])
    extra = lambda b: {k: b[k] for k in ("pixel_values", "image_grid_thw") if k in b}
    with torch.no_grad():
        whole = slice_batch(batch, slice(0, 4))
        full = model.base_model(input_ids=whole["input_ids"], attention_mask=whole["attention_mask"],
                                **extra(whole)).last_hidden_state
        for start, stop in ((0, 1), (1, 3), (3, 4), (0, 2)):
            mb = slice_batch(batch, slice(start, stop))
            images = sum(len(records[i]["images"]) for i in picked[start:stop])
            assert (mb["image_grid_thw"].shape[0] if "image_grid_thw" in mb else 0) == images
            part = model.base_model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"],
                                    **extra(mb)).last_hidden_state
            mask = mb["attention_mask"].bool()
            torch.testing.assert_close(part[mask], full[start:stop][mask], atol=2e-5, rtol=1e-4)
