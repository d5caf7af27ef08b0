"""Build medix_kernels._C with torch.utils.cpp_extension (pybind11 + ninja).

- The C++ CPU kernels are always built (OpenMP where the compiler has it).
- The CUDA kernels are built too when the installed torch has CUDA and nvcc is found;
  architectures from MEDIX_CUDA_ARCHS (default "80;90a"). MEDIX_NO_CUDA=1 skips them.

Install with `pip install --no-build-isolation -e .` so the build uses the installed torch and
pip never pulls another one (`bash .ci/setup` does this).
"""
import glob
import os
import re

import torch
from setuptools import find_packages, setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))


def with_cuda() -> bool:
    if os.environ.get("MEDIX_NO_CUDA") == "1":
        return False
    return torch.version.cuda is not None and CUDA_HOME is not None


def gencode_flags() -> list[str]:
    archs = [a.strip() for a in os.environ.get("MEDIX_CUDA_ARCHS", "80;90a").split(";") if a.strip()]
    return [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]


def extension():
    # Torch glue: every .cpp in csrc/torch; the cuda_*.cpp files hold the CUDA registrations.
    rel = lambda p: os.path.relpath(p, HERE)
    glue = sorted(rel(p) for p in glob.glob(os.path.join(HERE, "csrc", "torch", "*.cpp")))
    cxx = ["-O3", "-g0", "-fopenmp", "-Wno-unknown-pragmas"]  # -g0: no debug info (a third of the build time)
    if not with_cuda():
        sources = [s for s in glue if not os.path.basename(s).startswith("cuda_")]
        return CppExtension("medix_kernels._C", sources, extra_compile_args={"cxx": cxx},
                            extra_link_args=["-fopenmp"])
    kernels = sorted(rel(p) for p in glob.glob(os.path.join(HERE, "csrc", "cuda", "*.cu")))
    nvcc = ["-O3", "--use_fast_math", "-lineinfo", "-std=c++17"] + gencode_flags()
    return CUDAExtension("medix_kernels._C", glue + kernels, define_macros=[("MEDIX_WITH_CUDA", None)],
                         extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=["-fopenmp"])


def long_description() -> str:
    """README.md for the package index, where relative links have no target: a link to a file of the
    repository becomes its text and the path, a link to a heading its text."""
    def plain(m):
        text, target = m.group(1), m.group(2)
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http(s): kept
            return m.group(0)
        return text if target.startswith("#") or text.strip("`") == target else f"{text} (`{target}` in the repository)"
    with open(os.path.join(HERE, "README.md"), encoding="utf-8") as f:
        return re.sub(r"(?<!!)\[([^\]]+)\]\(([^)\s]+)\)", plain, f.read())


# name, version, dependencies, extras and console commands: pyproject.toml ([project]); the long
# description is README.md with its relative links made readable off the repository (above)
setup(
    long_description=long_description(),
    long_description_content_type="text/markdown",
    packages=find_packages(include=["medix_kernels*", "medix_r1*"]),
    package_data={"medix_r1": ["recipes/*.yaml", "data/pubmedqa/*"]},
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
    zip_safe=False,
)
