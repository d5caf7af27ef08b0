"""Rollouts from a separate rollout server (``rollout.engine=server``, :mod:`medix_r1.rollout.server`).

:class:`ServerRollout` has the interface of the colocated engine: ``generate`` sends the prompts'
token ids with the same per-request seeds and builds the same :class:`Rollouts`; ``sync(model)``
pushes the policy's weights over the protocol of :mod:`medix_r1.rollout.weight_sync`.
"""
from __future__ import annotations

import logging
import os
import time

import torch

from medix_r1.rollout.types import (
    RolloutOutOfMemory,
    Rollouts,
    RolloutServerError,
    is_oom,
    sample_seed,
    sampling_extras,
)
from medix_r1.rollout.vllm_engine import SAMPLING_LOGPROBS
from medix_r1.rollout.weight_sync import (
    TOKEN_ENV,
    TRAINER_RANK,
    WeightSyncGroup,
    check_meta,
    dtype_name,
    full_tensor,
    local_address_towards,
    named_weights,
    parse_dtype,
    ready_key,
    send_weights,
)

log = logging.getLogger("medix_r1.rollout")


def _in_thread(fn, *args):
    """Run ``fn`` on a daemon thread; a Future of its result (a stuck call never blocks exit)."""
    import threading
    from concurrent.futures import Future

    fut: Future = Future()

    def run():
        try:
            fut.set_result(fn(*args))
        except BaseException as e:
            fut.set_exception(e)
    threading.Thread(target=run, daemon=True, name="rollout-server-http").start()
    return fut


