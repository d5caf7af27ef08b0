"""The training features the official recipes need: bf16 AdamW, the official prompt, overlong
filtering, DAPO refills in chunks, validation from the config (tiny Llama, hf rollouts)."""
import json
from concurrent.futures import Future
from types import SimpleNamespace

import pytest
import torch

from medix_r1.config import load_config
from medix_r1.data.prompts import OverlongPrompt, prompt_token_ids, record_messages
from medix_r1.data.records import BUNDLED, load_records
from medix_r1.data.sampling import PromptSampler
from medix_r1.data.templates import OFFICIAL_INSTRUCTIONS, official_messages
from medix_r1.train import train
from medix_r1.train.build import Run
from medix_r1.train.cli import main as train_main
from medix_r1.train.optim import OPTIMIZERS, BF16AdamW
from medix_r1.train.step import keep_groups
from tests.train_helpers import CharRewardWorker, Result, make_tiny_model, tiny_run_config

# training/examples/format_prompt/medical_format.jinja of mbzuai-oryx/MediX-R1 (commit 94fd018), byte for byte
OFFICIAL_JINJA = (
    "You are a Medical AI Assistant with advanced reasoning capabilities\nYour task:\n"
    "1. First output the image modality tag from this set:\n"
    "   <X_RAY>, <MICROSCOPY>, <CLINICAL_PHOTOGRAPHY>, <CT_SCAN>, <GRAPHICS>, \n"
    "   <ANGIOGRAPHY>, <PET_SCAN>, <ULTRASOUND>, <MRI_SCAN>, <FUNDUS_PHOTOGRAPHY>, \n"
    "   <OCT_SCAN>, <ENDOSCOPY>, <MAMMOGRAPHY>, <FLUOROSCOPY>, <OTHER>, <SPECT>\n"
    "   (Only output the tag, nothing else.)\n"
    "2. Then output the thinking and medical reasoning process in <thinking>...</thinking>tags.\n"
    "3. Finally, provide the correct answer inside <answer>...</answer> tags.\n"
    "4. Do not include any extra information or text outside of these tags.\n"
    "Question: \n<image>{{ content | trim }}\n")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny"))


def config(tiny, out, *more):
    return tiny_run_config(tiny, out, "train.tensorboard=false", "train.plot=false", "train.save_every=0", *more)


# ----------------------------------------------------------------------------- bf16 AdamW

def test_bf16_adamw_keeps_bf16_states_and_follows_fp32_adamw():
    torch.manual_seed(0)
    ref = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4))
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.Tanh(), torch.nn.Linear(32, 4)).to(torch.bfloat16)
    model.load_state_dict({k: v.to(torch.bfloat16) for k, v in ref.state_dict().items()})
    start = {k: v.clone() for k, v in model.state_dict().items()}
    opt_ref = torch.optim.AdamW(ref.parameters(), lr=1e-4, weight_decay=0.01)
    opt = BF16AdamW(model.parameters(), lr=1e-4, weight_decay=0.01)
    x, y = torch.randn(64, 16), torch.randn(64, 4)
    for _ in range(30):
        for m, o, dtype in ((ref, opt_ref, torch.float32), (model, opt, torch.bfloat16)):
            o.zero_grad()
            torch.nn.functional.mse_loss(m(x.to(dtype)).float(), y).backward()
            o.step()
    for p in model.parameters():
        state = opt.state[p]
        assert {state[k].dtype for k in ("exp_avg", "exp_avg_sq", "compensation")} == {torch.bfloat16}
        assert p.dtype == torch.bfloat16
    # 30 steps of lr 1e-4 move a weight by ~3e-3, under a bf16 ulp for most weights: without the
    # compensation buffer most would not move at all; with it they track fp32 AdamW
    moved = sum(int((model.state_dict()[k] != start[k]).sum()) for k in start)
    assert moved > 0.9 * sum(v.numel() for v in start.values())
    for (k, a), b in zip(ref.state_dict().items(), model.state_dict().values()):
        assert torch.allclose(a, b.float(), atol=2e-3), k


