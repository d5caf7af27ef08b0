"""A non-editable install works: the wheel built from this tree, installed into a fresh virtual
environment, runs the command-line tools from outside the source tree (the package data, every
subpackage and the compiled extension are in the wheel).

The fresh environment borrows the project environment's third-party packages through a ``.pth``
line (installing torch again would download gigabytes); the medix packages themselves must come
from the wheel, which the test checks."""
import os
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def run(cmd, cwd, **kw):
    out = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=900, **kw)
    assert out.returncode == 0, f"{cmd} failed ({out.returncode}):\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("install")
    # --no-build-isolation: the extension compiles against the installed torch (no download); the
    # in-tree build folder makes it incremental
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist"),
         str(ROOT)], cwd=ROOT)
    wheel = next((tmp / "dist").glob("medix-*.whl"))
    env_dir = tmp / "env"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                    cwd=tmp).stdout.strip())
    (site / "project_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], cwd=tmp)
    return python, tmp


def clean_env():
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}


def test_the_wheel_installs_and_the_trainer_cli_runs_outside_the_tree(installed):
    python, tmp = installed
    where = run([str(python), "-c", "import medix_r1, medix_kernels, medix_r1.vision, medix_r1.train; "
                 "print(medix_r1.__file__); print(medix_kernels.__file__); print(medix_kernels.backends())"],
                cwd=tmp, env=clean_env()).stdout.splitlines()
    assert all(str(tmp / "env") in line for line in where[:2]), where  # from the wheel, not the source tree
    assert "cpu" in where[2]  # the compiled extension is in the wheel
    out = run([str(python), "-m", "medix_r1.train", "--help"], cwd=tmp, env=clean_env()).stdout
    assert "config fields" in out and "loss.loss_type" in out
    recipes = run([str(python), "-c", "from medix_r1.config import load_config; "
                   "print(load_config('grpo').rollout.n); from medix_r1.data.records import load_records; "
                   "print(len(load_records('pubmedqa')[0]))"], cwd=tmp, env=clean_env()).stdout.split()
    assert recipes == ["5", "500"]  # recipes and the bundled data ship as package data
