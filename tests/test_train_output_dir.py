"""A used output dir (issue 17): refused without --resume / --overwrite, --overwrite deletes the
previous run's own files only, an output dir that cannot be created is one line; bad data files
are one line naming the file and line."""
import json

import pytest

from medix_r1.train.cli import main
from medix_r1.train.output_dir import is_used
from tests.train_helpers import make_tiny_model

RUN = ["rollout.engine=hf", "rollout.max_tokens=6", "rollout.n=3", "data.prompts_per_step=2",
       "data.max_records=20", "train.progress=false", "train.tensorboard=false", "train.plot=false",
       "train.save_every=1", "reward.judge=none", "reward.embedding_model=none"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("tiny"))


def argv(tiny, out, *flags, steps=1):
    args = ["--set", f"model.policy={tiny}", "--output-dir", str(out), "--max-steps", str(steps), "-q", *flags]
    for kv in RUN:
        args += ["--set", kv]
    return args


def old_run(out):
    """What a previous run left: metrics, a checkpoint at step 2, a torn write; and a user's file."""
    (out / "step_000002").mkdir(parents=True)
    (out / "step_000002" / "COMPLETE").write_text("2")
    (out / ".tmp_step_000003_999").mkdir()
    (out / "metrics.jsonl").write_text('{"step": 1}\n{"step": 2}\n')
    (out / "notes.txt").write_text("mine")
    return sorted(p.name for p in out.iterdir())


def test_a_used_dir_is_refused_in_one_line_and_left_as_it_was(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    before = old_run(out)
    assert main(argv(tiny, out)) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(out) in err and "--resume" in err and "--overwrite" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == before
    assert (out / "metrics.jsonl").read_text() == '{"step": 1}\n{"step": 2}\n'


def test_overwrite_deletes_the_previous_run_only(tiny, tmp_path):
    out = tmp_path / "run"
    old_run(out)
    assert main(argv(tiny, out, "--overwrite")) == 0
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl", "notes.txt", "step_000001"]
    assert (out / "notes.txt").read_text() == "mine"
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1]
    # the dir is now used by this run: running again without a flag is refused, --resume continues it
    assert main(argv(tiny, out, steps=2)) == 2
    assert main(argv(tiny, out, "--resume", steps=2)) == 0
    assert [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()] == [1, 2]


def test_resume_with_overwrite_and_an_uncreatable_dir_are_one_line(tiny, tmp_path, capsys):
    assert main(argv(tiny, tmp_path / "r", "--resume", "--overwrite")) == 2
    assert "pass one of them" in capsys.readouterr().err
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert main(argv(tiny, blocker / "run")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "cannot create" in err and str(blocker / "run") in err
    assert "Traceback" not in err


def test_what_counts_as_used(tmp_path):
    assert not is_used(tmp_path / "missing")
    (tmp_path / "metrics.jsonl").write_text("")  # a run that died before its first step
    (tmp_path / "other_step_1").mkdir()
    assert not is_used(tmp_path)
    (tmp_path / "step_000001").mkdir()
    assert is_used(tmp_path)


@pytest.mark.parametrize("content, message", [
    (None, "an existing file"),
    (b"", "no valid records"),
    (b'{"id": "a", "images": [], "problem": "p", "solution": "<OTHER> a"}\n\xff\xfe\n', ":2: not valid UTF-8"),
])
def test_bad_data_files_are_one_line_naming_file_and_line(tiny, tmp_path, capsys, content, message):
    data = tmp_path / "train.jsonl"
    if content is not None:
        data.write_bytes(content)
    assert main(argv(tiny, tmp_path / "run", "--set", f"data.train={data}")) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(data) in err and message in err and "Traceback" not in err


# --- one run per output dir (issue 30, item 3) --------------------------------------------------------
def start_holder(tiny, out):
    """A training run in ``out`` that goes on until killed (in its own process), once it has logged a step."""
    import os
    import subprocess
    import sys
    import time
    env = dict(os.environ, PYTHONPATH=str(__import__("pathlib").Path(__file__).resolve().parents[1]))
    proc = subprocess.Popen([sys.executable, "-m", "medix_r1.train", *argv(tiny, out, steps=100000)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    t0 = time.monotonic()
    while not ((out / "metrics.jsonl").is_file() and (out / "metrics.jsonl").stat().st_size):
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.monotonic() - t0 < 120, "the first run logged no step in 120 s"
        time.sleep(0.2)
    return proc


def test_a_second_run_in_a_folder_in_use_is_refused_naming_the_holder(tiny, tmp_path, capsys, caplog):
    import signal
    import socket
    out = tmp_path / "run"
    holder = start_holder(tiny, out)
    try:
        for flags in ((), ("--resume",), ("--overwrite",)):
            assert main(argv(tiny, out, *flags, steps=2)) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and "in use by another run" in err, err
            assert f"pid {holder.pid} on host {socket.gethostname()!r}" in err and "Traceback" not in err
        assert holder.poll() is None  # the first run goes on, its files untouched by the refused ones
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    # killed: the kernel freed its lock; the next run takes the lock over, naming the dead holder
    with caplog.at_level("WARNING", logger="medix_r1.train"):
        assert main(argv(tiny, out, "--resume", steps=1)) == 0
    assert f"taking over the lock left by pid {holder.pid}" in caplog.text
    assert not (out / ".medix-train.lock").exists()  # released at the end of the run


def test_the_lock_rules(tmp_path):
    import json
    import os
    import socket

    from medix_r1.train import output_dir as od
    assert od.lock_output_dir(tmp_path) is None
    assert od.lock_output_dir(tmp_path) is None  # this process already holds it
    held = json.loads((tmp_path / od.LOCK_NAME).read_text())
    assert held["pid"] == os.getpid() and held["host"] == socket.gethostname()
    od.release_output_dir(tmp_path)
    assert not (tmp_path / od.LOCK_NAME).exists()
    od.release_output_dir(tmp_path)  # idempotent
    # a lock file naming a live process of this host whose flock is free: flock is not honoured here
    (tmp_path / od.LOCK_NAME).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    problem = od.lock_output_dir(tmp_path)
    assert problem is not None and f"pid {os.getppid()}" in problem and "ignore flock" in problem
    # a dead process, or a file that is not JSON: stale, taken over
    (tmp_path / od.LOCK_NAME).write_text(json.dumps({"pid": 2 ** 22 + 12345, "host": socket.gethostname()}))
    assert od.lock_output_dir(tmp_path) is None
    od.release_output_dir(tmp_path)
    (tmp_path / od.LOCK_NAME).write_text("garbage")
    assert od.lock_output_dir(tmp_path) is None
    od.release_output_dir(tmp_path)
