"""`--protocol official`, second fidelity pass (issue 29): what the official run actually sent and
how it was served. PubMedQA's choices as yaml.safe_load reads them, the engine sized from the model
and the task (nothing cut), the checkpoint's generation_config.json defaults that `vllm serve`
applies, eval images re-encoded as the official client does, and MMMU's medical subsets."""
import base64
import io
import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from medix_r1.eval.official.tasks import LETTERS, load_task

# eval/tasks.yaml of mbzuai-oryx/MediX-R1 at 94fd018, lines 80-93 (the pubmedqa entry), as written there
TASKS_YAML_PUBMEDQA = """\
llm:
  pubmedqa:
    path: sahalshajim/medix-eval-sets
    name: pubmedqa
    split: test
    question_column:
      - CONTEXTS
      - QUESTION
    answer:
      - final_decision
      - LONG_ANSWER
    choices:
      - yes
      - no
      - maybe
"""


def official_list_form(params: dict, row: dict) -> str:
    """The question the official loader builds for a list-form task (eval/utils.py lines 83-91):
    written here from the loader's rules, fed with the parameters yaml.safe_load returns."""
    text = ""
    for column in params["question_column"]:
        value = row[column]
        text += f"{column.lower().capitalize()}:\n{value[0] if isinstance(value, list) else value}\n\n"
    text += "Choices:"
    for i, option in enumerate(params["choices"]):
        if option is not None:
            text += f"\n{LETTERS[i]}. {option}"
    return text.strip()


def test_pubmedqa_choices_are_what_yaml_safe_load_made_of_tasks_yaml(tmp_path):
    params = yaml.safe_load(TASKS_YAML_PUBMEDQA)["llm"]["pubmedqa"]
    assert params["choices"] == [True, False, "maybe"]  # YAML 1.1: bare yes / no are booleans
    row = {"pubid": 1, "QUESTION": "Does X help?", "CONTEXTS": ["Ctx one.", "Ctx two."], "final_decision": "no",
           "LONG_ANSWER": "It did not."}
    data = tmp_path / "pubmedqa.jsonl"
    data.write_text(json.dumps(row) + "\n")
    items, _ = load_task("pubmedqa", data_files=[str(data)])
    assert items[0]["problem"] == official_list_form(params, row)
    assert items[0]["problem"].endswith("Choices:\nA. True\nB. False\nC. maybe")
    assert items[0]["reference"] == "no\nIt did not."


# ----------------------------------------------------------------------------- shared fixtures

GENERATION_CONFIG = {"do_sample": True, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05,
                     "presence_penalty": 1.5, "bos_token_id": 1, "eos_token_id": 2}


def serving_model(out_dir) -> str:
    """The tiny Qwen2.5-VL with the pieces of a real checkpoint the official serving reads: a
    preprocessor_config.json (Qwen2.5-VL's published bounds) and a generation_config.json with
    sampling defaults; a text context of 16,384 tokens."""
    from medix_r1.testing.tiny_qwen_vl import build_tiny_qwen2_5_vl

    folder = build_tiny_qwen2_5_vl(out_dir)
    folder_path = Path(folder)
    config = json.loads((folder_path / "config.json").read_text())
    config["text_config"]["max_position_embeddings"] = 16384
    (folder_path / "config.json").write_text(json.dumps(config))
    (folder_path / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "Qwen2VLImageProcessor", "patch_size": 14, "merge_size": 2, "temporal_patch_size": 2,
         "min_pixels": 3136, "max_pixels": 12845056}))
    (folder_path / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG))
    return folder


@pytest.fixture(scope="module")
def tiny_vl(tmp_path_factory):
    return serving_model(tmp_path_factory.mktemp("tiny_vl"))


def image_parquet(path, rows):
    import datasets

    feats = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string"),
                               "answer": datasets.Value("string")})
    datasets.Dataset.from_list(rows, features=feats).to_parquet(str(path))
    return str(path)


class ScriptedJudge:
    model_id = "Qwen/Qwen3-14B"

    def __init__(self):
        self.calls = []

    async def chat(self, messages, *, max_tokens, cache_key=None):
        from types import SimpleNamespace

        self.calls.append(messages)
        return SimpleNamespace(text='{"score": 1}', failed=False, error=None)


