"""The official recipes, second fidelity pass (issue 29): the reward on solutions the official code
takes as they are (reward.parity=official), the overlong filter's character count, PIL's
convert("RGB"), and fp32 master weights for model.dtype=bfloat16 in one process. Each test's
expected values follow the official code's rule named in its comment (mbzuai-oryx/MediX-R1 at
94fd018)."""
import json
from types import SimpleNamespace

import pytest
import torch

from medix_r1.config import load_config
from medix_r1.data.records import load_records
from medix_r1.train.validate import load_validation_records
from tests.test_rewards_worker import FakeEmbedder, ScriptedJudge, score

RESPONSE = "{tag} <thinking>Looked at it.</thinking> <answer>{answer}</answer>"


def total(J, E, M, F):
    return 0.9 * (0.575 * J + 0.375 * E + 0.05 * M) + 0.1 * F


# ----------------------------------------------------------------------------- item 7: untagged solutions

def test_official_parity_scores_solutions_as_the_official_reward_does():
    """training/examples/reward_function/medical.py: _extract_answer takes the text after the first '>'
    (an untagged solution raises, caught: accuracy 0, lines 74 and 99-100 / 117-118); modality_reward
    compares with the text up to the first '>' plus '>', unstripped (line 128)."""
    responses = [RESPONSE.format(tag="<OTHER>", answer="yes"),          # untagged solution
                 RESPONSE.format(tag="<XRAY>", answer="Pneumonia"),     # a tag outside the 16
                 RESPONSE.format(tag="<OTHER>", answer="yes")]          # a solution with a leading space
    solutions = ["yes", "<XRAY> Pneumonia.", " <OTHER> yes"]
    judge, emb = ScriptedJudge(parity="official"), FakeEmbedder()
    got = score(responses, solutions, judge=judge, embedder=emb, parity="official")
    assert [(r.judge, r.embedding, r.modality, r.format) for r in got] == [
        (0.0, 0.0, 0.0, 1.0),   # nothing to compare against: no judge call, no embedding
        (1.0, 1.0, 1.0, 1.0),   # exact match after the tag; the tag itself matches
        (1.0, 1.0, 0.0, 1.0)]   # " <OTHER>" != "<OTHER>"
    assert [r.total for r in got] == pytest.approx([total(0, 0, 0, 1), total(1, 1, 1, 1), total(1, 1, 0, 1)])
    assert judge.items == [] and emb.calls == []
    assert not any(r.invalid_answer or r.judge_failed for r in got)
    with pytest.raises(ValueError, match=r"solutions\[0\]: solution must start with a modality tag"):
        score(responses[:1], solutions[:1], judge=ScriptedJudge(), parity="strict")  # the project's rule stays
    with pytest.raises(ValueError, match=r"solutions\[0\]: solution has unknown modality tag '<XRAY>'"):
        score(responses[1:2], solutions[1:2], judge=ScriptedJudge(), parity="strict")


def test_official_parity_loads_solutions_as_they_are(tmp_path):
    rows = [{"id": "a", "images": [], "problem": "Is it?", "solution": "yes"},
            {"id": "b", "images": [], "problem": "Which?", "solution": "<XRAY> Pneumonia"}]
    data = tmp_path / "val.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tagged, _ = load_records(str(data), default_modality="<OTHER>")
    assert [r["solution"] for r in tagged] == ["<OTHER> yes", "<OTHER> <XRAY> Pneumonia"]  # the project's rule
    # (the file names its images 'images'; the official recipes read the official data's 'image' column)
    cfg = load_config("medix_r1_2b_dapo", [f"data.val={data}", "data.val_split=train", "data.image_column=images"])
    assert cfg.reward.parity == "official"
    assert [r["solution"] for r in load_validation_records(cfg)] == ["yes", "<XRAY> Pneumonia"]
    as_is, skipped = load_records(str(data), default_modality="<OTHER>", any_solution=True)
    assert [r["solution"] for r in as_is] == ["yes", "<XRAY> Pneumonia"] and skipped == 0


# ----------------------------------------------------------------------------- items 2 and 3: the VL data path

@pytest.fixture(scope="module")
def tiny_vl(tmp_path_factory):
    from medix_r1.testing.tiny_qwen_vl import build_tiny_qwen2_5_vl

    return build_tiny_qwen2_5_vl(tmp_path_factory.mktemp("tiny_vl"))


