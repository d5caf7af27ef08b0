"""The real trainer (``medix_r1.train.train``) on image + text MediX records with a tiny Qwen2.5-VL:
hf rollouts with images, fused loss from hidden states, vision tower trained or frozen, metrics,
complete checkpoints, exact resume, bad images skipped and counted; vLLM request building (GPU
path) and the VL recipes."""
import json
import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from medix_r1.config import load_config
from medix_r1.data.records import load_records
from medix_r1.data.sampling import PromptSampler
from medix_r1.rollout import VllmRollout
from medix_r1.testing.synthetic import generate_synthetic_set
from medix_r1.testing.tiny_qwen_vl import build_tiny_qwen2_5_vl, build_tokenizer
from medix_r1.train import train
from medix_r1.train.batch import make_batch, slice_batch
from medix_r1.vision.model import model_config, torchvision_importable
from medix_r1.vision.prompts import (
    VisionPrompts,
    check_vllm_prompt,
    setup_vision,
    split_prompt,
    vllm_request,
)
from medix_r1.vision.qwen_vl_processor import IMAGE_PAD, image_token_counts, smart_resize
from tests.train_helpers import CharRewardWorker

MAX_PIXELS = 28 * 28 * 16  # at most 16 merged image tokens per image: keeps the CPU run fast


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny_vl"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Synthetic shape QA (1- and 2-image records) + text-only sums + 3 bad records:
    a missing file and a multi-image record with one missing file (found at start), and a corrupt
    PNG (found when first sampled)."""
    folder = tmp_path_factory.mktemp("shapes")
    path = generate_synthetic_set(folder, n_image=8, n_text=4, seed=3)
    (folder / "images" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    bad = [{"id": "bad-missing", "images": ["images/nope.png"], "problem": "What shape is shown?",
            "solution": "<OTHER> circle"},
           {"id": "bad-second", "images": ["images/img0000_0.png", "images/gone.png"],
            "problem": "What shape is shown?", "solution": "<OTHER> circle"},
           {"id": "bad-corrupt", "images": ["images/corrupt.png"], "problem": "What shape is shown?",
            "solution": "<OTHER> square"}]
    with open(path) as fh:
        lines = fh.read().splitlines()
    lines[2:2] = [json.dumps(bad[0])]
    lines[7:7] = [json.dumps(bad[1])]
    lines.insert(1, json.dumps(bad[2]))
    Path(path).write_text("\n".join(lines) + "\n")
    return path


def config(tiny, data, out, *more):
    return load_config("cpu_smollm2", [
        f"model.policy={tiny}", f"data.train={data}", "rollout.engine=hf", "rollout.max_tokens=6", "rollout.n=3",
        "data.prompts_per_step=3", "data.system_prompt=You are a medical assistant.", "train.max_steps=2",
        f"train.output_dir={out}", "train.progress=false", "train.plot=false", "train.tensorboard=false",
        "optim.lr=1e-3", "optim.weight_decay=0.0", "optim.micro_batch_size=4", "train.save_every=1",
        "train.keep_last=5", f"vision.max_pixels={MAX_PIXELS}", *more])


def weights(folder):
    from safetensors.torch import load_file
    return load_file(os.path.join(folder, "model.safetensors"))


@pytest.fixture(scope="module")
def full_run(tiny, data, tmp_path_factory):
    out = tmp_path_factory.mktemp("run_full")
    summary = train(config(tiny, data, out), reward_worker=CharRewardWorker())
    return out, summary


def records_of(data):
    return [json.loads(x) for x in open(data).read().splitlines()]


def test_mixed_two_step_run_trains_language_and_vision_and_checkpoints(tiny, data, full_run):
    out, summary = full_run
    assert summary["steps"] == 2
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2]
    for key in ("reward/total", "loss/loss", "optim/grad_norm", "rollout/logp_mismatch", "time/update"):
        assert key in lines[-1]
    # hf rollouts run on the policy with the same images; the engine's log-probs are those of the distribution it
    # drew from, without the suppressed image-placeholder ids (about 1% of this random tiny model's mass at T=0.7:
    # the exact semantics are tested in test_rollout_correction_train.py), so they agree to about 1e-2 nat
    assert lines[0]["rollout/logp_mismatch"] < 5e-2
    final = out / "step_000002"
    for name in ("COMPLETE", "trainer_state.json", "optim_rng.pt", "model/model.safetensors", "model/config.json",
                 "model/tokenizer.json"):
        assert (final / name).exists(), name
    before, after = weights(tiny), weights(final / "model")
    assert set(before) == set(after)  # the whole VL model is saved, vision tower included
    changed = {k for k in after if not torch.equal(before[k], after[k])}
    vision = {k for k in after if ".visual." in k or k.startswith("visual.")}
    assert vision and len(changed & vision) > len(vision) // 2  # the vision tower is trained
    assert len(changed - vision) > len(set(after) - vision) // 2
    # the steps trained on image and text-only prompts
    image_prompts = sum(x["data/image_prompts"] for x in lines)
    assert 0 < image_prompts < 6


def test_bad_images_are_skipped_and_counted(data, full_run):
    out, _ = full_run
    records = records_of(data)
    state = json.loads((out / "step_000002" / "trainer_state.json").read_text())
    bad = sorted(records[i]["id"] for i in state["counters"]["bad_image_records"])
    # the two missing files are found before training; the corrupt PNG when first sampled
    assert {"bad-missing", "bad-second"} <= set(bad) <= {"bad-missing", "bad-second", "bad-corrupt"}
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines[-1]["data/skipped_image_records"] == len(bad) == state["counters"]["skipped_image_records"]
    # the sampler drew replacements: 2 steps x 3 prompts were trained on
    assert lines[0]["rollout/groups_kept"] == 3 and lines[1]["rollout/groups_kept"] == 3


def test_resume_reproduces_the_uninterrupted_run(tiny, data, full_run, tmp_path):
    full_out, full = full_run
    part = tmp_path / "part"
    train(config(tiny, data, part, "train.max_steps=1"), reward_worker=CharRewardWorker())
    resumed = train(config(tiny, data, part), resume=True, reward_worker=CharRewardWorker())
    a, b = full["history"][1], resumed["history"][1]
    assert b["step"] == 2 and a["loss/loss"] == b["loss/loss"] and a["reward/total"] == b["reward/total"]
    wa, wb = weights(full_out / "step_000002" / "model"), weights(part / "step_000002" / "model")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    sa = json.loads((full_out / "step_000002" / "trainer_state.json").read_text())["counters"]
    sb = json.loads((part / "step_000002" / "trainer_state.json").read_text())["counters"]
    assert sa["bad_image_records"] == sb["bad_image_records"]


def test_frozen_vision_tower_stays_unchanged(tiny, data, tmp_path):
    """Also covers, with images: the KL term (a VL reference model), mini-batches of shuffled rows
    (old log-probs + row selection) and the DAPO collect path."""
    out = tmp_path / "frozen"
    train(config(tiny, data, out, "train.max_steps=1", "vision.freeze_tower=true", "loss.beta=0.01",
                   "optim.mini_batch_size=6", "algorithm.dynamic_sampling=true"), reward_worker=CharRewardWorker())
    line = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert line["rollout/groups_kept"] >= 1 and line["loss/kl_mean"] == line["loss/kl_mean"]
    before, after = weights(tiny), weights(out / "step_000001" / "model")
    vision = [k for k in after if ".visual." in k or k.startswith("visual.")]
    assert vision and all(torch.equal(before[k], after[k]) for k in vision)
    assert sum(not torch.equal(before[k], after[k]) for k in after if k not in vision) > 5


def test_on_bad_image_fail_stops_before_training_naming_the_record(tiny, data, tmp_path):
    with pytest.raises(ValueError, match=r"record 'bad-missing'.*file not found.*fix the path"):
        train(config(tiny, data, tmp_path / "r", "vision.on_bad_image=fail"), reward_worker=CharRewardWorker())
    assert not (tmp_path / "r" / "metrics.jsonl").exists()


def test_text_only_policy_refuses_image_records_naming_the_record_and_fix(data, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer()
    folder = tmp_path / "llama"
    LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                 num_attention_heads=2, num_key_value_heads=2)).save_pretrained(folder)
    tok.save_pretrained(folder)
    with pytest.raises(ValueError, match=r"record '[^']+' has \d image\(s\).*text-only model.*vision-language.*drop"):
        train(config(folder, data, tmp_path / "r"), reward_worker=CharRewardWorker())


def _prompts(tiny, data, *more):
    from transformers import AutoTokenizer

    cfg = config(tiny, data, "unused", *more)
    records = load_records(cfg.data.train)[0]
    return VisionPrompts(records, model_config(tiny), tiny, AutoTokenizer.from_pretrained(tiny), cfg, {}), records


def test_corrupt_image_is_found_lazily_and_replaced(tiny, data):
    vp, records = _prompts(tiny, data)
    names = {records[i]["id"] for i in vp.bad}
    assert names == {"bad-missing", "bad-second"}  # found by the file check at start
    sampler = PromptSampler(len(records), 0)
    idx, items = vp.take(sampler, len(records))  # a whole epoch: every record is drawn
    assert len(idx) == len(records) and {records[i]["id"] for i in vp.bad} == names | {"bad-corrupt"}
    assert not {records[i]["id"] for i in idx} & (names | {"bad-corrupt"})
    assert vp.metrics()["data/skipped_image_records"] == 3 and vp.counters["skipped_image_records"] == 3
    kinds = {bool(records[i]["images"]) for i in idx}
    assert kinds == {True, False}  # image and text-only prompts in the same draw
    vp_fail, _ = _prompts(tiny, data, "vision.on_bad_image=fail", "vision.check_files_at_start=false")
    corrupt = next(i for i, r in enumerate(records) if r["id"] == "bad-corrupt")
    with pytest.raises(ValueError, match=r"record 'bad-corrupt'.*cannot decode.*valid PNG/JPEG"):
        vp_fail.prepare(corrupt)


def test_micro_batch_row_selection_carries_exactly_its_images(tiny, data):
    vp, records = _prompts(tiny, data)
    idx, items = vp.take(PromptSampler(len(records), 1), 5)
    responses = [[5, 6, 7][: 1 + k % 3] for k in range(len(items))]
    pad = 0
    batch = make_batch([split_prompt(it)[0] for it in items], responses, pad, [split_prompt(it)[1] for it in items])
    assert "images" in batch and len(batch["images"]) == 5
    for rows in (torch.tensor([3, 0, 2]), slice(1, 4), torch.tensor([4])):
        mb = slice_batch(batch, rows)
        picked = torch.arange(5)[rows].tolist()
        assert mb["input_ids"].tolist() == batch["input_ids"][picked].tolist()
        with_images = [items[i] for i in picked if items[i]["pixel_values"] is not None]
        if with_images:
            assert torch.equal(mb["pixel_values"], torch.cat([it["pixel_values"] for it in with_images]))
            assert torch.equal(mb["image_grid_thw"], torch.cat([it["image_grid_thw"] for it in with_images]))
        else:
            assert "pixel_values" not in mb
    text_only = make_batch([[1, 2]], [[3]], pad, [None])
    assert "images" not in text_only  # the text path is unchanged


def test_transformers_image_processor_gives_the_same_inputs(tiny, data, tmp_path):
    """vision.processor=transformers (the model folder's preprocessor_config.json; PIL backend here,
    torchvision backend on GPU hosts) and the project's preprocessing agree."""
    import shutil

    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    folder = tmp_path / "with_processor"
    shutil.copytree(tiny, folder)
    Qwen2VLImageProcessorPil().save_pretrained(folder)
    ours, records = _prompts(tiny, data, "vision.processor=project")
    theirs, _ = _prompts(str(folder), data, "vision.processor=transformers")
    assert type(theirs.processor).__name__.startswith("Qwen2VLImageProcessor")
    for i, r in enumerate(records):
        if r["images"] and i not in ours.bad and r["id"] != "bad-corrupt":
            a, b = ours.prepare(i), theirs.prepare(i)
            assert a["input_ids"] == b["input_ids"] and torch.equal(a["image_grid_thw"], b["image_grid_thw"])
            torch.testing.assert_close(a["pixel_values"], b["pixel_values"], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="vision.processor=transformers: cannot load"):
        _prompts(tiny, data, "vision.processor=transformers")


