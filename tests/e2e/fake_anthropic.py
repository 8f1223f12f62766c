"""A fake api.anthropic.com for end-to-end tests: Anthropic's Messages API over TLS (stdlib only).

Run (the harness does this; same arguments and log format as ``fake_openai.py``)::

    python fake_anthropic.py --port 0 --cert LEAF.pem --key LEAF-key.pem --log LOG.jsonl --ready-file PORTFILE

Endpoints (a ``?beta=true`` query, as Claude Code sends, changes nothing)
-------------------------------------------------------------------------
- ``POST /v1/messages``  non-stream ``message`` JSON, or with ``stream: true`` an SSE stream of
  ``event:`` + ``data:`` lines: ``message_start`` (the input usage, ``output_tokens: 1``),
  ``ping``, then per content block ``content_block_start`` / ``content_block_delta`` x N /
  ``content_block_stop`` (a ``thinking`` block of ``thinking_delta`` + one ``signature_delta``
  when there are reasoning tokens; a ``text`` block of ``text_delta``; one ``tool_use`` block per
  tool call with two ``input_json_delta``), then ``message_delta`` (``stop_reason`` and the
  cumulative usage) and ``message_stop``.
- ``POST /v1/messages/count_tokens``  ``{"input_tokens": N}`` (the prompt rule below).
- ``GET /v1/models`` (and ``/v1/models/{id}``)  a small model list in Anthropic's shape.
- ``GET /ping``  ``pong``.
- anything else, including Claude Code's ``/api/...`` calls (``/api/claude_code/settings``,
  ``/api/claude_code/policy_limits``, ``/api/event_logging/...``, which it tolerates as 404)
  and ``/v1/messages/batches``: 404 with Anthropic's ``not_found_error``.

Usage (deterministic; mirrors ``fake_openai.py``'s header names)
----------------------------------------------------------------
- prompt tokens P: ``x-fake-prompt-tokens``, else the whitespace words of all strings under
  ``system`` and ``messages`` (content/text/input values), minimum 1. P is the *whole* input;
  Anthropic reports it split: ``cache_read_input_tokens`` = ``x-fake-cached-tokens``,
  ``cache_creation_input_tokens`` = ``x-fake-cache-write-tokens`` (5 minutes) +
  ``x-fake-cache-write-1h-tokens`` (1 hour; both also under ``cache_creation``
  ``ephemeral_5m_input_tokens`` / ``ephemeral_1h_input_tokens``), and ``input_tokens`` = P minus
  those (clamped at 0), so the three add up to P as on the real API.
- output: ``x-fake-reasoning-tokens`` R thinking tokens first, then ``x-fake-chunks`` C
  (default 3) text tokens (``fake_openai.WORDS``, one token each), within ``max_tokens``
  (``x-fake-ignore-cap: 1`` disables the cap); then one ``tool_use`` block per name in
  ``x-fake-tool-calls`` (comma-separated), ``TOOL_TOKENS`` output tokens each, only when the
  rest of the cap covers them. ``output_tokens`` = R + C + tool tokens (thinking included, as
  billed). ``stop_reason``: ``max_tokens`` when the cap cut anything, else ``tool_use`` when
  there are tool calls, else ``end_turn``.
- ``service_tier`` in usage: ``x-fake-service-tier`` (default ``standard``).
- ``message_delta.usage`` is cumulative and by default carries the input fields too (as the
  API does today); ``x-fake-delta-usage: output`` sends only ``output_tokens`` (older API);
  ``x-fake-input-growth: N`` reports N more ``input_tokens`` in ``message_delta`` than in
  ``message_start`` (tool streams can do that; the last value is the one billed).

Other controls
--------------
``x-fake-model`` (model reported), ``x-fake-delay-ms`` (before each delta),
``x-fake-die-after: N`` (abort the TCP connection after the N-th ``content_block_delta``;
0 = right after ``message_start``), ``x-fake-stream-error: N`` (after N deltas send an
``event: error`` with ``overloaded_error`` and end the stream cleanly),
``x-fake-status: CODE`` (Anthropic's error JSON with that status, any path),
``x-fake-omit-usage: 1`` (no ``usage`` anywhere), ``x-fake-report-output-tokens: N`` /
``x-fake-report-input-tokens: N`` (lie: report N instead of the true count in every usage).

Log: the events of ``fake_openai.py``; ``request`` also has ``keys`` (``{"x-api-key": ...,
"authorization": bearer token}``, the places present), ``key_in`` (those places joined by ``+``:
``"x-api-key"`` (Claude Code, curl), ``"authorization"`` (the anthropic Python SDK 2.x sends
``ANTHROPIC_API_KEY`` as ``Authorization: Bearer``), or null) and ``api_key`` (the ``x-api-key``
value, else the bearer token);
``response`` has ``usage`` = the final usage reported (null when omitted).
"""

from __future__ import annotations

import json
import sys
from typing import Any

import fake_common as fc
import fake_openai as fo

