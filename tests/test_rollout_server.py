"""The rollout server mode (rollout.engine=server): python -m medix_r1.rollout.server + ServerRollout.

Fast tests: request/response building against a recording stand-in server, the weight broadcast
protocol over a real gloo group (two threads), config validation and the unreachable-server error.
Slow tests: a real server on a loopback port with SmolLM2 (fp32, eager, 0.25 GiB KV cache) checked
against transformers, weight sync over gloo, a failed update and a 2-step trainer run.
"""
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from medix_r1.config import load_config
from medix_r1.data.prompts import prompt_token_ids
from medix_r1.models import resolve_model_dir
from medix_r1.rollout import RolloutOutOfMemory, RolloutServerError, ServerRollout, sample_seed
from medix_r1.rollout.client import rollouts_from_response
from medix_r1.rollout.server_engine import RequestError, check_generate, sampling_kwargs
from medix_r1.rollout.weight_sync import (
    WeightSyncGroup,
    check_meta,
    named_weights,
    plan_buckets,
    receive_weights,
    send_weights,
)
from medix_r1.testing.servers import free_port
from medix_r1.train import cli as train_cli
from medix_r1.train import train
from medix_r1.train.batch import make_batch
from medix_r1.train.cli import main
from medix_r1.train.policy import load_model, sequence_logp
from tests.train_helpers import CharRewardWorker


def server_cfg(url, *extra):
    # short prompts (~110 tokens): the transformers forwards that check the log-probs dominate the time
    return load_config("cpu_smollm2", ["rollout.engine=server", f"rollout.server_url={url}", "rollout.n=2",
                                       "rollout.max_tokens=12", "rollout.temperature=0.7", "data.context_chars=120",
                                       "data.example_question=", "data.example_answer=", *extra])


# ----------------------------------------------------------------------------- fast: HTTP client

class Recorder:
    """A stand-in rollout server: /health, and /generate answering n samples per prompt whose ids
    encode (prompt index, sample index); records every request body."""

    def __init__(self, max_model_len=640, generate_status=200, generate_detail="", instance="abc", version=0,
                 sampling=None):
        self.bodies, self.max_model_len, self.sampling = [], max_model_len, sampling
        self.generate_status, self.generate_detail = generate_status, generate_detail
        self.instance, self.version = instance, version
        rec = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def reply(self, status, body):
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                self.reply(200, {"status": "ok", "model": "m", "dtype": "float32", "instance": rec.instance,
                                 "max_model_len": rec.max_model_len, "weights_version": rec.version,
                                 **({} if rec.sampling is None else {"sampling": rec.sampling})})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                rec.bodies.append((self.path, body))
                if rec.generate_status != 200:
                    return self.reply(rec.generate_status, {"detail": rec.generate_detail})
                outputs = [{"prompt_len": len(p), "samples": [
                    {"token_ids": [100 + i, 200 + j], "logprobs": [-0.5 - i, -0.25 - j], "text": f"p{i}s{j}",
                     "finish_reason": "length" if j == 0 else "stop"} for j in range(body["n"])]}
                    for i, p in enumerate(body["prompt_token_ids"])]
                self.reply(200, {"outputs": outputs, "instance": rec.instance, "weights_version": rec.version})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def test_generate_request_and_rollouts_layout():
    with Recorder() as srv:
        cfg = server_cfg(srv.url)
        eng = ServerRollout(cfg.rollout, seed=7)
        eng.suppress_tokens([5, 9])
        prompts = [[1, 2, 3], [4, 5]]
        r = eng.generate(prompts, step=3, seed=7, attempt=1)
    path, body = srv.bodies[0]
    assert path == "/generate"
    assert body["prompt_token_ids"] == prompts and body["n"] == 2 and body["max_tokens"] == 12
    assert body["temperature"] == 0.7 and body["top_p"] == 1.0
    assert body["seeds"] == [sample_seed(7, 3, 0, 1), sample_seed(7, 3, 1, 1)]  # what VllmRollout uses
    assert body["logit_bias"] == {"5": -100.0, "9": -100.0}
    # group by group, prompt 0's samples first
    assert r.group == [0, 0, 1, 1] and r.prompt_ids == [prompts[0]] * 2 + [prompts[1]] * 2
    assert r.response_ids == [[100, 200], [100, 201], [101, 200], [101, 201]]
    assert r.sample_logp[3] == [-1.5, -1.25] and r.texts[2] == "p1s0"
    assert r.truncated == [True, False, True, False] and r.images == [None] * 4