class ServerRollout:
    """Rollouts from a separate ``python -m medix_r1.rollout.server`` (``rollout.engine=server``).

    Same interface as :class:`VllmRollout`: ``generate`` sends the prompts' token ids with the same
    per-request seeds (:func:`sample_seed`) and builds the same :class:`Rollouts` from the sampled
    ids, their log-probs (the sampling distribution's, ``sampling_logprobs``), texts and finish
    reasons; ``sync(model)`` pushes the policy's weights. The
    weights travel over a standalone torch.distributed group between the trainer (rank 0, which
    hosts the ``TCPStore``) and the server (rank 1), set up on the first ``sync``: ``gloo`` for CPU
    weights, ``nccl`` (vLLM's PyNcclCommunicator) for CUDA ones. HTTP only carries the names,
    dtypes and shapes. With FSDP2 every rank must call ``sync`` (each DTensor is gathered with
    ``full_tensor()``, one at a time); only rank 0 talks to the server.

    ``sleep``/``wake_up`` do nothing: the server's memory is its own."""

    def __init__(self, cfg, seed: int, model_dir=None):
        self.cfg, self.seed = cfg, seed
        self.url = cfg.server_url.rstrip("/")
        self.timeout = float(cfg.server_timeout_s)
        self.model_hint = str(model_dir) if model_dir is not None else "MODEL_DIR"
        self.logit_bias = None
        self.group = None
        self.version = None      # (instance, weights_version) the server holds after our last sync
        self.last_sync: dict = {}
        self.info = self._request("GET", "/health", timeout=min(self.timeout, 10.0))
        # the sampling distribution's log-probs (a server from before they were asked for returns raw ones)
        self.sampling_logprobs = self.info.get("logprobs_mode") == SAMPLING_LOGPROBS
        if int(self.info.get("max_model_len", 0)) < cfg.max_model_len:
            raise RolloutServerError(
                f"the rollout server at {self.url} was started with --max-model-len {self.info.get('max_model_len')}, "
                f"smaller than rollout.max_model_len ({cfg.max_model_len}): restart it with --max-model-len "
                f"{cfg.max_model_len} or lower rollout.max_model_len")
        refused = [k for k in sampling_extras(cfg) if k not in self.info.get("sampling", ())]
        if refused:  # a server from before these knobs would ignore them: refuse rather than sample otherwise
            raise RolloutServerError(
                f"rollout.{refused[0]}={getattr(cfg, refused[0])}: the rollout server at {self.url} does not take "
                f"it (its /health lists {self.info.get('sampling', [])}); restart it from this version of medix "
                f"or leave rollout.{refused[0]} off")
        log.info("rollout server %s: %s (%s, max_model_len %s, weights version %s)", self.url, self.info.get("model"),
                 self.info.get("dtype"), self.info.get("max_model_len"), self.info.get("weights_version"))

    # -- HTTP

    def _start_hint(self) -> str:
        from urllib.parse import urlsplit
        u = urlsplit(self.url)
        return (f"start it with `python -m medix_r1.rollout.server --model {self.model_hint} --host {u.hostname} "
                f"--port {u.port or 80}` (or point rollout.server_url at a running one)")

    def _request(self, method: str, path: str, body: dict | None = None, timeout: float | None = None) -> dict:
        import json
        import urllib.error
        import urllib.request

        timeout = self.timeout if timeout is None else timeout
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        token = os.environ.get(TOKEN_ENV)
        if token:  # the server's shared token (docs/rollout_server.md); never in a flag or the config
            headers["Authorization"] = f"Bearer {token}"
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            try:
                detail = json.loads(e.read()).get("detail", "")
            except Exception:  # not our JSON: a proxy, another program on that port
                detail = e.reason
            message = f"rollout server {self.url}{path}: HTTP {e.code}: {detail}"
            if e.code == 401:
                message += f" (the trainer reads the token from the environment variable {TOKEN_ENV})"
            if e.code == 507 or is_oom(RuntimeError(str(detail))):
                raise RolloutOutOfMemory(f"{message} (out of memory on the server: restart it with a smaller "
                                         "--kv-cache-gb / --gpu-memory-utilization, or lower rollout.max_tokens or "
                                         "data.prompts_per_step)") from None
            err = RolloutServerError(message)
            err.status = e.code
            raise err from None
        except TimeoutError as e:
            raise RolloutServerError(f"rollout server {self.url}{path}: no answer within {timeout:g} s ({e}); raise "
                                     "rollout.server_timeout_s if the server is just slow") from None
        except (urllib.error.URLError, ConnectionError, OSError) as e:
            reason = getattr(e, "reason", e)
            raise RolloutServerError(f"rollout server {self.url} is unreachable ({reason}): {self._start_hint()}") \
                from None

    # -- rollouts

    def generate(self, prompt_ids: list[list[int]], step: int, seed: int, attempt: int = 0,
                 offset: int = 0) -> Rollouts:
        if any(isinstance(p, dict) for p in prompt_ids):
            raise RolloutServerError("rollout.engine=server takes text prompts only; a vision-language policy "
                                     "needs rollout.engine=vllm or hf")
        c = self.cfg
        body = {"prompt_token_ids": [list(map(int, p)) for p in prompt_ids], "n": c.n, "max_tokens": c.max_tokens,
                "temperature": c.temperature, "top_p": c.top_p,
                "seeds": [sample_seed(seed, step, offset + i, attempt) for i in range(len(prompt_ids))],
                "logit_bias": {str(k): v for k, v in self.logit_bias.items()} if self.logit_bias else None,
                **sampling_extras(c)}
        resp = self._request("POST", "/generate", body)
        if self.version is not None and (resp.get("instance"), resp.get("weights_version")) != self.version:
            raise RolloutServerError(
                f"the rollout server at {self.url} holds weights "
                f"{resp.get('instance')}/v{resp.get('weights_version')}, "
                f"not the policy's (synced as {self.version[0]}/v{self.version[1]}): it restarted or another client "
                "updated it; one server serves one trainer")
        return rollouts_from_response(prompt_ids, resp, c.n)

    def suppress_tokens(self, token_ids) -> None:
        """Never sample these ids (logit bias -100 on the server; the log-probs stay raw)."""
        self.logit_bias = {int(t): -100.0 for t in token_ids} or None

    def sleep(self) -> None:
        pass

    def wake_up(self) -> None:
        pass

    # -- weights

    def _sync_backend(self, model) -> str:
        b = self.cfg.server_sync_backend
        if b != "auto":
            return b
        p = next(model.parameters(), None)
        return "nccl" if p is not None and p.device.type == "cuda" else "gloo"

    def _init_weight_sync(self, backend: str, device) -> None:
        from urllib.parse import urlsplit

        self.close_weight_sync()
        c = self.cfg
        server_host = urlsplit(self.url).hostname or "127.0.0.1"
        host = c.server_sync_host or local_address_towards(server_host)
        t = time.perf_counter()
        group = WeightSyncGroup.open_store(backend, host, c.server_sync_port, TRAINER_RANK, 2, self.timeout)
        body = {"host": host, "port": group.port, "world_size": 2, "rank": 1, "backend": backend,
                "timeout_s": self.timeout}
        remote = _in_thread(self._request, "POST", "/init_weight_sync", body)
        local = _in_thread(group.connect, host, device)
        while not (local.done() and remote.done()):
            if remote.done() and remote.exception() is not None:
                group.close()
                raise remote.exception()
            if local.done() and local.exception() is not None:
                group.close()
                e = local.exception()
                raise RolloutServerError(f"weight-sync group with {self.url} ({backend} via {host}:{group.port}) "
                                         f"failed: {type(e).__name__}: {e}") from e
            time.sleep(0.005)
        remote.result()
        self.group = group
        log.info("weight-sync group with %s: %s via %s:%d in %.2f s", self.url, backend, host, group.port,
                 time.perf_counter() - t)

    def close_weight_sync(self) -> None:
        if self.group is None:
            return
        group, self.group = self.group, None
        try:
            self._request("POST", "/close_weight_sync", timeout=5.0)
        except (RolloutServerError, RolloutOutOfMemory) as e:
            log.debug("close_weight_sync: %s", e)
        group.close()

    @torch.no_grad()
    def sync(self, model: torch.nn.Module) -> None:
        """Push ``model``'s weights to the server; returns when the server's engine holds them."""
        import torch.distributed as dist

        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        named = list(named_weights(model))
        if rank != 0:
            for _, p in named:  # take part in each gather; rank 0 sends
                full_tensor(p)
            return
        try:
            self._push(named, model)
        except RolloutServerError as e:
            if getattr(e, "status", None) != 409 or "no weight-sync group" not in str(e):
                raise
            log.warning("the rollout server lost its weight-sync group (restarted?); joining again")
            self.group = None
            self._push(named, model)

    def _push(self, named, model) -> None:
        import uuid

        backend = self._sync_backend(model)
        device = next((p.device for _, p in named if p.device.type == "cuda"), None)
        if self.group is None or self.group.backend != backend:
            self._init_weight_sync(backend, device)
        group = self.group
        # floating weights travel in the server's dtype (bf16 halves the bytes on a GPU server)
        wire = parse_dtype(self.info.get("dtype", "float32")) if self.info.get("dtype") in ("float32", "bfloat16",
                                                                                            "float16") else None
        send_dtype = [wire if (wire is not None and p.dtype.is_floating_point) else p.dtype for _, p in named]
        meta = [{"name": n, "dtype": dtype_name(dt), "shape": list(p.shape)} for (n, p), dt in zip(named, send_dtype)]
        sync_id = uuid.uuid4().hex
        bucket_mb = float(self.cfg.server_sync_bucket_mb)
        t = time.perf_counter()
        remote = _in_thread(self._request, "POST", "/update_weights",
                            {"params": meta, "bucket_mb": bucket_mb, "sync_id": sync_id})
        key = ready_key(sync_id, 1)
        deadline = time.monotonic() + self.timeout
        while not group.store.check([key]):  # the server accepted and waits for the broadcasts
            if remote.done():
                remote.result()  # raises the server's refusal
                raise RolloutServerError(f"rollout server {self.url} answered /update_weights without receiving")
            if time.monotonic() > deadline:
                raise RolloutServerError(f"rollout server {self.url} did not start receiving weights within "
                                         f"{self.timeout:g} s (busy?); raise rollout.server_timeout_s")
            time.sleep(0.002)
        group.store.delete_key(key)
        tensors = (full_tensor(p).to(dt) for (_, p), dt in zip(named, send_dtype))
        try:
            sent = send_weights(group, tensors, check_meta(meta), int(bucket_mb * (1 << 20)))
        except Exception as e:
            # closing our side makes the server's pending receive fail at once instead of at its timeout
            self.group = None
            group.close()
            if remote.done() and remote.exception() is not None:
                raise remote.exception() from e
            raise RolloutServerError(f"sending weights to {self.url} failed: {type(e).__name__}: {e}") from e
        resp = remote.result(timeout=self.timeout)
        self.version = (resp["instance"], resp["weights_version"])
        self.last_sync = {"seconds": time.perf_counter() - t, "bytes": sent, "tensors": len(meta),
                          "server_seconds": resp.get("seconds")}
        log.debug("synced %d tensors (%.1f MB) to %s in %.2f s", len(meta), sent / 1e6, self.url,
                  self.last_sync["seconds"])