TOOL_TOKENS = 8
TOOL_INPUT = {"query": "zero one"}
MODELS = ["claude-opus-4-5", "claude-sonnet-4-5", "claude-haiku-4-5", "claude-3-5-haiku-latest"]
ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
               403: "permission_error", 404: "not_found_error", 413: "request_too_large",
               429: "rate_limit_error", 500: "api_error", 504: "timeout_error", 529: "overloaded_error"}
fo.REASONS.setdefault(529, "Overloaded")


class AnthropicConn(fc.ProviderConn):
    base_headers = staticmethod(lambda c: {"request-id": f"req_fake{c.req_id}",
                                           "anthropic-organization-id": "fake-org"})

    async def send_error(self, status: int, message: str, etype: str | None = None,  # type: ignore[override]
                         code: str | None = None) -> None:
        et = etype or ERROR_TYPES.get(status, "api_error" if status >= 500 else "invalid_request_error")
        await self.send_json(status, {"type": "error", "error": {"type": et, "message": message},
                                      "request_id": f"req_fake{self.req_id}"})


def prompt_tokens(req: fc.Request, body: dict) -> int:
    forced = req.h_int("x-fake-prompt-tokens")
    if forced is not None:
        return forced
    strings = fo._texts(body.get("system", [])) + fo._texts(body.get("messages", []))
    return max(1, fo._words(strings))


def plan_for(req: fc.Request, body: dict) -> fc.Plan:
    return fc.base_plan(req, prompt_tokens(req, body), body.get("max_tokens"), tool_tokens=TOOL_TOKENS)


def input_usage(p: fc.Plan) -> dict:
    write = p.cache_write_5m + p.cache_write_1h
    inp = max(0, p.prompt - p.cache_read - write)
    return {"input_tokens": inp if p.report_input is None else p.report_input,
            "cache_creation_input_tokens": write, "cache_read_input_tokens": p.cache_read,
            "cache_creation": {"ephemeral_5m_input_tokens": p.cache_write_5m,
                               "ephemeral_1h_input_tokens": p.cache_write_1h}}


def output_tokens(p: fc.Plan) -> int:
    true = p.reasoning + p.content + TOOL_TOKENS * len(p.tools)
    return true if p.report_output is None else p.report_output


def final_usage(p: fc.Plan, growth: int = 0) -> dict:
    u = input_usage(p)
    u["input_tokens"] += growth
    return {**u, "output_tokens": output_tokens(p), "server_tool_use": None, "service_tier": p.service_tier}


def stop_reason(p: fc.Plan) -> str:
    return "max_tokens" if p.truncated else ("tool_use" if p.tools else "end_turn")


def blocks(p: fc.Plan, msg_id: str) -> list[dict]:
    out: list[dict] = []
    if p.reasoning:
        out.append({"type": "thinking", "thinking": fc.fake_text(p.reasoning).strip(), "signature": "sig_fake"})
    if p.content or not p.tools:
        out.append({"type": "text", "text": fc.fake_text(p.content)})
    for k, name in enumerate(p.tools):
        out.append({"type": "tool_use", "id": f"toolu_fake{msg_id}_{k}", "name": name, "input": TOOL_INPUT})
    return out


