"""A fake Ollama for the e2e tests: plain HTTP on 127.0.0.1:<port>, in a thread of the test.

Serves what pouch meters on a local model server: Ollama's native ``POST /api/chat`` and
``/api/generate`` (NDJSON streamed by default, one line per word, the counts in the last line:
``prompt_eval_count`` = ``x-fake-prompt-tokens`` or 7, ``eval_count`` = the words), and the
OpenAI-compatible ``POST /v1/chat/completions`` (SSE; the usage chunk only when the request asks
with ``stream_options.include_usage``, as Ollama does), plus ``GET /api/tags`` and
``GET /v1/models``. ``x-fake-chunks`` sets the words (default 3). Every request is recorded in
``requests`` (method, path, headers, body).
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL = "llama3.2:1b"


def words(n: int) -> list[str]:
    return [("w%d " % i) for i in range(n)]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _chunked(self, ctype: str, parts: list[bytes]) -> None:
        self.send_response(200)
        self.send_header("content-type", ctype)
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for p in parts:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(p), p))
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")

    def _record(self, body: Any) -> None:
        self.server.requests.append({"method": self.command, "path": self.path,
                                     "headers": {k.lower(): v for k, v in self.headers.items()}, "body": body})

    def do_GET(self) -> None:
        self._record(None)
        if self.path == "/api/tags":
            self._send(200, json.dumps({"models": [{"name": MODEL, "model": MODEL, "size": 1}]}).encode())
        elif self.path == "/v1/models":
            self._send(200, json.dumps({"object": "list", "data": [{"id": MODEL, "object": "model"}]}).encode())
        else:
            self._send(404, b'{"error":"not found"}')

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        body = json.loads(raw or b"{}")
        self._record(body)
        n = int(self.headers.get("x-fake-chunks") or 3)
        prompt = int(self.headers.get("x-fake-prompt-tokens") or 7)
        model = body.get("model", MODEL)
        if self.path in ("/api/chat", "/api/generate"):
            chat = self.path == "/api/chat"

            def line(text: str, done: bool) -> dict[str, Any]:
                out: dict[str, Any] = {"model": model, "created_at": "2026-12-06T00:00:00Z"}
                out.update({"message": {"role": "assistant", "content": text}} if chat else {"response": text})
                out["done"] = done
                if done:
                    out.update(done_reason="stop", total_duration=123, prompt_eval_count=prompt, eval_count=n)
                return out

            if body.get("stream", True):
                self._chunked("application/x-ndjson",
                              [json.dumps(line(w, False)).encode() + b"\n" for w in words(n)]
                              + [json.dumps(line("", True)).encode() + b"\n"])
            else:
                self._send(200, json.dumps(line("".join(words(n)), True)).encode())
        elif self.path == "/v1/chat/completions":
            usage = {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": prompt + n}
            if body.get("stream"):
                def chunk(delta: dict, finish: str | None) -> bytes:
                    c = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model,
                         "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
                    return b"data: " + json.dumps(c).encode() + b"\n\n"
                parts = [chunk({"role": "assistant", "content": ""}, None)]
                parts += [chunk({"content": w}, None) for w in words(n)] + [chunk({}, "stop")]
                if (body.get("stream_options") or {}).get("include_usage"):
                    parts.append(b"data: " + json.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk",
                                                         "created": 1, "model": model, "choices": [],
                                                         "usage": usage}).encode() + b"\n\n")
                parts.append(b"data: [DONE]\n\n")
                self._chunked("text/event-stream", parts)
            else:
                self._send(200, json.dumps({
                    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": model,
                    "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(words(n))},
                                 "finish_reason": "stop"}], "usage": usage}).encode())
        else:
            self._send(404, b'{"error":"not found"}')


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    requests: list[dict[str, Any]]


class FakeOllama:
    def __init__(self) -> None:
        self.server = _Server(("127.0.0.1", 0), _Handler)
        self.server.requests = []
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def requests(self) -> list[dict[str, Any]]:
        return self.server.requests

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
