"""Rollouts: n sampled responses per prompt, with the sampled tokens' raw log-probs.

Two engines return the same :class:`Rollouts`:

- :class:`VllmRollout`: vLLM as a library in the trainer's process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``),
  fp32 on CPU, KV cache given explicitly. After each optimizer step :meth:`VllmRollout.sync` loads
  the policy's weights in place (no disk): the worker's ``reload_weights``, then the LM head's
  ``process_weights_after_loading`` (SmolLM2 ties it to the embeddings and the CPU backend keeps a
  repacked copy that would go stale), then ``reset_prefix_cache``.
- :class:`HfRollout`: transformers ``generate`` on the policy itself (nothing to sync).

Both report raw log-probs (log_softmax of the unscaled logits, before temperature), which is what
vLLM returns with ``logprobs=0``.
"""
from __future__ import annotations

import logging
import os
import zlib
from dataclasses import dataclass, field

import torch

log = logging.getLogger("medix_r1.train")

OOM_HINT = ("out of memory during rollouts: lower rollout.kv_cache_gb, rollout.max_tokens or "
            "data.prompts_per_step (e.g. --set rollout.max_tokens=64)")
OOM_START_HINT = ("out of memory while starting vLLM: lower rollout.kv_cache_gb (CPU) or "
                  "rollout.gpu_memory_utilization (GPU), or rollout.max_model_len")


class RolloutOutOfMemory(RuntimeError):
    """Rollouts ran out of memory; the message names the config knobs to turn."""


@dataclass
class Rollouts:
    """Flat lists, one entry per sample, laid out group by group (prompt 0's n samples first)."""
    prompt_ids: list[list[int]] = field(default_factory=list)
    response_ids: list[list[int]] = field(default_factory=list)
    sample_logp: list[list[float]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    group: list[int] = field(default_factory=list)      # index of the prompt in the step's list
    truncated: list[bool] = field(default_factory=list)  # hit max_tokens without EOS
    # per sample: the prompt's image inputs {"pixel_values", "image_grid_thw"} (shared by the group) or None
    images: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.response_ids)


def sample_seed(base: int, step: int, prompt_index: int, attempt: int = 0) -> int:
    """A per-request seed that depends only on (run seed, step, prompt, refill attempt): a resumed
    run samples exactly what the uninterrupted one did. ``prompt_index`` is the prompt's index in the
    step's global list: the engines' ``generate(..., offset=)`` adds the position of a torchrun rank's
    slice, so N ranks sample what one process samples."""
    return zlib.crc32(f"{base}/{step}/{prompt_index}/{attempt}".encode()) & 0x7FFFFFFF


def _is_oom(err: BaseException) -> bool:
    text = str(err).lower()
    return isinstance(err, (MemoryError, torch.OutOfMemoryError)) or "out of memory" in text or \
        "not enough memory" in text or "insufficient memory" in text or "kv cache" in text and "memory" in text


