"""The register / spill report of a CUDA build: ``ptxas -v`` lines (``-Xptxas=-v``) parsed into one
row per (kernel, architecture). Standard library only (the orchestrator imports it)."""
from __future__ import annotations

import re
import shutil
import subprocess

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '([^']+)'")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers(?:, used (\d+) barriers)?(?:, (\d+) bytes smem)?(?:, (\d+) bytes cmem\[0\])?")


def parse(log: str) -> list[dict]:
    """[{kernel, arch, registers, barriers, smem, stack, spill_stores, spill_loads}] in log order."""
    rows, cur = [], None
    for line in log.splitlines():
        m = _ENTRY.search(line)
        if m:
            cur = {"kernel": m.group(1), "arch": m.group(2), "registers": None, "barriers": 0, "smem": 0,
                   "stack": None, "spill_stores": None, "spill_loads": None}
            rows.append(cur)
            continue
        if cur is None:
            continue
        m = _FRAME.search(line)
        if m and cur["stack"] is None:
            cur["stack"], cur["spill_stores"], cur["spill_loads"] = (int(g) for g in m.groups())
            continue
        m = _USED.search(line)
        if m and cur["registers"] is None:
            cur["registers"] = int(m.group(1))
            cur["barriers"] = int(m.group(2) or 0)
            cur["smem"] = int(m.group(3) or 0)
    return rows


def demangle(names: list[str]) -> dict:
    """{mangled: readable} through c++filt when it is there (else the names as they are)."""
    tool = shutil.which("c++filt") or shutil.which("cu++filt")
    if not tool or not names:
        return {n: n for n in names}
    try:
        out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True, timeout=30).stdout
        lines = out.splitlines()
        if len(lines) == len(names):
            return dict(zip(names, lines))
    except (OSError, subprocess.TimeoutExpired):
        pass
    return {n: n for n in names}


def spilling(rows: list[dict]) -> list[dict]:
    """Kernels with a stack frame or spills (local memory: slow; HOPPER.md)."""
    return [r for r in rows if (r["stack"] or 0) > 0 or (r["spill_stores"] or 0) > 0 or (r["spill_loads"] or 0) > 0]


def report(rows: list[dict], source: str) -> str:
    """A plain-text table for ptxas.txt."""
    names = demangle(sorted({r["kernel"] for r in rows}))
    lines = [f"# ptxas register / spill report ({source})",
             f"# {len(rows)} kernel entries; {len(spilling(rows))} with a stack frame or spills", "",
             f"{'arch':8s} {'regs':>4s} {'smem':>6s} {'stack':>5s} {'spill st':>8s} {'spill ld':>8s}  kernel"]
    for r in rows:
        lines.append(f"{r['arch']:8s} {r['registers'] if r['registers'] is not None else '?':>4} {r['smem']:>6} "
                     f"{r['stack'] if r['stack'] is not None else '?':>5} "
                     f"{r['spill_stores'] if r['spill_stores'] is not None else '?':>8} "
                     f"{r['spill_loads'] if r['spill_loads'] is not None else '?':>8}  "
                     f"{names.get(r['kernel'], r['kernel'])}")
    return "\n".join(lines) + "\n"