def vl_prompts(tiny_vl, data_file, *more):
    from transformers import AutoTokenizer

    from medix_r1.vision.model import model_config
    from medix_r1.vision.prompts import VisionPrompts

    cfg = load_config("cpu_smollm2", [f"model.policy={tiny_vl}", f"data.train={data_file}", "rollout.engine=hf",
                                      "data.prompt_template=official", "data.context_chars=0",
                                      "rollout.max_model_len=4000", f"vision.max_pixels={28 * 28 * 16}",
                                      "vision.check_files_at_start=false", *more])
    records = load_records(cfg.data.train)[0]
    tok = AutoTokenizer.from_pretrained(tiny_vl)
    return VisionPrompts(records, model_config(tiny_vl), tiny_vl, tok, cfg, {}), records, tok, cfg


def official_templated_chars(tokenizer, problem: str) -> int:
    """What the official filter measures (training/verl/utils/dataset.py lines 153-169 and 183-188):
    medical_format.jinja rendered with the problem, split at every <image> into image / text parts
    (the image column exists in every row), the processor's chat template as a string (its default
    with transformers 4.54-4.57), and len() of that string."""
    from jinja2 import Template

    from tests.test_official_training import OFFICIAL_JINJA

    prompt = Template(OFFICIAL_JINJA.strip()).render(content=problem)
    content = []
    for i, piece in enumerate(prompt.split("<image>")):
        if i:
            content.append({"type": "image"})
        if piece:
            content.append({"type": "text", "text": piece})
    return len(tokenizer.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                             tokenize=False))