# ----------------------------------------------------------------------------- vLLM path (GPU)

def test_vllm_request_has_one_placeholder_per_image_and_grid_sized_images(tiny, data):
    vp, records = _prompts(tiny, data, "rollout.engine=vllm")
    pad = vp.image_token_id
    seen_two = False
    for i, r in enumerate(records):
        if i in vp.bad or r["id"] == "bad-corrupt":
            continue
        item = vp.prepare(i)
        req = vllm_request(item)
        if not r["images"]:
            assert req == {"prompt_token_ids": item["input_ids"]}
            continue
        images = req["multi_modal_data"]["image"]
        seen_two |= len(images) == 2
        assert len(images) == len(r["images"]) and all(isinstance(im, Image.Image) for im in images)
        assert req["prompt_token_ids"].count(pad) == len(images)
        # each image is already at its grid size: vLLM's processor (smart_resize) keeps it and
        # expands its placeholder to the trainer's token count
        for im, (_, gh, gw) in zip(images, item["image_grid_thw"].tolist()):
            assert smart_resize(im.height, im.width, 28, 56 * 56, 28 * 28 * 1280) == (im.height, im.width)
            assert (im.height // 14, im.width // 14) == (gh, gw)
        counts = image_token_counts(item["image_grid_thw"], 2)
        expanded, k = [], 0
        for tok in req["prompt_token_ids"]:
            expanded.extend([tok] * (counts[k] if tok == pad else 1))
            k += tok == pad
        assert expanded == item["input_ids"]
    assert seen_two
    with pytest.raises(RuntimeError, match="vLLM expanded the prompt"):
        check_vllm_prompt([1, 2, 3], {"input_ids": [1, 2], "record_index": 0})
    no_pil = dict(item, images=None)
    with pytest.raises(ValueError, match="needs its PIL images"):
        vllm_request(no_pil)


def test_vllm_rollout_sends_multi_modal_data_and_keeps_trainer_ids(tiny, data):
    """VllmRollout.generate with a stand-in LLM: the requests it builds and the Rollouts it returns."""
    pytest.importorskip("vllm")
    from types import SimpleNamespace

    vp, records = _prompts(tiny, data, "rollout.engine=vllm")
    idx, items = vp.take(PromptSampler(len(records), 2), 4)
    sent = []

    class FakeLLM:
        def generate(self, prompts, params, use_tqdm=False):
            sent.extend(prompts)
            outs = []
            for _, item in zip(prompts, items):
                comps = [SimpleNamespace(token_ids=[7, 8], logprobs=[{7: SimpleNamespace(logprob=-1.0)},
                                                                      {8: SimpleNamespace(logprob=-2.0)}],
                                         text="x", finish_reason="stop") for _ in range(params[0].n)]
                outs.append(SimpleNamespace(prompt_token_ids=item["input_ids"], outputs=comps))
            return outs

    engine = object.__new__(VllmRollout)
    engine.cfg = config(tiny, data, "unused", "rollout.n=2").rollout
    engine.llm = FakeLLM()
    r = engine.generate(items, step=1, seed=0)
    assert len(r) == 8 and r.prompt_ids[0] == items[0]["input_ids"] and r.prompt_ids[1] == items[0]["input_ids"]
    for k, (item, req) in enumerate(zip(items, sent)):
        assert req["prompt_token_ids"] == item["engine_ids"]
        assert ("multi_modal_data" in req) == (item["pixel_values"] is not None)
        assert r.images[2 * k] is r.images[2 * k + 1]  # the group shares its image tensors
        assert (r.images[2 * k] is None) == (item["pixel_values"] is None)
    assert any(x is not None for x in r.images) and any(x is None for x in r.images)
    assert vp.vllm_engine_kwargs() == {"limit_mm_per_prompt": {"image": 2}}


@pytest.mark.skipif(torchvision_importable(), reason="torchvision imports here: vLLM can run VL models")
def test_vllm_engine_for_a_vl_policy_without_torchvision_is_a_clear_error(tiny, data):
    from transformers import AutoTokenizer

    cfg = config(tiny, data, "unused", "rollout.engine=vllm")
    records = load_records(cfg.data.train)[0]
    with pytest.raises(ValueError, match=r"rollout.engine=vllm with a vision-language policy.*rollout.engine=hf"):
        setup_vision(records, tiny, AutoTokenizer.from_pretrained(tiny), cfg, {})


# ----------------------------------------------------------------------------- recipes

@pytest.mark.parametrize("name, policy", [("qwen25vl_7b", "Qwen/Qwen2.5-VL-7B-Instruct"),
                                          ("qwen3vl_2b", "Qwen/Qwen3-VL-2B-Instruct"),
                                          ("qwen3vl_8b", "Qwen/Qwen3-VL-8B-Instruct")])
def test_former_vl_recipe_names_load_the_official_recipes(name, policy):
    """The former names are aliases of the official recipes (every value: tests/test_official_recipes.py)."""
    cfg = load_config(name)
    assert cfg.model.policy == policy and cfg.data.image_column == "image"
    assert (cfg.vision.min_pixels, cfg.vision.max_pixels) == (262144, 4194304)
    assert IMAGE_PAD  # the recipes rely on the Qwen-VL placeholder token


def test_parquet_records_with_embedded_images_stay_encoded_until_sampled(tiny, tmp_path):
    """A MediX-style parquet with a datasets Image column: loaded as bytes, decoded by prepare()."""
    import datasets

    from medix_r1.testing.synthetic import draw_shape

    feats = datasets.Features({"id": datasets.Value("string"), "images": datasets.List(datasets.Image()),
                               "problem": datasets.Value("string"), "solution": datasets.Value("string")})
    ds = datasets.Dataset.from_dict({"id": ["p0", "p1"], "images": [[draw_shape("circle", "red", (90, 60))], []],
                                     "problem": ["What shape is shown?", "What is two plus two?"],
                                     "solution": ["<OTHER> circle", "<OTHER> four"]}, features=feats)
    path = tmp_path / "train.parquet"
    ds.to_parquet(str(path))
    records = load_records(str(path))[0]
    assert isinstance(records[0]["images"][0], dict) and records[0]["images"][0]["bytes"]
    vp, records = _prompts(tiny, str(path))
    item = vp.prepare(0)
    assert item["image_grid_thw"].tolist() == [[1, 4, 6]]  # 60x90 -> smart_resize 56x84 -> 4x6 patches
    assert vp.prepare(1)["pixel_values"] is None
