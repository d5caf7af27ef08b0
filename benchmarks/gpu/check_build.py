"""The GPU check's first two phases: what the machine has (env) and the extension built for it (build).

- env: ``nvidia-smi``, the versions (``VERSIONS_PY`` run by the phases' interpreter), the GPU's
  properties, whether the peers import, the source tree's hash; written to env.txt.
- build: ``setup.py build_ext`` for one architecture with ``-Xptxas=-v`` (the register / spill
  report, :mod:`.ptxas`), then ``VERIFY_PY``: which backends the built extension has. Dry run: the
  built extension is checked and csrc/cuda/*.cu are compiled alone (:func:`nvcc_report`).
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

from . import ptxas
from .check_common import ROOT, last_json, now

NVCC_FLAGS = ["-O3", "--use_fast_math", "-lineinfo", "-std=c++17"]  # setup.py's, for the dry run's compile


def phase_env(check, limit):
    env_txt = [f"# GPU check environment ({'DRY RUN on ' if check.dry else ''}{os.uname().nodename}, {now()})", ""]
    smi = check.capture(["nvidia-smi"], timeout=30)
    env_txt += ["## nvidia-smi", smi, ""]
    (check.logs / "nvidia-smi-q.txt").write_text(check.capture(["nvidia-smi", "-q"], timeout=30) + "\n")
    for tool in (["nvcc", "--version"], ["compute-sanitizer", "--version"], ["uname", "-a"]):
        env_txt += [f"## {' '.join(tool)}", check.capture(tool, timeout=30), ""]
    probe = check.capture([check.py, "-c", VERSIONS_PY], timeout=max(10, limit - 20))
    try:
        versions = json.loads(probe.strip().splitlines()[-1])
    except (ValueError, IndexError):
        versions = {"error": probe[-2000:]}
    versions["source_tree_sha256"] = tree_hash()
    versions["commit"] = os.environ.get("MEDIX_COMMIT") or check.capture(["git", "rev-parse", "HEAD"], timeout=10)
    check.info["versions"] = versions
    env_txt += ["## versions", json.dumps(versions, indent=1), ""]
    (check.work / "env.txt").write_text("\n".join(env_txt) + "\n")
    shutil.copy(check.work / "env.txt", check.logs / "env.txt")
    missing = [k for k in ("liger_kernel", "trl") if not str(versions.get(k, "-")).strip("-")]
    gpu = versions.get("gpu", {}).get("name", "no GPU")
    note = f"{gpu}; torch {versions.get('torch')} (CUDA {versions.get('torch_cuda')})"
    if missing:
        note += f"; NOT importable: {', '.join(missing)} (bash benchmarks/gpu/wheels.sh, carry .whl)"
    return "ok", note



def phase_build(check, limit):
    log = check.logs / "build.log"
    arch = check.args.arch
    if check.dry:
        res = check.sh([check.py, "-c", VERIFY_PY], log, timeout=min(60, limit))
        ext = last_json(log)
        rcs = nvcc_report(check, log, limit - res["wall_s"] - 5)
        if rcs is None:
            return ("ok" if res["rc"] == 0 else "failed"), "extension checked; nvcc not found (no sm_90a compile)"
        ok = res["rc"] == 0 and ext.get("cpu") and all(rc == 0 for rc in rcs)
        note = (f"dry run: extension not rebuilt (CPU build checked: backends {ext.get('backends')}); "
                f"{len(rcs)} .cu compiled for sm_{arch} (rc {rcs}), {len(check.ptxas_rows)} kernels in the report")
        return ("ok" if ok else "failed"), note
    build_dir = check.work / "build"
    flags = (os.environ.get("NVCC_APPEND_FLAGS", "") + " -Xptxas=-v").strip()
    env = check.env(MAX_JOBS=check.args.jobs, MEDIX_CUDA_ARCHS=arch, NVCC_APPEND_FLAGS=flags,
                    TORCH_CUDA_ARCH_LIST=f"{arch[0]}.{arch[1:]}")  # 90a -> 9.0a
    res = check.sh([check.py, "setup.py", "build_ext", "--inplace", "-t", str(build_dir)], log,
                   timeout=max(5, limit - 20), env=env)
    text = log.read_text(errors="replace")
    check.ptxas_rows = ptxas.parse(text)
    check.ptxas_source = f"the build's nvcc (-gencode=arch=compute_{arch},code=sm_{arch}, -Xptxas=-v)"
    if not check.ptxas_rows:  # the build printed no ptxas lines: compile the kernels alone for the report
        nvcc_report(check, log, min(60, check.remaining()))
    check.sh([check.py, "-c", VERIFY_PY], log, timeout=60, append=True)
    ext = last_json(log)
    check.info["extension"] = ext
    if res["timed_out"]:
        return "timeout", f"build killed after {res['wall_s']} s (see build.log)"
    if res["rc"] != 0:
        return "failed", f"setup.py build_ext exited {res['rc']} (see build.log); Triton rows still run"
    if not ext.get("cuda"):
        return "failed", f"built, but the cuda backend is not usable: {ext}"
    return "ok", (f"built in {res['wall_s']} s; backends {ext.get('backends')}; {len(check.ptxas_rows)} kernels in "
                  f"the ptxas report ({len(ptxas.spilling(check.ptxas_rows))} spilling)")



def nvcc_report(check, log: Path, limit: float):
    """nvcc -c of csrc/cuda/*.cu for the architecture with -Xptxas=-v (setup.py's flags), in parallel; sets
    the ptxas report; returns the exit codes (None: no nvcc)."""
    arch = check.args.arch
    nvcc = shutil.which("nvcc") or next(iter(glob.glob("/usr/local/cuda*/bin/nvcc")), None)
    if nvcc is None:
        check.ptxas_rows, check.ptxas_source = [], "nvcc not found: no report"
        return None
    procs = []
    for src in sorted((ROOT / "csrc" / "cuda").glob("*.cu")):
        cmd = [nvcc, *NVCC_FLAGS, f"-gencode=arch=compute_{arch},code=sm_{arch}", "-Xptxas=-v", "-c", str(src),
               "-o", str(check.work / (src.stem + ".o"))]
        procs.append(subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    text, rcs = "", []
    for p in procs:
        try:
            o, _ = p.communicate(timeout=max(5, limit))
        except subprocess.TimeoutExpired:
            p.kill()
            o, _ = p.communicate()
        text += " ".join(p.args) + "\n" + (o or "") + "\n"
        rcs.append(p.returncode)
    with open(log, "a") as fh:
        fh.write(f"\n# compile-only nvcc of csrc/cuda for sm_{arch} (the register / spill report)\n" + text)
    check.ptxas_rows = ptxas.parse(text)
    check.ptxas_source = f"nvcc -c csrc/cuda/*.cu for sm_{arch} ({' '.join(NVCC_FLAGS)}), compile only"
    return rcs



VERSIONS_PY = r"""
import importlib.metadata as md, json, platform, sys
out = {"python": platform.python_version()}
def ver(name):
    for n in (name, name.replace("_", "-")):
        try:
            return md.version(n)
        except md.PackageNotFoundError:
            pass
    return ""
try:
    import torch
    out.update(torch=torch.__version__, torch_cuda=torch.version.cuda or "-")
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        out["gpu"] = {"name": p.name, "capability": f"{p.major}.{p.minor}", "sms": p.multi_processor_count,
                      "memory_GiB": round(p.total_memory / 2**30, 1),
                      "l2_MB": round(getattr(p, "L2_cache_size", 0) / 2**20, 1)}
        try:
            import subprocess
            out["gpu"]["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                                  capture_output=True, text=True, timeout=20).stdout.strip()
        except Exception as e:
            out["gpu"]["driver"] = f"? ({e})"
except Exception as e:
    out["torch_error"] = repr(e)
for name in ("triton", "liger_kernel", "trl", "transformers", "datasets", "sentence_transformers", "numpy"):
    out[name] = ver(name)
imports = {}
for mod in ("liger_kernel.transformers.grpo_loss", "liger_kernel.chunked_loss", "trl.trainer.utils",
            "sentence_transformers.util"):
    try:
        __import__(mod)
        imports[mod] = "ok"
    except Exception as e:
        imports[mod] = f"{type(e).__name__}: {e}"[:300]
out["imports"] = imports
if imports.get("trl.trainer.utils") != "ok":
    out["trl"] = ""
if not all(imports.get(m) == "ok" for m in ("liger_kernel.transformers.grpo_loss", "liger_kernel.chunked_loss")):
    out["liger_kernel"] = ""
print(json.dumps(out))
"""

VERIFY_PY = r"""
import json
import medix_kernels as mk
from medix_kernels import _backend
ext = _backend.extension()
print(json.dumps({"backends": mk.backends(), "cpu": _backend.has_cpu_extension(),
                  "cuda": _backend.has_cuda_extension(), "cuda_compiled": bool(ext is not None and ext.cuda_compiled()),
                  "error": _backend.extension_error(), "path": getattr(ext, "__file__", None)}))
"""


def tree_hash() -> str:
    h = hashlib.sha256()
    for top in ("medix_kernels", "csrc", "benchmarks", "setup.py", "CMakeLists.txt"):
        p = ROOT / top
        files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file())
        for f in files:
            if "__pycache__" in f.parts or f.suffix in (".so", ".pyc", ".o") or "results" in f.parts:
                continue
            h.update(str(f.relative_to(ROOT)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()
