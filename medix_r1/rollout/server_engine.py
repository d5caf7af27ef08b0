"""The rollout server's engine side: the vLLM engine, its weight-sync state and the request checks.

Every method of :class:`RolloutEngine` runs on the one :class:`EngineThread` (vLLM is not
thread-safe, and its CPU backend pins the OpenMP threads of the thread that built it); the HTTP
layer in :mod:`medix_r1.rollout.server` only validates, queues and answers.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from medix_r1.rollout.types import SAMPLING_KNOBS
from medix_r1.rollout.vllm_engine import build_llm, expected_reload_warnings_as_one_line, finish_weight_update
from medix_r1.rollout.weight_sync import (
    WeightSyncGroup,
    check_meta,
    local_address_towards,
    ready_key,
    receive_weights,
)

log = logging.getLogger("medix_r1.rollout.server")


class RequestError(Exception):
    """An error the client caused or can fix; ``status`` is the HTTP code."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


def sampling_kwargs(req: dict, i: int) -> dict:
    """SamplingParams arguments for prompt ``i`` of a /generate request (already schema-checked)."""
    seeds = req.get("seeds")
    bias = req.get("logit_bias")
    return {"n": req["n"], "temperature": req["temperature"], "top_p": req["top_p"], "max_tokens": req["max_tokens"],
            "logprobs": 0, "seed": None if seeds is None else int(seeds[i]),
            "logit_bias": {int(k): float(v) for k, v in bias.items()} if bias else None,
            **{k: req[k] for k, neutral in SAMPLING_KNOBS.items() if req.get(k, neutral) != neutral}}


LIMITS = {"max_n": 64, "max_prompts": 1024, "max_request_mb": 64.0}  # the server's flag defaults


def check_limits(req: dict, limits: dict) -> None:
    """400 for a /generate request larger than the server allows (its --max-n / --max-prompts): one
    request must not be able to make the engine sample without bound."""
    if req["n"] > limits["max_n"]:
        raise RequestError(f"n is {req['n']}, above the server's --max-n {limits['max_n']}")
    if len(req["prompt_token_ids"]) > limits["max_prompts"]:
        raise RequestError(f"{len(req['prompt_token_ids'])} prompts, above the server's --max-prompts "
                           f"{limits['max_prompts']}: split the request")


def check_generate(req: dict, max_model_len: int) -> None:
    prompts, seeds = req["prompt_token_ids"], req.get("seeds")
    if not prompts:
        raise RequestError("prompt_token_ids is empty")
    if seeds is not None and len(seeds) != len(prompts):
        raise RequestError(f"seeds has {len(seeds)} entries for {len(prompts)} prompts (one per prompt)")
    for i, p in enumerate(prompts):
        if not p:
            raise RequestError(f"prompt {i} is empty")
        if len(p) + req["max_tokens"] > max_model_len:
            raise RequestError(f"prompt {i} has {len(p)} tokens + max_tokens {req['max_tokens']} > the server's "
                               f"--max-model-len {max_model_len}")


