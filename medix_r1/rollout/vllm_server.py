"""``rollout.engine=vllm-server``: rollouts from ``vllm serve`` and weights through vLLM's own
weight-transfer API (NCCL), the GPU path. UNTESTED ON A REAL GPU: the tests drive it against a fake
server that checks the request sequence and payloads (tests/test_vllm_server_engine.py).

The server is started with the weight-transfer API on, e.g.
``vllm serve MODEL --weight-transfer-config '{"backend": "nccl"}'`` (see vLLM's RL docs for the flag's
exact form in your version); its routes (``vllm/entrypoints/rl/online/api_router.py``):

- rollouts: ``POST /v1/completions`` with the prompt's token ids, ``n``, a per-prompt ``seed``,
  ``logprobs: 0`` and ``return_token_ids: true`` (the sampled ids and their log-probs: those of the
  sampling distribution when the server runs with ``--logprobs-mode processed_logprobs``, which
  the trainer cannot check: ``rollout.vllm_server_logprobs_mode`` says so, ``sampling_logprobs``);
- the first ``sync``: ``GET /get_world_size`` (the server's workers), then
  ``POST /init_weight_transfer_engine`` ``{"init_info": {master_address, master_port, rank_offset: 1,
  world_size, packed: false}}`` while this process opens the NCCL group as rank 0 (vLLM's
  ``open_trainer_endpoint``: a TCPStore at ``rollout.server_sync_host:server_sync_port``);
- every ``sync``: ``POST /pause?mode=wait`` (finish in-flight requests), ``POST /start_weight_update``,
  ``POST /update_weights`` ``{"update_info": {names, dtype_names, shapes}}`` while each tensor is
  broadcast from rank 0 in that order, ``POST /finish_weight_update`` ``{"weight_version"}``,
  ``POST /resume``.

Our ``rollout_server`` (``rollout.engine=server``) stays the CPU path: vLLM's transfer has no gloo
backend. With FSDP2 every rank calls ``sync`` (each DTensor is gathered); only rank 0 talks to vLLM.
"""
from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import torch

from medix_r1.rollout.types import Rollouts, RolloutServerError, sample_seed, sampling_extras
from medix_r1.rollout.weight_sync import full_tensor, named_weights

log = logging.getLogger("medix_r1.rollout")


def vllm_nccl_endpoint(master_address: str, master_port: int, world_size: int):
    """Rank 0 of the trainer + vLLM workers' NCCL group (vLLM's own rendezvous), and a broadcast function."""
    from types import SimpleNamespace

    from vllm.distributed.weight_transfer.nccl_common import open_trainer_endpoint

    group = open_trainer_endpoint(SimpleNamespace(master_address=master_address, master_port=master_port,
                                                  world_size=world_size))
    return lambda tensor: group.broadcast(tensor.contiguous(), src=0, stream=torch.cuda.current_stream())


