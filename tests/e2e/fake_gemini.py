"""A fake generativelanguage.googleapis.com for end-to-end tests: the Gemini API over TLS (stdlib only).

Run (the harness does this; same arguments and log format as ``fake_openai.py``)::

    python fake_gemini.py --port 0 --cert LEAF.pem --key LEAF-key.pem --log LOG.jsonl --ready-file PORTFILE

Endpoints (``/v1beta/``, ``/v1/`` and ``/v1alpha/`` alike; the model comes from the path)
-------------------------------------------------------------------------------------
- ``POST /v1beta/models/{model}:generateContent``  one ``GenerateContentResponse``.
- ``POST /v1beta/models/{model}:streamGenerateContent?alt=sse``  SSE: one
  ``data: <GenerateContentResponse>`` per chunk (``\\r\\n\\r\\n`` after each; no ``event:``
  lines, no ``[DONE]``). Without ``alt=sse`` the same chunks as ONE JSON array written
  piece by piece: ``[`` + chunk 1 (indented JSON, several lines), then ``,\\r\\n`` + chunk k,
  then ``]``, each piece its own HTTP chunk.
  Chunks: with ``thinkingConfig.includeThoughts`` one chunk per thought token (a part with
  ``"thought": true``), then one chunk per text token; the last text chunk carries
  ``finishReason``; when there are tool calls a last chunk carries the ``functionCall`` parts
  and ``finishReason``. EVERY chunk carries ``usageMetadata`` with running totals (prompt and
  cached counts in full, candidates/thoughts so far); the last one is the final usage.
- ``POST /v1beta/models/{model}:countTokens``  ``{"totalTokens": N, "promptTokensDetails": [...]}``.
- ``GET /v1beta/models`` and ``GET /v1beta/models/{model}``  a small model list / one model.
- ``GET /ping``  ``pong``. Anything else: 404 in Google's error shape.

The key: ``x-goog-api-key`` header or ``?key=`` query; the ``request`` log entry records
``keys`` (``{"authorization": bearer token, "header": x-goog-api-key, "query": ?key=}``, the
places present), ``key_in`` (those places joined by ``+``, e.g. ``"header"``, ``"query"``,
``"header+query"``, ``"authorization+header"`` (Gemini CLI with
``GEMINI_API_KEY_AUTH_MECHANISM=bearer`` sends both), or null), ``api_key`` (the header's, else
the query's, else the bearer token) and ``query_key``, so a test can assert which key arrived
where (a virtual key must have been swapped in every place).

Request fields are read in camelCase or snake_case (the API accepts both, and google-genai
passes nested config dicts through as written, e.g. ``thinking_config: {include_thoughts}``).

Usage (deterministic; mirrors ``fake_openai.py``'s header names)
----------------------------------------------------------------
- ``promptTokenCount`` P: ``x-fake-prompt-tokens``, else the whitespace words of every ``text``
  string under ``contents`` and ``systemInstruction``, minimum 1. It INCLUDES
  ``cachedContentTokenCount`` = ``x-fake-cached-tokens`` (clamped to P; omitted when 0).
- per candidate (``generationConfig.candidateCount``, default 1): ``x-fake-reasoning-tokens``
  R thought tokens (at most ``thinkingConfig.thinkingBudget`` when that is >= 0), then
  ``x-fake-chunks`` C (default 3) text tokens (``fake_openai.WORDS``), then one
  ``functionCall`` part per name in ``x-fake-tool-calls``, ``TOOL_TOKENS`` tokens each.
  JSON mode (``responseMimeType: application/json``, as Gemini CLI's model router asks): the
  text is instead a small JSON value that fits ``responseJsonSchema`` / ``responseSchema``,
  cut into C pieces and still reported as C tokens.
  ``generationConfig.maxOutputTokens`` caps thoughts + text per candidate (thoughts first), as
  Gemini 2.5 does; ``x-fake-thoughts-outside-cap: 1`` makes it cap the text alone;
  ``x-fake-ignore-cap: 1`` disables it. Cut: ``finishReason: MAX_TOKENS``, else ``STOP``.
- ``candidatesTokenCount`` = n * (C + tool tokens); ``thoughtsTokenCount`` = n * R (beside, not
  inside, candidates; omitted when 0); ``toolUsePromptTokenCount`` =
  ``x-fake-tool-use-prompt-tokens`` (omitted when 0); ``totalTokenCount`` = the sum of P,
  candidates, thoughts and tool-use prompt.

Other controls: ``x-fake-model`` (``modelVersion`` reported), ``x-fake-delay-ms`` (before each
content chunk), ``x-fake-die-after: N`` (abort TCP after the N-th thought/text chunk; 0 = right
after the response head), ``x-fake-stream-error: N`` (after N chunks send an error object
(``{"error": {...}}``, ``UNAVAILABLE``) as the next chunk and end the stream cleanly),
``x-fake-status: CODE`` (Google's error JSON, any path), ``x-fake-omit-usage: 1`` (no
``usageMetadata``), ``x-fake-report-output-tokens`` / ``x-fake-report-input-tokens`` (lie:
report N as the final ``candidatesTokenCount`` / ``promptTokenCount``).
"""

