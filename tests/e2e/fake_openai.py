"""A fake api.openai.com for end-to-end tests: an asyncio TLS server speaking OpenAI's wire format.

Run (the harness does this in a subprocess, with the test runner's python; stdlib only)::

    python fake_openai.py --port 0 --cert LEAF.pem --key LEAF-key.pem \
        --log LOG.jsonl --ready-file PORTFILE [--host 127.0.0.1]

It listens on ``--host`` (default 127.0.0.1), speaks HTTP/1.1 with keep-alive over TLS
(ALPN ``http/1.1``), writes its port to ``--ready-file`` once it accepts connections, and
logs everything it sees as JSON lines to ``--log`` (flushed per line).

Endpoints
---------
- ``POST /v1/chat/completions``   non-stream JSON, or ``stream: true`` = chunked
  ``text/event-stream`` of ``chat.completion.chunk`` events (first a role chunk with
  ``content: ""``, then one event per content token per choice, then a chunk with
  ``finish_reason`` per choice, then **only if** ``stream_options.include_usage`` is true
  the usage chunk with ``choices: []``, then ``data: [DONE]``). When ``include_usage`` is
  true every other chunk carries ``"usage": null`` (as OpenAI does); otherwise no chunk has
  a ``usage`` key.
- ``POST /v1/responses``          non-stream ``response`` object, or stream of ``event:`` +
  ``data:`` lines: response.created, response.in_progress, response.output_item.added,
  response.content_part.added, response.output_text.delta x N, response.output_text.done,
  response.content_part.done, response.output_item.done, then response.completed (or
  response.incomplete with ``incomplete_details.reason = "max_output_tokens"`` when the cap
  cut the output) carrying ``usage``. No ``[DONE]``.
- ``POST /v1/completions``        legacy ``text_completion`` (stream and non-stream, same
  ``include_usage`` rule as chat; ``max_tokens`` defaults to 16 like the real API).
- ``POST /v1/embeddings``         ``float`` or ``base64`` (the SDK's default) vectors, usage
  ``{prompt_tokens, total_tokens}``.
- ``GET /v1/models``              a small model list.
- ``GET /ping``                   ``pong`` (text/plain), on any Host (used for other.test).
- ``GET /v1/realtime``            with ``Upgrade: websocket``: ``101 Switching Protocols`` (a real
  ``Sec-WebSocket-Accept``), one text frame ``{"type": "session.created"}``, then it reads until
  the peer closes (logged as ``ws_upgraded`` / ``ws_closed``). A Realtime session that a proxy
  lets through would start here; tests assert that none does.
- anything else                   404 with OpenAI's error JSON.

Deterministic usage (what tests can assert exact costs against)
--------------------------------------------------------------
- prompt tokens: header ``x-fake-prompt-tokens`` if given; otherwise the number of
  whitespace-separated words in all strings under ``messages`` / ``input`` / ``prompt`` /
  ``instructions`` (recursing into lists and into dict values of keys ``content``,
  ``text``, ``input``), minimum 1. Embeddings: the same word count summed over the inputs
  (a token-id array counts its length).
- cached tokens: ``x-fake-cached-tokens`` (default 0, clamped to prompt tokens); reported
  as ``prompt_tokens_details.cached_tokens`` / ``input_tokens_details.cached_tokens``.
- content tokens: ``x-fake-chunks`` (default 3) content chunks per choice, chunk ``k`` is
  the word ``WORDS[k % 20]`` (" zero", " one", …), which is exactly 1 token in both
  o200k_base and cl100k_base, alone and concatenated (``fake_text(n)`` builds the text), so
  a tokenizer-based count of the stream agrees with the usage the fake reports.
- reasoning tokens: ``x-fake-reasoning-tokens`` (default 0) per choice; they are a subset
  of completion tokens (``completion_tokens = n * (reasoning + content)``), reported as
  ``completion_tokens_details.reasoning_tokens`` / ``output_tokens_details.reasoning_tokens``.
- output cap: ``max_completion_tokens`` (else ``max_tokens``) for chat, ``max_output_tokens``
  for responses, ``max_tokens`` (default 16) for completions. Per choice, reasoning is
  produced first: ``reasoning = min(R, cap)``, ``content = min(C, cap - reasoning)``;
  when that cut anything, ``finish_reason = "length"`` (responses: status ``incomplete``).
  ``x-fake-ignore-cap: 1`` disables the cap (to test a firewall's cut-off).
- ``n`` (chat, completions) multiplies the choices; each choice gets the same tokens.

Other control headers
---------------------
- ``x-fake-delay-ms``: sleep this long before each content chunk (streams only).
- ``x-fake-hold-body: PATH`` (``GET /v1/models``): send the head and half the body, then the rest
  only once the file PATH exists (a test's gate: what a proxy forwards before the body is whole).
- ``x-fake-die-after: N``: abort the TCP connection (no TLS close_notify, no chunked
  terminator) right after the N-th content event has been written (N=0: right after the
  response headers and the role chunk / response.created).
- ``x-fake-status: CODE``: answer with that HTTP status and OpenAI's error JSON
  ``{"error": {"message", "type", "param", "code"}}`` (any path).
- ``x-fake-service-tier``: ``service_tier`` reported in the response (default: the
  request's ``service_tier`` mapped like OpenAI: ``auto``/absent -> ``default``,
  ``fast`` -> ``priority``).
- ``x-fake-model``: the ``model`` reported in the response (default: the request's).
- ``x-fake-end-delay-ms``: streams only: sleep this long after the last event (``[DONE]`` or the
  terminal Responses event) before ending the body (the chunked terminator, and the compressor's
  trailer). A client that hangs up on ``[DONE]`` is gone by then.
- ``x-fake-die-at-end: 1``: streams only: after the last event (and the end delay), abort the
  TCP connection instead of ending the body (``died`` with ``after: -1``).
- ``x-fake-content-encoding``: streams only: compress the SSE body with ``gzip``, ``x-gzip``,
  ``deflate``, ``br`` or ``zstd`` (each event flushed, so it decodes at once) and say so in
  ``content-encoding``, whatever ``accept-encoding`` asked; any other value is sent in the header
  with the body unchanged.
- ``x-fake-usage: omit``: streams only: no usage (no usage chunk even with ``include_usage``;
  Responses: ``usage: null`` in the terminal event). ``x-fake-report-completion-tokens: N``:
  report N completion/output tokens whatever was streamed (a provider that lies, low or high).
  ``response`` logs ``usage`` as reported and ``planned_usage`` as streamed.
- ``x-fake-tool-calls``: comma-separated Responses output item types (``web_search_call``,
  ``code_interpreter_call``, ...) the response reports before its message, as server-side tool
  calls (streams: an ``output_item.added`` and ``.done`` event each); item ``k`` has id
  ``{type}_{k}``, a code interpreter call ``container_id`` ``cntr_fake``.

Log events (one JSON object per line; every line has ``t`` (time.time()) and ``ev``)
--------------------------------------------------------------------------------
``listening`` {port} · ``conn_open`` {conn, peer, sni, alpn} · ``request`` {conn, req,
method, path, http_version, headers (lower-case dict), raw_headers ([name, value] list),
body (decoded JSON or null), body_text (if not JSON), body_len} · ``response`` {conn, req,
status, stream, usage (the usage the fake reports / will report, or null), finish_reason}
· ``chunk_sent`` {conn, req, i, kind, size} (kind: role/content/final/usage/done/event name)
· ``client_disconnected`` {conn, req, i, reason} · ``write_failed`` {conn, req, i, error} ·
``died`` {conn, req, after} (x-fake-die-after) · ``stream_done`` {conn, req, chunks,
usage_sent} · ``conn_error`` {conn, error} · ``conn_closed`` {conn, requests}.
``req`` is a global request counter, ``conn`` a global connection counter (also sent back
to the client in the ``x-fake-conn`` / ``x-fake-req`` response headers).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import os
import ssl
import struct
import sys
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

DEFAULT_CHUNKS = 3
# one token each in o200k_base and cl100k_base, also when concatenated
WORDS = (" zero", " one", " two", " three", " four", " five", " six", " seven", " eight", " nine",
         " ten", " red", " blue", " green", " cat", " dog", " sun", " moon", " tree", " book")


def fake_text(n: int) -> str:
    """The content of ``n`` content chunks, as the fake streams it."""
    return "".join(WORDS[k % len(WORDS)] for k in range(n))
DEFAULT_EMBED_DIM = 8
CREATED = 1_725_000_000


# --------------------------------------------------------------------------- logging

class JsonlLog:
    def __init__(self, path: str | None):
        self._f = open(path, "a", buffering=1, encoding="utf-8") if path else None

    def __call__(self, ev: str, **fields: Any) -> None:
        if self._f is None:
            return
        rec = {"t": round(time.time(), 6), "ev": ev, **fields}
        self._f.write(json.dumps(rec, default=repr) + "\n")
        self._f.flush()


LOG = JsonlLog(None)
_conn_ids = itertools.count(1)
_req_ids = itertools.count(1)


# --------------------------------------------------------------------------- HTTP/1.1 parsing

@dataclass
class Request:
    method: str
    target: str
    version: str
    raw_headers: list[tuple[str, str]]
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    json: Any = None

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    def h(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name.lower(), default)

    def h_int(self, name: str, default: int | None = None) -> int | None:
        v = self.h(name)
        if v is None or v.strip() == "":
            return default
        return int(v.strip())


class BadRequest(Exception):
    pass


async def read_request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if e.partial.strip():
            raise BadRequest("incomplete request head") from e
        return None
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, version = lines[0].split(" ", 2)
    except ValueError as e:
        raise BadRequest(f"bad request line {lines[0]!r}") from e
    raw_headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        raw_headers.append((name.strip(), value.strip()))
    headers: dict[str, str] = {}
    for name, value in raw_headers:
        k = name.lower()
        headers[k] = f"{headers[k]}, {value}" if k in headers else value
    req = Request(method, target, version, raw_headers, headers=headers)

    if headers.get("expect", "").lower() == "100-continue":
        writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        await writer.drain()

    if "chunked" in headers.get("transfer-encoding", "").lower():
        parts = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                # trailers until empty line
                while (await reader.readuntil(b"\r\n")) != b"\r\n":
                    pass
                break
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        req.body = b"".join(parts)
    elif "content-length" in headers:
        req.body = await reader.readexactly(int(headers["content-length"]))
    return req


def decode_body(req: Request) -> bytes:
    data = req.body
    for enc in reversed([e.strip().lower() for e in req.h("content-encoding", "").split(",") if e.strip()]):
        if enc in ("identity", ""):
            continue
        if enc in ("gzip", "x-gzip"):
            data = zlib.decompress(data, 16 + zlib.MAX_WBITS)
        elif enc == "deflate":
            try:
                data = zlib.decompress(data)
            except zlib.error:
                data = zlib.decompress(data, -zlib.MAX_WBITS)
        elif enc == "br":
            import brotli  # type: ignore[import-not-found]
            data = brotli.decompress(data)
        elif enc == "zstd":
            import zstandard  # type: ignore[import-not-found]
            data = zstandard.ZstdDecompressor().decompressobj().decompress(data)
        else:
            raise BadRequest(f"unsupported content-encoding {enc}")
    return data


# --------------------------------------------------------------------------- token rules

def _texts(obj: Any) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, list):
        out: list[str] = []
        for x in obj:
            out += _texts(x)
        return out
    if isinstance(obj, dict):
        out = []
        for k in ("content", "text", "input"):
            if k in obj:
                out += _texts(obj[k])
        return out
    return []


def _words(strings: list[str]) -> int:
    return sum(len(s.split()) for s in strings)


def prompt_tokens_for(req: Request, body: dict) -> int:
    forced = req.h_int("x-fake-prompt-tokens")
    if forced is not None:
        return forced
    strings: list[str] = []
    for k in ("messages", "input", "prompt", "instructions"):
        if k in body:
            strings += _texts(body[k])
    return max(1, _words(strings))


@dataclass
class Plan:
    prompt: int
    cached: int
    reasoning: int          # per choice
    content: int            # per choice
    n: int
    truncated: bool
    delay_s: float
    die_after: int | None
    service_tier: str

    @property
    def completion(self) -> int:
        return self.n * (self.reasoning + self.content)

    @property
    def finish_reason(self) -> str:
        return "length" if self.truncated else "stop"


def make_plan(req: Request, body: dict, cap: int | None, n: int = 1) -> Plan:
    prompt = prompt_tokens_for(req, body)
    cached = min(req.h_int("x-fake-cached-tokens", 0) or 0, prompt)
    want_r = req.h_int("x-fake-reasoning-tokens", 0) or 0
    want_c = req.h_int("x-fake-chunks", DEFAULT_CHUNKS)
    assert want_c is not None
    ignore_cap = (req.h("x-fake-ignore-cap", "") or "").strip().lower() in ("1", "true", "yes")
    if cap is None or ignore_cap:
        r, c, truncated = want_r, want_c, False
    else:
        cap = max(0, int(cap))
        r = min(want_r, cap)
        c = min(want_c, cap - r)
        truncated = (r + c) < (want_r + want_c)
    tier = req.h("x-fake-service-tier")
    if tier is None:
        asked = body.get("service_tier")
        tier = {"fast": "priority", "auto": "default", None: "default"}.get(asked, asked)
    return Plan(
        prompt=prompt, cached=cached, reasoning=r, content=c, n=max(1, int(n or 1)),
        truncated=truncated, delay_s=(req.h_int("x-fake-delay-ms", 0) or 0) / 1000.0,
        die_after=req.h_int("x-fake-die-after"), service_tier=str(tier),
    )


def chat_usage(p: Plan) -> dict:
    return {
        "prompt_tokens": p.prompt,
        "completion_tokens": p.completion,
        "total_tokens": p.prompt + p.completion,
        "prompt_tokens_details": {"cached_tokens": p.cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": p.n * p.reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def responses_usage(p: Plan) -> dict:
    return {
        "input_tokens": p.prompt,
        "input_tokens_details": {"cached_tokens": p.cached},
        "output_tokens": p.completion,
        "output_tokens_details": {"reasoning_tokens": p.n * p.reasoning},
        "total_tokens": p.prompt + p.completion,
    }


def tok(k: int) -> str:
    return WORDS[k % len(WORDS)]


# --------------------------------------------------------------------------- connection

class ClientGone(Exception):
    pass


class Died(Exception):
    pass


ERROR_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "unsupported_country_region_territory"),
    404: ("invalid_request_error", "model_not_found"),
    429: ("requests", "rate_limit_exceeded"),
    500: ("server_error", None),
    503: ("server_error", None),
}

REASONS = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 402: "Payment Required", 403: "Forbidden",
    404: "Not Found", 408: "Request Timeout", 409: "Conflict", 413: "Payload Too Large",
    422: "Unprocessable Entity", 429: "Too Many Requests", 500: "Internal Server Error",
    502: "Bad Gateway", 503: "Service Unavailable", 504: "Gateway Timeout",
}


class Encoder:
    """Compresses a stream event by event (each event flushed, so it can be decoded at once)."""

    def __init__(self, enc: str):
        self.enc = enc
        if enc in ("gzip", "x-gzip"):
            self._z: Any = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        elif enc == "deflate":
            self._z = zlib.compressobj(6, zlib.DEFLATED, zlib.MAX_WBITS)
        elif enc == "br":
            import brotli  # type: ignore[import-not-found]
            self._z = brotli.Compressor()
        elif enc == "zstd":
            import zstandard  # type: ignore[import-not-found]
            self._z = zstandard.ZstdCompressor().compressobj()
        else:
            self._z = None  # an encoding nobody knows: the bytes are sent as they are

    def compress(self, data: bytes) -> bytes:
        if self.enc in ("gzip", "x-gzip", "deflate"):
            return self._z.compress(data) + self._z.flush(zlib.Z_SYNC_FLUSH)
        if self.enc == "br":
            return self._z.process(data) + self._z.flush()
        if self.enc == "zstd":
            import zstandard  # type: ignore[import-not-found]
            return self._z.compress(data) + self._z.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK)
        return data

    def finish(self) -> bytes:
        if self.enc in ("gzip", "x-gzip", "deflate", "zstd"):
            return self._z.flush()
        if self.enc == "br":
            return self._z.finish()
        return b""


def make_encoder(enc: str) -> Encoder | None:
    return Encoder(enc) if enc and enc != "identity" else None


def reported_usage(req: Request, usage: dict) -> dict | None:
    """The usage the fake reports: ``x-fake-usage: omit`` -> none; ``x-fake-report-completion-tokens``
    -> that many output tokens, whatever was sent (a provider that lies)."""
    if (req.h("x-fake-usage") or "").strip().lower() == "omit":
        return None
    n = req.h_int("x-fake-report-completion-tokens")
    if n is None:
        return usage
    out = json.loads(json.dumps(usage))
    key = "completion_tokens" if "completion_tokens" in out else "output_tokens"
    prompt = out.get("prompt_tokens", out.get("input_tokens", 0))
    out[key] = n
    out["total_tokens"] = prompt + n
    details = out.get("completion_tokens_details") or out.get("output_tokens_details")
    if isinstance(details, dict):
        details["reasoning_tokens"] = min(details.get("reasoning_tokens", 0), n)
    return out


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader = reader
        self.writer = writer
        self.id = next(_conn_ids)
        self.keep_alive = True
        self.req_id = 0
        self.nreq = 0
        self._encoder: Encoder | None = None
        self._end_delay = 0.0
        self._die_at_end = False

    # ---- low-level writes
    def _gone(self) -> bool:
        return self.reader.at_eof() or self.writer.transport.is_closing()

    def _head(self, status: int, headers: dict[str, str]) -> bytes:
        lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Status')}"]
        base = {
            "date": time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime()),
            "x-request-id": f"req_fake_{self.req_id}",
            "openai-version": "2020-10-01",
            "openai-organization": "fake-org",
            "openai-processing-ms": "1",
            "x-fake-conn": str(self.id),
            "x-fake-req": str(self.req_id),
        }
        base.update(headers)
        if not self.keep_alive:
            base["connection"] = "close"
        lines += [f"{k}: {v}" for k, v in base.items()]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    async def send_body(self, status: int, body: bytes, content_type: str, extra: dict | None = None) -> None:
        headers = {"content-type": content_type, "content-length": str(len(body)), **(extra or {})}
        self.writer.write(self._head(status, headers) + body)
        await self.writer.drain()

    async def send_json(self, status: int, obj: Any, extra: dict | None = None) -> None:
        await self.send_body(status, json.dumps(obj).encode(), "application/json", extra)

    async def send_error(self, status: int, message: str, etype: str | None = None, code: str | None = None) -> None:
        dt, dc = ERROR_TYPES.get(status, ("invalid_request_error" if status < 500 else "server_error", None))
        await self.send_json(status, {"error": {"message": message, "type": etype or dt, "param": None,
                                                "code": code if code is not None else dc}})

    # ---- streaming
    async def stream_start(self, req: Request | None = None) -> None:
        headers = {
            "content-type": "text/event-stream; charset=utf-8",
            "transfer-encoding": "chunked",
            "cache-control": "no-cache",
        }
        enc = ((req.h("x-fake-content-encoding") if req is not None else None) or "").strip().lower()
        self._encoder = make_encoder(enc)
        if enc:
            headers["content-encoding"] = enc
        self._end_delay = ((req.h_int("x-fake-end-delay-ms", 0) if req is not None else 0) or 0) / 1000.0
        self._die_at_end = req is not None and (req.h("x-fake-die-at-end") or "").strip() in ("1", "true", "yes")
        self.writer.write(self._head(200, headers))
        await self.writer.drain()

    async def stream_write(self, data: bytes, i: int, kind: str) -> None:
        if self._gone():
            LOG("client_disconnected", conn=self.id, req=self.req_id, i=i, reason="eof before write")
            raise ClientGone()
        size = len(data)
        if self._encoder is not None:
            data = self._encoder.compress(data)
        try:
            if data:  # an empty HTTP chunk would end the body
                self.writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await self.writer.drain()
        except (ConnectionError, OSError, RuntimeError, ssl.SSLError) as e:
            LOG("write_failed", conn=self.id, req=self.req_id, i=i, kind=kind, error=repr(e))
            LOG("client_disconnected", conn=self.id, req=self.req_id, i=i, reason="write failed")
            raise ClientGone() from e
        LOG("chunk_sent", conn=self.id, req=self.req_id, i=i, kind=kind, size=size)

    async def stream_end(self) -> None:
        if self._end_delay > 0:  # the last event is out; the end of the body comes later
            await asyncio.sleep(self._end_delay)
        if self._die_at_end:  # ... or never: the connection drops instead
            self.die(-1)
        try:
            tail = self._encoder.finish() if self._encoder is not None else b""
            if tail:
                self.writer.write(b"%x\r\n%s\r\n" % (len(tail), tail))
            self.writer.write(b"0\r\n\r\n")
            await self.writer.drain()
        except (ConnectionError, OSError, RuntimeError, ssl.SSLError) as e:
            LOG("write_failed", conn=self.id, req=self.req_id, i=-1, kind="terminator", error=repr(e))
            raise ClientGone() from e

    async def delay(self, plan: Plan) -> None:
        if plan.delay_s > 0:
            await asyncio.sleep(plan.delay_s)

    def die(self, after: int) -> None:
        LOG("died", conn=self.id, req=self.req_id, after=after)
        self.writer.transport.abort()
        raise Died()


# --------------------------------------------------------------------------- endpoints

async def chat_completions(c: Conn, req: Request, body: dict) -> None:
    cap = body.get("max_completion_tokens")
    if cap is None:
        cap = body.get("max_tokens")
    p = make_plan(req, body, cap, body.get("n") or 1)
    model = req.h("x-fake-model") or body.get("model", "gpt-4o-mini")
    cid = f"chatcmpl-fake{c.req_id}"
    usage = chat_usage(p)
    if not body.get("stream"):
        LOG("response", conn=c.id, req=c.req_id, status=200, stream=False, usage=usage, finish_reason=p.finish_reason)
        text = "".join(tok(k) for k in range(p.content))
        await c.send_json(200, {
            "id": cid, "object": "chat.completion", "created": CREATED, "model": model,
            "choices": [{"index": i, "message": {"role": "assistant", "content": text, "refusal": None,
                                                 "annotations": []},
                         "logprobs": None, "finish_reason": p.finish_reason} for i in range(p.n)],
            "usage": usage, "service_tier": p.service_tier, "system_fingerprint": "fp_fake",
        })
        return
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    planned, usage = usage, reported_usage(req, usage)
    send_usage = include_usage and usage is not None
    LOG("response", conn=c.id, req=c.req_id, status=200, stream=True,
        usage=usage if include_usage else None, planned_usage=planned, finish_reason=p.finish_reason)

    def chunk(choices: list, usage_val: Any = None) -> bytes:
        obj = {"id": cid, "object": "chat.completion.chunk", "created": CREATED, "model": model,
               "service_tier": p.service_tier, "system_fingerprint": "fp_fake", "choices": choices}
        if include_usage:
            obj["usage"] = usage_val
        return b"data: " + json.dumps(obj).encode() + b"\n\n"

    await c.stream_start(req)
    i = 0
    await c.stream_write(chunk([{"index": j, "delta": {"role": "assistant", "content": "", "refusal": None},
                                 "logprobs": None, "finish_reason": None} for j in range(p.n)]), i, "role")
    i += 1
    written = 0
    if p.die_after == 0:
        c.die(0)
    for k in range(p.content):
        for j in range(p.n):
            await c.delay(p)
            await c.stream_write(chunk([{"index": j, "delta": {"content": tok(k)}, "logprobs": None,
                                         "finish_reason": None}]), i, "content")
            i += 1
            written += 1
            if p.die_after is not None and written >= p.die_after:
                c.die(written)
    for j in range(p.n):
        await c.stream_write(chunk([{"index": j, "delta": {}, "logprobs": None,
                                     "finish_reason": p.finish_reason}]), i, "final")
        i += 1
    if send_usage:
        await c.stream_write(chunk([], usage), i, "usage")
        i += 1
    await c.stream_write(b"data: [DONE]\n\n", i, "done")
    i += 1
    await c.stream_end()
    LOG("stream_done", conn=c.id, req=c.req_id, chunks=i, usage_sent=send_usage)


async def completions(c: Conn, req: Request, body: dict) -> None:
    cap = body.get("max_tokens", 16)
    n = max(int(body.get("n") or 1), 1)
    p = make_plan(req, body, cap, n)
    model = body.get("model", "gpt-3.5-turbo-instruct")
    cid = f"cmpl-fake{c.req_id}"
    usage = chat_usage(p)
    usage.pop("prompt_tokens_details")
    if not body.get("stream"):
        LOG("response", conn=c.id, req=c.req_id, status=200, stream=False, usage=usage, finish_reason=p.finish_reason)
        text = "".join(tok(k) for k in range(p.content))
        await c.send_json(200, {
            "id": cid, "object": "text_completion", "created": CREATED, "model": model,
            "choices": [{"text": text, "index": i, "logprobs": None, "finish_reason": p.finish_reason}
                        for i in range(p.n)],
            "usage": usage,
        })
        return
    include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    planned, usage = usage, reported_usage(req, usage)
    send_usage = include_usage and usage is not None
    LOG("response", conn=c.id, req=c.req_id, status=200, stream=True,
        usage=usage if include_usage else None, planned_usage=planned, finish_reason=p.finish_reason)

    def chunk(choices: list, usage_val: Any = None) -> bytes:
        obj = {"id": cid, "object": "text_completion", "created": CREATED, "model": model, "choices": choices}
        if include_usage:
            obj["usage"] = usage_val
        return b"data: " + json.dumps(obj).encode() + b"\n\n"

    await c.stream_start(req)
    i = written = 0
    if p.die_after == 0:
        c.die(0)
    for k in range(p.content):
        for j in range(p.n):
            await c.delay(p)
            await c.stream_write(chunk([{"text": tok(k), "index": j, "logprobs": None, "finish_reason": None}]),
                                 i, "content")
            i += 1
            written += 1
            if p.die_after is not None and written >= p.die_after:
                c.die(written)
    for j in range(p.n):
        await c.stream_write(chunk([{"text": "", "index": j, "logprobs": None, "finish_reason": p.finish_reason}]),
                             i, "final")
        i += 1
    if send_usage:
        await c.stream_write(chunk([], usage), i, "usage")
        i += 1
    await c.stream_write(b"data: [DONE]\n\n", i, "done")
    i += 1
    await c.stream_end()
    LOG("stream_done", conn=c.id, req=c.req_id, chunks=i, usage_sent=send_usage)


async def responses(c: Conn, req: Request, body: dict) -> None:
    p = make_plan(req, body, body.get("max_output_tokens"), 1)
    model = req.h("x-fake-model") or body.get("model", "gpt-4o-mini")
    rid = f"resp_fake{c.req_id}"
    calls = [t.strip() for t in (req.h("x-fake-tool-calls") or "").split(",") if t.strip()]
    tool_items = [{"id": f"{t}_{k}", "type": t, "status": "completed",
                   **({"container_id": "cntr_fake"} if t == "code_interpreter_call" else {})}
                  for k, t in enumerate(calls)]
    mid = f"msg_fake{c.req_id}"
    usage = responses_usage(p)
    text = "".join(tok(k) for k in range(p.content))
    status = "incomplete" if p.truncated else "completed"

    def resp_obj(st: str, output: list, usage_val: Any) -> dict:
        return {
            "id": rid, "object": "response", "created_at": CREATED, "status": st,
            "background": False, "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if st == "incomplete" else None,
            "instructions": body.get("instructions"), "max_output_tokens": body.get("max_output_tokens"),
            "model": model, "output": output, "parallel_tool_calls": True,
            "previous_response_id": body.get("previous_response_id"),
            "reasoning": {"effort": None, "summary": None}, "service_tier": p.service_tier,
            "store": True, "temperature": 1.0, "text": {"format": {"type": "text"}},
            "tool_choice": "auto", "tools": [], "top_p": 1.0, "truncation": "disabled",
            "usage": usage_val, "user": None, "metadata": {},
        }

    part_done = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    item_done = {"id": mid, "type": "message", "status": status, "role": "assistant", "content": [part_done]}
    if not body.get("stream"):
        LOG("response", conn=c.id, req=c.req_id, status=200, stream=False, usage=usage, finish_reason=status)
        await c.send_json(200, resp_obj(status, [*tool_items, item_done], usage))
        return
    planned, usage = usage, reported_usage(req, usage)
    LOG("response", conn=c.id, req=c.req_id, status=200, stream=True, usage=usage, planned_usage=planned,
        finish_reason=status)
    seq = itertools.count()

    def event(etype: str, **data: Any) -> bytes:
        obj = {"type": etype, "sequence_number": next(seq), **data}
        return f"event: {etype}\n".encode() + b"data: " + json.dumps(obj).encode() + b"\n\n"

    await c.stream_start(req)
    i = 0

    async def send(etype: str, **data: Any) -> None:
        nonlocal i
        await c.stream_write(event(etype, **data), i, etype)
        i += 1

    await send("response.created", response=resp_obj("in_progress", [], None))
    await send("response.in_progress", response=resp_obj("in_progress", [], None))
    if p.die_after == 0:
        c.die(0)
    for k, item in enumerate(tool_items):
        await send("response.output_item.added", output_index=k, item={**item, "status": "in_progress"})
        await send("response.output_item.done", output_index=k, item=item)
    await send("response.output_item.added", output_index=0,
               item={"id": mid, "type": "message", "status": "in_progress", "role": "assistant", "content": []})
    await send("response.content_part.added", item_id=mid, output_index=0, content_index=0,
               part={"type": "output_text", "text": "", "annotations": [], "logprobs": []})
    for k in range(p.content):
        await c.delay(p)
        await send("response.output_text.delta", item_id=mid, output_index=0, content_index=0,
                   delta=tok(k), logprobs=[])
        if p.die_after is not None and k + 1 >= p.die_after:
            c.die(k + 1)
    await send("response.output_text.done", item_id=mid, output_index=0, content_index=0, text=text, logprobs=[])
    await send("response.content_part.done", item_id=mid, output_index=0, content_index=0, part=part_done)
    await send("response.output_item.done", output_index=0, item=item_done)
    await send("response.incomplete" if p.truncated else "response.completed",
               response=resp_obj(status, [*tool_items, item_done], usage))
    await c.stream_end()
    LOG("stream_done", conn=c.id, req=c.req_id, chunks=i, usage_sent=usage is not None)


async def embeddings(c: Conn, req: Request, body: dict) -> None:
    inp = body.get("input", "")
    items = [inp] if isinstance(inp, str) or (isinstance(inp, list) and inp and isinstance(inp[0], int)) else list(inp)
    forced = req.h_int("x-fake-prompt-tokens")
    if forced is not None:
        prompt = forced
    else:
        prompt = 0
        for it in items:
            prompt += len(it) if isinstance(it, list) else max(1, len(str(it).split()))
    dim = int(body.get("dimensions") or DEFAULT_EMBED_DIM)
    fmt = body.get("encoding_format", "float")
    data = []
    for idx in range(len(items)):
        vec = [round((idx + 1) * (d + 1) / (dim * 10.0), 4) for d in range(dim)]
        emb: Any = base64.b64encode(struct.pack(f"<{dim}f", *vec)).decode() if fmt == "base64" else vec
        data.append({"object": "embedding", "index": idx, "embedding": emb})
    usage = {"prompt_tokens": prompt, "total_tokens": prompt}
    LOG("response", conn=c.id, req=c.req_id, status=200, stream=False, usage=usage, finish_reason=None)
    await c.send_json(200, {"object": "list", "data": data, "model": body.get("model", "text-embedding-3-small"),
                            "usage": usage})


MODELS = ["gpt-4o", "gpt-4o-mini", "gpt-4.1", "gpt-4.1-mini", "o3-mini", "gpt-5", "gpt-5-mini",
          "gpt-3.5-turbo-instruct", "text-embedding-3-small", "text-embedding-3-large"]


async def dispatch(c: Conn, req: Request) -> None:
    forced_status = req.h_int("x-fake-status")
    body: Any = None
    raw = b""
    try:
        raw = decode_body(req)
        body = json.loads(raw) if raw else None
    except (ValueError, BadRequest, zlib.error):
        body = None
    LOG("request", conn=c.id, req=c.req_id, method=req.method, path=req.target, http_version=req.version,
        headers=req.headers, raw_headers=req.raw_headers, body=body,
        body_text=None if (body is not None or not raw) else raw[:4000].decode("utf-8", "replace"),
        body_len=len(req.body))
    if forced_status is not None:
        LOG("response", conn=c.id, req=c.req_id, status=forced_status, stream=False, usage=None, finish_reason=None)
        await c.send_error(forced_status, f"fake error {forced_status} (x-fake-status)")
        return
    path = req.path.rstrip("/")
    if req.method == "GET" and path == "/ping":
        LOG("response", conn=c.id, req=c.req_id, status=200, stream=False, usage=None, finish_reason=None)
        await c.send_body(200, b"pong", "text/plain")
        return
    if req.method == "GET" and path == "/v1/models":
        LOG("response", conn=c.id, req=c.req_id, status=200, stream=False, usage=None, finish_reason=None)
        models = {"object": "list", "data": [
            {"id": m, "object": "model", "created": CREATED, "owned_by": "system"} for m in MODELS]}
        gate = req.h("x-fake-hold-body")
        if gate:  # the head and half the body now, the rest once the file ``gate`` exists
            data = json.dumps(models).encode()
            c.writer.write(c._head(200, {"content-type": "application/json", "content-length": str(len(data))})
                           + data[:len(data) // 2])
            await c.writer.drain()
            for _ in range(6000):
                if os.path.exists(gate):
                    break
                await asyncio.sleep(0.01)
            c.writer.write(data[len(data) // 2:])
            await c.writer.drain()
            return
        await c.send_json(200, models)
        return
    if req.method == "GET" and path == "/v1/realtime" and "websocket" in req.h("upgrade", "").lower():
        await realtime_upgrade(c, req)
        return
    handlers = {"/v1/chat/completions": chat_completions, "/v1/responses": responses,
                "/v1/completions": completions, "/v1/embeddings": embeddings}
    h = handlers.get(path)
    if h is None or req.method != "POST":
        LOG("response", conn=c.id, req=c.req_id, status=404, stream=False, usage=None, finish_reason=None)
        await c.send_error(404, f"Invalid URL ({req.method} {req.target})", "invalid_request_error", None)
        return
    if not isinstance(body, dict):
        LOG("response", conn=c.id, req=c.req_id, status=400, stream=False, usage=None, finish_reason=None)
        await c.send_error(400, "We could not parse the JSON body of your request.")
        return
    await h(c, req, body)


async def realtime_upgrade(c: Conn, req: Request) -> None:
    """Accept a WebSocket upgrade like the Realtime API does, send ``session.created``, then idle."""
    import hashlib
    key = req.h("sec-websocket-key", "")
    accept = base64.b64encode(hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
    LOG("response", conn=c.id, req=c.req_id, status=101, stream=False, usage=None, finish_reason=None)
    head = (f"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n"
            f"sec-websocket-accept: {accept}\r\n\r\n").encode()
    payload = b'{"type": "session.created"}'
    c.writer.write(head + bytes([0x81, len(payload)]) + payload)
    await c.writer.drain()
    LOG("ws_upgraded", conn=c.id, req=c.req_id)
    while await c.reader.read(65536):
        pass
    LOG("ws_closed", conn=c.id, req=c.req_id)
    c.keep_alive = False


async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    c = Conn(reader, writer)
    sslobj = writer.get_extra_info("ssl_object")
    sni = getattr(sslobj, "_fake_sni", None) if sslobj is not None else None
    if sni is None and sslobj is not None:
        sni = _SNI.pop(id(sslobj), None)
    LOG("conn_open", conn=c.id, peer=list(writer.get_extra_info("peername") or ()), sni=sni,
        alpn=sslobj.selected_alpn_protocol() if sslobj is not None else None)
    try:
        while c.keep_alive:
            req = await read_request(reader, writer)
            if req is None:
                break
            c.req_id = next(_req_ids)
            c.nreq += 1
            conn_hdr = req.h("connection", "").lower()
            if "close" in conn_hdr or req.version == "HTTP/1.0":
                c.keep_alive = False
            await dispatch(c, req)
    except ClientGone:
        pass
    except Died:
        return
    except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, BadRequest, OSError) as e:
        LOG("conn_error", conn=c.id, error=repr(e))
    except Exception as e:  # noqa: BLE001 - keep serving other connections, but record it
        LOG("conn_error", conn=c.id, error=f"unexpected {e!r}")
    finally:
        LOG("conn_closed", conn=c.id, requests=c.nreq)
        try:
            writer.close()
        except Exception:  # noqa: BLE001
            pass


_SNI: dict[int, str | None] = {}


def make_ssl_context(cert: str, key: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.set_alpn_protocols(["http/1.1"])

    def on_sni(sslobj, server_name, _ctx):  # noqa: ANN001
        try:
            sslobj._fake_sni = server_name
        except AttributeError:
            _SNI[id(sslobj)] = server_name
        return None

    ctx.sni_callback = on_sni
    return ctx


async def main_async(args: argparse.Namespace) -> None:
    global LOG
    LOG = JsonlLog(args.log)
    ctx = make_ssl_context(args.cert, args.key)
    server = await asyncio.start_server(handle, args.host, args.port, ssl=ctx, limit=1 << 20,
                                        ssl_handshake_timeout=10)
    port = server.sockets[0].getsockname()[1]
    LOG("listening", host=args.host, port=port, pid=os.getpid())
    if args.ready_file:
        tmp = args.ready_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(port))
        os.replace(tmp, args.ready_file)
    print(f"fake openai listening on {args.host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--log")
    ap.add_argument("--ready-file")
    args = ap.parse_args(argv)
    try:
        asyncio.run(main_async(args))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    sys.exit(main())
