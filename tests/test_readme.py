"""The README's Python example runs as written, and its two commands are the ones CI runs."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_the_readme_python_example_runs(capsys):
    blocks = re.findall(r"```python\n(.*?)```", README, flags=re.S)
    assert blocks, "the README has a Python example"
    for code in blocks:
        exec(compile(code, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    assert "torch" in printed  # mk.backends() and the loss were printed


def test_the_readme_test_command_is_what_ci_runs():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash .ci/setup && .venv/bin/python -m pytest -q tests" in README
    assert "bash .ci/setup && .venv/bin/python -m pytest -q tests" in ci
    assert "bash .ci/setup && .venv/bin/python -m medix_r1.train" in README


def test_the_readme_stays_short():
    assert len(README.split()) <= 1500
