"""An extension built against another torch is not dropped silently: import warns once, naming the torch
_C was built against and how to rebuild (the build embeds that version in the file)."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import medix_kernels
from medix_kernels import _backend

ROOT = Path(medix_kernels.__file__).resolve().parent


@pytest.mark.skipif(not _backend.has_cpu_extension(), reason="the extension is not built")
def test_the_built_extension_names_the_torch_it_was_built_against():
    assert _backend.extension().built_with_torch == torch.__version__.split("+")[0]
    assert _backend._built_with_torch() == torch.__version__.split("+")[0]


def test_an_extension_built_for_another_torch_warns_on_import_naming_both(tmp_path):
    pkg = tmp_path / "medix_kernels"
    shutil.copytree(ROOT, pkg, ignore=shutil.ignore_patterns("_C*", "__pycache__"))
    # a file that is no loadable module but carries the marker of a build against torch 2.99.0
    (pkg / "_C.cpython-311-x86_64-linux-gnu.so").write_bytes(b"\0" * 64 + b"medix-built-with-torch 2.99.0\0")
    code = ("import warnings; warnings.simplefilter('always')\n"
            "import medix_kernels\nprint(medix_kernels.backends())")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert f"built against torch 2.99.0 but torch {torch.__version__} is installed" in out.stderr
    assert "pip install --no-build-isolation --no-deps -e ." in out.stderr
    assert out.stderr.count("RuntimeWarning") == 1
    assert "'cpu'" not in out.stdout  # the ops run on torch
