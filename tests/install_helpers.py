"""Shared by the install tests (tests/test_install.py, tests/test_install_extras.py): run a command
with a bounded wait and pip's tail on failure, an environment free of this checkout, and the wheel
built from this tree (once per pytest session: the C++ extension takes minutes to compile)."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(cmd, cwd, timeout=900, **kw):
    """Run ``cmd`` and return the finished process; on a non-zero exit or a timeout, fail with the
    command and the tail of its output (where pip says what it could not resolve or download)."""
    cmd = [str(c) for c in cmd]
    try:
        out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired as e:
        tail = lambda s: (s.decode(errors="replace") if isinstance(s, bytes) else s or "")[-3000:]
        raise AssertionError(f"{cmd} ran past {timeout} s:\n{tail(e.stdout)}\n{tail(e.stderr)}") from None
    assert out.returncode == 0, f"{cmd} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def clean_env(**extra):
    """This process's environment without the variables that point Python at the checkout or the
    project's virtual environment (so imports resolve in the environment under test), plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def build_wheel(tmp_path_factory) -> Path:
    """The medix wheel built from this tree, built once per session under pytest's base temp folder.

    --no-deps --no-build-isolation: the extension compiles against the project environment's torch
    (no download); the in-tree build folder makes a rebuild incremental."""
    dist = tmp_path_factory.getbasetemp() / "medix-wheel"
    built = sorted(dist.glob("medix-*.whl"))
    if built:
        return built[0]
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", dist, ROOT],
        cwd=ROOT, timeout=1800)
    return next(dist.glob("medix-*.whl"))