from __future__ import annotations

import json
import re
import sys
import urllib.parse
from typing import Any

import fake_common as fc
import fake_openai as fo

TOOL_TOKENS = 8
TOOL_ARGS = {"query": "zero one"}
MODELS = ["gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite", "gemini-2.0-flash"]
STATUS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 402: "FAILED_PRECONDITION", 403: "PERMISSION_DENIED",
          404: "NOT_FOUND", 409: "ABORTED", 413: "INVALID_ARGUMENT", 429: "RESOURCE_EXHAUSTED",
          499: "CANCELLED", 500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
PATH_RE = re.compile(r"^/(v1beta|v1|v1alpha)/(models|tunedModels)/([^/:]+):([A-Za-z]+)$")


def error_obj(status: int, message: str) -> dict:
    return {"error": {"code": status, "message": message,
                      "status": STATUS.get(status, "INTERNAL" if status >= 500 else "INVALID_ARGUMENT")}}


class GeminiConn(fc.ProviderConn):
    base_headers = staticmethod(lambda c: {"server": "scaffolding on HTTPServer2", "x-fake-provider": "gemini"})

    async def send_error(self, status: int, message: str, etype: str | None = None,  # type: ignore[override]
                         code: str | None = None) -> None:
        # Google's errors are indented, multi-line JSON (the SDK's stream reader copes with that).
        await self.send_body(status, json.dumps(error_obj(status, message), indent=2).encode(),
                             "application/json; charset=UTF-8")


def _all_text(obj: Any) -> list[str]:
    if isinstance(obj, list):
        return [s for x in obj for s in _all_text(x)]
    if isinstance(obj, dict):
        out = [obj["text"]] if isinstance(obj.get("text"), str) else []
        for k, v in obj.items():
            if k != "text":
                out += _all_text(v)
        return out
    return []


def prompt_tokens(req: fc.Request, body: dict) -> int:
    forced = req.h_int("x-fake-prompt-tokens")
    if forced is not None:
        return forced
    inner = field(body, "generateContentRequest") or body
    return max(1, fo._words(_all_text(inner.get("contents", [])) + _all_text(field(inner, "systemInstruction", {}))))


def snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", lambda m: "_" + m.group(1).lower(), name)


def field(obj: Any, camel: str, default: Any = None) -> Any:
    """``obj[camel]``, else ``obj[snake_case]``: the API's JSON parser takes both spellings, and
    google-genai sends nested config dicts as the app wrote them (e.g. ``thinking_config``
    {``include_thoughts``})."""
    if not isinstance(obj, dict):
        return default
    if camel in obj:
        return obj[camel]
    return obj.get(snake(camel), default)


def gen_config(body: dict) -> dict:
    return field(body, "generationConfig") or {}


def plan_for(req: fc.Request, body: dict) -> fc.Plan:
    g = gen_config(body)
    budget = field(field(g, "thinkingConfig"), "thinkingBudget")
    return fc.base_plan(req, prompt_tokens(req, body), field(g, "maxOutputTokens"),
                        reasoning_cap=budget if isinstance(budget, int) else None,
                        reasoning_in_cap=not fc.truthy(req.h("x-fake-thoughts-outside-cap")),
                        n=int(field(g, "candidateCount") or 1), tool_tokens=TOOL_TOKENS)


