"""The OpenAI-endpoint generator against a loopback server: request content (greedy, token
limit, system prompt, image data URLs) and replies mapped back in order."""
import base64
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from medix_r1.eval.generation import GenerationConfig, build_messages, cut_middle, make_generator, resolve_model_dir
from medix_r1.eval.items import make_record


class EchoHandler(BaseHTTPRequestHandler):
    requests = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        EchoHandler.requests.append(body)
        user = body["messages"][-1]["content"]
        text = user if isinstance(user, str) else user[-1]["text"]
        reply = {"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                 "choices": [{"index": 0, "finish_reason": "stop",
                              "message": {"role": "assistant", "content": f"<answer>{text}</answer>"}}],
                 "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), EchoHandler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    EchoHandler.requests = []
    yield f"http://127.0.0.1:{httpd.server_port}/v1"
    httpd.shutdown()


def test_openai_generator_sends_greedy_requests_with_images(server, tmp_path):
    png = tmp_path / "img.png"
    png.write_bytes(b"\x89PNG fake bytes")
    recs = [make_record(id=str(i), benchmark="b", question=f"q{i}", problem=f"problem {i}",
                        reference="r", images=[png] if i == 2 else []) for i in range(5)]
    gen = make_generator("openai", "served-model",
                         GenerationConfig(base_url=server, max_new_tokens=7, concurrency=3))
    out = gen([build_messages(r, "plain") for r in recs])
    assert out == [f"<answer>problem {i}</answer>" for i in range(5)]
    assert len(EchoHandler.requests) == 5
    req = next(r for r in EchoHandler.requests if isinstance(r["messages"][-1]["content"], list))
    assert req["model"] == "served-model" and req["temperature"] == 0 and req["max_tokens"] == 7
    assert req["messages"][0]["content"].startswith("You are a medical expert. Answer the question")
    url = req["messages"][-1]["content"][0]["image_url"]["url"]
    assert base64.b64decode(url.split(",", 1)[1]) == png.read_bytes()


def test_generation_config_and_paths_validate(tmp_path):
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationConfig(max_new_tokens=0)
    with pytest.raises(ValueError, match="max_model_len"):
        GenerationConfig(max_new_tokens=512, max_model_len=256)
    with pytest.raises(ValueError, match="temperature"):
        GenerationConfig(temperature=-1)
    with pytest.raises(ValueError, match="config.json"):
        resolve_model_dir(tmp_path)
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "config.json").write_text("{}")
    assert resolve_model_dir(tmp_path) == (tmp_path / "model").resolve()  # trainer checkpoint
    with pytest.raises(ValueError, match="generator"):
        make_generator("tgi", tmp_path, GenerationConfig())
    with pytest.raises(ValueError, match="--base-url"):
        make_generator("openai", "m", GenerationConfig())
    with pytest.raises(ValueError, match="prompt style"):
        build_messages(make_record(id="1", benchmark="b", question="q", problem="p",
                                   reference="r"), "fancy")


def test_cut_middle_keeps_both_ends():
    assert cut_middle(list(range(10)), 20) == list(range(10))
    assert cut_middle(list(range(10)), 5) == [0, 1, 7, 8, 9]