class VllmRollout:
    """vLLM engine colocated with the trainer, weights synced in place."""

    def __init__(self, model_dir, cfg, seed: int, engine_kwargs: dict | None = None):
        # Must be set before vLLM builds its engine: keeps the worker in this process (FACTS §4).
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        from vllm import LLM

        self.cfg = cfg
        self.on_gpu = torch.cuda.is_available()
        kwargs = dict(model=str(model_dir), enforce_eager=True, max_model_len=cfg.max_model_len, seed=seed)
        if self.on_gpu:
            kwargs.update(dtype="bfloat16", gpu_memory_utilization=cfg.gpu_memory_utilization,
                          enable_sleep_mode=True)
        else:
            # No chunked prefill on CPU: when a prompt is prefilled in parts, vLLM discards the token
            # sampled for it and rewinds that request's seeded generator, which a CPU generator refuses
            # ("CPU Generator does not use offset"); it happened as soon as a step's prompts exceeded
            # the default token budget (e.g. 12 prompts x 4 samples x 190 tokens).
            kwargs.update(dtype="float32", kv_cache_memory_bytes=int(cfg.kv_cache_gb * (1 << 30)),
                          enable_chunked_prefill=False, max_num_batched_tokens=max(cfg.max_model_len, 8192))
            log.info("vLLM sleep/wake is not supported on CPU: the KV cache (%.2f GiB) stays "
                     "allocated during training", cfg.kv_cache_gb)
        kwargs.update(engine_kwargs or {})  # e.g. limit_mm_per_prompt for a vision-language policy
        try:
            self.llm = LLM(**kwargs)
        except Exception as e:
            if _is_oom(e):
                raise RolloutOutOfMemory(f"{OOM_START_HINT} ({type(e).__name__}: {e})") from e
            raise

    def generate(self, prompt_ids: list[list[int]], step: int, seed: int, attempt: int = 0,
                 offset: int = 0) -> Rollouts:
        from vllm import SamplingParams

        from medix_r1.vision.trainer import check_vllm_prompt, split_prompt, vllm_request

        c = self.cfg
        params = [SamplingParams(n=c.n, temperature=c.temperature, top_p=c.top_p, max_tokens=c.max_tokens,
                                 logprobs=0, seed=sample_seed(seed, step, offset + i, attempt),
                                 logit_bias=getattr(self, "logit_bias", None))
                  for i in range(len(prompt_ids))]
        # TokensPrompt dicts; a VL item adds multi_modal_data={"image": [...]} (see vllm_request)
        prompts = [vllm_request(p) for p in prompt_ids]
        try:
            outs = self.llm.generate(prompts, params, use_tqdm=False)
        except Exception as e:
            if _is_oom(e):
                raise RolloutOutOfMemory(f"{OOM_HINT} ({type(e).__name__}: {e})") from e
            raise
        r = Rollouts()
        for i, out in enumerate(outs):
            check_vllm_prompt(getattr(out, "prompt_token_ids", None), prompt_ids[i])
            trainer_ids, images = split_prompt(prompt_ids[i])
            for comp in out.outputs:
                ids = list(comp.token_ids)
                logps = [lp[t].logprob for t, lp in zip(ids, comp.logprobs)]
                r.prompt_ids.append(trainer_ids)
                r.images.append(images)
                r.response_ids.append(ids)
                r.sample_logp.append(logps)
                r.texts.append(comp.text)
                r.group.append(i)
                r.truncated.append(comp.finish_reason == "length")
        return r

    def suppress_tokens(self, token_ids) -> None:
        """Never sample these ids (VL policies: image placeholder / vision markers, which a training
        forward would take for image slots). The returned log-probs stay raw (bias not applied)."""
        self.logit_bias = {int(t): -100.0 for t in token_ids} or None

    def sleep(self) -> None:
        """Free the KV cache while training (GPU only; a no-op on CPU, logged once at start-up)."""
        if self.on_gpu:
            self.llm.sleep(level=1)

    def wake_up(self) -> None:
        if self.on_gpu:
            self.llm.wake_up()

    @torch.no_grad()
    def sync(self, model: torch.nn.Module) -> None:
        """Load ``model``'s current weights into the engine in place."""
        weights = ((name, p.detach()) for name, p in model.named_parameters())
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": weights,
                                                          "is_checkpoint_format": True})
        self.llm.apply_model(_refresh_lm_head)
        self.llm.reset_prefix_cache()


def _refresh_lm_head(model) -> None:
    # The CPU backend repacks linear weights after loading; the tied LM head's packed copy is not
    # redone by reload_weights, so redo it (mean log-prob error 0.08 otherwise, FACTS §4).
    head = getattr(model, "lm_head", None)
    method = getattr(head, "quant_method", None)
    if method is not None and hasattr(method, "process_weights_after_loading"):
        method.process_weights_after_loading(head)


