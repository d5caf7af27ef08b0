"""A rollout server: one in-process vLLM engine behind a small HTTP API, weights synced over torch.distributed.

``python -m medix_r1.rollout.server --model DIR [--host 127.0.0.1] [--port 8100] [--max-model-len 640]
[--kv-cache-gb 1.0] [--dtype auto]`` loads ``DIR`` into a vLLM ``LLM`` (in this process:
``VLLM_ENABLE_V1_MULTIPROCESSING=0``) and serves it until SIGTERM / Ctrl-C. The trainer talks to it
with :class:`medix_r1.rollout.client.ServerRollout` (``rollout.engine=server``); see docs/rollout_server.md.

Endpoints (JSON in, JSON out; errors are ``{"detail": "..."}`` with 400 bad request, 409 wrong
state, 507 out of memory, 500 anything else):

- ``GET /health``: ``status``, ``model``, ``dtype``, ``max_model_len``, ``sampling`` (the optional
  sampling knobs /generate takes), ``instance`` (a random id per
  server start), ``weights_version`` (0 = the checkpoint's weights, +1 per update), ``weight_sync``
  (whether a sync group is open), ``last_update`` (timings of the last weight update) and
  ``logprobs_mode`` (vLLM's: ``processed_logprobs`` unless ``--engine-arg logprobs_mode=...`` says
  otherwise).
- ``POST /generate``: ``prompt_token_ids`` (one list of ids per prompt), ``n``, ``max_tokens``,
  ``temperature``, ``top_p``, ``top_k``, ``min_p``, ``repetition_penalty`` (optional, off by default),
  ``seeds`` (one per prompt, optional), ``logit_bias`` (optional ``{token id: bias}``). Returns
  ``outputs``: per prompt ``prompt_len`` and ``samples``, each with ``token_ids``, ``logprobs`` (the
  sampled tokens' log-probs under the distribution they were drawn from: logit bias, penalties,
  temperature, top-k / top-p / min-p applied), ``text`` and ``finish_reason``; plus ``instance`` and
  ``weights_version`` so a client can tell which weights sampled.
- ``POST /init_weight_sync``: ``host``, ``port`` (the trainer's store), ``world_size``, ``rank`` (this
  server's rank; the trainer is rank 0), ``backend`` (``gloo`` or ``nccl``), ``timeout_s``. The
  server joins a process group with the trainer and answers once the group is formed.
- ``POST /update_weights``: ``params`` (the list of ``{name, dtype, shape}`` in the order they will
  be broadcast), ``bucket_mb`` (0: one broadcast per tensor), ``sync_id``. The tensors themselves
  never travel in HTTP bodies: the server receives each one with a broadcast from rank 0 and feeds
  it to the engine as it arrives (the worker's ``reload_weights(is_checkpoint_format=True)``), then
  refreshes the tied LM head's repacked copy and resets the prefix cache, exactly like
  ``VllmRollout.sync``. It answers when the engine holds the new weights.
- ``POST /close_weight_sync``: drop the group.

The weights travel by the protocol of :mod:`medix_r1.rollout.weight_sync`. If loading fails
half-way the server still receives the rest (so the trainer is not left hanging), reports the
error and refuses to generate until a complete update arrives.

Every engine call (start-up, generate, weight updates, group set-up) runs on one engine thread,
in order; ``/health`` answers while it is busy.

Access: whoever reaches the port can replace the engine's weights, so a server bound to anything
but a loopback address refuses to start without a shared token in the environment variable
``MEDIX_ROLLOUT_TOKEN`` (never a flag: flags show in ``ps`` and shell histories). With a token set,
every endpoint, ``/health`` included, needs ``Authorization: Bearer <token>`` (401 otherwise); the
trainer's client sends the same variable. Request bodies above ``--max-request-mb`` get 413, a
``/generate`` with ``n`` above ``--max-n`` or more prompts than ``--max-prompts`` gets 400.
"""

import os

# Same reason as in medix_r1/train/__init__.py: busy-waiting OpenMP threads starve everything else on a small CPU box.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import hmac
import ipaddress
import json
import logging
import sys
from pathlib import Path

import torch

from medix_r1.rollout.server_engine import LIMITS, EngineThread, RequestError, RolloutEngine, check_limits
from medix_r1.rollout.types import is_oom
from medix_r1.rollout.vllm_engine import SAMPLING_LOGPROBS, engine_kwargs
from medix_r1.rollout.weight_sync import TOKEN_ENV
from medix_r1.utils.cli import command_name

log = logging.getLogger("medix_r1.rollout.server")