class VllmServerRollout:
    """Same interface as the other engines (``generate``, ``suppress_tokens``, ``sleep``, ``wake_up``,
    ``sync``); ``endpoint(master_address, master_port, world_size) -> broadcast`` opens the NCCL group
    (tests pass a fake)."""

    def __init__(self, cfg, seed: int, endpoint=vllm_nccl_endpoint):
        self.cfg, self.seed, self.endpoint = cfg, seed, endpoint
        self.url = cfg.server_url.rstrip("/")
        self.timeout = float(cfg.server_timeout_s)
        self.logit_bias: dict[str, float] = {}
        self.sampling_logprobs = getattr(cfg, "vllm_server_logprobs_mode", "") == "processed_logprobs"
        self.broadcast = None
        self.version = 0
        models = self._request("GET", "/v1/models").get("data") or []
        if not models:
            raise RolloutServerError(f"vLLM server {self.url} serves no model (GET /v1/models)")
        self.model = models[0]["id"]

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.url + path, data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                text = resp.read()
                return json.loads(text) if text else {}
        except urllib.error.HTTPError as e:
            hint = " (is it started with --weight-transfer-config?)" if e.code == 404 else ""
            raise RolloutServerError(f"vLLM server {self.url}{path}: HTTP {e.code}: {e.read()[:300]!r}{hint}") \
                from None
        except (urllib.error.URLError, ConnectionError, OSError) as e:
            raise RolloutServerError(f"vLLM server {self.url}{path} is unreachable ({getattr(e, 'reason', e)}); "
                                     f"start `vllm serve MODEL --weight-transfer-config ...` there") from None

    # -- rollouts

    def _complete(self, ids: list[int], seed: int) -> dict:
        c = self.cfg
        body = {"model": self.model, "prompt": [int(t) for t in ids], "n": c.n, "max_tokens": c.max_tokens,
                "temperature": c.temperature, "top_p": c.top_p, "seed": seed, "logprobs": 0,
                "return_token_ids": True, "skip_special_tokens": True, **sampling_extras(c)}
        if self.logit_bias:
            body["logit_bias"] = self.logit_bias
        return self._request("POST", "/v1/completions", body)

    def generate(self, prompt_ids, step: int, seed: int, attempt: int = 0, offset: int = 0) -> Rollouts:
        if any(isinstance(p, dict) for p in prompt_ids):
            raise RolloutServerError("rollout.engine=vllm-server takes text prompts only")
        seeds = [sample_seed(seed, step, offset + i, attempt) for i in range(len(prompt_ids))]
        with ThreadPoolExecutor(max_workers=max(1, min(16, len(prompt_ids)))) as pool:
            answers = list(pool.map(self._complete, prompt_ids, seeds))
        r = Rollouts()
        for i, ans in enumerate(answers):
            choices = sorted(ans.get("choices") or [], key=lambda ch: ch.get("index", 0))
            if len(choices) != self.cfg.n:
                raise RolloutServerError(f"prompt {i}: {len(choices)} completions, expected rollout.n = {self.cfg.n}")
            for ch in choices:
                ids, logps = list(ch["token_ids"]), [float(x) for x in ch["logprobs"]["token_logprobs"]]
                if len(ids) != len(logps):
                    raise RolloutServerError(f"prompt {i}: {len(ids)} tokens but {len(logps)} log-probs")
                r.add(prompt_ids=prompt_ids[i], response_ids=ids, sample_logp=logps, text=ch["text"], group=i,
                      truncated=ch.get("finish_reason") == "length")
        return r

    def suppress_tokens(self, token_ids) -> None:
        self.logit_bias = {str(int(t)): -100.0 for t in token_ids}

    def sleep(self) -> None:  # the server's memory is its own
        pass

    def wake_up(self) -> None:
        pass

    # -- weights

    def _init_transfer(self) -> None:
        workers = int(self._request("GET", "/get_world_size?include_dp=false")["world_size"])
        host = self.cfg.server_sync_host or "127.0.0.1"
        port = self.cfg.server_sync_port or _free_port()
        init_info = {"master_address": host, "master_port": port, "rank_offset": 1, "world_size": 1 + workers,
                     "packed": False}
        # the workers block in init until this process joins the group as rank 0: both at once
        with ThreadPoolExecutor(max_workers=1) as pool:
            remote = pool.submit(self._request, "POST", "/init_weight_transfer_engine", {"init_info": init_info})
            self.broadcast = self.endpoint(host, port, 1 + workers)
            remote.result()
        log.info("vLLM weight transfer: NCCL group with %d server worker(s) at %s:%d", workers, host, port)

    def sync(self, model: torch.nn.Module) -> None:
        import torch.distributed as dist

        named = list(named_weights(model))
        if dist.is_available() and dist.is_initialized() and dist.get_rank() != 0:
            for _, p in named:  # take part in each gather; rank 0 sends
                full_tensor(p)
            return
        if self.broadcast is None:
            self._init_transfer()
        update_info = {"names": [n for n, _ in named],
                       "dtype_names": [str(p.dtype).removeprefix("torch.") for _, p in named],
                       "shapes": [list(p.shape) for _, p in named]}
        self._request("POST", "/pause?mode=wait")
        try:
            self._request("POST", "/start_weight_update")
            with ThreadPoolExecutor(max_workers=1) as pool:  # the workers receive while we broadcast
                remote = pool.submit(self._request, "POST", "/update_weights", {"update_info": update_info})
                for _, p in named:
                    self.broadcast(full_tensor(p))
                remote.result()
            self.version += 1
            self._request("POST", "/finish_weight_update", {"weight_version": str(self.version)})
        finally:
            self._request("POST", "/resume")


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]
