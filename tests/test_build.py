"""The build: the compiled CPU backend is there, and the torch-free csrc/ builds with CMake
(CUDA kernels for sm_80 and sm_90a with a register/spill report, CPU kernel unit tests by ctest)."""
import os
import re
import shutil
import subprocess

import pytest

import medix_kernels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_compiled_cpu_backend_is_listed():
    assert "cpu" in medix_kernels.backends(), medix_kernels._backend.extension_error()
    assert medix_kernels._backend.extension().openmp_compiled()


def _cmake():
    return shutil.which("cmake") or pytest.fail("cmake is missing (bash .ci/setup installs it)")


def test_cmake_builds_cuda_kernels_and_runs_ctest(tmp_path):
    nvcc = shutil.which("nvcc") or (os.path.exists("/usr/local/cuda/bin/nvcc") and "/usr/local/cuda/bin/nvcc")
    build = tmp_path / "build"
    cfg = [_cmake(), "-S", ROOT, "-B", str(build), "-DCMAKE_BUILD_TYPE=Release"]
    cfg += [f"-DCMAKE_CUDA_COMPILER={nvcc}"] if nvcc else ["-DMEDIX_BUILD_CUDA=OFF"]
    env = dict(os.environ, MEDIX_CUDA_ARCHS="80;90a")
    subprocess.run(cfg, check=True, capture_output=True, text=True, env=env)
    proc = subprocess.run([_cmake(), "--build", str(build), "-j2"], capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-6000:]
    log = proc.stdout + proc.stderr
    (tmp_path / "ptxas.log").write_text(log)
    if nvcc:
        for arch in ("sm_80", "sm_90a"):
            assert re.search(rf"Compiling entry function .* for '{arch}'", log), f"no {arch} code was compiled"
        spills = [line for line in log.splitlines() if "spill" in line and not line.strip().startswith("0 bytes")]
        assert all(" 0 bytes spill stores, 0 bytes spill loads" in line for line in spills), spills
        link = subprocess.run([str(build / "cuda_link_check")], capture_output=True, text=True)
        assert link.returncode == 0 and "linked" in link.stdout, link.stdout + link.stderr
    test = subprocess.run(["ctest", "--test-dir", str(build), "--output-on-failure"], capture_output=True, text=True)
    assert test.returncode == 0, test.stdout + test.stderr
    assert "tests passed" in test.stdout
