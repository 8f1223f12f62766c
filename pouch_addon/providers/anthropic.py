"""Anthropic Messages (``POST /v1/messages``): what pouch bills, bounds, meters and answers.

Pure: request bodies, stream events and usage objects in; plans, meters and error bodies out.

**Output bound.** ``max_tokens`` is required by the API and caps everything generated,
thinking included, so it is the output bound. Agents send large ones (Claude Code: 32K-128K), so
when the budget cannot cover it pouch lowers it to what the budget can pay (``pouch_fit_caps``,
on by default), keeping a thinking budget below it as the API requires, instead of answering 402.

**Input bound.** Anthropic's tokenizer is not public, so pouch cannot count the input. It bounds
it instead: every token of a byte-level BPE stands for at least one byte of the text it encodes,
so the UTF-8 length of the request's JSON (system, messages, tools, tool_choice: the JSON syntax
around each message and tool is longer than the few template tokens it becomes) is at least the
number of tokens of that text. Added to it: a fixed allowance for the tool-use system prompt the
API adds when tools are present (documented as 313-346 tokens; pouch reserves
``TOOL_PROMPT_TOKENS``), ``CLIENT_TOOL_TOKENS`` for each Anthropic-defined client tool (bash, text
editor, computer use, memory: documented at 245-735 tokens plus their system prompts),
``IMAGE_TOKENS`` per image (width x height / 750, images scaled down to at most about 1.15
megapixels: about 1,600 tokens; pouch reserves 3x that for high-resolution models), and the
context window when the input holds what pouch cannot measure (a PDF or a file reference). The
slack is large (English text is about 3.5-4 bytes per token): the published figures
(``tests/unit/test_provider_anthropic.py``) and ``docs/anthropic-input-bound.md`` give it. The
bound never exceeds the model's context window (the API refuses longer input).

**Server-side tools** (web search, web fetch, code execution, the MCP connector, containers) run
turns and fees pouch cannot bound from the request, so such requests are refused
(``pouch_unbounded``). **Message Batches** are billed later, outside the request: refused.

**Usage.** ``usage.input_tokens`` excludes cache reads and writes (``Usage.from_anthropic``
converts). In a stream, ``message_start`` carries the input usage and ``message_delta`` the
cumulative usage (the last one wins, fields are assigned, never added), final at
``message_stop``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from ..plan import DraftPlan, PlanError, PlanSettings, _int_field, _unbounded
from ..pricing import PriceTable, UnknownModel, Usage, normalise_tier
from . import _bounds
from .streams import ProviderStreamMeter

NAME = "anthropic"
#: whether a streamed response may be a JSON array instead of SSE (``streams.JSONArrayFramer``)
JSON_ARRAY_STREAMS = False
HOSTS = ("api.anthropic.com",)
MESSAGES = "/v1/messages"
#: POSTs that cost nothing (the exact pre-count)
FREE_POSTS = ("/v1/messages/count_tokens",)
#: tokens the API adds for tool use (system prompt); documented 313-346 on current models
TOOL_PROMPT_TOKENS = 1_000
#: per Anthropic-defined client tool (bash, text editor, computer use, memory); documented 245-735
CLIENT_TOOL_TOKENS = 2_000
#: per image: ~1,600 tokens at most after the API's downscaling; x3 for high-resolution models
IMAGE_TOKENS = 4_800
#: Anthropic-defined tools the client runs (the API only describes them to the model)
CLIENT_TOOL_PREFIXES = ("bash_", "text_editor_", "computer_", "memory_")
#: request members that make the provider run tools or read input pouch cannot see
SERVER_MEMBERS = ("mcp_servers", "container")
#: thinking budgets below this are refused by the API
MIN_THINKING_BUDGET = 1024


def classify(method: str, path: str, *, has_body: bool = False) -> str:
    """``billed`` / ``free`` / ``refused`` / ``unknown`` for a request to api.anthropic.com.

    Inference is ``POST /v1/messages`` only. ``/api/...`` is Claude Code's account, settings and
    telemetry API (no tokens, no charge): free. Batches are refused (see the module doc)."""
    path = path.split("?", 1)[0].rstrip("/")
    method = method.upper()
    if method == "POST" and path == MESSAGES:
        return "billed"
    if method == "POST" and path in FREE_POSTS:
        return "free"
    if path.startswith("/v1/messages/batches"):
        return "refused" if method == "POST" else "free"
    if method in ("GET", "HEAD", "OPTIONS"):
        return "unknown" if has_body else "free"  # a read with a body is not known to be free
    if path.startswith("/api/"):
        return "free"
    return "unknown"


def refusal(method: str, path: str) -> str:
    """Why a ``refused`` request is refused."""
    return ("pouch: Message Batches are billed when the batch runs, outside this request, so pouch cannot "
            "reserve for them; send the messages one by one; nothing was sent")


def _tool_kind(tool: Any) -> str:
    """``custom`` (described by the client, run by it), ``client`` (Anthropic-defined, run by the
    client) or ``server`` (run by Anthropic)."""
    if not isinstance(tool, Mapping):
        raise PlanError("pouch: every entry of `tools` must be an object")
    kind = tool.get("type")
    if kind is None or kind == "custom":
        return "custom"
    if isinstance(kind, str) and kind.startswith(CLIENT_TOOL_PREFIXES):
        return "client"
    return "server"


def estimate_input_bound(body: Mapping[str, Any], price_context: int | None = None) -> tuple[int, list[str]]:
    """An upper bound of the input tokens (see the module doc) and what it could not measure."""
    media = _bounds.Media()
    parts = {k: body.get(k) for k in ("system", "messages", "tools", "tool_choice") if body.get(k) is not None}
    stripped = _bounds.strip_media(parts, media, image_types=("image",), document_types=("document",))
    total = _bounds.utf8_len(stripped) + media.images * IMAGE_TOKENS + media.text_bytes
    tools = body.get("tools")
    if isinstance(tools, list) and tools:
        total += TOOL_PROMPT_TOKENS + CLIENT_TOOL_TOKENS * sum(_tool_kind(t) == "client" for t in tools)
    return total, media.hidden


def draft(method: str, path: str, body: dict[str, Any], *, table: PriceTable,
          settings: PlanSettings = PlanSettings()) -> DraftPlan:
    """Read, validate and bound a Messages request (raises :class:`PlanError`)."""
    path = path.split("?", 1)[0].rstrip("/")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise PlanError("pouch: the request has no `model`; nothing was sent", code="pouch_missing_model")
    try:
        price = table.resolve_bound(model)
    except UnknownModel as exc:
        raise PlanError(str(exc).strip("\"'"), code="pouch_unknown_model") from None
    if price.provider != NAME:
        raise PlanError(f"pouch: {model} is not an Anthropic model in the price table; nothing was sent",
                        code="pouch_unknown_model")
    try:
        tier = normalise_tier(body.get("service_tier"))
    except ValueError as exc:
        raise PlanError(f"pouch: {exc}") from None
    cap = _int_field(body, "max_tokens", 0)
    if cap is None:
        raise PlanError("pouch: the request has no `max_tokens` (the Messages API requires it); nothing was sent")
    for member in SERVER_MEMBERS:
        if body.get(member) is not None:
            raise _unbounded(f"`{member}` makes Anthropic run tools whose turns and fees pouch cannot bound")
    tools = body.get("tools")
    if tools is not None and not isinstance(tools, list):
        raise PlanError("pouch: `tools` must be a list")
    for tool in tools or ():
        if _tool_kind(tool) == "server":
            raise _unbounded(f"the `{tool.get('type')}` tool runs on Anthropic's side (extra model turns and "
                             "per-use fees pouch cannot bound from the request)")
    if not isinstance(body.get("messages"), list):
        raise PlanError("pouch: `messages` must be a list")
    thinking = body.get("thinking")
    budget_tokens = None
    if isinstance(thinking, Mapping) and thinking.get("type") == "enabled":
        budget_tokens = _int_field(thinking, "budget_tokens", 0)

    estimate, hidden = estimate_input_bound(body)
    reserved, notes = _bounds.reserved_input(estimate, hidden, price, model)

    def fit(new_cap: int) -> dict[str, Any] | None:
        if new_cap < 1:
            return None
        changes: dict[str, Any] = {"max_tokens": new_cap}
        if budget_tokens is not None and budget_tokens >= new_cap:
            if new_cap - 1 < MIN_THINKING_BUDGET:
                return None
            changes["thinking"] = {**dict(thinking), "budget_tokens": new_cap - 1}  # type: ignore[arg-type]
        return changes

    return DraftPlan(
        api="messages", path=path, model=model, price=price, stream=body.get("stream") is True,
        input_tokens=reserved, reserved_input_tokens=reserved, choices=1, tier=tier,
        client_wants_usage=True, cap=cap, cap_field="max_tokens", notes=notes, input_hidden=tuple(hidden),
        fit_cap=fit if settings.fit_caps else None,
    )


# -- usage and responses -------------------------------------------------------------------------
def usage_from_body(body: Mapping[str, Any]) -> tuple[Usage | None, str | None, str | None]:
    """(usage, model, service tier) of a non-streamed Messages response."""
    raw = body.get("usage")
    usage = None
    if isinstance(raw, Mapping):
        try:
            usage = Usage.from_anthropic(raw)
        except ValueError:
            usage = None
    model = body.get("model") if isinstance(body.get("model"), str) else None
    tier = raw.get("service_tier") if isinstance(raw, Mapping) and isinstance(raw.get("service_tier"), str) else None
    return usage, model, tier


def tool_calls_from_body(api: str, body: Any) -> dict[str, int] | None:
    return None  # server-side tools are refused (see the module doc)


def usage_from_counts(*, input: int, cached: int = 0, cache_write: int = 0, cache_write_1h: int = 0,
                      output: int = 0, reasoning: int = 0, thoughts: int = 0) -> Usage:
    """``pouch cost``: counts as Anthropic reports them (``input`` without the cache reads and
    writes; ``output`` with the thinking)."""
    if thoughts or reasoning:
        raise ValueError("Anthropic reports thinking inside output_tokens: give it in --output")
    return Usage.from_anthropic({
        "input_tokens": input, "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": cache_write + cache_write_1h,
        "cache_creation": {"ephemeral_5m_input_tokens": cache_write, "ephemeral_1h_input_tokens": cache_write_1h},
        "output_tokens": output})


def output_texts(body: Mapping[str, Any]) -> list[str]:
    """The generated text of a response without usage (pouch's fallback count)."""
    texts: list[str] = []
    for block in body.get("content") or []:
        if not isinstance(block, Mapping):
            continue
        for key in ("text", "thinking"):
            if isinstance(block.get(key), str):
                texts.append(block[key])
        if block.get("type") == "tool_use" and block.get("input") is not None:
            texts.append(json.dumps(block["input"]))
    return texts


_ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
                403: "permission_error", 404: "not_found_error", 413: "request_too_large",
                421: "invalid_request_error", 426: "invalid_request_error", 429: "rate_limit_error",
                415: "invalid_request_error", 500: "api_error", 503: "overloaded_error"}