class HfRollout:
    """transformers ``generate`` on the training policy (no weight sync needed)."""

    def __init__(self, model, tokenizer, cfg):
        from transformers import GenerationConfig

        self.model, self.cfg = model, cfg
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos = tokenizer.eos_token_id
        self.tokenizer = tokenizer
        self.gen = GenerationConfig(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p, top_k=0,
                                    max_new_tokens=cfg.max_tokens, num_return_sequences=cfg.n,
                                    pad_token_id=pad, eos_token_id=self.eos, output_logits=True,
                                    return_dict_in_generate=True)

    @torch.no_grad()
    def generate(self, prompt_ids: list[list[int]], step: int, seed: int, attempt: int = 0,
                 offset: int = 0) -> Rollouts:
        from medix_r1.vision.trainer import split_prompt

        r = Rollouts()
        was_training = self.model.training
        self.model.eval()
        device = next(self.model.parameters()).device
        try:
            for i, prompt in enumerate(prompt_ids):
                p, images = split_prompt(prompt)  # a VL item brings pixel_values + image_grid_thw
                extra = {k: v.to(device) for k, v in images.items()} if images else {}
                # One prompt at a time (its n samples share it): no padding, exact log-probs, and a
                # per-prompt seed that a resumed run reproduces. The global RNG is left untouched.
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(sample_seed(seed, step, offset + i, attempt))
                    x = torch.tensor([p], device=device)
                    out = self.model.generate(input_ids=x, attention_mask=torch.ones_like(x),
                                              generation_config=self.gen, **extra)
                new = out.sequences[:, len(p):]
                logits = torch.stack(out.logits, dim=1).float()          # raw logits [n, T, V]
                logp = torch.log_softmax(logits, dim=-1).gather(-1, new.unsqueeze(-1)).squeeze(-1)
                for j in range(new.shape[0]):
                    ids = new[j].tolist()
                    end = ids.index(self.eos) + 1 if self.eos in ids else len(ids)
                    r.prompt_ids.append(list(p))
                    r.images.append(images)
                    r.response_ids.append(ids[:end])
                    r.sample_logp.append(logp[j, :end].tolist())
                    r.texts.append(self.tokenizer.decode(ids[:end], skip_special_tokens=True))
                    r.group.append(i)
                    r.truncated.append(self.eos not in ids)
        except Exception as e:
            if _is_oom(e):
                raise RolloutOutOfMemory(f"{OOM_HINT} ({type(e).__name__}: {e})") from e
            raise
        finally:
            self.model.train(was_training)
        return r

    def suppress_tokens(self, token_ids) -> None:
        """Never sample these ids (see VllmRollout.suppress_tokens); ``out.logits`` stay unprocessed."""
        self.gen.suppress_tokens = [int(t) for t in token_ids] or None

    def sleep(self) -> None:
        pass

    def wake_up(self) -> None:
        pass

    def sync(self, model) -> None:
        """Nothing to do: generation runs on the policy itself."""


# ----------------------------------------------------------------------------- rollout server (engine=server)

import time  # noqa: E402  (used by ServerRollout only)


class RolloutServerError(RuntimeError):
    """The rollout server is unreachable, refused a request or failed; the message names the URL
    and what to do."""


def _named_weights(model: torch.nn.Module):
    """(checkpoint name, parameter) pairs: wrapper prefixes that torch.compile / activation
    checkpointing / FSDP1 add to names are dropped, so vLLM sees the Hugging Face names."""
    for name, p in model.named_parameters():
        for wrapper in ("_orig_mod.", "_checkpoint_wrapped_module.", "_fsdp_wrapped_module."):
            name = name.replace(wrapper, "")
        yield name, p


def _full_tensor(p: torch.Tensor) -> torch.Tensor:
    """The whole parameter: an FSDP2 (DTensor) shard is gathered (a collective: every trainer
    rank must call this for the same parameter in the same order)."""
    p = p.detach()
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # torch built without distributed
        return p
    return p.full_tensor() if isinstance(p, DTensor) else p


