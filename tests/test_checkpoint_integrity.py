"""Checkpoint integrity (issue 17): checksums in the COMPLETE marker, fallback to the previous
complete checkpoint when the latest is corrupt, and no unpickling of arbitrary objects on load."""
import json
import logging

import pytest

from medix_r1 import checkpoint as ckpt
from medix_r1.train import train
from tests.train_helpers import CharRewardWorker, make_tiny_model, tiny_run_config


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny"))


def config(tiny, out, *more):
    return tiny_run_config(tiny, out, "train.tensorboard=false", "train.plot=false", "optim.lr=1e-3",
                           "train.save_every=1", "train.keep_last=5", *more)


@pytest.fixture(scope="module")
def two_steps(tiny, tmp_path_factory):
    """A finished two-step run (step_000001, step_000002) and its metrics, copied per test."""
    out = tmp_path_factory.mktemp("run") / "run"
    summary = train(config(tiny, out), reward_worker=CharRewardWorker())
    return out, summary["history"]


def copy_run(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


def test_marker_records_size_and_sha256_of_every_file(two_steps):
    out, _ = two_steps
    path = out / "step_000002"
    marker = json.loads((path / "COMPLETE").read_text())
    assert marker["step"] == 2
    files = marker["files"]
    assert {"model/model.safetensors", "optim_rng.pt", "trainer_state.json", "model/config.json"} <= set(files)
    f = files["optim_rng.pt"]
    assert f["bytes"] == (path / "optim_rng.pt").stat().st_size
    assert f["sha256"] == ckpt.file_sha256(path / "optim_rng.pt")
    assert ckpt.verify_checkpoint(path) is None


def test_a_flipped_byte_of_the_same_size_is_caught(two_steps, tmp_path):
    path = copy_run(two_steps[0], tmp_path / "run") / "step_000002"
    f = path / "model" / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0x01
    f.write_bytes(bytes(data))
    assert ckpt.verify_checkpoint(path) == "model/model.safetensors does not match its recorded sha256"


@pytest.mark.parametrize("name", ["model/model.safetensors", "optim_rng.pt"])
def test_truncated_latest_checkpoint_falls_back_to_the_previous(tiny, two_steps, tmp_path, caplog, name):
    out = copy_run(two_steps[0], tmp_path / "run")
    bad = out / "step_000002" / name
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    with caplog.at_level(logging.INFO):
        summary = train(config(tiny, out), resume=True, reward_worker=CharRewardWorker())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "corrupt" in r.getMessage()]
    assert len(warnings) == 1 and str(out / "step_000002") in warnings[0] and name in warnings[0]
    assert any(f"resumed from {out / 'step_000001'} (step 1)" in r.getMessage() for r in caplog.records)
    # step 2 was done again from step 1's state: the same numbers as the first time (exact resume)
    assert [h["step"] for h in summary["history"]] == [1, 2]
    assert summary["history"][1]["loss/loss"] == two_steps[1][1]["loss/loss"]
    assert ckpt.verify_checkpoint(out / "step_000002") is None  # rewritten, whole again


def test_every_checkpoint_corrupt_is_one_clear_error(tiny, two_steps, tmp_path):
    out = copy_run(two_steps[0], tmp_path / "run")
    for step in ("step_000001", "step_000002"):
        (out / step / "optim_rng.pt").write_bytes(b"")
    with pytest.raises(ckpt.CheckpointError, match="no usable checkpoint in .*all 2 complete ones are corrupt"):
        train(config(tiny, out), resume=True, reward_worker=CharRewardWorker())


class _Payload:
    """What a hostile checkpoint could hold: unpickling it would create a file."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (str(self.target), "w"))


def test_a_checkpoint_that_would_run_code_is_refused_not_unpickled(tiny, two_steps, tmp_path, caplog):
    """Even with a manifest that matches (the attacker rewrote it), loading never unpickles objects."""
    import torch

    out = copy_run(two_steps[0], tmp_path / "run")
    path = out / "step_000002"
    target = tmp_path / "pwned"
    blob = torch.load(path / "optim_rng.pt", weights_only=True)
    blob["rng"]["python"] = _Payload(target)
    torch.save(blob, path / "optim_rng.pt")
    marker = json.loads((path / "COMPLETE").read_text())
    marker["files"] = ckpt.manifest(path)
    (path / "COMPLETE").write_text(json.dumps(marker))
    with caplog.at_level(logging.WARNING):
        train(config(tiny, out), resume=True, reward_worker=CharRewardWorker())
    assert not target.exists()
    assert any(str(path) in r.getMessage() and "corrupt" in r.getMessage() for r in caplog.records)


def test_a_failed_write_stops_with_one_clear_error_and_leaves_no_torn_folder(tiny, two_steps, tmp_path,
                                                                              monkeypatch):
    """A full disk, as torch's zip writer reports it (seen in a real run): the third step's checkpoint
    fails; the error names the folder, the free space and how to go on; step 2 stays usable."""
    out = copy_run(two_steps[0], tmp_path / "run")

    def full_disk(obj, path, *a, **k):
        open(path, "wb").write(b"x" * 1000)  # a part was written before the failure
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 369510016 vs 369509904")
    monkeypatch.setattr(ckpt.store.torch, "save", full_disk)
    with pytest.raises(ckpt.CheckpointError) as info:
        train(config(tiny, out, "train.max_steps=3"), resume=True, reward_worker=CharRewardWorker())
    msg = str(info.value)
    assert msg.startswith(f"could not write the checkpoint {out / 'step_000003'} (RuntimeError: [enforce fail")
    assert "GiB free on its filesystem" in msg and "--resume to continue from step_000002" in msg
    assert sorted(p.name for p in out.iterdir() if p.name.startswith((".tmp", "step_"))) == \
        ["step_000001", "step_000002"]
    assert ckpt.verify_checkpoint(out / "step_000002") is None
