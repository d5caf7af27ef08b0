"""``python -m medix_r1.checkpoint export``: a trainer checkpoint -> a Hugging Face folder that
transformers loads with the same tensors (fp32 as saved, or cast to bf16); errors before any work.
The sharded (2-rank torchrun) checkpoint is exported in tests/test_distributed.py (slow)."""
import json

import pytest
import torch

from medix_r1 import checkpoint as ckpt
from medix_r1.config import load_config
from medix_r1.train import train
from tests.train_helpers import CharRewardWorker, make_tiny_model


@pytest.fixture(scope="module")
def step_dir(tmp_path_factory):
    tiny = make_tiny_model(tmp_path_factory.mktemp("tiny"))
    out = tmp_path_factory.mktemp("run")
    train(load_config("cpu_smollm2", [f"model.policy={tiny}", "rollout.engine=hf", "rollout.max_tokens=6",
                                      "rollout.n=3", "data.prompts_per_step=2", "data.max_records=10",
                                      "train.max_steps=1", f"train.output_dir={out}", "train.progress=false",
                                      "train.tensorboard=false", "train.plot=false", "optim.lr=1e-2"]),
          reward_worker=CharRewardWorker())
    return out / "step_000001", tiny


def loaded(folder, dtype=torch.float32):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=dtype)
    return model.state_dict(), AutoTokenizer.from_pretrained(str(folder))


def test_export_loads_back_with_the_checkpoint_tensors(step_dir, tmp_path):
    step, tiny = step_dir
    assert ckpt.main(["export", str(step), str(tmp_path / "hf")]) == 0
    got, tok = loaded(tmp_path / "hf")
    want, _ = loaded(step / "model")
    start, _ = loaded(tiny)
    assert sorted(got) == sorted(want)
    assert all(torch.equal(got[k], want[k]) for k in want)
    assert not torch.equal(got["model.embed_tokens.weight"], start["model.embed_tokens.weight"])  # trained
    assert tok("Is aspirin safe?")["input_ids"] == loaded(tiny)[1]("Is aspirin safe?")["input_ids"]
    assert (tmp_path / "hf" / "model.safetensors").is_file() and (tmp_path / "hf" / "tokenizer_config.json").is_file()


def test_export_casts_to_bf16(step_dir, tmp_path):
    step, _ = step_dir
    ckpt.export_hf(step, tmp_path / "bf16", dtype="bf16")
    from safetensors.torch import load_file
    raw = load_file(str(tmp_path / "bf16" / "model.safetensors"))
    assert {v.dtype for v in raw.values()} == {torch.bfloat16}
    got, _ = loaded(tmp_path / "bf16", dtype=torch.bfloat16)
    want, _ = loaded(step / "model")
    assert all(torch.equal(got[k], want[k].to(torch.bfloat16)) for k in want)
    assert json.loads((tmp_path / "bf16" / "config.json").read_text())["dtype"] == "bfloat16"


def test_push_to_hub_uploads_the_written_folder(step_dir, tmp_path, monkeypatch):
    import huggingface_hub
    calls = []

    class FakeApi:  # no network: record what would be sent
        def create_repo(self, repo_id, exist_ok=False):
            calls.append(("create_repo", repo_id, exist_ok))

        def upload_folder(self, folder_path, repo_id):
            calls.append(("upload_folder", sorted(p.name for p in __import__("pathlib").Path(folder_path).iterdir()),
                          repo_id))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # set for the tests (conftest); a push needs the network
    ckpt.export_hf(step_dir[0], tmp_path / "hf", push_to_hub="me/medix-tiny")
    assert calls[0] == ("create_repo", "me/medix-tiny", True)
    assert calls[1][0] == "upload_folder" and calls[1][2] == "me/medix-tiny"
    assert {"config.json", "model.safetensors", "tokenizer_config.json"} <= set(calls[1][1])


def test_bad_arguments_fail_before_any_work(step_dir, tmp_path, capsys):
    step, _ = step_dir
    assert ckpt.main(["export", str(tmp_path), str(tmp_path / "x")]) == 2
    assert "not a complete checkpoint" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "f").write_text("x")
    assert ckpt.main(["export", str(step), str(tmp_path / "full")]) == 2
    assert "not empty" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ckpt.main(["export", str(step), str(tmp_path / "y"), "--dtype", "int8"])


# --- damaged checkpoints and bad arguments: one line each, nothing exported (issue 30, items 4 and 13) --
def damaged_copy(step, tmp_path, damage):
    import shutil
    copy = tmp_path / "step_000001"
    shutil.copytree(step, copy)
    damage(copy)
    return copy


def flip_64_bytes(copy):
    f = copy / "model" / "model.safetensors"
    data = bytearray(f.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    f.write_bytes(bytes(data))


def truncate(copy):
    f = copy / "model" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:1000])


def no_manifest(copy):  # a checkpoint written before checksums: the loader reports the bad file
    (copy / "COMPLETE").write_text("1")
    truncate(copy)


def no_config(copy):
    state = json.loads((copy / "trainer_state.json").read_text())
    del state["config"]
    (copy / "trainer_state.json").write_text(json.dumps(state))
    import hashlib
    marker = json.loads((copy / "COMPLETE").read_text())  # keep the manifest true to the edited file
    data = (copy / "trainer_state.json").read_bytes()
    marker["files"]["trainer_state.json"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (copy / "COMPLETE").write_text(json.dumps(marker))


@pytest.mark.parametrize("damage, message", [
    (flip_64_bytes, "model/model.safetensors does not match its recorded sha256"),
    (truncate, "model/model.safetensors has 1000 bytes"),
    (no_manifest, "not a readable safetensors file"),
    (no_config, "trainer_state.json has no config.model.policy"),
])
def test_a_damaged_checkpoint_is_refused_in_one_line(step_dir, tmp_path, capsys, damage, message):
    copy = damaged_copy(step_dir[0], tmp_path, damage)
    assert ckpt.main(["export", str(copy), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "Traceback" not in err, err
    assert not (tmp_path / "hf").exists()


def test_an_out_dir_that_is_a_file_is_one_line(step_dir, tmp_path, capsys):
    (tmp_path / "hf").write_text("mine")
    assert ckpt.main(["export", str(step_dir[0]), str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a file" in err and (tmp_path / "hf").read_text() == "mine"


def test_a_failed_push_is_one_line_and_keeps_the_folder(step_dir, tmp_path, capsys, monkeypatch):
    import huggingface_hub

    class OfflineApi:
        def create_repo(self, repo_id, exist_ok=False):
            raise ConnectionError("Failed to resolve 'huggingface.co'\nmore lines")

    monkeypatch.setattr(huggingface_hub, "HfApi", OfflineApi)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    assert ckpt.main(["export", str(step_dir[0]), str(tmp_path / "hf"), "--push-to-hub", "me/x"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "but pushing it to me/x failed (ConnectionError" in err and "Traceback" not in err
    assert (tmp_path / "hf" / "model.safetensors").is_file()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # known offline: refused before any work
    assert ckpt.main(["export", str(step_dir[0]), str(tmp_path / "hf2"), "--push-to-hub", "me/x"]) == 2
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err and not (tmp_path / "hf2").exists()
