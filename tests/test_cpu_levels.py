"""Every ISA level of the C++ CPU kernels against the reference.

The kernels are compiled for AVX-512, AVX2 + FMA and baseline x86-64 and pick the widest the CPU
has at run time; MEDIX_CPU_LEVEL=0/1 caps that choice (csrc/cpu/isa.h), which is how a wide
machine tests the narrower paths. Each level the machine can run computes every case of
tests/cpu_level_outputs.py in its own process (group advantages: fixed sizes with and without a
vector kernel, ragged groups, composite totals, NaN policy, bf16; the policy loss: log-probs,
entropy and their gradients, grpo_loss with the default and the in-place backward, fp32 / bf16 /
fp16), and every output must match the reference within the tolerance table.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medix_kernels import _backend
from tests import cpu_level_outputs as cases
from tests.tolerances import tol

ROOT = Path(__file__).resolve().parents[1]
ext = _backend.extension()
LEVELS = [lvl for lvl in (0, 1, 2) if ext is not None and lvl <= ext.cpu_level()]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """{level: outputs}, one subprocess per level, and the reference's outputs under None."""
    got = {None: cases.reference_outputs()}
    for level in LEVELS:
        path = tmp_path_factory.mktemp("levels") / f"level{level}.pt"
        env = dict(os.environ, MEDIX_CPU_LEVEL=str(level),
                   PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        subprocess.run([sys.executable, "-m", "tests.cpu_level_outputs", str(path)], check=True, env=env, cwd=ROOT,
                       timeout=600)
        got[level] = torch.load(path)
    return got


def test_levels_report_what_was_asked(tmp_path):
    for level in LEVELS:
        env = dict(os.environ, MEDIX_CPU_LEVEL=str(level))
        out = subprocess.run([sys.executable, "-c", "import medix_kernels._C as c; print(c.cpu_level())"], env=env,
                             cwd=ROOT, capture_output=True, text=True, check=True, timeout=120)
        assert int(out.stdout) == level


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("name", list(cases.advantage_cases()))
def test_advantages_at_level(outputs, level, name):
    got, want = outputs[level][name], outputs[None][name]
    t = tol("advantages", torch.float32)
    torch.testing.assert_close(got["adv"], want["adv"], **(tol("advantages", torch.bfloat16) if "bf16" in name else t))
    torch.testing.assert_close(got["mean"], want["mean"], **t)
    torch.testing.assert_close(got["std"], want["std"], **t)
    assert torch.equal(got["degenerate"], want["degenerate"])
    if want["total"] is not None:  # composite: weighted sums in double, rounded once, on every level
        torch.testing.assert_close(got["total"], want["total"], rtol=1e-6, atol=1e-6)
        assert torch.equal(got["total"], outputs[LEVELS[0]][name]["total"])


@pytest.mark.parametrize("level", LEVELS)
def test_exp_bound_at_level(outputs, level):
    """The kernels' e^x, read through the gradient of rows whose lse is exactly 0, within the bound
    of the tolerance table (measured there on every fp32 input by the C++ test)."""
    exact = cases.exp_probe_inputs().double().exp()
    torch.testing.assert_close(outputs[level]["exp"].double(), exact, rtol=tol("exp", torch.float32)["rtol"], atol=0)


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("name", list(cases.loss_cases()))
def test_policy_loss_at_level(outputs, level, name):
    got, want = outputs[level][name], outputs[None][name]
    _, dtype, what = cases.loss_cases()[name]
    for key in got:
        family = "logprob_grad" if key == "grad" else "logprob" if what == "logprob" else "loss"
        torch.testing.assert_close(got[key], want[key].float(), **tol(family, dtype), msg=f"{name} {key}")