def usage(p: fc.Plan, req: fc.Request, thoughts: int, cand: int, final: bool) -> dict:
    """usageMetadata after ``thoughts`` thought and ``cand`` candidate tokens per candidate."""
    prompt = p.report_input if (final and p.report_input is not None) else p.prompt
    cached = min(p.cache_read, p.prompt)
    cand_total = p.n * cand
    if final and p.report_output is not None:
        cand_total = p.report_output
    tool_prompt = max(0, req.h_int("x-fake-tool-use-prompt-tokens", 0) or 0)
    u: dict[str, Any] = {"promptTokenCount": prompt, "candidatesTokenCount": cand_total}
    if cached:
        u["cachedContentTokenCount"] = cached
    if tool_prompt:
        u["toolUsePromptTokenCount"] = tool_prompt
    if thoughts:
        u["thoughtsTokenCount"] = p.n * thoughts
    u["totalTokenCount"] = prompt + cand_total + p.n * thoughts + tool_prompt
    u["promptTokensDetails"] = [{"modality": "TEXT", "tokenCount": prompt}]
    if cached:
        u["cacheTokensDetails"] = [{"modality": "TEXT", "tokenCount": cached}]
    return u


def from_schema(schema: Any) -> Any:
    """A small value that satisfies a JSON schema (Gemini's OBJECT/STRING/... or JSON Schema)."""
    if not isinstance(schema, dict):
        return "zero"
    if schema.get("enum"):
        return schema["enum"][0]
    t = str(schema.get("type", "object")).lower()
    if isinstance(schema.get("type"), list):
        t = str(next((x for x in schema["type"] if x != "null"), "string")).lower()
    if t == "object":
        props = schema.get("properties") or {}
        return {k: from_schema(v) for k, v in props.items()}
    if t == "array":
        return [from_schema(schema.get("items"))]
    if t in ("integer", "number"):
        return 1
    if t == "boolean":
        return False
    return "zero"


def json_text(body: dict) -> str | None:
    """The reply text for JSON mode (``responseMimeType: application/json``), else None."""
    g = gen_config(body)
    if field(g, "responseMimeType") != "application/json":
        return None
    return json.dumps(from_schema(field(g, "responseJsonSchema") or field(g, "responseSchema") or {}))