def error_body(status: int, message: str, code: str, type_: str | None = None) -> dict[str, Any]:
    """pouch's own answer in Anthropic's error shape (the SDKs raise their typed error with the
    message; ``pouch_code`` says which pouch rule answered)."""
    return {"type": "error", "error": {"type": _ERROR_TYPES.get(status, "api_error"), "message": message},
            "pouch_code": code}


# -- streams -------------------------------------------------------------------------------------
#: content_block_delta types whose text is model output
_TEXT_DELTAS = {"text_delta": "text", "thinking_delta": "thinking", "input_json_delta": "partial_json"}


class AnthropicStreamMeter(ProviderStreamMeter):
    """Meters a Messages SSE stream (see the module doc and :class:`ProviderStreamMeter`).

    A ``content_block_delta`` of a text, thinking or tool-input delta is learnt as a template
    (``providers/templates.py``; holes: the block index and the text) and the next ones of its
    shape are counted without the JSON scanner; a ``ping`` repeats byte for byte."""

    template_tries = 6

    def _on_json(self, obj: dict[str, Any], event: str | None) -> bool:
        typ = obj.get("type")
        if typ == "content_block_delta":
            delta = obj.get("delta")
            if delta.__class__ is dict:
                field = _TEXT_DELTAS.get(delta.get("type"))
                if field is not None:
                    self._count(("b", obj.get("index") if obj.get("index").__class__ is int else None),
                                delta.get(field))
            return True
        if typ == "message_delta":
            usage = obj.get("usage")
            if usage.__class__ is dict:
                self._merge_usage(usage)
            return True
        if typ == "message_start":
            message = obj.get("message")
            if message.__class__ is dict:
                model = message.get("model")
                if model.__class__ is str and model:
                    self.model_reported = model
                usage = message.get("usage")
                if usage.__class__ is dict:
                    self._merge_usage(usage)
            return True
        if typ == "message_stop":
            self.done = True
            if self._raw_usage is not None:
                self._finalise()
            return True
        if typ == "error":
            err = obj.get("error")
            self._record_error(err if err.__class__ is dict else obj)
        return True

    def _template_paths(self, obj: dict[str, Any], event: str | None) -> tuple[list[tuple], Any] | None:
        if obj.get("type") != "content_block_delta":
            return None
        delta = obj.get("delta")
        if delta.__class__ is not dict:
            return None
        field = _TEXT_DELTAS.get(delta.get("type"))
        if field is None or delta.get(field).__class__ is not str:
            return None
        index = obj.get("index")
        if index.__class__ is int:
            return [("index",), ("delta", field)], None
        return [("delta", field)], ("b", None)  # no int index: the key is fixed

    def _apply_template(self, tpl: Any, text: str, holes: Any) -> None:
        # _on_json of a text delta: _count(("b", index), text)
        if text:
            key = tpl.info if tpl.info is not None else ("b", int(holes[1]))
            texts = self._pending.get(key)
            if texts is None:
                self._pending[key] = [text]
            else:
                texts.append(text)
            self._pending_bytes += len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))

    def _merge_usage(self, usage: dict[str, Any]) -> None:
        """Cumulative: assign every field present (never add)."""
        raw = self._raw_usage if self._raw_usage is not None else {}
        for key, value in usage.items():
            if value is not None:
                raw[key] = value
        self._raw_usage = raw
        tier = raw.get("service_tier")
        if tier.__class__ is str:
            self._set_tier(tier)
        try:
            self._set_input(Usage.from_anthropic({**raw, "output_tokens": 0}))
        except ValueError:
            self.parse_errors += 1

    def _finalise(self) -> None:
        try:
            self._set_final(Usage.from_anthropic(self._raw_usage or {}))
        except ValueError:
            self.parse_errors += 1

    def _cut_event(self, code: str, message: str) -> bytes:
        self.cut_reason = code
        body = {"type": "error", "error": {"type": "billing_error", "message": message}, "pouch_code": code}
        return b"event: error\ndata: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"


def new_meter(plan: Any, reservation: Decimal, *, sse: bool = True,
              content_encoding: str | None = None) -> AnthropicStreamMeter:
    return AnthropicStreamMeter(plan.price, plan.model, plan.input_tokens, reservation, plan.tier,
                                content_encoding=content_encoding)


__all__ = ["NAME", "HOSTS", "classify", "refusal", "draft", "estimate_input_bound", "usage_from_body", "tool_calls_from_body",
           "output_texts", "error_body", "AnthropicStreamMeter", "new_meter"]
