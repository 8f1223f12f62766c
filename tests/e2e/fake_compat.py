"""A fake of the OpenAI-compatible hosts (OpenRouter, DeepSeek, Groq, Mistral) and of Azure OpenAI
for end-to-end tests: ``fake_openai.py``'s server, answering as each host by its ``Host`` header
(the proxy keeps the provider's name for SNI and Host), with that host's paths and quirks.

Run like ``fake_openai.py`` (same arguments, log format and control headers). Per host:

- **openrouter.ai** ``/api/v1/...``: a ``: OPENROUTER PROCESSING`` comment before the first
  chunk; the usage (stream: only when ``stream_options.include_usage``; non-stream: always)
  carries ``cost`` = ``x-fake-or-cost`` (a decimal string, default ``0.000123``);
  ``x-fake-or-error: N`` replaces the N-th content chunk by OpenRouter's mid-stream error (a
  chunk with ``error`` and ``finish_reason: "error"``), then ``[DONE]`` and the end of the body.
- **api.deepseek.com** ``/chat/completions`` (also ``/v1/...`` and ``/beta/...``): usage with
  ``prompt_cache_hit_tokens`` / ``prompt_cache_miss_tokens`` (hit = ``x-fake-cached-tokens``)
  instead of ``prompt_tokens_details``.
- **api.groq.com** ``/openai/v1/...``: OpenAI's shape.
- **api.mistral.ai** ``/v1/...``: a body with ``stream_options`` is answered 422 (Mistral forbids
  unknown members); a stream carries the usage chunk whether asked or not.
- **pouchtest.openai.azure.com** ``/openai/deployments/{deployment}/chat/completions?api-version=...``
  and ``/openai/v1/...``: ``api-key`` auth, the reported model ``x-fake-model`` (default
  ``gpt-4o-mini-2024-07-18``); a stream starts with Azure's chunk of ``prompt_filter_results``
  and no choices, and every content chunk's choice carries ``content_filter_results``.
- any other Host: 404.

Besides fake_openai's log events, ``compat_request`` {conn, req, host, path (original), body,
headers} records each request as the proxy sent it, before this fake's own changes.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import fake_openai as fo

OPENROUTER, DEEPSEEK, GROQ, MISTRAL, AZURE = ("openrouter.ai", "api.deepseek.com", "api.groq.com",
                                               "api.mistral.ai", "pouchtest.openai.azure.com")
#: an Azure AI Services (Foundry) resource: the same Azure OpenAI API on another host name
AZURE_SERVICES = "pouchtest.cognitiveservices.azure.com"
FILTER = {"hate": {"filtered": False, "severity": "safe"}, "violence": {"filtered": False, "severity": "safe"}}


def _host(req: fo.Request) -> str:
    return (req.h("host") or "").split(":", 1)[0].lower()


def _path(host: str, path: str) -> str | None:
    """The fake_openai path of a request path on ``host``, or None."""
    if host == OPENROUTER and path.startswith("/api/v1/"):
        return path[len("/api"):]
    if host == GROQ and path.startswith("/openai/v1/"):
        return path[len("/openai"):]
    if host == DEEPSEEK:  # its base is https://api.deepseek.com, also /v1 and /beta (litellm's)
        for base in ("/v1/", "/beta/"):
            if path.startswith(base):
                return "/v1/" + path[len(base):]
        return "/v1" + path
    if host == MISTRAL and path.startswith("/v1/"):
        return path
    if host in (AZURE, AZURE_SERVICES):
        parts = path.strip("/").split("/")
        if parts[:2] == ["openai", "deployments"] and len(parts) > 3:
            return "/v1/" + "/".join(parts[3:])
        if parts[:2] == ["openai", "v1"]:
            return "/v1/" + "/".join(parts[2:])
    return None


def _usage(host: str, req: fo.Request, usage: Any) -> Any:
    if not isinstance(usage, dict):
        return usage
    usage = dict(usage)
    if host == OPENROUTER:
        usage["cost"] = float(req.h("x-fake-or-cost") or "0.000123")
    elif host == DEEPSEEK:
        details = usage.pop("prompt_tokens_details", None) or {}
        hit = int(details.get("cached_tokens") or 0)
        usage["prompt_cache_hit_tokens"] = hit
        usage["prompt_cache_miss_tokens"] = usage["prompt_tokens"] - hit
    return usage


def _event(data: bytes) -> dict | None:
    if not data.startswith(b"data: {"):
        return None
    return json.loads(data[len(b"data: "):])


def _data(obj: dict) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


_stream_write = fo.Conn.stream_write
_send_json = fo.Conn.send_json


async def stream_write(self: fo.Conn, data: bytes, i: int, kind: str) -> None:
    host, req = getattr(self, "compat", (None, None))
    if host is None:
        return await _stream_write(self, data, i, kind)
    obj = _event(data)
    if obj is not None:
        if kind == "usage":
            obj["usage"] = _usage(host, req, obj.get("usage"))
        if host in (AZURE, AZURE_SERVICES) and kind == "content":
            for choice in obj.get("choices") or []:
                choice["content_filter_results"] = FILTER
        data = _data(obj)
    if kind == "role" and host == OPENROUTER:
        data = b": OPENROUTER PROCESSING\n\n" + data
    if kind == "role" and host in (AZURE, AZURE_SERVICES):
        first = {"id": "", "object": "", "created": 0, "model": "", "choices": [],
                 "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": FILTER}]}
        data = _data(first) + data
    if kind == "content" and host == OPENROUTER and obj is not None:
        self.compat_content = getattr(self, "compat_content", 0) + 1
        if self.compat_content == (req.h_int("x-fake-or-error") or -1):
            err = {"id": obj.get("id"), "object": "chat.completion.chunk", "created": obj.get("created"),
                   "model": obj.get("model"), "provider": "FakeUpstream",
                   "error": {"code": 502, "message": "Provider returned error (fake mid-stream error)"},
                   "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]}
            await _stream_write(self, _data(err), i, "error")
            await _stream_write(self, b"data: [DONE]\n\n", i + 1, "done")
            await self.stream_end()
            fo.LOG("stream_done", conn=self.id, req=self.req_id, chunks=i + 2, usage_sent=False)
            raise fo.ClientGone()
    return await _stream_write(self, data, i, kind)


async def send_json(self: fo.Conn, status: int, obj: Any, extra: dict | None = None) -> None:
    host, req = getattr(self, "compat", (None, None))
    if host is not None and isinstance(obj, dict) and "usage" in obj:
        obj = {**obj, "usage": _usage(host, req, obj["usage"])}
    return await _send_json(self, status, obj, extra)


fo.Conn.stream_write = stream_write  # type: ignore[method-assign]
fo.Conn.send_json = send_json  # type: ignore[method-assign]
_dispatch = fo.dispatch


async def dispatch(c: fo.Conn, req: fo.Request) -> None:
    host = _host(req)
    original_path = req.path
    mapped = _path(host, req.path)
    c.compat = (None, None)
    c.compat_content = 0
    if mapped is None:
        return await _dispatch(c, req)  # logged and answered 404 there
    query = req.target[len(req.path):]
    req.target = mapped + query
    c.compat = (host, req)
    try:
        original = json.loads(fo.decode_body(req) or b"null")
    except ValueError:
        original = None
    # what the proxy sent, before this fake's own changes below (``compat_request``)
    fo.LOG("compat_request", conn=c.id, req=c.req_id, host=host, path=original_path, body=original,
           headers=req.headers)
    if host in (AZURE, AZURE_SERVICES) and "x-fake-model" not in req.headers:
        req.headers["x-fake-model"] = "gpt-4o-mini-2024-07-18"
    if host == MISTRAL:
        try:
            body = json.loads(fo.decode_body(req) or b"null")
        except ValueError:
            body = None
        if isinstance(body, dict) and "stream_options" in body:
            fo.LOG("request", conn=c.id, req=c.req_id, method=req.method, path=req.target, http_version=req.version,
                   headers=req.headers, raw_headers=req.raw_headers, body=body, body_text=None,
                   body_len=len(req.body))
            fo.LOG("response", conn=c.id, req=c.req_id, status=422, stream=False, usage=None, finish_reason=None)
            await _send_json(c, 422, {"object": "error", "message": {"detail": [
                {"type": "extra_forbidden", "loc": ["body", "stream_options"], "msg": "Extra inputs are not permitted"}]},
                "type": "invalid_request_message_error", "code": None})
            return
        if isinstance(body, dict) and body.get("stream"):
            # Mistral sends the usage whether asked or not: the fake's include_usage path does that
            body["stream_options"] = {"include_usage": True}
            req.body = json.dumps(body).encode()
            req.headers.pop("content-encoding", None)
    return await _dispatch(c, req)


fo.dispatch = dispatch

if __name__ == "__main__":
    sys.exit(fo.main())
