"""Local model servers (Ollama, llama.cpp server, LM Studio, vLLM): free, but metered.

A call to a host:port listed in ``pouch_local_hosts`` (``LocalHosts``) costs nothing, so it is
never refused for money; it still passes the gate (pause, an expired wallet, the wallet's
rpm/tpm), is reserved at an explicit $0 (a reservation marked ``local``, which the ledger
accepts only for such calls) and is settled with its token counts and latency, so history,
status and the TUI show it as ``local/MODEL`` at $0. The $0 price belongs to the *host*, never
to the model name: a local model called ``gpt-4o`` is still free, and a remote host never gets
this price (an unknown model there is refused, as before).

Wire formats: OpenAI's (``/v1/chat/completions``, ``/v1/completions``, ``/v1/embeddings``,
``/v1/responses``, SSE streams, usage asked for with ``stream_options``), Ollama's native API
(``/api/chat``, ``/api/generate``: streamed by default as NDJSON, usage in the last line's
``prompt_eval_count`` / ``eval_count``; ``/api/embed``, ``/api/embeddings``) and llama.cpp's
``/completion``. Pure: no I/O.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from .. import tokens
from ..endpoints import canonical_path
from ..metering import StreamMeter
from ..money import ZERO
from ..plan import CallPlan, DraftPlan, PlanError, PlanSettings, ask_for_stream_usage
from ..pricing import ModelPrice, Rates, Usage
from . import openai as _openai
from ..sse import MAX_EVENT_BYTES, SSEError
from .streams import ProviderStreamMeter

NAME = "local"
HOSTS: tuple[str, ...] = ()  # decided by ``pouch_local_hosts`` (host and port), not by name alone
#: Ollama's NDJSON stream is framed like a JSON array (``streams.JSONArrayFramer`` skips newlines)
JSON_ARRAY_STREAMS = True

#: the known ports: Ollama 11434, llama.cpp server 8080, LM Studio 1234, vLLM 8000
KNOWN_PORTS = (11434, 8080, 1234, 8000)
DEFAULT_LOCAL_HOSTS = tuple(f"{h}:{p}" for h in ("localhost", "127.0.0.1", "[::1]") for p in KNOWN_PORTS)

#: billed paths -> api (OpenAI's, Ollama's native, llama.cpp's native)
BILLED = {
    "/v1/chat/completions": "chat", "/v1/completions": "completions", "/v1/embeddings": "embeddings",
    "/v1/responses": "responses", "/chat/completions": "chat", "/completions": "completions",
    "/embeddings": "embeddings",
    "/api/chat": "ollama_chat", "/api/generate": "ollama_generate", "/api/embed": "ollama_embed",
    "/api/embeddings": "ollama_embed", "/completion": "llamacpp_completion", "/embedding": "ollama_embed",
}
#: POSTs that run no model for a user's prompt (model management, tokenising)
FREE_POSTS = frozenset({"/api/show", "/api/pull", "/api/push", "/api/create", "/api/copy", "/api/blobs",
                        "/tokenize", "/detokenize", "/apply-template", "/v1/messages/count_tokens"})
_NATIVE_STREAMING = frozenset({"ollama_chat", "ollama_generate"})  # stream unless "stream": false

#: every rate zero: the explicit price of a local call
_FREE = Rates(ZERO, ZERO, ZERO, ZERO, ZERO)


class LocalHostsError(ValueError):
    pass


@dataclass(frozen=True)
class LocalHosts:
    """Which destinations are local model servers: exact ``host:port`` pairs, or ``host`` for any
    port of it. Names are lower-cased, without a trailing dot; IPv6 in brackets."""

    pairs: frozenset[tuple[str, int]] = frozenset()
    any_port: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, entries: Iterable[str]) -> LocalHosts:
        pairs: set[tuple[str, int]] = set()
        anyp: set[str] = set()
        for raw in entries:
            entry = raw.strip().lower()
            if not entry:
                continue
            m = re.fullmatch(r"\[([0-9a-f:.]+)\](?::(\d{1,5}))?|([a-z0-9.-]+?)\.?(?::(\d{1,5}))?", entry)
            if m is None:
                raise LocalHostsError(f"expected HOST:PORT or HOST (IPv6 as [::1]:PORT), got {raw!r}")
            host = m.group(1) or m.group(3)
            port = m.group(2) or m.group(4)
            if m.group(1):
                try:
                    ipaddress.IPv6Address(host)
                except ValueError:
                    raise LocalHostsError(f"not an IPv6 address: {raw!r}") from None
            if port is None:
                anyp.add(host)
            elif not 0 < int(port) < 65536:
                raise LocalHostsError(f"port out of range in {raw!r}")
            else:
                pairs.add((host, int(port)))
        return cls(frozenset(pairs), frozenset(anyp))

    def match(self, host: str, port: int) -> bool:
        host = host.lower().rstrip(".").strip("[]")
        return host in self.any_port or (host, port) in self.pairs

    def entries(self) -> list[tuple[str, int | None]]:
        return sorted(self.pairs) + [(h, None) for h in sorted(self.any_port)]

    def allow_patterns(self) -> list[str]:
        """``allow_hosts`` regexes so mitmproxy decrypts a local server that speaks TLS."""
        out = [rf"^{re.escape(h)}:{p}$" for h, p in sorted(self.pairs)]
        out += [rf"^{re.escape(h)}:\d+$" for h in sorted(self.any_port)]
        return out


def price(model: str) -> ModelPrice:
    """The explicit $0 price of a model served by a local host (provider ``local``)."""
    return ModelPrice(name=model, provider=NAME, mode="chat", rates=_FREE, tiers=MappingProxyType({}),
                      long_context=None, max_input_tokens=None, max_output_tokens=None, encoding=None,
                      tier_multipliers=MappingProxyType({}))


def classify(method: str, target: str, *, has_body: bool = False) -> str:
    path = canonical_path(target)
    if method == "POST":
        if path in BILLED:
            return "billed"
        if path in FREE_POSTS or path.startswith("/api/blobs/"):
            return "free"
        return "unknown"
    if method in ("GET", "HEAD", "OPTIONS") and not has_body:
        return "free"  # /api/tags, /api/ps, /api/version, /v1/models, /health, /props, ...
    if method == "DELETE" and path == "/api/delete":
        return "free"
    return "unknown"


def refusal(method: str, path: str) -> str:  # classify never answers "refused"
    return f"pouch: {method} {path} on a local model server is not one pouch knows; nothing was sent"


def _texts(value: Any) -> Iterable[str]:
    """Every string inside ``value`` (the prompt's text, as a rough token estimate)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            yield v
        elif isinstance(v, Mapping):
            stack.extend(v[k] for k in v if k not in ("images", "image_url", "options", "format"))
        elif isinstance(v, list):
            stack.extend(v)


def estimate_input(api: str, body: Mapping[str, Any], model: str, exact: bool = True) -> int:
    """Input tokens for the rate limits' tpm and the fallback settle: tiktoken's count of the
    prompt's text (the model's own tokenizer is unknown; the server's usage settles the call),
    or without ``exact`` the texts' UTF-8 bytes (an upper bound that needs no encoding loaded)."""
    parts: list[Any] = []
    for key in ("messages", "prompt", "system", "input", "instructions", "content", "tools"):
        if key in body:
            parts.append(body[key])
    count = (lambda t: tokens.count_text(t, model)) if exact else _utf8_len
    return sum(count(t) for t in _texts(parts)) + 3 * len(body.get("messages") or ())


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _cap(api: str, body: Mapping[str, Any]) -> int:
    """The request's own output cap, or 0 when it sets none (pouch injects none: nothing to pay)."""
    fields = ("max_completion_tokens", "max_tokens", "max_output_tokens", "n_predict")
    opts = body.get("options")
    values = [body.get(f) for f in fields]
    if isinstance(opts, Mapping):
        values.append(opts.get("num_predict"))
    caps = [v for v in values if isinstance(v, int) and not isinstance(v, bool) and v > 0]
    return min(caps) if caps else 0


@dataclass
class LocalDraft(DraftPlan):
    """A local call's plan: $0 whatever the budget (``finish`` never refuses for money)."""

    def finish(self, remaining: Decimal) -> CallPlan:
        return CallPlan(
            api=self.api, path=self.path, model=self.model, price=self.price, stream=self.stream,
            input_tokens=self.input_tokens, reserved_input_tokens=self.reserved_input_tokens,
            output_cap=self.cap or 0, choices=self.choices, tier=None, client_wants_usage=self.client_wants_usage,
            worst_case=ZERO, rewrites=dict(self.rewrites), notes=list(self.notes), input_method=self.input_method,
        )


def draft(method: str, path: str, body: dict[str, Any], *, table: Any = None,
          settings: PlanSettings = PlanSettings()) -> LocalDraft:
    path = canonical_path(path)
    api = BILLED[path]
    model = body.get("model")
    if model is None and api == "llamacpp_completion" or model is None and path.startswith("/v1/"):
        model = "default"  # llama.cpp and LM Studio serve their loaded model without a name
    if not isinstance(model, str) or not model:
        raise PlanError("pouch: the request has no `model`; nothing was sent", code="pouch_missing_model")
    stream = body.get("stream", api in _NATIVE_STREAMING)
    if not isinstance(stream, bool):
        raise PlanError(f"pouch: `stream` must be true or false, not {stream!r}; nothing was sent")
    try:
        exact = settings.exact_input or tokens.loaded_for(model)
        estimate = estimate_input(api, body, model, exact)
    except ValueError as exc:
        raise PlanError(f"pouch: cannot read the request: {exc}") from None
    rewrites: dict[str, Any] = {}
    client_wants_usage = ask_for_stream_usage(api, body, stream, settings, rewrites)
    n = body.get("n")
    choices = n if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
    return LocalDraft(
        api=api, path=path, model=model, price=price(model), stream=stream, input_tokens=estimate,
        reserved_input_tokens=estimate, choices=choices, tier=None, client_wants_usage=client_wants_usage,
        cap=_cap(api, body), cap_field=None, rewrites=rewrites, notes=["local: $0"],
        input_method="tiktoken" if exact else "utf8_bytes",
    )


def _native_usage(body: Mapping[str, Any]) -> Usage | None:
    """Ollama's counts (``prompt_eval_count`` is absent when the whole prompt was cached)."""
    if "eval_count" not in body and "prompt_eval_count" not in body:
        return None
    try:
        return Usage(input_tokens=int(body.get("prompt_eval_count") or 0), output_tokens=int(body.get("eval_count") or 0))
    except (TypeError, ValueError):
        return None


def usage_from_body(body: Any) -> tuple[Usage | None, str | None, str | None]:
    """(usage, None, None): the reported model is never returned, so that a local model that
    shares a hosted model's name is never priced from the table."""
    if not isinstance(body, Mapping):
        return None, None, None
    usage, _, _ = _openai.usage_from_body(body)
    if usage is None:
        usage = _native_usage(body)
    if usage is None and isinstance(body.get("timings"), Mapping):  # llama.cpp /completion
        t = body["timings"]
        try:
            usage = Usage(input_tokens=int(t.get("prompt_n") or 0), output_tokens=int(t.get("predicted_n") or 0))
        except (TypeError, ValueError):
            usage = None
    if usage is None and isinstance(body.get("prompt_eval_count"), int):
        usage = Usage(input_tokens=body["prompt_eval_count"])
    return usage, None, None


def tool_calls_from_body(api: str, body: Any) -> dict[str, int] | None:
    return None


def output_texts(body: Any) -> list[str]:
    texts = _openai.output_texts(body)
    if isinstance(body, Mapping):
        msg = body.get("message")
        for part in (body.get("response"), body.get("content"), msg.get("content") if isinstance(msg, Mapping) else None):
            if isinstance(part, str):
                texts.append(part)
    return texts


def usage_from_counts(*, input: int, cached: int = 0, cache_write: int = 0, cache_write_1h: int = 0,
                      output: int = 0, reasoning: int = 0, thoughts: int = 0) -> Usage:
    return Usage(input_tokens=input, output_tokens=output)


def error_body(status: int, message: str, code: str, type_: str | None = None) -> dict[str, Any]:
    """OpenAI's error shape (Ollama's own is ``{"error": "..."}``; its clients print either)."""
    return _openai.error_body(status, message, code, type_)


class _NoReportedModel:
    """A local meter never reports a model: its calls are priced at $0 by the host, not by a
    table lookup of whatever name the server gives its model."""

    @property
    def model_reported(self) -> None:
        return None

    @model_reported.setter
    def model_reported(self, value: Any) -> None:
        pass

    def _threshold(self) -> None:  # nothing to pay: never cut off for money
        return None


class LocalStreamMeter(_NoReportedModel, StreamMeter):
    """An OpenAI-format stream from a local server (SSE), metered, never cut off."""


class NDJSONFramer:
    """Splits newline-delimited JSON into its lines, each forwarded with its newline as soon as
    it is complete (``feed`` -> ``(raw line, object or None)`` pairs; ``flush``: the tail)."""

    def __init__(self, max_bytes: int = MAX_EVENT_BYTES) -> None:
        self._buf = b""
        self.max_bytes = max_bytes

    def feed(self, chunk: bytes) -> list[tuple[bytes, Any]]:
        buf = self._buf + chunk
        out: list[tuple[bytes, Any]] = []
        start = 0
        while (end := buf.find(b"\n", start)) >= 0:
            line = buf[start:end + 1]
            start = end + 1
            text = line.strip()
            if not text:
                out.append((line, {}))  # a blank line: forwarded, nothing to read
                continue
            try:
                obj = json.loads(text)
            except ValueError:
                obj = None
            out.append((line, obj))
        self._buf = buf[start:]
        if len(self._buf) > self.max_bytes:
            raise SSEError("a streamed JSON line is larger than pouch's limit")
        return out

    def flush(self) -> bytes:
        rest, self._buf = self._buf, b""
        return rest


class OllamaStreamMeter(_NoReportedModel, ProviderStreamMeter):
    """Ollama's native NDJSON stream: ``message.content`` / ``response`` text as it comes, the
    counts in the last line (``done: true``)."""

    api = "ollama"
    json_array = True  # framed by ``NDJSONFramer`` (not SSE)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._parser = NDJSONFramer()

    def _on_json(self, obj: dict[str, Any], event: str | None) -> bool:
        msg = obj.get("message")
        if msg.__class__ is dict:
            self._count(0, msg.get("content"))
            self._count(1, msg.get("thinking"))
        self._count(0, obj.get("response"))
        self._count(1, obj.get("thinking"))
        if isinstance(obj.get("error"), str):
            self._record_error({"message": obj["error"]})
        if obj.get("done") is True:
            self.done = True
            usage = _native_usage(obj)
            if usage is not None:
                self._set_input(usage)
                self._set_final(usage)
        return True

    def _cut_event(self, code: str, message: str) -> bytes:
        return (json.dumps({"error": message, "code": code}) + "\n").encode()


def new_meter(plan: Any, reservation: Decimal, *, sse: bool = True, content_encoding: str | None = None) -> Any:
    if plan.api in _NATIVE_STREAMING or plan.api == "llamacpp_completion":
        if sse and plan.api == "llamacpp_completion":
            return LlamaCppStreamMeter(plan.price, plan.model, plan.input_tokens, reservation,
                                       content_encoding=content_encoding)
        return OllamaStreamMeter(plan.price, plan.model, plan.input_tokens, reservation,
                                 content_encoding=content_encoding)
    return LocalStreamMeter(
        plan.api if plan.api in ("chat", "responses", "completions") else "chat", plan.price, plan.model,
        plan.input_tokens, reservation,
        hide_usage_chunk=plan.stream and not plan.client_wants_usage and plan.api in ("chat", "completions"),
        content_encoding=content_encoding)


class LlamaCppStreamMeter(_NoReportedModel, ProviderStreamMeter):
    """llama.cpp's native ``/completion`` SSE: ``content`` per event, ``timings`` at ``stop``."""

    api = "llamacpp"

    def _on_json(self, obj: dict[str, Any], event: str | None) -> bool:
        self._count(0, obj.get("content"))
        t = obj.get("timings")
        if obj.get("stop") is True:
            self.done = True
            if t.__class__ is dict:
                try:
                    usage = Usage(input_tokens=int(t.get("prompt_n") or 0), output_tokens=int(t.get("predicted_n") or 0))
                except (TypeError, ValueError):
                    return True
                self._set_input(usage)
                self._set_final(usage)
        return True

    def _cut_event(self, code: str, message: str) -> bytes:
        return b"data: " + json.dumps({"error": {"message": message, "code": code}}).encode() + b"\n\n"


__all__ = ["NAME", "HOSTS", "DEFAULT_LOCAL_HOSTS", "LocalHosts", "LocalHostsError", "classify", "refusal", "draft",
           "usage_from_body", "tool_calls_from_body", "output_texts", "error_body", "new_meter", "price"]