def test_response_checks():
    good = {"outputs": [{"prompt_len": 2, "samples": [{"token_ids": [1], "logprobs": [-1.0], "text": "a",
                                                       "finish_reason": "stop"}]}]}
    assert len(rollouts_from_response([[1, 2]], good, 1)) == 1
    with pytest.raises(RolloutServerError, match="the server saw 2 tokens, the trainer sent 3"):
        rollouts_from_response([[1, 2, 3]], good, 1)
    with pytest.raises(RolloutServerError, match="expected rollout.n = 2"):
        rollouts_from_response([[1, 2]], good, 2)
    with pytest.raises(RolloutServerError, match="1 outputs for 2 prompts"):
        rollouts_from_response([[1, 2], [3, 4]], good, 1)
    bad = json.loads(json.dumps(good))
    bad["outputs"][0]["samples"][0]["logprobs"] = []
    with pytest.raises(RolloutServerError, match="1 tokens but 0 log-probs"):
        rollouts_from_response([[1, 2]], bad, 1)


def test_server_errors_reach_the_trainer_clearly():
    with Recorder(generate_status=507, generate_detail="CPU out of memory") as srv:
        eng = ServerRollout(server_cfg(srv.url).rollout, 0)
        with pytest.raises(RolloutOutOfMemory, match="--kv-cache-gb"):
            eng.generate([[1, 2]], 1, 0)
    with Recorder(generate_status=400, generate_detail="prompt 0 has 9 tokens") as srv:
        eng = ServerRollout(server_cfg(srv.url).rollout, 0)
        with pytest.raises(RolloutServerError, match=r"/generate: HTTP 400: prompt 0 has 9 tokens"):
            eng.generate([[1, 2]], 1, 0)
    with Recorder(max_model_len=256) as srv:
        with pytest.raises(RolloutServerError, match="--max-model-len 256.*rollout.max_model_len"):
            ServerRollout(server_cfg(srv.url).rollout, 0)
    with Recorder(instance="new", version=0) as srv:  # e.g. the server restarted since our last sync
        eng = ServerRollout(server_cfg(srv.url).rollout, 0)
        eng.version = ("old", 3)
        with pytest.raises(RolloutServerError, match="not the policy's"):
            eng.generate([[1, 2]], 1, 0)
    with pytest.raises(RolloutServerError, match="text prompts only"), Recorder() as srv:
        ServerRollout(server_cfg(srv.url).rollout, 0).generate([{"input_ids": [1]}], 1, 0)


def test_unreachable_server_names_the_url_and_the_command():
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    cfg = server_cfg(url)
    with pytest.raises(RolloutServerError) as info:
        ServerRollout(cfg.rollout, 0, model_dir="/models/policy")
    msg = str(info.value)
    assert url in msg and "unreachable" in msg
    assert "python -m medix_r1.rollout.server --model /models/policy --host 127.0.0.1 --port" in msg


@pytest.mark.slow  # loads SmolLM2 and the data before it reaches the engine
def test_trainer_with_an_unreachable_server_stops_before_training(tmp_path):
    url = f"http://127.0.0.1:{free_port()}"
    cfg = server_cfg(url, f"train.output_dir={tmp_path / 'run'}", "train.max_steps=1", "train.progress=false",
                     "train.plot=false")
    model = resolve_model_dir("smollm2")
    with pytest.raises(RolloutServerError, match=f"{url} is unreachable.*--model {model}"):
        train(cfg, reward_worker=CharRewardWorker())
    assert not (tmp_path / "run" / "metrics.jsonl").exists() or not (tmp_path / "run" / "metrics.jsonl").read_text()