async def messages(c: AnthropicConn, req: fc.Request, body: dict) -> None:
    p = plan_for(req, body)
    model = req.h("x-fake-model") or body.get("model", "claude-sonnet-4-5")
    mid = f"msg_fake{c.req_id}"
    growth = req.h_int("x-fake-input-growth", 0) or 0
    usage = None if p.omit_usage else final_usage(p, growth)
    if not body.get("stream"):
        fc.log("response", conn=c.id, req=c.req_id, status=200, stream=False, usage=usage,
               finish_reason=stop_reason(p))
        msg = {"id": mid, "type": "message", "role": "assistant", "model": model, "content": blocks(p, mid),
               "stop_reason": stop_reason(p), "stop_sequence": None}
        if usage is not None:
            msg["usage"] = usage
        await c.send_json(200, msg)
        return
    fc.log("response", conn=c.id, req=c.req_id, status=200, stream=True, usage=usage,
           planned_usage=final_usage(p, growth), finish_reason=stop_reason(p))
    i = 0

    async def send(etype: str, **data: Any) -> None:
        nonlocal i
        obj = {"type": etype, **data}
        await c.stream_write(f"event: {etype}\ndata: {json.dumps(obj)}\n\n".encode(), i, etype)
        i += 1

    start_msg: dict[str, Any] = {"id": mid, "type": "message", "role": "assistant", "model": model, "content": [],
                                 "stop_reason": None, "stop_sequence": None}
    if not p.omit_usage:
        start_msg["usage"] = {**input_usage(p), "output_tokens": 1, "service_tier": p.service_tier}
    await c.stream_start()
    await send("message_start", message=start_msg)
    if p.die_after == 0:
        c.die(0)
    await send("ping")
    err_after = req.h_int("x-fake-stream-error")
    deltas = 0

    async def delta(index: int, d: dict) -> bool:
        """Send one content_block_delta; True when the stream must stop here (error event sent)."""
        nonlocal deltas
        await c.delay_s(p.delay_s)
        await send("content_block_delta", index=index, delta=d)
        deltas += 1
        if p.die_after is not None and deltas >= p.die_after:
            c.die(deltas)
        if err_after is not None and deltas >= err_after:
            await send("error", error={"type": "overloaded_error", "message": "Overloaded (x-fake-stream-error)"})
            return True
        return False

    async def finish_error() -> None:
        await c.stream_end()
        fc.log("stream_done", conn=c.id, req=c.req_id, chunks=i, usage_sent=False, error_event=True)

    index = 0
    if p.reasoning:
        await send("content_block_start", index=index, content_block={"type": "thinking", "thinking": "",
                                                                      "signature": ""})
        for k in range(p.reasoning):
            if await delta(index, {"type": "thinking_delta", "thinking": fc.tok(k)}):
                return await finish_error()
        await send("content_block_delta", index=index, delta={"type": "signature_delta", "signature": "sig_fake"})
        await send("content_block_stop", index=index)
        index += 1
    if p.content or not p.tools:
        await send("content_block_start", index=index, content_block={"type": "text", "text": ""})
        for k in range(p.content):
            if await delta(index, {"type": "text_delta", "text": fc.tok(k)}):
                return await finish_error()
        await send("content_block_stop", index=index)
        index += 1
    for k, name in enumerate(p.tools):
        await send("content_block_start", index=index, content_block={
            "type": "tool_use", "id": f"toolu_fake{mid}_{k}", "name": name, "input": {}})
        js = json.dumps(TOOL_INPUT)
        half = len(js) // 2
        for piece in (js[:half], js[half:]):
            if await delta(index, {"type": "input_json_delta", "partial_json": piece}):
                return await finish_error()
        await send("content_block_stop", index=index)
        index += 1
    md: dict[str, Any] = {"delta": {"stop_reason": stop_reason(p), "stop_sequence": None}}
    if usage is not None:
        if (req.h("x-fake-delta-usage") or "").strip().lower() == "output":
            md["usage"] = {"output_tokens": usage["output_tokens"]}
        else:
            md["usage"] = {k: usage[k] for k in ("input_tokens", "cache_creation_input_tokens",
                                                 "cache_read_input_tokens", "output_tokens", "server_tool_use")}
    await send("message_delta", **md)
    await send("message_stop")
    await c.stream_end()
    fc.log("stream_done", conn=c.id, req=c.req_id, chunks=i, usage_sent=usage is not None)


async def count_tokens(c: AnthropicConn, req: fc.Request, body: dict) -> None:
    n = prompt_tokens(req, body)
    fc.log("response", conn=c.id, req=c.req_id, status=200, stream=False, usage=None, finish_reason=None,
           input_tokens=n)
    await c.send_json(200, {"input_tokens": n})


def _model_obj(m: str) -> dict:
    return {"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}


async def dispatch(c: AnthropicConn, req: fc.Request) -> None:
    body, raw = fc.parse_body(req)
    auth = req.h("authorization") or ""
    keys = {"x-api-key": req.h("x-api-key"),
            "authorization": auth[7:].strip() if auth.lower().startswith("bearer ") else None}
    keys = {k: v for k, v in keys.items() if v is not None}
    fc.log_request(c, req, body, raw, api_key=keys.get("x-api-key", keys.get("authorization")),
                   key_in="+".join(keys) or None, keys=keys)
    forced = req.h_int("x-fake-status")

    async def answer(status: int, obj: Any = None, message: str = "") -> None:
        fc.log("response", conn=c.id, req=c.req_id, status=status, stream=False, usage=None, finish_reason=None)
        if status >= 400:
            await c.send_error(status, message)
        else:
            await c.send_json(status, obj)

    if forced is not None:
        return await answer(forced, message=f"fake error {forced} (x-fake-status)")
    path = req.path.rstrip("/")
    if req.method == "GET" and path == "/ping":
        fc.log("response", conn=c.id, req=c.req_id, status=200, stream=False, usage=None, finish_reason=None)
        return await c.send_body(200, b"pong", "text/plain")
    if req.method == "GET" and path == "/v1/models":
        return await answer(200, {"data": [_model_obj(m) for m in MODELS], "has_more": False,
                                  "first_id": MODELS[0], "last_id": MODELS[-1]})
    if req.method == "GET" and path.startswith("/v1/models/"):
        return await answer(200, _model_obj(path.rsplit("/", 1)[1]))
    if req.method == "POST" and path in ("/v1/messages", "/v1/messages/count_tokens"):
        if not isinstance(body, dict):
            return await answer(400, message="messages: request body is not valid JSON")
        if path == "/v1/messages/count_tokens":
            return await count_tokens(c, req, body)
        if "max_tokens" not in body:
            return await answer(400, message="max_tokens: Field required")
        return await messages(c, req, body)
    return await answer(404, message=f"Not found: {req.method} {req.target}")


if __name__ == "__main__":
    sys.exit(fc.main("anthropic", __doc__.split("\n")[0], AnthropicConn, dispatch))