def test_optimizer_choices_and_bf16_needs_bf16_weights():
    assert set(OPTIMIZERS) == {"adamw", "adamw_bf16"}
    with pytest.raises(ValueError, match=r"optim.optimizer=adamw_bf16 trains bfloat16 weights.*model.dtype"):
        load_config(overrides=["optim.optimizer=adamw_bf16"])
    with pytest.raises(ValueError, match=r"optim.optimizer must be one of"):
        load_config(overrides=["optim.optimizer=sgd"])
    assert load_config(overrides=["optim.optimizer=adamw_bf16", "model.dtype=bfloat16"]).optim.optimizer == \
        "adamw_bf16"


# ----------------------------------------------------------------------------- the official prompt

def test_official_template_renders_the_official_jinja_exactly():
    from jinja2 import Template

    problem = "  What modality is this and what does it show?\n"
    rendered = Template(OFFICIAL_JINJA.strip()).render(content=problem)  # as the official dataset.py does
    data = SimpleNamespace()
    one = official_messages(problem, 1, data)
    assert len(one) == 1 and one[0]["role"] == "user"  # no system turn
    before, after = rendered.split("<image>")
    assert one[0]["content"] == [{"type": "text", "text": before}, {"type": "image"}, {"type": "text", "text": after}]
    assert before == OFFICIAL_INSTRUCTIONS
    # text only: no image slot, the same text around it
    assert official_messages(problem, 0, data) == [{"role": "user", "content": before + after}]
    two = official_messages(problem, 2, data)[0]["content"]
    assert [p["type"] for p in two] == ["text", "image", "image", "text"]
    with pytest.raises(ValueError, match=r"record 'r7'.*2 <image> marker.*3 image"):
        official_messages("compare <image>", 3, data, "r7")


def test_official_template_through_the_config_and_the_tokenizer(tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    record = {"id": "x", "images": [], "problem": "Is aspirin an NSAID?", "solution": "<OTHER> yes"}
    cfg = load_config(overrides=["data.prompt_template=official"])
    messages = record_messages(record, cfg.data)
    assert [m["role"] for m in messages] == ["user"]
    text = tok.decode(prompt_token_ids(tok, record, cfg.data))
    assert OFFICIAL_INSTRUCTIONS + "Is aspirin an NSAID?" in text and cfg.data.system_prompt not in text
    project = tok.decode(prompt_token_ids(tok, record, load_config().data))
    assert load_config().data.system_prompt in project and OFFICIAL_INSTRUCTIONS not in project


# ----------------------------------------------------------------------------- overlong prompts

def test_overlong_prompts_are_cut_or_filtered_and_counted(tiny):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny)
    records = load_records("pubmedqa", max_records=12)[0]
    short = {"id": "short", "images": [], "problem": "Yes?", "solution": "<OTHER> yes"}
    records = [short, *records]
    base = ["data.context_chars=0", "data.example_question=", "data.example_answer="]
    budget = len(prompt_token_ids(tok, short, load_config(overrides=base).data)) + 10
    cut = load_config(overrides=[*base, f"data.max_prompt_tokens={budget}"])
    assert len(prompt_token_ids(tok, records[1], cut.data)) == budget
    filt = load_config(overrides=[*base, f"data.max_prompt_tokens={budget}", "data.overlong=filter"])
    with pytest.raises(OverlongPrompt, match=rf"record 'pubmedqa-\d+'.*over data.max_prompt_tokens \({budget}\)"):
        prompt_token_ids(tok, records[1], filt.data)
    run = SimpleNamespace(vision=None, sampler=PromptSampler(len(records), 0), counters={}, prompt_cache={},
                          tokenizer=tok, records=records, cfg=filt)
    idx, prompts = Run.take_prompts(run, 3)
    assert idx == [0, 0, 0] and run.counters["filtered_overlong"] == 12  # only the short record fits
    assert all(len(p) <= budget for p in prompts)
    with pytest.raises(ValueError, match="every one of the 1 records has a prompt over"):
        Run.take_prompts(SimpleNamespace(**{**vars(run), "records": records[1:2], "counters": {},
                                            "sampler": PromptSampler(1, 0), "prompt_cache": {}}), 1)