def official_args(tmp_path, model, benchmarks, data_files, generator="vllm"):
    from medix_r1.eval.cli import build_parser

    argv = ["--protocol", "official", "--model", str(model), "--generator", generator, "--benchmarks", benchmarks,
            "--output-dir", str(tmp_path / "run"), "--no-progress", "--batch-size", "4"]
    for name, path in data_files.items():
        argv += ["--data-files", f"{name}={path}"]
    return build_parser().parse_args(argv)


def fake_engine(monkeypatch, seen):
    """make_generator replaced: records the engine's config and every call's sampling settings."""
    from medix_r1.eval.official import run as official_run

    def make_generator(kind, model, cfg):
        seen["cfg"] = cfg

        def generate(batch, sampling=None):
            seen.setdefault("calls", []).append((len(batch), dict(sampling)))
            return ["<think>x</think>The answer is (B)." for _ in batch]
        return generate
    monkeypatch.setattr(official_run, "make_generator", make_generator)


MCQ = {"question": "Which nerve innervates the deltoid?", "subject": "anatomy",
       "choices": ["Radial", "Axillary", "Ulnar", "Median"], "answer": 1}


# ----------------------------------------------------------------------------- item 6: generation_config.json

def test_served_sampling_takes_the_checkpoints_defaults_for_what_the_request_leaves_out(tiny_vl):
    from medix_r1.eval.official.sampling import FROM_FILE, FROM_REQUEST_EVAL, FROM_VLLM, served_sampling

    got = served_sampling(tiny_vl)
    # vllm serve: request values win (temperature 0, top_p 1, max_tokens 2048 in eval/utils.py), then
    # generation_config.json (top_k 20, repetition 1.05, presence 1.5), then vLLM's defaults
    assert {k: v["value"] for k, v in got.items()} == {
        "temperature": 0.0, "top_p": 1.0, "max_tokens": 2048, "top_k": 20, "repetition_penalty": 1.05,
        "presence_penalty": 1.5, "frequency_penalty": 0.0, "min_p": 0.0}
    assert {k: v["from"] for k, v in got.items()} == {
        "temperature": FROM_REQUEST_EVAL, "top_p": FROM_REQUEST_EVAL, "max_tokens": FROM_REQUEST_EVAL,
        "top_k": FROM_FILE, "repetition_penalty": FROM_FILE, "presence_penalty": FROM_FILE,
        "frequency_penalty": FROM_VLLM, "min_p": FROM_VLLM}
    assert set(served_sampling(None)) == {"temperature", "top_p", "max_tokens"}  # a served model: its server adds


@pytest.mark.slow
def test_served_sampling_equals_what_vllms_chat_server_computes(tmp_path):
    """vLLM's own code for `vllm serve`: ModelConfig.get_diff_sampling_param (the file, read as
    --generation-config auto does) and ChatCompletionRequest.to_sampling_params (the request first);
    on a tiny Llama (vLLM inspects a Qwen-VL architecture with torchvision, absent on this CPU host)."""
    from vllm import SamplingParams
    from vllm.config import ModelConfig
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest

    from medix_r1.eval.official.sampling import served_sampling, values
    from tests.train_helpers import make_tiny_model

    model = make_tiny_model(tmp_path / "llama")
    (Path(model) / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG))
    defaults = ModelConfig(model=str(model)).get_diff_sampling_param()
    assert values(served_sampling(model))["repetition_penalty"] == 1.05
    request = ChatCompletionRequest(model="m", messages=[{"role": "user", "content": "q"}], temperature=0.0,
                                    top_p=1.0, max_tokens=2048)
    params = request.to_sampling_params(2048, defaults)
    ours = SamplingParams(**values(served_sampling(model)))  # what the offline generator builds from them
    for key in ("temperature", "top_p", "top_k", "min_p", "repetition_penalty", "presence_penalty",
                "frequency_penalty", "max_tokens"):
        assert getattr(ours, key) == pytest.approx(getattr(params, key)), key
    assert params.repetition_penalty == 1.05 and params.presence_penalty == 1.5