def _in_thread(fn, *args):
    """Run ``fn`` on a daemon thread; a Future of its result (a stuck call never blocks exit)."""
    import threading
    from concurrent.futures import Future

    fut: Future = Future()

    def run():
        try:
            fut.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 - handed to the waiting caller
            fut.set_exception(e)
    threading.Thread(target=run, daemon=True, name="rollout-server-http").start()
    return fut


class ServerRollout:
    """Rollouts from a separate ``python -m medix_r1.rollout_server`` (``rollout.engine=server``).

    Same interface as :class:`VllmRollout`: ``generate`` sends the prompts' token ids with the same
    per-request seeds (:func:`sample_seed`) and builds the same :class:`Rollouts` from the sampled
    ids, raw log-probs, texts and finish reasons; ``sync(model)`` pushes the policy's weights. The
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
        if int(self.info.get("max_model_len", 0)) < cfg.max_model_len:
            raise RolloutServerError(
                f"the rollout server at {self.url} was started with --max-model-len {self.info.get('max_model_len')}, "
                f"smaller than rollout.max_model_len ({cfg.max_model_len}): restart it with --max-model-len "
                f"{cfg.max_model_len} or lower rollout.max_model_len")
        log.info("rollout server %s: %s (%s, max_model_len %s, weights version %s)", self.url, self.info.get("model"),
                 self.info.get("dtype"), self.info.get("max_model_len"), self.info.get("weights_version"))

    # -- HTTP

    def _start_hint(self) -> str:
        from urllib.parse import urlsplit
        u = urlsplit(self.url)
        return (f"start it with `python -m medix_r1.rollout_server --model {self.model_hint} --host {u.hostname} "
                f"--port {u.port or 80}` (or point rollout.server_url at a running one)")

    def _request(self, method: str, path: str, body: dict | None = None, timeout: float | None = None) -> dict:
        import json
        import socket
        import urllib.error
        import urllib.request

        timeout = self.timeout if timeout is None else timeout
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            try:
                detail = json.loads(e.read()).get("detail", "")
            except Exception:  # not our JSON: a proxy, another program on that port
                detail = e.reason
            message = f"rollout server {self.url}{path}: HTTP {e.code}: {detail}"
            if e.code == 507 or _is_oom(RuntimeError(str(detail))):
                raise RolloutOutOfMemory(f"{message} (out of memory on the server: restart it with a smaller "
                                         "--kv-cache-gb / --gpu-memory-utilization, or lower rollout.max_tokens or "
                                         "data.prompts_per_step)") from None
            err = RolloutServerError(message)
            err.status = e.code
            raise err from None
        except (socket.timeout, TimeoutError) as e:
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
                "logit_bias": {str(k): v for k, v in self.logit_bias.items()} if self.logit_bias else None}
        resp = self._request("POST", "/generate", body)
        if self.version is not None and (resp.get("instance"), resp.get("weights_version")) != self.version:
            raise RolloutServerError(
                f"the rollout server at {self.url} holds weights {resp.get('instance')}/v{resp.get('weights_version')}, "
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

        from medix_r1.rollout_server import TRAINER_RANK, WeightSyncGroup, local_address_towards

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
        named = list(_named_weights(model))
        if rank != 0:
            for _, p in named:  # take part in each gather; rank 0 sends
                _full_tensor(p)
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

        from medix_r1.rollout_server import check_meta, dtype_name, parse_dtype, ready_key, send_weights

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
        tensors = (_full_tensor(p).to(dt) for (_, p), dt in zip(named, send_dtype))
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
        raise RolloutServerError(f"the rollout server answered {len(outputs) if isinstance(outputs, list) else outputs!r} "
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
            r.prompt_ids.append(list(prompt_ids[i]))
            r.images.append(None)
            r.response_ids.append(ids)
            r.sample_logp.append(logps)
            r.texts.append(s["text"])
            r.group.append(i)
            r.truncated.append(s["finish_reason"] == "length")
    return r