# ----------------------------------------------------------------------------- DAPO as the official scripts

def test_official_filter_keeps_equal_groups_with_a_mean_inside():
    rewards = torch.tensor([0.5, 0.5, 0.5, 0.0, 0.2, 0.4, 1.0, 1.0, 1.0])
    ours = load_config(overrides=["algorithm.dynamic_sampling=true"])
    official = load_config(overrides=["algorithm.dynamic_sampling=true", "algorithm.drop_equal_groups=false"])
    assert keep_groups(rewards, 3, ours) == [1]
    assert keep_groups(rewards, 3, official) == [0, 1]


def test_dapo_rolls_out_in_chunks_and_needs_groups(tiny, tmp_path):
    sizes = []

    class Alternating(CharRewardWorker):  # rewards 0, 1, 0 in every group: each group is kept
        def submit(self, problems, responses, solutions):
            sizes.append(len(responses))
            fut = Future()
            fut.set_result([Result(total=float(i % 3 == 1)) for i in range(len(responses))])
            return fut

    train(config(tiny, tmp_path / "run", "train.max_steps=1", "data.prompts_per_step=4",
                 "algorithm.dynamic_sampling=true", "algorithm.refill_chunk=3", "algorithm.max_refill_tries=4"),
          reward_worker=Alternating())
    assert sizes == [3 * 3, 3 * 3]  # 3 prompts a round (3 responses each) until 4 groups are kept
    line = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert (line["rollout/refills"], line["rollout/groups_kept"], line["rollout/dropped_groups"]) == (1, 4, 0)
    with pytest.raises(ValueError, match=r"rollout.n must be >= 2, got 1"):  # groups need 2 samples, DAPO too
        load_config(overrides=["algorithm.dynamic_sampling=true", "rollout.n=1"])


# ----------------------------------------------------------------------------- validation

def test_validation_runs_before_and_during_training_with_the_val_sampling(tiny, tmp_path, monkeypatch):
    from medix_r1.rollout import HfRollout

    seen = []
    generate = HfRollout.generate
    monkeypatch.setattr(HfRollout, "generate", lambda self, *a, **k: (
        seen.append((self.cfg.n, self.cfg.temperature, self.cfg.top_p)), generate(self, *a, **k))[1])
    test_file = BUNDLED["pubmedqa"].with_name("test.jsonl")
    worker = CharRewardWorker()
    out = tmp_path / "run"
    train(config(tiny, out, f"data.val={test_file}", "data.val_max_records=3", "train.eval_every=2",
                 "train.eval_before_train=true", "rollout.temperature=0.9", "train.max_steps=3"),
          reward_worker=worker)
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    val = [x for x in lines if "val/reward_total" in x]
    assert [x["step"] for x in val] == [0, 2, 3]  # before training, every 2 steps, after the last step
    assert all(x["val/responses"] == 3 and 0.0 <= x["val/reward_total"] <= 1.0 for x in val)
    assert (1, 0.6, 0.95) in seen and (3, 0.9, 1.0) in seen  # validation vs training sampling
    assert seen.count((1, 0.6, 0.95)) == 3 * 2  # 3 validations of 3 records in rounds of prompts_per_step=2


def test_eval_every_without_validation_data_is_a_config_error(capsys):
    assert train_main(["--set", "train.eval_every=5"]) == 2
    assert "train.eval_every / train.eval_before_train validate on data.val" in capsys.readouterr().err