def pieces(text: str, n: int) -> list[str]:
    """``text`` cut into ``n`` pieces (the last ones may be empty when the text is short)."""
    n = max(1, n)
    step = -(-len(text) // n)
    return [text[k * step:(k + 1) * step] for k in range(n)]


def finish_reason(p: fc.Plan) -> str:
    return "MAX_TOKENS" if p.truncated else "STOP"


async def generate(c: GeminiConn, req: fc.Request, body: dict, model: str, stream: bool, sse: bool) -> None:
    p = plan_for(req, body)
    model = req.h("x-fake-model") or model
    rid = f"resp_fake{c.req_id}"
    include_thoughts = bool(field(field(gen_config(body), "thinkingConfig"), "includeThoughts"))
    calls = [{"functionCall": {"name": name, "args": TOOL_ARGS}} for name in p.tools]
    jtext = json_text(body)
    texts = [fc.tok(k) for k in range(p.content)] if jtext is None or not p.content else pieces(jtext, p.content)
    final_u = usage(p, req, p.reasoning, p.content + TOOL_TOKENS * len(p.tools), True)

    def resp(parts: list[dict], fin: str | None, u: dict | None) -> dict:
        cands = []
        for j in range(p.n):
            cand: dict[str, Any] = {"content": {"parts": parts, "role": "model"}, "index": j}
            if fin:
                cand["finishReason"] = fin
            cands.append(cand)
        obj: dict[str, Any] = {"candidates": cands}
        if u is not None and not p.omit_usage:
            obj["usageMetadata"] = u
        obj["modelVersion"] = model
        obj["responseId"] = rid
        return obj

    if not stream:
        parts: list[dict] = []
        if include_thoughts and p.reasoning:
            parts.append({"text": fc.fake_text(p.reasoning).strip(), "thought": True})
        if p.content or not calls:
            parts.append({"text": "".join(texts)})
        parts += calls
        fc.log("response", conn=c.id, req=c.req_id, status=200, stream=False,
               usage=None if p.omit_usage else final_u, finish_reason=finish_reason(p))
        await c.send_json(200, resp(parts, finish_reason(p), final_u))
        return

    # The chunks: (kind, parts, finishReason, thoughts so far, candidate tokens so far).
    plan: list[tuple[str, list[dict], str | None, int, int]] = []
    if include_thoughts:
        plan += [("thought", [{"text": fc.tok(k), "thought": True}], None, k + 1, 0) for k in range(p.reasoning)]
    for k in range(p.content):
        last = k == p.content - 1 and not calls
        plan.append(("content", [{"text": texts[k]}], finish_reason(p) if last else None, p.reasoning, k + 1))
    if calls or not p.content:
        plan.append(("final", calls or [{"text": ""}], finish_reason(p), p.reasoning,
                     p.content + TOOL_TOKENS * len(p.tools)))
    fc.log("response", conn=c.id, req=c.req_id, status=200, stream=True, sse=sse,
           usage=None if p.omit_usage else final_u, planned_usage=final_u, finish_reason=finish_reason(p))
    await c.stream_start("text/event-stream" if sse else "application/json; charset=UTF-8")
    i = 0
    if p.die_after == 0:
        c.die(0)
    err_after = req.h_int("x-fake-stream-error")

    async def send(obj: dict, kind: str, indent: int | None) -> None:
        nonlocal i
        if sse:
            data = b"data: " + json.dumps(obj).encode() + b"\r\n\r\n"
        else:
            data = (b"[" if i == 0 else b",\r\n") + json.dumps(obj, indent=indent).encode()
        await c.stream_write(data, i, kind)
        i += 1

    written = 0
    for n, (kind, parts, fin, thoughts, cand) in enumerate(plan):
        is_last = n == len(plan) - 1
        if kind != "final":
            await c.delay_s(p.delay_s)
        u = final_u if is_last else usage(p, req, thoughts, cand, False)
        await send(resp(parts, fin, u), kind, 2)
        if kind != "final":
            written += 1
            if p.die_after is not None and written >= p.die_after:
                c.die(written)
            if err_after is not None and written >= err_after:
                await send(error_obj(503, "The model is overloaded (x-fake-stream-error)"), "error", 2)
                break
    if not sse:
        await c.stream_write(b"]", i, "end")
        i += 1
    await c.stream_end()
    fc.log("stream_done", conn=c.id, req=c.req_id, chunks=i, usage_sent=not p.omit_usage)


async def count_tokens(c: GeminiConn, req: fc.Request, body: dict) -> None:
    n = prompt_tokens(req, body)
    out: dict[str, Any] = {"totalTokens": n, "promptTokensDetails": [{"modality": "TEXT", "tokenCount": n}]}
    cached = min(max(0, req.h_int("x-fake-cached-tokens", 0) or 0), n)
    if cached:
        out["cachedContentTokenCount"] = cached
    fc.log("response", conn=c.id, req=c.req_id, status=200, stream=False, usage=None, finish_reason=None,
           total_tokens=n)
    await c.send_json(200, out)


def _model_obj(m: str) -> dict:
    return {"name": f"models/{m}", "version": "001", "displayName": m, "inputTokenLimit": 1048576,
            "outputTokenLimit": 65536, "supportedGenerationMethods": ["generateContent", "countTokens"],
            "thinking": True}


async def dispatch(c: GeminiConn, req: fc.Request) -> None:
    body, raw = fc.parse_body(req)
    query = urllib.parse.parse_qs(req.target.partition("?")[2], keep_blank_values=True)
    auth = req.h("authorization") or ""
    keys = {"authorization": auth[7:].strip() if auth.lower().startswith("bearer ") else None,
            "header": req.h("x-goog-api-key"), "query": (query.get("key") or [None])[0]}
    keys = {k: v for k, v in keys.items() if v is not None}
    fc.log_request(c, req, body, raw, api_key=keys.get("header", keys.get("query", keys.get("authorization"))),
                   key_in="+".join(keys) or None, keys=keys, query_key=keys.get("query"))
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
    if req.method == "GET" and re.fullmatch(r"/(v1beta|v1|v1alpha)/models", path):
        return await answer(200, {"models": [_model_obj(m) for m in MODELS]})
    if req.method == "GET" and (m := re.fullmatch(r"/(v1beta|v1|v1alpha)/models/([^/:]+)", path)):
        return await answer(200, _model_obj(m.group(2)))
    m = PATH_RE.match(path)
    if req.method != "POST" or m is None or m.group(4) not in ("generateContent", "streamGenerateContent",
                                                               "countTokens"):
        return await answer(404, message=f"Method not found: {req.method} {req.path}")
    if not isinstance(body, dict):
        return await answer(400, message="Invalid JSON payload received.")
    method, model = m.group(4), m.group(3)
    if method == "countTokens":
        return await count_tokens(c, req, body)
    sse = (query.get("alt") or [""])[0] == "sse"
    return await generate(c, req, body, model, method == "streamGenerateContent", sse)


if __name__ == "__main__":
    sys.exit(fc.main("gemini", __doc__.split("\n")[0], GeminiConn, dispatch))
