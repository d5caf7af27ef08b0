"""The rollout server's access rules (issue 17): a shared token from MEDIX_ROLLOUT_TOKEN on every
endpoint, no start on a non-loopback address without one, bounded n / prompts / body size. The
real HTTP app (FastAPI under uvicorn) runs over a stand-in engine, so no model loads."""
import threading
import time

import pytest

from medix_r1.config import load_config
from medix_r1.rollout import RolloutServerError, ServerRollout
from medix_r1.rollout.server import build_app, is_loopback, main
from medix_r1.rollout.server_engine import LIMITS
from medix_r1.testing.servers import free_port

TOKEN = "s3cret-token-for-tests"


class FakeEngine:
    """What the app calls on the engine: health, generate (ids encode prompt and sample), weight calls."""

    def __init__(self):
        self.calls = []

    def health(self):
        return {"status": "ok", "model": "m", "dtype": "float32", "max_model_len": 640, "instance": "abc",
                "weights_version": 0, "weight_sync": False, "last_update": {}}

    def generate(self, req):
        self.calls.append(("generate", req["n"], len(req["prompt_token_ids"])))
        outputs = [{"prompt_len": len(p), "samples": [
            {"token_ids": [100 + i, 200 + j], "logprobs": [-0.5, -0.25], "text": f"p{i}s{j}", "finish_reason": "stop"}
            for j in range(req["n"])]} for i, p in enumerate(req["prompt_token_ids"])]
        return {"outputs": outputs, "instance": "abc", "weights_version": 0}

    def update_weights(self, req):
        self.calls.append(("update_weights",))
        return {"ok": True}

    def close_weight_sync(self):
        self.calls.append(("close",))
        return {"ok": True}


class DirectRunner:
    busy = threading.Event()

    def __call__(self, fn, *args):
        return fn(*args)


@pytest.fixture
def app_server():
    """Serve build_app(FakeEngine, token=TOKEN, small limits) on a loopback port; yields (url, engine)."""
    import uvicorn

    engine = FakeEngine()
    app = build_app(engine, DirectRunner(), token=TOKEN, limits={"max_n": 4, "max_prompts": 3, "max_request_mb": 0.01})
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started
    yield f"http://127.0.0.1:{port}", engine
    server.should_exit = True
    thread.join(timeout=10)


def post(url, path, body=b"{}", headers=None):
    import urllib.error
    import urllib.request

    req = urllib.request.Request(url + path, data=body, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def client_cfg(url):
    return load_config("cpu_smollm2", ["rollout.engine=server", f"rollout.server_url={url}", "rollout.n=2",
                                       "rollout.max_tokens=12"]).rollout


@pytest.mark.parametrize("path", ["/health", "/generate", "/init_weight_sync", "/update_weights",
                                  "/close_weight_sync"])
@pytest.mark.parametrize("auth", [None, "Bearer wrong", f"Bearer {TOKEN}x", TOKEN])
def test_every_endpoint_needs_the_token(app_server, path, auth):
    url, engine = app_server
    headers = {} if auth is None else {"Authorization": auth}
    if path == "/health":
        import urllib.error
        import urllib.request
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(urllib.request.Request(url + path, headers=headers), timeout=10)
        status = info.value.code
    else:
        status, _ = post(url, path, headers=headers)
    assert status == 401
    assert engine.calls == []  # nothing reached the engine


def test_the_client_sends_the_token_from_the_environment(app_server, monkeypatch):
    url, engine = app_server
    monkeypatch.delenv("MEDIX_ROLLOUT_TOKEN", raising=False)
    with pytest.raises(RolloutServerError, match="HTTP 401.*MEDIX_ROLLOUT_TOKEN"):
        ServerRollout(client_cfg(url), 0)
    monkeypatch.setenv("MEDIX_ROLLOUT_TOKEN", TOKEN)
    rollouts = ServerRollout(client_cfg(url), 0).generate([[1, 2, 3]], 1, 0)
    assert engine.calls == [("generate", 2, 1)] and len(rollouts.texts) == 2


def test_n_prompts_and_body_size_are_bounded_with_clear_errors(app_server):
    url, engine = app_server
    auth = {"Authorization": f"Bearer {TOKEN}"}
    status, body = post(url, "/generate", b'{"prompt_token_ids": [[1, 2]], "n": 5}', auth)
    assert status == 400 and "n is 5, above the server's --max-n 4" in body
    status, body = post(url, "/generate", b'{"prompt_token_ids": [[1], [2], [3], [4]], "n": 1}', auth)
    assert status == 400 and "4 prompts, above the server's --max-prompts 3" in body
    big = ('{"prompt_token_ids": [[' + ",".join(["1"] * 6000) + ']], "n": 1}').encode()
    status, body = post(url, "/generate", big, auth)
    assert status == 413 and "--max-request-mb" in body
    assert engine.calls == []
    status, body = post(url, "/generate", b'{"prompt_token_ids": [[1, 2]], "n": 4}', auth)
    assert status == 200 and engine.calls == [("generate", 4, 1)]


def test_non_loopback_without_a_token_is_refused_before_loading(monkeypatch, capsys):
    monkeypatch.delenv("MEDIX_ROLLOUT_TOKEN", raising=False)
    for host in ("0.0.0.0", "192.168.1.5", "::", "rollout.example"):
        assert main(["--model", "/no/such/model", "--host", host]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "MEDIX_ROLLOUT_TOKEN" in err and host in err
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.0.0.2")
    # a token in the environment: the access check passes (and the missing model is the next error)
    monkeypatch.setenv("MEDIX_ROLLOUT_TOKEN", TOKEN)
    assert main(["--model", "/no/such/model", "--host", "0.0.0.0"]) == 2
    assert "no such folder" in capsys.readouterr().err
    assert LIMITS["max_n"] >= 5  # the defaults allow MediX's 5 samples per prompt


def test_no_flag_takes_a_token_or_a_key():
    from medix_r1.rollout.server import build_parser
    flags = {a for action in build_parser()._actions for a in action.option_strings}
    assert not any("token" in f or "key" in f for f in flags)