def test_main_reports_a_rollout_server_error_without_a_traceback(monkeypatch, capsys, tmp_path):
    def unreachable(cfg, resume=False, overwrite=False):
        assert cfg.rollout.engine == "server"  # --rollout server reached the config
        raise RolloutServerError(f"{cfg.rollout.server_url} is unreachable")

    monkeypatch.setattr(train_cli, "train", unreachable)
    rc = main(["--rollout", "server", "--set", "rollout.server_url=http://127.0.0.1:9", "--output-dir",
                 str(tmp_path), "-q"])
    assert rc == 1
    assert "training stopped: http://127.0.0.1:9 is unreachable" in capsys.readouterr().err


def test_rollout_server_that_dies_at_start_up_reports_its_log():
    from medix_r1.models import smollm2_hf_dir
    from medix_r1.testing.servers import rollout_server
    with pytest.raises(RuntimeError, match="the rollout server exited with code 2 before it was ready"
                                           "(.|\n)*unrecognized arguments: --no-such-flag"):
        with rollout_server(smollm2_hf_dir(), extra_args=["--no-such-flag"], ready_timeout_s=120):
            pass


def test_config_validation():
    with pytest.raises(ValueError, match="rollout.engine=server needs rollout.server_url"):
        load_config("cpu_smollm2", ["rollout.engine=server"])
    with pytest.raises(ValueError, match="rollout.server_sync_backend"):
        server_cfg("http://h:1", "rollout.server_sync_backend=mpi")
    with pytest.raises(ValueError, match="rollout.server_timeout_s"):
        server_cfg("http://h:1", "rollout.server_timeout_s=0")
    with pytest.raises(ValueError, match="rollout.server_sync_bucket_mb"):
        server_cfg("http://h:1", "rollout.server_sync_bucket_mb=-1")
    cfg = server_cfg("http://h:1", "rollout.server_sync_port=29512", "rollout.server_sync_bucket_mb=16")
    assert cfg.rollout.server_sync_port == 29512 and cfg.rollout.server_sync_bucket_mb == 16.0


# ----------------------------------------------------------------------------- fast: protocol pieces

def test_server_side_request_checks():
    req = {"prompt_token_ids": [[1, 2], [3]], "n": 2, "max_tokens": 4, "temperature": 0.7, "top_p": 0.9,
           "seeds": [11, 12], "logit_bias": {"5": -100.0}}
    check_generate(req, 640)
    kw = sampling_kwargs(req, 1)
    assert kw == {"n": 2, "temperature": 0.7, "top_p": 0.9, "max_tokens": 4, "logprobs": 0, "seed": 12,
                  "logit_bias": {5: -100.0}}
    with pytest.raises(RequestError, match="2 tokens \\+ max_tokens 4 > the server's --max-model-len 5"):
        check_generate(req, 5)
    with pytest.raises(RequestError, match="seeds has 1 entries for 2 prompts"):
        check_generate({**req, "seeds": [1]}, 640)
    with pytest.raises(ValueError, match="params\\[1\\].*unknown dtype 'float8'"):
        check_meta([{"name": "a", "dtype": "float32", "shape": [2]}, {"name": "b", "dtype": "float8", "shape": [2]}])


def test_bucket_plan():
    f32, bf16 = torch.float32, torch.bfloat16
    meta = [("a", f32, (4,)), ("b", f32, (4,)), ("c", bf16, (4,)), ("d", f32, (100,)), ("e", f32, (2,)),
            ("f", f32, ())]
    assert plan_buckets(meta, 0) == [[0], [1], [2], [3], [4], [5]]
    # 32 bytes: a+b fill one bucket; the dtype change starts another; d (400 B) travels alone
    assert plan_buckets(meta, 32) == [[0, 1], [2], [3], [4, 5]]
    assert plan_buckets(meta, 1 << 20) == [[0, 1], [2], [3, 4, 5]]


