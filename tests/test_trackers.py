"""train.report_to: the trackers get the resolved config, every step's metrics and the completions
tables, written offline (mlflow's local file store, TensorBoard event files); a tracker whose
library is missing is a config error naming the package."""
import json

import pytest

from medix_r1.config import load_config
from medix_r1.train import trackers as tr
from medix_r1.train import train
from tests.train_helpers import CharRewardWorker, make_tiny_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny"))


def test_report_to_names_and_missing_libraries_are_config_errors(monkeypatch):
    assert tr.tracker_names("mlflow") == ["mlflow"]
    assert tr.tracker_names(["tensorboard", "mlflow", "mlflow"], tensorboard=False) == ["mlflow"]
    assert tr.tracker_names("none") == []
    with pytest.raises(ValueError, match="unknown tracker 'neptune'"):
        tr.check_report_to(["tensorboard", "neptune"])
    real = tr.importlib.util.find_spec
    monkeypatch.setattr(tr.importlib.util, "find_spec", lambda name: None if name == "wandb" else real(name))
    with pytest.raises(ValueError, match=r"report_to='wandb' needs the wandb package.*medix\[trackers\]"):
        tr.check_report_to(["tensorboard", "wandb"])
    from medix_r1.train.cli import main
    assert main(["--set", "train.report_to=[wandb]"]) == 2  # before any model loads


def test_a_run_reports_config_metrics_and_completions_to_mlflow_and_tensorboard(tiny, tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)  # the tracker sets it; undone after the test
    out = tmp_path / "run"
    cfg = load_config("cpu_smollm2", [
        f"model.policy={tiny}", "rollout.engine=hf", "rollout.max_tokens=6", "rollout.n=3",
        "data.prompts_per_step=2", "data.max_records=10", "train.max_steps=2", f"train.output_dir={out}",
        "train.progress=false", "train.plot=false", "train.save_every=0", "train.report_to=[tensorboard, mlflow]",
        "train.log_completions_every=2", "loss.clip_high=0.25"])
    train(cfg, reward_worker=CharRewardWorker())
    history = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]

    client = MlflowClient(tracking_uri=(out / "mlruns").resolve().as_uri())
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert len(runs) == 1
    run = runs[0]
    assert run.data.params["loss.clip_high"] == "0.25" and run.data.params["rollout.n"] == "3"
    logged = client.get_metric_history(run.info.run_id, "reward/total")
    assert [(m.step, m.value) for m in logged] == [(h["step"], pytest.approx(h["reward/total"])) for h in history]
    art = out / "mlruns" / run.info.experiment_id / run.info.run_id / "artifacts"
    assert json.loads((art / "config.json").read_text())["loss"]["clip_high"] == 0.25
    table = json.loads((art / "completions" / "step_000002.json").read_text())
    assert list(table)[:4] == ["step", "prompt", "completion", "total"] and len(table["completion"]) == 6
    assert table["step"] == [2] * 6 and not (art / "completions" / "step_000001.json").exists()
    # CharRewardWorker: the total is the share of 'e' in the completion
    assert table["total"] == [pytest.approx(c.count("e") / max(1, len(c))) for c in table["completion"]]
    assert all(p.strip() for p in table["prompt"])

    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"tensors": 0}).Reload()
    assert [e.step for e in events.Scalars("reward/total")] == [1, 2]
    tags = events.Tags()["tensors"]
    assert any("config" in t for t in tags) and any("completions" in t for t in tags)


# --- a tracker that hangs or fails never stops the run (issue 30, item 9) ------------------------------
class HangsAtStart:
    """Like mlflow with an unreachable server: start-up blocks (here until the test releases it)."""
    module = "json"
    release = __import__("threading").Event()

    def __init__(self, out_dir, run_name):
        pass

    def start(self, config):
        self.release.wait()

    def log(self, step, metrics):
        raise AssertionError("a disabled tracker is not called")

    def log_table(self, step, columns, rows):
        raise AssertionError("a disabled tracker is not called")

    def close(self):
        raise AssertionError("a disabled tracker is not called")


class FailsAtStep2:
    module = "json"
    logged: list = []

    def __init__(self, out_dir, run_name):
        pass

    def start(self, config):
        pass

    def log(self, step, metrics):
        if step == 2:
            raise ConnectionError("tracking server went away")
        self.logged.append(step)

    def log_table(self, step, columns, rows):
        pass

    def close(self):
        pass


def test_a_tracker_that_hangs_at_start_up_is_disabled_within_the_timeout(tmp_path, monkeypatch, caplog):
    import time

    from medix_r1.train.metrics import MetricsLog
    monkeypatch.setitem(tr.TRACKERS, "hangs", HangsAtStart)
    monkeypatch.setattr(tr, "TRACKER_TIMEOUT_S", 0.5)
    try:
        t0 = time.monotonic()
        with caplog.at_level("WARNING", logger="medix_r1.train"):
            metrics = MetricsLog(tmp_path, tensorboard=False, report_to=["hangs"], config={"a": 1})
        assert time.monotonic() - t0 < 5
        assert "tracker hangs: start-up did not finish within 0.5 s" in caplog.text and "disabled" in caplog.text
        metrics.log(1, {"reward/total": 0.5})
        metrics.log_table(1, ["step"], [[1]])
        metrics.close()
        assert json.loads((tmp_path / "metrics.jsonl").read_text()) == {"step": 1, "reward/total": 0.5}
    finally:
        HangsAtStart.release.set()


def test_a_tracker_failing_mid_run_is_disabled_and_training_goes_on(tiny, tmp_path, monkeypatch, caplog):
    monkeypatch.setitem(tr.TRACKERS, "flaky", FailsAtStep2)
    FailsAtStep2.logged.clear()
    out = tmp_path / "run"
    cfg = load_config("cpu_smollm2", [
        f"model.policy={tiny}", "rollout.engine=hf", "rollout.max_tokens=6", "rollout.n=3",
        "data.prompts_per_step=2", "data.max_records=10", "train.max_steps=3", f"train.output_dir={out}",
        "train.progress=false", "train.plot=false", "train.save_every=3", "train.report_to=[flaky]"])
    with caplog.at_level("WARNING", logger="medix_r1.train"):
        train(cfg, reward_worker=CharRewardWorker())
    assert FailsAtStep2.logged == [1]  # disabled at step 2: not called at step 3
    assert caplog.text.count("tracker flaky: logging step 2 failed: ConnectionError") == 1
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert (out / "step_000003" / "COMPLETE").is_file()