def rollouts_from_response(prompt_ids: list[list[int]], resp: dict, n: int) -> Rollouts:
    """:class:`Rollouts` from a rollout server's /generate answer (prompt ``i``'s ``n`` samples first)."""
    outputs = resp.get("outputs")
    if not isinstance(outputs, list) or len(outputs) != len(prompt_ids):
        got = len(outputs) if isinstance(outputs, list) else repr(outputs)
        raise RolloutServerError(f"the rollout server answered {got} "
                                 f"outputs for {len(prompt_ids)} prompts")
    r = Rollouts()
    for i, out in enumerate(outputs):
        if out.get("prompt_len") != len(prompt_ids[i]):
            raise RolloutServerError(f"prompt {i}: the server saw {out.get('prompt_len')} tokens, the trainer sent "
                                     f"{len(prompt_ids[i])}")
        if len(out["samples"]) != n:
            raise RolloutServerError(f"prompt {i}: {len(out['samples'])} samples, expected rollout.n = {n}")
        for s in out["samples"]:
            ids, logps = list(s["token_ids"]), [float(x) for x in s["logprobs"]]
            if len(ids) != len(logps):
                raise RolloutServerError(f"prompt {i}: {len(ids)} tokens but {len(logps)} log-probs")
            r.add(prompt_ids=prompt_ids[i], response_ids=ids, sample_logp=logps, text=s["text"], group=i,
                  truncated=s["finish_reason"] == "length")
    return r