@pytest.mark.parametrize("bucket_bytes", [0, 64])
def test_weights_round_trip_over_gloo(bucket_bytes):
    """send_weights (rank 0) and receive_weights (rank 1) over a real gloo group, one thread each."""
    gen = torch.Generator().manual_seed(0)
    tensors = {"w": torch.randn(3, 4, generator=gen), "b16": torch.randn(5, generator=gen).to(torch.bfloat16),
               "ids": torch.arange(4).reshape(2, 2), "big": torch.randn(300, generator=gen),
               "s": torch.tensor(2.5), "w2": torch.randn(2, 2, generator=gen)}
    meta = check_meta([{"name": k, "dtype": str(v.dtype).removeprefix("torch."), "shape": list(v.shape)}
                       for k, v in tensors.items()])
    trainer = WeightSyncGroup.open_store("gloo", "127.0.0.1", 0, 0, 2, timeout_s=30)
    server = WeightSyncGroup.open_store("gloo", "127.0.0.1", trainer.port, 1, 2, timeout_s=30)
    received = {}

    def serve():
        server.connect("127.0.0.1")
        for name, t in receive_weights(server, meta, bucket_bytes):
            received[name] = t.clone()

    th = threading.Thread(target=serve)
    th.start()
    trainer.connect("127.0.0.1")
    sent = send_weights(trainer, tensors.values(), meta, bucket_bytes)
    th.join(timeout=30)
    trainer.close()
    server.close()
    assert sent == sum(t.numel() * t.element_size() for t in tensors.values())
    assert list(received) == list(tensors)
    for k, v in tensors.items():
        assert received[k].dtype == v.dtype and torch.equal(received[k], v), k
    with pytest.raises(ValueError, match="metadata says"):  # a tensor that does not match its metadata
        send_weights(trainer, [torch.zeros(2)], meta[:1], 0)


# ----------------------------------------------------------------------------- slow: a real server

@pytest.fixture(scope="module")
def server():
    from medix_r1.models import smollm2_hf_dir
    from medix_r1.testing.servers import rollout_server
    with rollout_server(smollm2_hf_dir(), kv_cache_gb=0.25, max_model_len=640, ready_timeout_s=240) as srv:
        yield srv
    assert srv.process.poll() is not None  # stopped on exit


@pytest.fixture(scope="module")
def smollm2():
    from transformers import AutoTokenizer
    d = resolve_model_dir("smollm2")
    return d, AutoTokenizer.from_pretrained(str(d))


@pytest.fixture(scope="module")
def policy(smollm2, server):
    cfg = server_cfg(server.url)
    return load_model(smollm2[0], cfg, trainable=True), cfg


def prompts(tokenizer, cfg, k=2):
    from medix_r1.data.records import load_records
    records, _ = load_records("pubmedqa", max_records=k)
    return [prompt_token_ids(tokenizer, r, cfg.data) for r in records]


def mismatch(model, rollouts, pad_id, temperature=0.7):
    """(mean, max) |server log-prob - transformers log-prob| over the response tokens, both at the sampling
    temperature (the server returns the log-probs of the distribution it drew from)."""
    batch = make_batch(rollouts.prompt_ids, rollouts.response_ids, pad_id)
    trainer = sequence_logp(model, batch, temperature, 4)
    sample = torch.zeros_like(batch["mask"])
    for i, lp in enumerate(rollouts.sample_logp):
        sample[i, :len(lp)] = torch.tensor(lp)
    diff = (sample - trainer).abs() * batch["mask"]
    return float(diff.sum() / batch["mask"].sum()), float(diff.max())


@pytest.mark.slow
def test_seeded_generation_is_reproducible_and_logprobs_match_transformers(server, smollm2, policy):
    _, tok = smollm2
    model, cfg = policy
    eng = ServerRollout(cfg.rollout, 0)
    assert eng.sampling_logprobs and server.health()["logprobs_mode"] == "processed_logprobs"
    ps = prompts(tok, cfg)
    a, b = eng.generate(ps, 1, 0), eng.generate(ps, 1, 0)
    assert len(a) == 4 and all(len(x) > 0 for x in a.response_ids)
    assert a.response_ids == b.response_ids and a.sample_logp == b.sample_logp and a.texts == b.texts
    assert eng.generate(ps, 2, 0).response_ids != a.response_ids  # another step, other seeds
    mean, worst = mismatch(model, a, tok.eos_token_id)
    assert mean < 1e-4 and worst < 1e-3, (mean, worst)