def write_records(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_official_overlong_filter_counts_characters_of_the_templated_string(tiny_vl, tmp_path):
    from medix_r1.data.prompts import OverlongPrompt, chat_token_ids, prompt_token_ids, record_messages
    from medix_r1.data.sampling import PromptSampler
    from medix_r1.train.build import Run

    problem = "What shape is shown and what colour is it? " * 6
    rows = [{"id": "t", "images": [], "problem": problem, "solution": "<OTHER> circle"},
            {"id": "v", "images": ["nope.png"], "problem": problem, "solution": "<OTHER> circle"}]
    data = write_records(tmp_path / "d.jsonl", rows)
    vp, records, tok, _ = vl_prompts(tiny_vl, data)
    chars = official_templated_chars(tok, problem)
    tokens = len(chat_token_ids(tok, record_messages(records[0], load_config("medix_r1_2b_dapo").data)))
    assert tokens < chars - 1  # the two measures disagree on this prompt

    def data_section(budget, measure):
        return vl_prompts(tiny_vl, data, "data.overlong=filter", f"data.overlong_measure={measure}",
                          f"data.max_prompt_tokens={budget}")[3].data

    assert prompt_token_ids(tok, records[0], data_section(chars, "chars"))  # <= the budget: kept
    with pytest.raises(OverlongPrompt, match=rf"record 't'.*{chars} characters.*overlong_measure=chars"):
        prompt_token_ids(tok, records[0], data_section(chars - 1, "chars"))
    assert len(prompt_token_ids(tok, records[0], data_section(chars - 1, "tokens"))) == tokens  # the project keeps it
    # the trainer's text path filters and counts it
    cfg = vl_prompts(tiny_vl, data, "data.overlong=filter", "data.overlong_measure=chars",
                     f"data.max_prompt_tokens={chars - 1}")[3]
    run = SimpleNamespace(vision=None, sampler=PromptSampler(2, 0), counters={}, prompt_cache={}, tokenizer=tok,
                          records=[records[0], {**records[0], "id": "short", "problem": "Shape?"}], cfg=cfg)
    idx, _ = Run.take_prompts(run, 2)
    assert idx == [1, 1] and run.counters["filtered_overlong"] == 1
    # an image record is measured before its image is decoded (its file is missing: no ImageError)
    vp, records, _, _ = vl_prompts(tiny_vl, data, "data.overlong=filter", "data.overlong_measure=chars",
                                   f"data.max_prompt_tokens={chars - 1}")
    with pytest.raises(OverlongPrompt, match=rf"record 'v'.*{chars} characters"):
        vp.prepare(1)
    with pytest.raises(ValueError, match="data.overlong_measure=chars is the official filter's measure"):
        load_config(overrides=["data.overlong_measure=chars"])
    assert load_config("medix_r1_7b").data.overlong_measure == "chars"


def odd_images():
    """RGBA with a transparent and a half-transparent pixel, a palette whose index 0 is transparent,
    and 16-bit greyscale above 255: the images the two conversions disagree on."""
    import numpy as np
    from PIL import Image

    rgba = Image.new("RGBA", (2, 1))
    rgba.putpixel((0, 0), (200, 10, 10, 0))
    rgba.putpixel((1, 0), (0, 0, 255, 128))
    pal = Image.new("P", (2, 1))
    pal.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putpixel((1, 0), 1)
    pal.info["transparency"] = 0
    grey16 = Image.fromarray(np.array([[0, 100, 4000, 65535]], dtype=np.uint16))
    assert (rgba.mode, pal.mode, grey16.mode) == ("RGBA", "P", "I;16")
    return rgba, pal, grey16


def test_official_conversion_is_pils_convert_rgb_the_project_one_composites_and_stretches():
    import numpy as np

    from medix_r1.vision.images import load_image

    rgba, pal, grey16 = odd_images()

    def pixels(img, conversion):
        return np.asarray(load_image(img, conversion=conversion)).tolist()

    # official: training/verl/utils/dataset.py process_image, image.convert("RGB") (lines 74-75)
    assert pixels(rgba, "official") == [[[200, 10, 10], [0, 0, 255]]]  # alpha dropped
    assert pixels(pal, "official") == [[[255, 0, 0], [0, 255, 0]]]     # transparency ignored
    assert pixels(grey16, "official") == [[[v] * 3 for v in (0, 100, 255, 255)]]  # clipped at 255
    # the project: alpha composited on white, 16-bit stretched over its range
    assert pixels(rgba, "project") == [[[255, 255, 255], [127, 127, 255]]]
    assert pixels(pal, "project") == [[[255, 255, 255], [0, 255, 0]]]
    assert pixels(grey16, "project") == [[[v] * 3 for v in (0, 0, 16, 255)]]
    with pytest.raises(ValueError, match="vision.rgb_conversion must be one of"):
        load_image(rgba, conversion="srgb")


def test_the_official_recipes_convert_as_the_official_code_in_the_trainer(tiny_vl, tmp_path):
    import numpy as np
    from PIL import Image

    from medix_r1.vision.prompts import _preprocess, resize_to_grid

    rgba = Image.fromarray(np.random.default_rng(0).integers(0, 256, (56, 56, 4), dtype=np.uint8), "RGBA")
    rgba.save(tmp_path / "a.png")
    data = write_records(tmp_path / "d.jsonl", [{"id": "a", "images": ["a.png"], "problem": "Shape?",
                                                  "solution": "<OTHER> circle"}])
    got = {}
    for conversion in ("official", "project"):
        vp, _, _, _ = vl_prompts(tiny_vl, data, f"vision.rgb_conversion={conversion}")
        got[conversion] = vp.prepare(0)["pixel_values"]
        grid = vp.grid_cfg
    want, _, _ = _preprocess([resize_to_grid(rgba.convert("RGB"), grid)], grid)
    assert torch.equal(got["official"], want) and not torch.equal(got["project"], want)
    assert load_config("medix_r1_30b_dapo").vision.rgb_conversion == "official"
    assert load_config().vision.rgb_conversion == "project"


# ----------------------------------------------------------------------------- item 4: fp32 master weights

def test_bfloat16_in_one_process_keeps_fp32_master_weights_that_take_lr_1e6_updates(tmp_path):
    """Officially the actor is loaded in fp32 (fsdp_workers.py line 193: torch_dtype None -> float32)
    and FSDP computes in bf16 (actor/config.py mp_param_dtype); only adamw_bf16 keeps bf16 weights.
    In one process model.dtype=bfloat16 must do the same: an lr 1e-6 AdamW step moves the weights."""
    from medix_r1.train.optim import make_optimizer
    from medix_r1.train.policy import autocast, load_model
    from tests.train_helpers import make_tiny_model

    tiny = make_tiny_model(tmp_path / "tiny")
    cfg = load_config("cpu_smollm2", [f"model.policy={tiny}", "model.dtype=bfloat16", "optim.lr=1e-6",
                                      "optim.weight_decay=0.01"])
    policy = load_model(tiny, cfg, trainable=True)
    assert {p.dtype for p in policy.parameters()} == {torch.float32}
    assert policy.medix_autocast is torch.bfloat16  # the compute is bf16, as FSDP's mixed precision
    ref = load_model(tiny, cfg, trainable=False)
    assert {p.dtype for p in ref.parameters()} == {torch.bfloat16}  # the frozen reference stays bf16
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    optimizer = make_optimizer(policy.parameters(), cfg.optim)
    ids = torch.arange(1, 17).reshape(2, 8)
    with autocast(policy, torch.device("cpu")):
        logits = policy(input_ids=ids).logits
    assert logits.dtype == torch.bfloat16
    logits.float().logsumexp(-1).mean().backward()
    optimizer.step()
    moved = sum(int((p.detach() != before[n]).sum()) for n, p in policy.named_parameters())
    assert moved > 0.9 * sum(p.numel() for p in policy.parameters())
    bf16 = load_model(tiny, load_config("cpu_smollm2", [f"model.policy={tiny}", "model.dtype=bfloat16",
                                                        "optim.optimizer=adamw_bf16"]), trainable=True)
    assert {p.dtype for p in bf16.parameters()} == {torch.bfloat16} and bf16.medix_autocast is None
