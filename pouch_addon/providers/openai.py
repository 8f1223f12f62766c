"""OpenAI's wire format (Chat Completions, Responses, legacy Completions, Embeddings), and every
host configured to speak it. The rules themselves live in ``plan`` (what is billed and its
bound), ``metering`` (streams) and ``tokens`` (tiktoken estimates); this module gives them the
provider interface (see ``providers/__init__``) and owns the response and error shapes.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from ..metering import StreamMeter
from ..plan import DraftPlan, PlanError, PlanSettings, classify, draft_plan
from ..pricing import Usage, count_tool_calls

NAME = "openai"
#: whether a streamed response may be a JSON array instead of SSE (``streams.JSONArrayFramer``)
JSON_ARRAY_STREAMS = False
HOSTS = ("api.openai.com",)


def draft(method: str, path: str, body: dict[str, Any], *, table: Any,
          settings: PlanSettings = PlanSettings()) -> DraftPlan:
    """``plan.draft_plan``, after refusing what is billed outside the request."""
    if body.get("background") is True:
        raise PlanError("pouch: background responses are billed outside this request, so pouch cannot "
                        "meter them; nothing was sent", code="pouch_unsupported")
    return draft_plan(method, path, body, table=table, settings=settings)


def refusal(method: str, path: str) -> str:  # classify never answers "refused" for OpenAI
    return f"pouch: {method} {path} cannot be priced; nothing was sent"


def usage_from_body(body: Any) -> tuple[Usage | None, str | None, str | None]:
    """(usage, model, service tier) of a non-streamed response."""
    if not isinstance(body, Mapping):
        return None, None, None
    usage = None
    raw = body.get("usage")
    if isinstance(raw, Mapping):
        try:
            usage = Usage.from_openai(raw)
        except ValueError:
            usage = None
    model = body.get("model") if isinstance(body.get("model"), str) else None
    tier = body.get("service_tier") if isinstance(body.get("service_tier"), str) else None
    return usage, model, tier


def tool_calls_from_body(api: str, body: Any) -> dict[str, int] | None:
    return count_tool_calls(body.get("output")) if api == "responses" and isinstance(body, Mapping) else None


def usage_from_counts(*, input: int, cached: int = 0, cache_write: int = 0, cache_write_1h: int = 0,
                      output: int = 0, reasoning: int = 0, thoughts: int = 0) -> Usage:
    """``pouch cost``: counts as OpenAI reports them (input and output include their parts)."""
    if thoughts:
        raise ValueError("--thoughts is Gemini's; OpenAI reports reasoning inside the output (--reasoning)")
    return Usage(input_tokens=input, cached_tokens=cached, cache_write_tokens=cache_write,
                 cache_write_1h_tokens=cache_write_1h, output_tokens=output, reasoning_tokens=reasoning)


def output_texts(body: Any) -> list[str]:
    """The generated text of a response without ``usage`` (pouch's fallback count)."""
    texts: list[str] = []
    if not isinstance(body, Mapping):
        return texts
    for choice in body.get("choices") or []:
        if not isinstance(choice, Mapping):
            continue
        msg = choice.get("message") or {}
        for part in (choice.get("text"), msg.get("content"), msg.get("refusal")):
            if isinstance(part, str):
                texts.append(part)
        for call in msg.get("tool_calls") or []:
            fn = call.get("function") or {} if isinstance(call, Mapping) else {}
            if isinstance(fn.get("arguments"), str):
                texts.append(fn["arguments"])
    for item in body.get("output") or []:
        for part in (item.get("content") or []) if isinstance(item, Mapping) else []:
            if isinstance(part, Mapping) and isinstance(part.get("text"), str):
                texts.append(part["text"])
        if isinstance(item, Mapping) and isinstance(item.get("arguments"), str):
            texts.append(item["arguments"])
    return texts


_TYPES = {402: "insufficient_quota", 429: "requests", 500: "server_error", 503: "server_error"}


def error_body(status: int, message: str, code: str, type_: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape (the openai SDKs raise their typed error with this message)."""
    return {"error": {"message": message, "type": type_ or _TYPES.get(status, "invalid_request_error"),
                      "param": None, "code": code}}


def new_meter(plan: Any, reservation: Decimal, *, sse: bool = True, content_encoding: str | None = None) -> StreamMeter:
    return StreamMeter(
        plan.api, plan.price, plan.model, plan.input_tokens, reservation,
        hide_usage_chunk=plan.stream and not plan.client_wants_usage and plan.api in ("chat", "completions"),
        tier=plan.tier, fees=plan.fees, fixed_fee=plan.fixed_fee, content_encoding=content_encoding,
    )


__all__ = ["NAME", "HOSTS", "classify", "refusal", "draft", "usage_from_body", "tool_calls_from_body",
           "output_texts", "error_body", "new_meter"]