@pytest.mark.slow
def test_weight_sync_over_gloo_makes_the_server_match_the_policy(server, smollm2, policy):
    _, tok = smollm2
    model, cfg = policy
    eng = ServerRollout(cfg.rollout, 0)
    ps = prompts(tok, cfg)
    version = server.health()["weights_version"]
    with torch.no_grad():  # the embeddings (tied to the LM head) and one layer
        gen = torch.Generator().manual_seed(0)
        for name, p in model.named_parameters():
            if "embed_tokens" in name or ".layers.2." in name:
                p.add_(torch.randn(p.shape, generator=gen) * 0.05 * p.std())
    before = eng.generate(ps, 1, 0)
    stale = mismatch(model, before, tok.eos_token_id)
    eng.sync(model)
    assert eng.group is not None and eng.group.backend == "gloo"
    assert server.health()["weights_version"] == version + 1 and eng.version[1] == version + 1
    after = eng.generate(ps, 1, 0)
    synced = mismatch(model, after, tok.eos_token_id)
    assert stale[0] > 1e-2 and synced[0] < 1e-4 and synced[1] < 1e-3, (stale, synced)
    assert after.sample_logp != before.sample_logp
    # the bucketed path (16 MiB broadcasts) after one more change, over the same group
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(1.05)
    eng.cfg.server_sync_bucket_mb = 16.0
    eng.sync(model)
    eng.cfg.server_sync_bucket_mb = 0.0
    again = mismatch(model, eng.generate(ps, 1, 0), tok.eos_token_id)
    assert again[0] < 1e-4, again
    print(f"\nsync of {eng.last_sync['bytes'] / 1e6:.0f} MB ({eng.last_sync['tensors']} tensors): "
          f"{eng.last_sync['seconds']:.2f} s; health {server.health()['last_update']}")


@pytest.mark.slow
def test_a_failed_update_is_reported_and_blocks_generation_until_a_full_one(server, smollm2, policy):
    model, cfg = policy
    eng = ServerRollout(cfg.rollout, 0)
    named = list(named_weights(model))
    bad = named[:3] + [("model.layers.0.no_such.weight", torch.zeros(3))] + named[3:]
    with pytest.raises(RolloutServerError, match="weight update failed at tensor 4 of 273.*no_such"):
        eng._push(bad, model)  # the server took every broadcast: this call did not hang
    with pytest.raises(RolloutServerError, match="HTTP 409: a weight update failed"):
        eng.generate([[1, 2, 3]], 1, 0)
    eng.sync(model)  # a complete update repairs it, over the same group
    assert server.health()["status"] == "ok"
    mean, _ = mismatch(model, eng.generate(prompts(smollm2[1], cfg), 1, 0), smollm2[1].eos_token_id)
    assert mean < 1e-4, mean


@pytest.mark.slow
def test_two_trainer_steps_with_the_server_engine(tmp_path, server, policy):
    del policy
    out = tmp_path / "run"
    version = server.health()["weights_version"]
    cfg = server_cfg(server.url, "train.max_steps=2", f"train.output_dir={out}", "rollout.max_tokens=16",
                     "data.prompts_per_step=2", "train.progress=false", "optim.micro_batch_size=4", "loss.beta=0",
                     "train.plot=false")
    summary = train(cfg, reward_worker=CharRewardWorker())
    assert summary["steps"] == 2
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2]
    # step 1 samples after the start-up sync, step 2 after the sync of step 1's update
    assert all(x["rollout/logp_mismatch"] < 2e-4 for x in lines), [x["rollout/logp_mismatch"] for x in lines]
    assert all(x["optim/grad_norm"] > 0 for x in lines)
    assert server.health()["weights_version"] == version + 3  # start-up + one per step
    assert (out / "step_000002" / "COMPLETE").is_file()
