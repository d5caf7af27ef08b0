"""A loopback OpenAI-compatible chat server that injects faults, for tests.

``POST /v1/chat/completions`` looks for a marker ``mode-NAME`` in the last message; the mode
decides the behaviour (no marker: reply "YES"):

=================  =====================================================================
``mode-yes``       reply YES                      ``mode-no``       reply NO
``mode-echo``      reply the last message's text after ``echo=`` (or the whole text)
``mode-garbage``   200 with a valid body whose text is "Perhaps, hard to say"
``mode-badjson``   200 with a body that is not JSON
``mode-500``       always HTTP 500                ``mode-500once``  500 first, then YES
``mode-429``       429 with ``Retry-After: 1`` (``retry_after``) on the first request, then YES
``mode-400``       HTTP 400 (not retryable)
``mode-timeout``   sleep ``slow_s`` seconds before replying (past the client's timeout)
``mode-drop``      close the connection without a reply
``mode-dropOnce``  drop the first request, then YES
``mode-slow``      sleep ``slow_s`` seconds, then YES (past a batch deadline)
=================  =====================================================================

Optional constructor arguments (defaults keep the table above exact): ``yes_text`` / ``no_text``
replace the text sent wherever the table says YES / NO (e.g. ``'{"score": 1}'`` for a judge that
must answer in JSON); ``scripts`` maps extra mode names to reply lists: ``mode-NAME`` then
replies ``scripts[NAME][k]`` to the k-th request with the same prompt text (the last entry once
the list is used up), e.g. ``{"flaky": ["not json", '{"score": 1}']}``.

``retry_after`` sets mode-429's Retry-After header value (default ``"1"``). ``responder``, a
function of the request's messages returning the reply text, replaces the modes altogether (a
fake model, e.g. ``tests/injection_judge.py``).

Every request is logged on arrival in ``server.log`` as (monotonic time, mode), with its JSON body in
``server.payloads`` and its HTTP headers (lower-cased names) in ``server.headers`` at the same index;
``server.prompts()`` lists the last message's text of each. ``GET /v1/models`` lists one model. Usage::

    with FaultServer(slow_s=5) as server:
        client = JudgeClient(server.url, "fault-model")
"""
from __future__ import annotations

import contextlib
import json
import re
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

_MODE = re.compile(r"mode-([A-Za-z0-9]+)")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):  # keep test output clean
        pass

    def _send(self, status: int, body: bytes, headers: dict | None = None):
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        try:
            self.wfile.write(body)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            pass

    def _reply(self, text: str):
        body = {"id": "chatcmpl-fault", "object": "chat.completion", "created": int(time.time()),
                "model": "fault-model",
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}}
        self._send(200, json.dumps(body).encode())

    def do_GET(self):
        if self.path.rstrip("/").endswith("/models"):
            self._send(200, json.dumps({"object": "list", "data": [{"id": "fault-model", "object": "model"}]}).encode())
        else:
            self._send(404, b'{"error": "not found"}')

    def do_POST(self):
        server: FaultServer = self.server.owner  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        payload = json.loads(self.rfile.read(length) or b"{}")
        messages = payload.get("messages") or [{"content": ""}]
        text = str(messages[-1].get("content", ""))
        found = _MODE.search(text)
        mode = found.group(1) if found else "yes"
        seen = server.count(text)  # how many times this exact prompt came before
        # on arrival, so requests still hanging are counted too
        server.record(mode, payload, {k.lower(): v for k, v in self.headers.items()})
        if server.responder is not None:
            self._reply(server.responder(messages))
            return
        self._act(mode, seen, text, server)

    def _act(self, mode: str, seen: int, text: str, server: FaultServer) -> int:
        if mode in server.scripts:
            replies = server.scripts[mode]
            self._reply(replies[min(seen, len(replies) - 1)])
            return 200
        if mode in ("yes", "no"):
            self._reply(server.yes_text if mode == "yes" else server.no_text)
            return 200
        if mode == "echo":
            self._reply(text.split("echo=", 1)[-1].split()[0] if "echo=" in text else text)
            return 200
        if mode == "garbage":
            self._reply("Perhaps, hard to say")
            return 200
        if mode == "badjson":
            self._send(200, b"<html>this is not json")
            return 200
        if mode == "500" or (mode == "500once" and seen == 0):
            self._send(500, b'{"error": {"message": "injected 500"}}')
            return 500
        if mode == "429" and seen == 0:
            self._send(429, b'{"error": {"message": "slow down"}}', {"Retry-After": server.retry_after})
            return 429
        if mode == "400":
            self._send(400, b'{"error": {"message": "bad request"}}')
            return 400
        if mode in ("timeout", "slow"):
            time.sleep(server.slow_s)
            self._reply(server.yes_text)
            return 200
        if mode == "drop" or (mode == "dropOnce" and seen == 0):
            # close without any reply: the client sees the connection end
            self.close_connection = True
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)
            return 0
        self._reply(server.yes_text)
        return 200


class _Server(ThreadingHTTPServer):
    # the default listen backlog (5) drops the SYNs of a burst of concurrent connections: the
    # client then waits ~1 s for the retransmit and may time out before the server ever sees it
    request_queue_size = 128


class FaultServer:
    """Runs the fault-injecting server on 127.0.0.1 (a free port) in a daemon thread."""

    def __init__(self, slow_s: float = 5.0, *, yes_text: str = "YES", no_text: str = "NO",
                 scripts: dict[str, list[str]] | None = None, retry_after: str = "1", responder=None):
        self.slow_s, self.responder = slow_s, responder
        self.retry_after = str(retry_after)
        self.yes_text, self.no_text = yes_text, no_text
        self.scripts = {name: list(replies) for name, replies in (scripts or {}).items()}
        for name, replies in self.scripts.items():
            if not re.fullmatch(r"[A-Za-z0-9]+", name) or not replies:
                raise ValueError(f"scripts: mode name {name!r} must be alphanumeric with >= 1 reply")
        self.log: list[tuple[float, str]] = []
        self.payloads: list[dict] = []
        self.headers: list[dict] = []
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self._httpd = _Server(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.owner = self  # type: ignore[attr-defined]
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"
        # a short poll interval: stop() returns in ~0.05 s instead of up to 0.5 s
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fault-server", daemon=True)

    def count(self, text: str) -> int:
        with self._lock:
            n = self._counts.get(text, 0)
            self._counts[text] = n + 1
            return n

    def record(self, mode: str, payload: dict, headers: dict | None = None) -> None:
        with self._lock:
            self.log.append((time.monotonic(), mode))
            self.payloads.append(payload)
            self.headers.append(dict(headers or {}))

    def requests(self, mode: str | None = None) -> list[tuple[float, str]]:
        with self._lock:
            return [row for row in self.log if mode is None or row[1] == mode]

    def prompts(self) -> list[str]:
        """The last message's text of every request, in arrival order (parallel to ``log``)."""
        with self._lock:
            return [str((p.get("messages") or [{}])[-1].get("content", "")) for p in self.payloads]

    def start(self) -> FaultServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
