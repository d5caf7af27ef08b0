"""rollout.engine=vllm-server against a fake `vllm serve` (no GPU here): the routes, their order and
payloads of vLLM's weight-transfer API, the tensors broadcast in the announced order, and rollouts
built from /v1/completions answers. The payloads are also checked against vLLM's own dataclasses."""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from medix_r1.config import load_config
from medix_r1.rollout import ENGINES, RolloutServerError, sample_seed
from medix_r1.rollout.vllm_server import VllmServerRollout


class FakeVllm(BaseHTTPRequestHandler):
    calls: list = []

    def log_message(self, *args):
        pass

    def _send(self, body: dict, code: int = 200):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self.calls.append(("GET", self.path, None))
        if self.path == "/v1/models":
            return self._send({"data": [{"id": "tiny"}]})
        if self.path == "/get_world_size?include_dp=false":
            return self._send({"world_size": 2})
        self._send({"detail": "Not Found"}, 404)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"] or 0)) or b"null")
        self.calls.append(("POST", self.path, body))
        if self.path == "/v1/completions":
            n, prompt = body["n"], body["prompt"]
            choices = [{"index": j, "text": f"answer {prompt[0]}-{j}", "token_ids": [prompt[0] + j, 2],
                        "logprobs": {"token_logprobs": [-0.5 * (j + 1), -0.1]},
                        "finish_reason": "length" if j == 0 else "stop"} for j in reversed(range(n))]
            return self._send({"choices": choices})
        if self.path in ("/pause?mode=wait", "/resume", "/start_weight_update", "/update_weights",
                         "/finish_weight_update", "/init_weight_transfer_engine"):
            return self._send({"message": "ok"})
        self._send({"detail": "Not Found"}, 404)


@pytest.fixture
def server():
    FakeVllm.calls = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), FakeVllm)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def rollout_cfg(url):
    return load_config("cpu_smollm2", ["rollout.engine=vllm-server", f"rollout.server_url={url}", "rollout.n=2",
                                       "rollout.server_sync_port=29555"]).rollout


def test_weight_sync_drives_the_native_api_in_order(server):
    sent, opened = [], []

    def endpoint(host, port, world_size):  # stands in for the NCCL group (rank 0)
        opened.append((host, port, world_size))
        return lambda t: sent.append(t.clone())

    engine = VllmServerRollout(rollout_cfg(server), seed=0, endpoint=endpoint)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    engine.sync(model)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    engine.sync(model)
    routes = [(m, p) for m, p, _ in FakeVllm.calls]
    one_sync = [("POST", "/pause?mode=wait"), ("POST", "/start_weight_update"), ("POST", "/update_weights"),
                ("POST", "/finish_weight_update"), ("POST", "/resume")]
    assert routes == [("GET", "/v1/models"), ("GET", "/get_world_size?include_dp=false"),
                      ("POST", "/init_weight_transfer_engine"), *one_sync, *one_sync]
    assert opened == [("127.0.0.1", 29555, 3)]  # the trainer + 2 workers, the group opened once
    bodies = {p: b for _, p, b in FakeVllm.calls}
    assert bodies["/init_weight_transfer_engine"] == {"init_info": {
        "master_address": "127.0.0.1", "master_port": 29555, "rank_offset": 1, "world_size": 3, "packed": False}}
    names = [n for n, _ in model.named_parameters()]
    assert bodies["/update_weights"] == {"update_info": {"names": names, "dtype_names": ["float32"] * 4,
                                                         "shapes": [[2, 3], [2], [1, 2], [1]]}}
    assert [b for _, p, b in FakeVllm.calls if p == "/finish_weight_update"] == [{"weight_version": "1"},
                                                                                 {"weight_version": "2"}]
    params = [p.detach() for p in model.parameters()]
    assert len(sent) == 8 and all(torch.equal(a, b) for a, b in zip(sent[4:], params))
    assert torch.allclose(sent[0], params[0] - 1.0, atol=1e-6)  # the first sync sent the weights before the change


def test_the_payloads_are_the_ones_vllm_parses(server):
    nccl = pytest.importorskip("vllm.distributed.weight_transfer.nccl_engine")
    engine = VllmServerRollout(rollout_cfg(server), seed=0, endpoint=lambda *a: (lambda t: None))
    engine.sync(torch.nn.Linear(2, 2))
    bodies = {p: b for _, p, b in FakeVllm.calls}
    nccl.NCCLWeightTransferInitInfo(**bodies["/init_weight_transfer_engine"]["init_info"])
    nccl.NCCLWeightTransferUpdateInfo(**bodies["/update_weights"]["update_info"])


def test_generate_builds_rollouts_from_completions(server):
    engine = VllmServerRollout(rollout_cfg(server), seed=7)
    engine.suppress_tokens([5])
    r = engine.generate([[10, 11], [20]], step=3, seed=7, offset=4)
    assert r.group == [0, 0, 1, 1] and r.texts == ["answer 10-0", "answer 10-1", "answer 20-0", "answer 20-1"]
    assert r.response_ids == [[10, 2], [11, 2], [20, 2], [21, 2]] and r.truncated == [True, False, True, False]
    assert r.sample_logp[1] == [-1.0, -0.1] and r.prompt_ids[2] == [20]
    sent = sorted((b for _, p, b in FakeVllm.calls if p == "/v1/completions"), key=lambda b: b["prompt"])
    assert [b["seed"] for b in sent] == [sample_seed(7, 3, 4), sample_seed(7, 3, 5)]
    assert all(b["logprobs"] == 0 and b["return_token_ids"] and b["n"] == 2 and b["model"] == "tiny"
               and b["logit_bias"] == {"5": -100.0} for b in sent)


def test_registered_and_configured_by_name(server):
    assert "vllm-server" in ENGINES
    with pytest.raises(ValueError, match="rollout.engine=vllm-server needs rollout.server_url"):
        load_config("cpu_smollm2", ["rollout.engine=vllm-server"])
    with pytest.raises(RolloutServerError, match="unreachable"):
        VllmServerRollout(rollout_cfg("http://127.0.0.1:9"), seed=0)
