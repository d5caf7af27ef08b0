"""A non-editable install works: the wheel built from this tree, installed into a fresh virtual
environment, runs the command-line tools and every console command from outside the source tree
(the package data, every subpackage and the compiled extension are in the wheel); the sdist
carries the C++/CUDA sources the extension is built from.

The fresh environment borrows the project environment's third-party packages through a ``.pth``
line (installing torch again would download gigabytes); the medix packages themselves must come
from the wheel, which the test checks. tests/test_install_extras.py installs the same wheel with its
extras alone into a venv of its own, which catches a dependency missing from pyproject.toml."""
import sys
import sysconfig
import tarfile
import venv
from pathlib import Path

import pytest

from tests.install_helpers import ROOT, build_wheel, clean_env, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("install")
    wheel = build_wheel(tmp_path_factory)
    env_dir = tmp / "env"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    site = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                    cwd=tmp).stdout.strip())
    (site / "project_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    # clean_env: with PYTHONPATH at the checkout, pip would take the build's medix.egg-info there for an
    # installed medix and skip the wheel
    run([str(python), "-m", "pip", "install", "--no-deps", "--no-index", "-q", str(wheel)], cwd=tmp, env=clean_env())
    return python, tmp


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


# console command -> a phrase its --help prints (each is `python -m <module>` under another name)
COMMANDS = {"medix-train": "config fields", "medix-eval": "--benchmarks", "medix-rewards": "score",
            "medix-rollout-server": "--model", "medix-checkpoint": "export"}


def test_every_console_command_runs_its_help_outside_the_tree(installed):
    python, tmp = installed
    declared = run([str(python), "-c", "from importlib.metadata import entry_points; "
                    "print(' '.join(sorted(e.name for e in entry_points(group='console_scripts') "
                    "if e.value.startswith('medix_'))))"], cwd=tmp, env=clean_env()).stdout.split()
    assert declared == sorted(COMMANDS)  # the wheel's entry points are exactly the documented commands
    for name, phrase in COMMANDS.items():
        out = run([str(python.parent / name), "--help"], cwd=tmp, env=clean_env()).stdout
        assert phrase in out and "usage:" in out, (name, out[:500])
        assert f"usage: {name} " in out, f"{name} --help calls itself {out.split(chr(10))[0]!r}"


def test_the_sdist_carries_the_extension_sources(tmp_path):
    # PEP 517's build_sdist, without isolation (as pip would call it)
    code = f"from setuptools import build_meta; print(build_meta.build_sdist({str(tmp_path)!r}))"
    name = run([sys.executable, "-c", code], cwd=ROOT).stdout.strip().splitlines()[-1]
    with tarfile.open(tmp_path / name) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    csrc = {str(p.relative_to(ROOT)) for p in (ROOT / "csrc").rglob("*") if p.is_file()}
    assert csrc and csrc <= names, sorted(csrc - names)
    assert {"setup.py", "pyproject.toml", "CMakeLists.txt", "medix_r1/recipes/grpo.yaml",
            "medix_r1/data/pubmedqa/train.jsonl"} <= names