DEFAULT_PORT = 8100


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def build_app(engine: RolloutEngine, runner: EngineThread, *, token: str | None = None, limits: dict | None = None):
    """The FastAPI app over ``engine`` (every engine call goes through ``runner``); ``token``: the
    bearer token every request must carry (None: no check, loopback only); ``limits``: LIMITS' keys."""
    from fastapi import FastAPI

    app = FastAPI(title="medix rollout server")
    limits = {**LIMITS, **(limits or {})}
    add_guards(app, token, limits)
    add_routes(app, engine, runner, limits)
    return app


def request_models():
    """The bodies of the POST endpoints (pydantic checks each field's type and range before a handler runs)."""
    from pydantic import BaseModel, Field

    class GenerateRequest(BaseModel):
        prompt_token_ids: list[list[int]]
        n: int = Field(1, ge=1)
        max_tokens: int = Field(16, ge=1)
        temperature: float = Field(1.0, ge=0.0)
        top_p: float = Field(1.0, gt=0.0, le=1.0)
        top_k: int = Field(0, ge=0)
        min_p: float = Field(0.0, ge=0.0, le=1.0)
        repetition_penalty: float = Field(1.0, gt=0.0)
        seeds: list[int] | None = None
        logit_bias: dict[int, float] | None = None

    class InitRequest(BaseModel):
        host: str
        port: int = Field(ge=1, le=65535)
        world_size: int = Field(2, ge=2)
        rank: int = Field(1, ge=1)
        backend: str = Field("gloo", pattern="^(gloo|nccl)$")
        timeout_s: float = Field(600.0, gt=0)

    class ParamMeta(BaseModel):
        name: str
        dtype: str
        shape: list[int]

    class UpdateRequest(BaseModel):
        params: list[ParamMeta]
        bucket_mb: float = Field(0.0, ge=0.0)
        sync_id: str = Field(min_length=1, max_length=64)

    return GenerateRequest, InitRequest, UpdateRequest


def add_guards(app, token: str | None, limits: dict) -> None:
    """What every request passes before its endpoint: the bearer token (401), a POST's Content-Length
    (411 without one, 413 above --max-request-mb); and errors as ``{"detail": ...}`` (RequestError's
    status, 507 out of memory, 500 anything else)."""
    from fastapi import Request
    from fastapi.responses import JSONResponse

    max_body = int(limits["max_request_mb"] * (1 << 20))

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if token is not None:
            sent = request.headers.get("authorization", "")
            if not hmac.compare_digest(sent.encode(), f"Bearer {token}".encode()):
                return JSONResponse({"detail": f"missing or wrong token: set {TOKEN_ENV} to the server's token"},
                                    status_code=401)
        if request.method == "POST":
            length = request.headers.get("content-length")
            if length is None or not length.isdigit():
                return JSONResponse({"detail": "a request body needs a Content-Length"}, status_code=411)
            if int(length) > max_body:
                return JSONResponse({"detail": f"request body of {int(length)} bytes is above the server's "
                                               f"--max-request-mb {limits['max_request_mb']:g}"}, status_code=413)
        return await call_next(request)

    @app.exception_handler(RequestError)
    async def request_error(request: Request, exc: RequestError):
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(Exception)
    async def any_error(request: Request, exc: Exception):
        status = 507 if is_oom(exc) else 500
        log.exception("%s failed", request.url.path)
        return JSONResponse({"detail": f"{type(exc).__name__}: {exc}"}, status_code=status)