def test_the_official_run_generates_with_the_served_settings_and_says_where_each_came_from(
        tiny_vl, tmp_path, monkeypatch):
    from medix_r1.eval.official.run import run_official

    data = tmp_path / "mmlu.jsonl"
    data.write_text(json.dumps(MCQ) + "\n")
    seen = {}
    fake_engine(monkeypatch, seen)
    args = official_args(tmp_path, tiny_vl, "mmlu_anatomy", {"mmlu_anatomy": data})
    assert run_official(args, make_judge=ScriptedJudge) == 0
    [(n, sampling)] = seen["calls"]
    assert n == 1 and sampling["repetition_penalty"] == 1.05 and sampling["presence_penalty"] == 1.5
    assert sampling["temperature"] == 0.0 and sampling["max_tokens"] == 2048
    summary = json.loads((tmp_path / "run" / "official_summary.json").read_text())
    assert summary["sampling"]["eval_py"]["repetition_penalty"] == {
        "value": 1.05, "from": "generation_config.json (applied by vllm serve)"}
    assert "repetition_penalty 1.05 (generation_config.json" in (tmp_path / "run" / "official_summary.md").read_text()


# ----------------------------------------------------------------------------- item 5: the engine's context

def small_context(tiny_vl, tmp_path, tokens=3000):
    """A copy of the tiny model whose text context is ``tokens``."""
    import shutil

    folder = Path(shutil.copytree(tiny_vl, tmp_path / "small_context"))
    config = json.loads((folder / "config.json").read_text())
    config["text_config"]["max_position_embeddings"] = tokens
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def test_prompts_are_counted_with_their_image_tokens_and_nothing_is_cut(tiny_vl, tmp_path, monkeypatch):
    from transformers import AutoTokenizer

    from medix_r1.data.prompts import chat_token_ids
    from medix_r1.eval.official.context import plan_context
    from medix_r1.eval.official.run import run_official

    tiny_vl = small_context(tiny_vl, tmp_path)
    tok = AutoTokenizer.from_pretrained(tiny_vl)
    small = Image.new("RGB", (56, 56), (10, 200, 30))          # 56 x 56 -> 2 x 2 merged tokens = 4
    large = Image.new("RGB", (1000, 800), (10, 200, 30))       # -> 812 x 1008 -> 58 x 72 patches / 4 = 1044
    text = {"id": "t", "problem": "Is it normal?", "images": [], "benchmark": "rad_vqa"}
    with_small = {**text, "id": "s", "images": [small]}
    with_large = {**text, "id": "l", "images": [large]}
    one_pad = len(chat_token_ids(tok, [{"role": "user", "content": [{"type": "image"},
                                                                     {"type": "text", "text": "Is it normal?"}]}]))
    plan = plan_context([text, with_small, with_large], tiny_vl, tok, new_tokens=lambda r: 2048, key=lambda r: r["id"])
    assert plan.lengths == {"t": len(chat_token_ids(tok, [{"role": "user", "content": "Is it normal?"}])),
                            "s": one_pad + 4 - 1, "l": one_pad + 1044 - 1}
    assert plan.model_limit == 3000 and [r["id"] for r in plan.too_long] == ["l"]  # 1062 + 2048 > 3000
    # the model's own image processor (what vLLM runs) makes as many tokens of each image
    from transformers import AutoImageProcessor

    grid = AutoImageProcessor.from_pretrained(tiny_vl)(images=[small, large], return_tensors="pt")["image_grid_thw"]
    assert (grid.prod(-1) // 4).tolist() == [4, 1044]
    assert plan.max_model_len == plan.lengths["s"] + 2048

    # through the run: the engine is sized so, the long item is left out and listed, nothing is cut
    rows = [{"image": small, "question": "Is it normal?", "answer": "yes"},
            {"image": large, "question": "Is it normal?", "answer": "yes"}]
    seen = {}
    fake_engine(monkeypatch, seen)
    args = official_args(tmp_path, tiny_vl, "rad_vqa", {"rad_vqa": image_parquet(tmp_path / "rad.parquet", rows)})
    assert run_official(args, make_judge=ScriptedJudge) == 0
    assert seen["cfg"].max_model_len == plan.lengths["s"] + 2048 and seen["cfg"].cut_long_prompts is False
    assert seen["calls"][0][0] == 1  # only the item that fits is generated
    summary = json.loads((tmp_path / "run" / "official_summary.json").read_text())
    assert summary["tasks"]["rad_vqa"]["n"] == 1 and summary["notes"][0]["too_long_for_context"] == ["rad_vqa_1"]
    assert summary["context"]["too_long"] == 1 and summary["context"]["model_limit"] == 3000
    assert "1 left out as longer than the model's context: rad_vqa_1" in \
        (tmp_path / "run" / "official_summary.md").read_text()


def test_a_prompt_over_the_engine_is_an_error_not_a_cut():
    from medix_r1.eval.generation import GenerationConfig, fit

    cfg = GenerationConfig(max_new_tokens=8, max_model_len=16, cut_long_prompts=False)
    assert fit(list(range(8)), 8, cfg) == list(range(8))
    with pytest.raises(ValueError, match="a prompt of 9 tokens does not fit the engine"):
        fit(list(range(9)), 8, cfg)
    assert len(fit(list(range(9)), 8, GenerationConfig(max_new_tokens=8, max_model_len=16))) == 8  # the project cuts


# ----------------------------------------------------------------------------- images as the official client sends them

def test_official_images_go_as_jpeg_of_the_rgb_image_mmmu_as_the_decoded_image(tmp_path):
    from medix_r1.eval.generation import build_messages

    rgba = Image.new("RGBA", (40, 30), (200, 10, 10, 0))
    rgba.save(tmp_path / "a.png")
    record = {"problem": "Q?", "images": [str(tmp_path / "a.png")]}

    def sent(record, style):
        url = build_messages(record, style)[-1]["content"][0]["image_url"]["url"]
        head, data = url.split(",", 1)
        return head, Image.open(io.BytesIO(base64.b64decode(data)))

    head, img = sent(record, "official")  # eval/utils.py generate: convert("RGB"), JPEG
    assert head == "data:image/jpeg;base64" and img.format == "JPEG" and img.mode == "RGB" and img.size == (40, 30)
    assert max(abs(a - b) for a, b in zip(img.getpixel((20, 15)), (200, 10, 10))) < 12  # alpha dropped, not white
    head, img = sent(record, "plain")  # the project: the file's own bytes
    assert img.format == "PNG" and img.mode == "RGBA"
    head, img = sent({**record, "image_encoding": "png"}, "official")  # MMMU: the decoded image, lossless
    assert head == "data:image/png;base64" and img.getpixel((20, 15)) == (200, 10, 10)


@pytest.mark.slow
def test_official_run_on_a_real_vllm_engine(tmp_path):
    """The official protocol end to end on vLLM (CPU): the bundled SmolLM2 with a generation_config.json
    that sets a repetition penalty, the engine sized from the prompts, greedy answers; the judge scripted."""
    from medix_r1.eval.official.run import run_official
    from medix_r1.models import smollm2_hf_dir

    model = tmp_path / "smollm2"
    model.mkdir()
    for file in smollm2_hf_dir().iterdir():  # the bundled weights, linked; our own generation config
        if file.name != "generation_config.json":
            (model / file.name).symlink_to(file)
    (model / "generation_config.json").write_text(json.dumps(GENERATION_CONFIG))
    data = tmp_path / "mmlu.jsonl"
    data.write_text(json.dumps(MCQ) + "\n" + json.dumps({**MCQ, "question": "Which bone is the longest?"}) + "\n")
    args = official_args(tmp_path, model, "mmlu_anatomy", {"mmlu_anatomy": data})
    assert run_official(args, make_judge=ScriptedJudge) == 0
    summary = json.loads((tmp_path / "run" / "official_summary.json").read_text())
    assert summary["tasks"]["mmlu_anatomy"]["n"] == 2 and summary["overall"] == 100.0
    assert summary["context"]["max_model_len"] == summary["context"]["longest_prompt"] + 2048
    assert summary["sampling"]["eval_py"]["repetition_penalty"]["value"] == 1.05
    generations = [json.loads(x) for x in (tmp_path / "run" / "generations.jsonl").read_text().splitlines()]
    assert len(generations) == 2 and all(isinstance(g["response"], str) for g in generations)