class RolloutEngine:
    """The vLLM engine and the weight-sync state; every method runs on the engine thread."""

    def __init__(self, model: str, kwargs: dict):
        t = time.perf_counter()
        self.llm = build_llm(kwargs)
        self.model, self.dtype, self.max_model_len = model, str(kwargs["dtype"]), int(kwargs["max_model_len"])
        self.logprobs_mode = str(kwargs.get("logprobs_mode", "raw_logprobs"))
        self.instance = uuid.uuid4().hex[:12]
        self.weights_version = 0
        self.weights_broken = None  # the error of a failed update (generation refused until a full one)
        self.group: WeightSyncGroup | None = None
        self.last_update: dict = {}
        self.device = self.llm.apply_model(lambda m: next(m.parameters()).device)[0]
        log.info("engine ready in %.1f s (%s, %s, max_model_len %d, instance %s)", time.perf_counter() - t,
                 model, self.dtype, self.max_model_len, self.instance)

    def health(self) -> dict:
        return {"status": "ok" if self.weights_broken is None else "weights_broken", "model": self.model,
                "dtype": self.dtype, "max_model_len": self.max_model_len, "sampling": list(SAMPLING_KNOBS),
                "instance": self.instance, "weights_version": self.weights_version,
                "weight_sync": self.group is not None, "last_update": self.last_update, "error": self.weights_broken,
                "logprobs_mode": self.logprobs_mode}

    def generate(self, req: dict) -> dict:
        from vllm import SamplingParams

        if self.weights_broken is not None:
            raise RequestError(f"a weight update failed ({self.weights_broken}); the engine's weights are "
                               "inconsistent until a complete /update_weights", 409)
        check_generate(req, self.max_model_len)
        prompts = req["prompt_token_ids"]
        params = [SamplingParams(**sampling_kwargs(req, i)) for i in range(len(prompts))]
        t = time.perf_counter()
        outs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompts], params, use_tqdm=False)
        outputs, tokens = [], 0
        for out in outs:
            samples = []
            for comp in out.outputs:
                ids = list(comp.token_ids)
                tokens += len(ids)
                samples.append({"token_ids": ids, "logprobs": [lp[tok].logprob for tok, lp in zip(ids, comp.logprobs)],
                                "text": comp.text, "finish_reason": comp.finish_reason})
            outputs.append({"prompt_len": len(out.prompt_token_ids), "samples": samples})
        dt = time.perf_counter() - t
        log.info("generate: %d prompts x %d, %d tokens in %.2f s", len(prompts), req["n"], tokens, dt)
        return {"outputs": outputs, "instance": self.instance, "weights_version": self.weights_version,
                "seconds": dt}

    def init_weight_sync(self, req: dict) -> dict:
        self.close_weight_sync()
        backend = req["backend"]
        if backend == "nccl" and self.device.type != "cuda":
            raise RequestError("backend nccl needs the server's engine on a GPU; this one runs on "
                               f"{self.device}: use gloo")
        t = time.perf_counter()
        try:
            group = WeightSyncGroup.open_store(backend, req["host"], req["port"], req["rank"], req["world_size"],
                                               req["timeout_s"])
            group.connect(local_address_towards(req["host"], req["port"]), self.device)
        except ValueError as e:
            raise RequestError(str(e)) from None
        except Exception as e:
            raise RequestError(f"could not join the trainer's weight-sync group at {req['host']}:{req['port']} "
                               f"({backend}): {type(e).__name__}: {e}. If the trainer is on another machine, set "
                               "rollout.server_sync_host to its address as seen from this server", 502) from None
        self.group = group
        log.info("weight-sync group joined: %s rank %d/%d via %s:%d in %.2f s", backend, req["rank"],
                 req["world_size"], req["host"], req["port"], time.perf_counter() - t)
        return {"ok": True, "rank": group.rank, "world_size": group.world_size, "backend": backend,
                "instance": self.instance}

    def close_weight_sync(self) -> dict:
        closed = self.group is not None
        if self.group is not None:
            self.group.close()
            self.group = None
        return {"ok": True, "closed": closed}

    def _finish_failed_reload(self) -> None:
        # A reload that stopped half-way leaves vLLM's layerwise reload open: layers still on the
        # meta device with wrapped loaders, and the next reload fails on them. Finalising puts
        # every layer back on its device (untouched layers keep their old weights); the weights
        # stay marked broken until a complete update.
        from vllm.config import set_current_vllm_config
        from vllm.model_executor.model_loader.reload.layerwise import finalize_layerwise_reload

        vllm_config = self.llm.llm_engine.vllm_config
        try:
            with set_current_vllm_config(vllm_config):
                self.llm.apply_model(lambda model: finalize_layerwise_reload(model, vllm_config.model_config))
        except Exception as e:
            log.error("could not finalise the failed reload (%s: %s); a restart may be needed", type(e).__name__, e)

    def update_weights(self, req: dict) -> dict:
        if self.group is None:
            raise RequestError("no weight-sync group: POST /init_weight_sync first (did the server restart?)", 409)
        try:
            meta = check_meta(req["params"])
        except ValueError as e:
            raise RequestError(str(e)) from None
        bucket_bytes = int(req["bucket_mb"] * (1 << 20))
        group = self.group
        t0 = time.perf_counter()
        group.store.set(ready_key(req["sync_id"], group.rank), "1")  # the trainer may broadcast now
        incoming = receive_weights(group, meta, bucket_bytes)
        counts = {"tensors": 0, "bytes": 0, "receive_failed": False, "drained": 0, "last": None}

        def stream():
            while True:
                try:
                    name, tensor = next(incoming)
                except StopIteration:
                    return
                except Exception:
                    counts["receive_failed"] = True
                    raise
                counts["tensors"] += 1
                counts["bytes"] += tensor.numel() * tensor.element_size()
                counts["last"] = name
                yield name, tensor

        error = None
        try:
            with expected_reload_warnings_as_one_line():
                self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": stream(),
                                                                  "is_checkpoint_format": True})
        except Exception as e:
            error = e
        # Whatever happened, take every broadcast the trainer sends, so that it is not left waiting.
        try:
            for _ in incoming:
                counts["drained"] += 1
        except Exception as e:
            counts["receive_failed"] = True
            error = error or e
        if error is None and counts["tensors"] != len(meta):
            error = RuntimeError(f"the engine took {counts['tensors']} of {len(meta)} tensors")
        if error is not None:
            self.weights_broken = f"{type(error).__name__}: {error}"
            log.error("weight update failed: %s", self.weights_broken)
            self._finish_failed_reload()
            if counts["receive_failed"]:
                self.close_weight_sync()  # the trainer's side broke off: this group is of no use any more
            raise RequestError(f"weight update failed at tensor {counts['tensors']} of {len(meta)} "
                               f"({counts['last']}): {self.weights_broken}", 500)
        t_load = time.perf_counter() - t0
        finish_weight_update(self.llm)  # the tied LM head's repacked copy (CPU backend), prefix cache
        self.weights_broken = None
        self.weights_version += 1
        dt = time.perf_counter() - t0
        self.last_update = {"tensors": counts["tensors"], "bytes": counts["bytes"], "seconds": dt,
                            "receive_and_load_seconds": t_load, "bucket_mb": req["bucket_mb"]}
        log.info("weights updated to version %d: %d tensors, %.1f MB in %.2f s", self.weights_version,
                 counts["tensors"], counts["bytes"] / 1e6, dt)
        return {"ok": True, "weights_version": self.weights_version, "instance": self.instance, **self.last_update}


class EngineThread:
    """Runs callables on one thread, in order (vLLM is not thread-safe; its CPU backend pins the
    OpenMP threads of the thread that built it)."""

    def __init__(self):
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self.busy = threading.Event()

    def __call__(self, fn, *args):
        def run():
            self.busy.set()
            try:
                return fn(*args)
            finally:
                self.busy.clear()
        return self.pool.submit(run).result()

    def shutdown(self):
        self.pool.shutdown(wait=True)