def add_routes(app, engine: RolloutEngine, runner: EngineThread, limits: dict) -> None:
    """The endpoints (the module docstring has their fields); each engine call runs on ``runner``."""
    from fastapi.responses import Response

    GenerateRequest, InitRequest, UpdateRequest = request_models()

    def respond(body: dict) -> Response:
        # allow_nan: a raw log-prob may be -inf; Python's json reads it back
        return Response(json.dumps(body, allow_nan=True), media_type="application/json")

    @app.get("/health")
    def health():
        return respond({**engine.health(), "busy": runner.busy.is_set()})

    @app.post("/generate")
    def generate(req: GenerateRequest):
        body = req.model_dump()
        check_limits(body, limits)  # before the engine thread: an oversized request never queues
        return respond(runner(engine.generate, body))

    @app.post("/init_weight_sync")
    def init_weight_sync(req: InitRequest):
        if req.rank >= req.world_size:
            raise RequestError(f"rank {req.rank} must be < world_size {req.world_size}")
        return respond(runner(engine.init_weight_sync, req.model_dump()))

    @app.post("/update_weights")
    def update_weights(req: UpdateRequest):
        return respond(runner(engine.update_weights, req.model_dump()))

    @app.post("/close_weight_sync")
    def close_weight_sync():
        return respond(runner(engine.close_weight_sync))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=command_name("medix_r1.rollout.server"),
                                description="Serve rollouts (generate with raw log-probs) from an in-process vLLM "
                                            "engine whose weights a trainer updates over torch.distributed "
                                            "(rollout.engine=server).")
    p.add_argument("--model", required=True, help="Hugging Face model folder (or 'smollm2' for the bundled "
                                                   "SmolLM2-135M-Instruct): the policy's architecture")
    p.add_argument("--host", default="127.0.0.1",
                   help=f"address to listen on (default 127.0.0.1; 0.0.0.0 for trainers on other machines, which "
                        f"needs a shared token in the environment variable {TOKEN_ENV}, on the trainer too)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"HTTP port (default {DEFAULT_PORT})")
    p.add_argument("--max-model-len", type=int, default=640, help="max prompt + response tokens (default 640; "
                                                                  ">= the trainer's rollout.max_model_len)")
    p.add_argument("--kv-cache-gb", type=float, default=1.0, help="KV-cache size in GiB on CPU (default 1.0)")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9,
                   help="GPU memory share for vLLM (GPU only; default 0.9: the GPU is the server's)")
    p.add_argument("--dtype", default="auto", help="auto (float32 on CPU, bfloat16 on GPU), float32, bfloat16")
    p.add_argument("--seed", type=int, default=0, help="engine seed (requests carry their own seeds)")
    eager = p.add_mutually_exclusive_group()
    eager.add_argument("--enforce-eager", dest="enforce_eager", action="store_true", default=None,
                       help="no CUDA graphs / torch.compile (the default on CPU)")
    eager.add_argument("--no-enforce-eager", dest="enforce_eager", action="store_false")
    p.add_argument("--engine-arg", action="append", default=[], metavar="KEY=VALUE",
                   help="extra vllm.LLM argument (repeatable, value parsed as YAML), e.g. max_num_seqs=64")
    p.add_argument("--max-n", type=int, default=LIMITS["max_n"],
                   help="largest n (samples per prompt) of one /generate (default %(default)s)")
    p.add_argument("--max-prompts", type=int, default=LIMITS["max_prompts"],
                   help="most prompts in one /generate (default %(default)s)")
    p.add_argument("--max-request-mb", type=float, default=LIMITS["max_request_mb"],
                   help="largest request body in MiB (default %(default)s)")
    p.add_argument("--log-level", default="info", choices=("debug", "info", "warning"))
    return p


def main(argv=None) -> int:
    import yaml

    args = build_parser().parse_args(argv)
    token = os.environ.get(TOKEN_ENV) or None
    if token is None and not is_loopback(args.host):
        print(f"error: --host {args.host} is reachable from other machines, and whoever reaches the port can "
              f"replace the model's weights: set a shared token in the environment variable {TOKEN_ENV} "
              f"(here and for the trainer), or bind to 127.0.0.1", file=sys.stderr)
        return 2
    limits = {"max_n": args.max_n, "max_prompts": args.max_prompts, "max_request_mb": args.max_request_mb}
    if min(limits.values()) <= 0:
        print(f"error: --max-n, --max-prompts and --max-request-mb must be > 0, got {limits}", file=sys.stderr)
        return 2
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    model = args.model
    if model == "smollm2":
        from medix_r1.models import smollm2_hf_dir
        model = str(smollm2_hf_dir())
    elif not Path(model).exists() and model.count("/") != 1:
        print(f"error: --model {model!r}: no such folder", file=sys.stderr)
        return 2
    kwargs = engine_kwargs(model, max_model_len=args.max_model_len, kv_cache_gb=args.kv_cache_gb, dtype=args.dtype,
                           seed=args.seed, gpu_memory_utilization=args.gpu_memory_utilization,
                           enforce_eager=args.enforce_eager, on_gpu=torch.cuda.is_available(),
                           logprobs_mode=SAMPLING_LOGPROBS)
    for text in args.engine_arg:
        key, sep, value = text.partition("=")
        if not sep or not key:
            print(f"error: --engine-arg expects KEY=VALUE, got {text!r}", file=sys.stderr)
            return 2
        kwargs[key.strip()] = yaml.safe_load(value)
    runner = EngineThread()
    try:
        engine = runner(RolloutEngine, model, kwargs)
    except Exception as e:
        hint = " (lower --kv-cache-gb / --gpu-memory-utilization or --max-model-len)" if is_oom(e) else ""
        print(f"error: vLLM did not start{hint}: {type(e).__name__}: {e}", file=sys.stderr)
        runner.shutdown()
        return 1
    import uvicorn

    print(f"rollout server for {model} at http://{args.host}:{args.port} (trainer: --set rollout.engine=server "
          f"--set rollout.server_url=http://{args.host}:{args.port})", flush=True)
    try:
        uvicorn.run(build_app(engine, runner, token=token, limits=limits), host=args.host, port=args.port,
                    log_level="warning", timeout_keep_alive=30)
    finally:
        runner(engine.close_weight_sync)
        runner.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
