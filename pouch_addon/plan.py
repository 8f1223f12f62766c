"""From an intercepted request to a ``CallPlan``: what it is, what it may cost at worst, what to rewrite.

Pure: the caller passes the decoded body, the price table and the remaining budget. The worst
case is ``input × the dearest input-side rate + output cap × choices × the output rate`` (in the
requested or the standard tier, whichever is dearer, at the dearest model the name may be served
as: ``PriceTable.resolve_bound``) plus the tool fees, priced exactly. The input is the estimate
× (1 + margin), or the model's context window when the body does not show all of it
(``tokens.hidden_inputs``: a stored prompt, earlier turns, files, ...); each server-side tool call
(web search, code interpreter, MCP, ...) adds one more model turn of at most a context window of
input and its fee, for at most ``max_tool_calls`` calls. When the request carries no output cap
(agents rarely send one), pouch injects the smaller of the model's max output and what the
remaining budget can pay for, and a request with server-side tools but no ``max_tool_calls``
gets one too, so the provider can never run past the reservation. What cannot be bounded (a
tool with no fee in the price table, an unknown tool type) is refused with ``pouch_unbounded``.
"""

from __future__ import annotations

import decimal
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from . import tokens
from .endpoints import BILLED, FREE_POSTS, canonical_path, classify  # noqa: F401 (re-exported)
from .money import PER_MILLION, ZERO, format_usd
from .pricing import FEE_CALLS, ModelPrice, PriceTable, UnknownModel, normalise_tier

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # the legacy API's documented default
#: ``max_tool_calls`` pouch injects into a Responses request with server-side tools that sets
#: none (fewer when the budget cannot pay for this many): each call may add a model turn of up to
#: a context window of input, so the bound must be small
DEFAULT_MAX_TOOL_CALLS = 8
#: Responses tools the client executes: their calls end the response, no server turn, no fee
CLIENT_TOOLS = frozenset({"function", "custom", "namespace", "computer", "computer_use_preview",
                          "local_shell", "apply_patch"})
#: Responses tools the provider runs -> the output item their calls are billed by (None: tokens
#: only; OpenAI bills remote MCP calls by the tokens of the tool list and the results)
SERVER_TOOLS: dict[str, str | None] = {
    "web_search": "web_search_call", "web_search_2025_08_26": "web_search_call",
    "web_search_preview": "web_search_call", "web_search_preview_2025_03_11": "web_search_call",
    "file_search": "file_search_call", "code_interpreter": "code_interpreter_call",
    "image_generation": "image_generation_call", "mcp": None,
}


class PlanError(ValueError):
    """The request cannot be priced; answered by pouch in OpenAI's error shape, never forwarded."""

    def __init__(self, message: str, *, status: int = 400, code: str = "pouch_invalid_request") -> None:
        super().__init__(message)
        self.status = status
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": "invalid_request_error", "param": None, "code": self.code}}


@dataclass(frozen=True)
class PlanSettings:
    """What a user configures (``--set pouch_*``) that shapes plans."""

    input_margin: Decimal = Decimal("0.10")
    inject_max_tokens: bool = True
    inject_usage: bool = True
    #: lower an explicit output cap the budget cannot cover (providers that allow it: Anthropic)
    fit_caps: bool = True
    #: count the input with tiktoken even when its encoding is not loaded yet (else the UTF-8
    #: byte bound is used until it is: see ``draft_plan``); set per call, not an option
    exact_input: bool = False


@dataclass
class CallPlan:
    api: str
    path: str
    model: str
    price: ModelPrice  # the bound the call is reserved at (``PriceTable.resolve_bound``)
    stream: bool
    # the input assumed when the provider reports none: the estimate before the margin, or the
    # reserved bound when the body does not show all of the input (``input_hidden``, tool turns)
    input_tokens: int
    reserved_input_tokens: int  # with the margin, the context window(s) for what can't be seen
    output_cap: int  # per choice
    choices: int
    tier: str | None
    client_wants_usage: bool
    worst_case: Decimal
    rewrites: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    input_hidden: tuple[str, ...] = ()  # what the input holds that the body does not show
    max_tool_calls: int = 0  # server-side tool calls reserved for (each: a model turn + its fee)
    fees: dict[str, Decimal] = field(default_factory=dict)  # USD per billable call, by output item type
    fixed_fee: Decimal = ZERO  # billed once per call (a Chat Completions web search)
    fee_bound: Decimal = ZERO  # the fees inside worst_case
    #: how the input was counted: "tiktoken" (the cookbook estimate), "utf8_bytes" (the same
    #: formula with each text's UTF-8 length, an upper bound), None (a provider's own bound)
    input_method: str | None = None
    #: the remaining budget shaped the plan (an injected cap or tool calls below their defaults,
    #: a cap lowered to fit): with a smaller input count it could have been more generous
    budget_shaped: bool = False


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``object_pairs_hook``: a JSON object with a repeated key is refused. Parsers disagree on
    which copy wins (Python: the last, others: the first), so pouch could price one model or cap
    and the provider serve another."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        key = next(k for k, _ in pairs if k in seen or seen.add(k))  # type: ignore[func-returns-value]
        raise PlanError(f"pouch: the request body repeats the key `{key}` in one JSON object; parsers disagree "
                        "on which copy counts, so pouch cannot price it. Nothing was sent.",
                        code="pouch_duplicate_key")
    return obj


def _no_constant(name: str) -> Any:
    raise PlanError(f"pouch: the request body holds `{name}`, which is not JSON; nothing was sent",
                    code="pouch_bad_json")


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
#: the decoder ``json.loads`` would build per call with these hooks (and its C scanner), built once:
#: every billed request is parsed at least once, and building them cost half as much as parsing
#: a small body. Its state is per call (the scanner's key memo only interns keys), so threads share it.
_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constant)


def _lone_surrogate(value: Any) -> bool:
    """Whether a string anywhere in ``value`` holds a lone UTF-16 surrogate (not encodable as UTF-8)."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


def parse_body(raw: bytes | str) -> dict[str, Any]:
    """A request body as strict JSON (RFC 8259): UTF-8, an object at the top, no repeated keys
    at any depth, no ``NaN``/``Infinity``, no lone surrogates. What pouch prices must be what
    every parser downstream reads."""
    try:
        text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
        if text.startswith("\ufeff"):  # what json.loads refuses before decoding
            raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
        body = _DECODER.decode(text)
    except PlanError:
        raise
    except UnicodeDecodeError as exc:
        raise PlanError(f"pouch: the request body is not UTF-8 ({exc.reason} at byte {exc.start}); nothing was sent",
                        code="pouch_bad_json") from None
    except ValueError as exc:
        raise PlanError(f"pouch: the request body is not valid JSON ({exc}); nothing was sent",
                        code="pouch_bad_json") from None
    except RecursionError:
        raise PlanError("pouch: the request body nests too deeply to read; nothing was sent",
                        code="pouch_bad_json") from None
    if not isinstance(body, dict):
        raise PlanError("pouch: the request body must be a JSON object; nothing was sent", code="pouch_bad_json")
    if _SURROGATE_ESCAPE.search(text) and _lone_surrogate(body):
        raise PlanError("pouch: the request body holds a lone UTF-16 surrogate (\\uD800-\\uDFFF not in a pair), "
                        "which is not valid Unicode; nothing was sent", code="pouch_bad_json")
    return body


#: request content-codings pouch decodes (stacked ones in reverse order, like a server)
ENCODINGS = ("identity", "gzip", "x-gzip", "deflate", "br", "zstd")
_BR_SLICE = 64  # brotli has no output cap: feed it this many bytes at a time and check


class BodyTooLarge(PlanError):
    def __init__(self, limit: int) -> None:
        super().__init__(f"pouch: the decoded request body exceeds pouch_max_body_mb ({limit // 1048576} MiB); "
                         "nothing was sent", status=413, code="pouch_body_too_large")


def _bad(coding: str, why: str = "") -> PlanError:
    return PlanError(f"pouch: the request body is not valid {coding}{f' ({why})' if why else ''}; nothing was sent",
                     code="pouch_bad_encoding")


def _inflate(data: bytes, coding: str, limit: int) -> bytes:
    import zlib

    tries = (31,) if coding in ("gzip", "x-gzip") else (15, -15)  # deflate: zlib, or raw as some clients send
    for wbits in tries:
        d = zlib.decompressobj(wbits)
        try:
            out = d.decompress(data, limit + 1)
        except zlib.error as exc:
            if wbits == tries[-1]:
                raise _bad(coding, str(exc)) from None
            continue
        if len(out) > limit:
            raise BodyTooLarge(limit)
        if not d.eof:
            raise _bad(coding, "truncated")
        if d.unused_data:
            raise _bad(coding, f"{len(d.unused_data)} bytes after the end of the stream")
        return out
    raise _bad(coding)  # pragma: no cover


def _unbrotli(data: bytes, limit: int) -> bytes:
    import brotli  # mitmproxy's own dependency

    d = brotli.Decompressor()
    out = bytearray()
    try:
        for i in range(0, len(data), _BR_SLICE):
            out += d.process(data[i:i + _BR_SLICE])
            if len(out) > limit:
                raise BodyTooLarge(limit)
    except brotli.error as exc:
        raise _bad("br", str(exc)) from None
    if not d.is_finished():
        raise _bad("br", "truncated")
    return bytes(out)


def _unzstd(data: bytes, limit: int) -> bytes:
    import io

    import zstandard  # mitmproxy's own dependency

    try:
        out = zstandard.ZstdDecompressor().stream_reader(io.BytesIO(data), read_across_frames=True).read(limit + 1)
    except zstandard.ZstdError as exc:
        raise _bad("zstd", str(exc)) from None
    if len(out) > limit:
        raise BodyTooLarge(limit)
    if data and not out:
        raise _bad("zstd", "truncated")
    return out


def decode_content(raw: bytes, content_encoding: str, limit: int) -> bytes:
    """The request body under its ``Content-Encoding`` (``gzip, br``: br was applied last, so it
    is undone first), never inflating any stage past ``limit`` bytes (413, a decompression
    bomb). An unknown coding is 415, a corrupt or truncated body 400: :class:`PlanError`."""
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
    unknown = [c for c in codings if c not in ENCODINGS]
    if unknown:
        raise PlanError(f"pouch: the request body's content-encoding {', '.join(unknown)!s} is not one pouch can "
                        f"read ({', '.join(ENCODINGS)}), so it cannot be priced; nothing was sent",
                        status=415, code="pouch_unsupported_encoding")
    data = raw
    for coding in reversed(codings):
        if coding == "identity":
            continue
        if coding == "br":
            data = _unbrotli(data, limit)
        elif coding == "zstd":
            data = _unzstd(data, limit)
        else:
            data = _inflate(data, coding, limit)
    if len(data) > limit:
        raise BodyTooLarge(limit)
    return data


def _int_field(body: Mapping[str, Any], name: str, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PlanError(f"pouch: `{name}` must be an integer >= {minimum}, not {value!r}")
    return value


def estimate_input_tokens(body: Mapping[str, Any], *, endpoint: str, model: str | None = None,
                          exact: bool = True) -> int:
    """Prompt tokens of a request body by the cookbook method (also `pouch tokens`); with
    ``exact=False`` each text counts its UTF-8 bytes instead, an upper bound needing no encoding."""
    api = BILLED.get(endpoint.rstrip("/"))
    if api is None:
        raise PlanError(f"pouch: unknown endpoint {endpoint!r}; known: {', '.join(BILLED)}")
    model = model or body.get("model")
    if not isinstance(model, str) or not model:
        raise PlanError("pouch: the request has no `model`")
    try:
        if api == "chat":
            return tokens.estimate_chat_prompt(dict(body), model, exact=exact)
        if api == "responses":
            return tokens.estimate_responses_input(dict(body), model, exact=exact)
        if api == "completions":
            return tokens.estimate_completion_prompt(dict(body), model, exact=exact)
        return tokens.estimate_embedding_input(dict(body), model, exact=exact)
    except ValueError as exc:
        raise PlanError(f"pouch: cannot read the request: {exc}") from None


_CTX = decimal.Context(prec=50, rounding=decimal.ROUND_HALF_EVEN, traps=[decimal.InvalidOperation])


def worst_token_cost(price: ModelPrice, tier: str | None, input_tokens: int, output_tokens: int) -> Decimal:
    """The dearest way a provider may bill this many tokens: every input token at the dearest
    input-side rate (a cache write costs more than a plain input token on Anthropic and Gemini
    models), in the requested tier or the standard one (a flex or batch request may be served
    at the standard price)."""
    worst = ZERO
    for t in {tier, None}:
        rates = price.rates_for(input_tokens, t)
        with decimal.localcontext(_CTX):
            total = (Decimal(input_tokens) * max(rates.input, rates.cache_write, rates.cache_write_1h)
                     + Decimal(output_tokens) * rates.output) / PER_MILLION
        worst = max(worst, total)
    return worst


@dataclass
class DraftPlan:
    """A billed request read, validated and estimated: everything but what depends on the budget.

    The expensive part (parsing, token estimation) happens once, outside the ledger; only
    :meth:`finish`, which picks injected caps from the remaining budget and prices the worst
    case, runs inside the reserving transaction, so the caps are fitted to the balance the
    reservation is checked against (no separate read of the balance, no race with it).
    """

    api: str
    path: str
    model: str
    price: ModelPrice
    stream: bool
    input_tokens: int
    reserved_input_tokens: int  # of the first model turn
    choices: int
    tier: str | None
    client_wants_usage: bool
    cap: int | None  # the request's own cap (or the API's default); None: pouch injects one
    cap_field: str | None  # where an injected cap goes (when cap is None)
    rewrites: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    input_hidden: tuple[str, ...] = ()
    server_tools: bool = False  # a server-side tool may run (each call: one more model turn)
    tool_calls: int | None = None  # the request's max_tool_calls; None with server_tools: injected
    per_call_fee: Decimal = ZERO  # the dearest fee one server-side tool call can cost
    fees: dict[str, Decimal] = field(default_factory=dict)
    fixed_fee: Decimal = ZERO
    #: output per choice reserved beside the cap (Gemini's thinking, billed beside the candidates)
    extra_output: int = 0
    #: lower an explicit cap the budget cannot cover to what it can (``fit_cap`` gives the rewrites
    #: for a cap, or None when no cap that low is valid for the request); Anthropic's agents send
    #: max_tokens of 32K-128K, far above what a call needs, and a 402 would stop the agent
    fit_cap: Any = None  # Callable[[int], dict[str, Any] | None] | None
    input_method: str | None = None  # see CallPlan.input_method

    def _turns_input(self, calls: int) -> int:
        """Input of the first turn plus one context window per tool call (each call's result goes
        back to the model, which reads its whole context again)."""
        if not calls:
            return self.reserved_input_tokens
        assert self.price.max_input_tokens is not None  # draft_plan refused it otherwise
        return self.reserved_input_tokens + calls * self.price.max_input_tokens

    def _fees(self, calls: int) -> Decimal:
        return self.fixed_fee + self.per_call_fee * calls

    def _capped(self, cap: int) -> int:
        if self.api != "embeddings" and self.price.max_output_tokens is not None:
            return min(cap, self.price.max_output_tokens)
        return cap

    def _fit_tool_calls(self, remaining: Decimal) -> int:
        """The most tool calls (up to DEFAULT_MAX_TOOL_CALLS) the budget can pay for next to the
        request's own output cap (or one output token, when pouch injects the cap after this)."""
        out = self._capped(self.cap if self.cap is not None else 1) * self.choices
        need = ZERO
        for calls in range(DEFAULT_MAX_TOOL_CALLS, 0, -1):
            need = worst_token_cost(self.price, self.tier, self._turns_input(calls), out) + self._fees(calls)
            if need <= remaining:
                return calls
        raise BudgetTooSmall(need, remaining)

    def finish(self, remaining: Decimal) -> CallPlan:
        """The plan against ``remaining``; raises :class:`BudgetTooSmall` when not even one output
        token of an injected cap (or one injected tool call) can be paid for. Pure and cheap
        (Decimal arithmetic only)."""
        rewrites, notes = dict(self.rewrites), list(self.notes)
        calls = 0
        shaped = False
        if self.server_tools:
            calls = self.tool_calls if self.tool_calls is not None else self._fit_tool_calls(remaining)
            if self.tool_calls is None:
                rewrites["max_tool_calls"] = calls
                notes.append(f"injected max_tool_calls={calls}")
                shaped = calls < DEFAULT_MAX_TOOL_CALLS
        input_total = self._turns_input(calls)
        fees = self._fees(calls)
        cap = self.cap
        extra = self.extra_output * self.choices
        extra_cost = _output_cost(self.price, input_total, self.tier, extra)
        if cap is None:
            cap = _inject_cap(self.price, input_total, self.choices, self.tier, remaining - fees - extra_cost,
                              fees + extra_cost)
            rewrites[self.cap_field] = cap
            notes.append(f"injected {self.cap_field}={cap}")
            shaped = shaped or self.price.max_output_tokens is None or cap < self.price.max_output_tokens
        cap = self._capped(cap)
        worst = worst_token_cost(self.price, self.tier, input_total, cap * self.choices + extra) + fees
        if worst > remaining and self.fit_cap is not None:
            fitted = _inject_cap(self.price, input_total, self.choices, self.tier, remaining - fees - extra_cost,
                                 fees + extra_cost)
            changes = self.fit_cap(fitted) if fitted < cap else None
            if changes is None:
                raise BudgetTooSmall(worst, remaining)
            rewrites.update(changes)
            notes.append(f"lowered {self.cap_field} from {cap} to {fitted} to fit the budget")
            cap = fitted
            shaped = True
            worst = worst_token_cost(self.price, self.tier, input_total, cap * self.choices + extra) + fees
        assumed = input_total if (self.input_hidden or calls) else self.input_tokens
        return CallPlan(
            api=self.api, path=self.path, model=self.model, price=self.price, stream=self.stream,
            input_tokens=assumed, reserved_input_tokens=input_total, output_cap=cap,
            choices=self.choices, tier=self.tier, client_wants_usage=self.client_wants_usage, worst_case=worst,
            rewrites=rewrites, notes=notes, input_hidden=self.input_hidden, max_tool_calls=calls,
            fees=dict(self.fees), fixed_fee=self.fixed_fee, fee_bound=fees, input_method=self.input_method,
            budget_shaped=shaped,
        )


def make_plan(
    method: str,
    path: str,
    body: dict[str, Any],
    *,
    table: PriceTable,
    remaining: Decimal,
    settings: PlanSettings = PlanSettings(),
) -> CallPlan:
    """Price a billed request at its worst case and decide the body rewrites."""
    return draft_plan(method, path, body, table=table, settings=settings).finish(remaining)


def _unbounded(message: str) -> PlanError:
    return PlanError(f"pouch: {message}; nothing was sent", code="pouch_unbounded")


class _Tools:
    """What the provider may run for a request (a plain class: made for every billed call)."""

    __slots__ = ("server", "hidden_input", "per_call_fee", "fees", "fixed_fee")

    def __init__(self) -> None:
        self.server = False
        self.hidden_input = False  # e.g. an MCP server's tool list, read before the first turn
        self.per_call_fee = ZERO
        self.fees: dict[str, Decimal] = {}
        self.fixed_fee = ZERO

    def add_fee(self, kind: str, fee: Decimal) -> None:
        self.fees[kind] = max(fee, self.fees.get(kind, ZERO))
        self.per_call_fee = max(self.per_call_fee, fee)


def _tool_kind(tool: Mapping[str, Any]) -> str:
    """``client``, a key of SERVER_TOOLS, or ``unpriced`` (a server-side tool with no fee pouch
    can look up: a hosted shell container, server-side tool search, programmatic tool calling,
    or a tool type pouch does not know)."""
    kind = tool.get("type", "function")
    if not isinstance(kind, str):
        return "unpriced"
    if kind in CLIENT_TOOLS:
        return "client"
    if kind in SERVER_TOOLS:
        return kind
    if kind == "shell":
        env = tool.get("environment")
        return "client" if env is None or (isinstance(env, Mapping) and env.get("type") == "local") else "unpriced"
    if kind == "tool_search" and tool.get("execution") == "client":
        return "client"
    return "unpriced"


def _server_tools(api: str, body: Mapping[str, Any], price: ModelPrice, table: PriceTable, model: str) -> _Tools:
    """What the provider may run for this request, and what one call of it can cost."""
    out = _Tools()
    if api == "chat":
        options = body.get("web_search_options")
        if (options is not None and isinstance(options, Mapping)) or "search" in price.name:
            # a search model searches before it answers; the results join the input. One search per
            # request, as LiteLLM bills it (the response does not say how many it made)
            size = options.get("search_context_size") if isinstance(options, Mapping) else None
            found = table.call_fee(price, "web_search_call", size if isinstance(size, str) else None)
            if found is None:
                raise _unbounded(f"{model} searches the web and the price table has no web search fee for it")
            out.fixed_fee, out.hidden_input = found[0], True
        return out
    if api != "responses":
        return out
    tools = body.get("tools")
    for tool in tools if isinstance(tools, list) else ():
        if not isinstance(tool, Mapping):
            continue  # the estimate refuses it
        kind = _tool_kind(tool)
        if kind == "client":
            continue
        if kind == "unpriced":
            raise _unbounded(f"the `{tool.get('type')}` tool runs on the provider's side and pouch has no price "
                             "for its calls, so this request's cost cannot be bounded")
        out.server = True
        item = SERVER_TOOLS[kind]
        if item is None:  # MCP: the server's tool list is read into the first turn
            out.hidden_input = True
            continue
        size = tool.get("search_context_size")
        found = table.call_fee(price, item, size if isinstance(size, str) else None)
        if found is None:
            raise _unbounded(f"the `{kind}` tool is billed per call and the price table has no fee for it on "
                             f"{model}, so this request's cost cannot be bounded")
        out.add_fee(item, found[0])
    if body.get("prompt") is not None:
        # a stored prompt may carry any tool: reserve for the dearest fee the table knows; a call
        # of a tool pouch has no fee for is billed at the whole reservation (settlement flags it)
        out.server = True
        for item in FEE_CALLS:
            found = table.call_fee(price, item, "any")
            if found is not None:
                out.add_fee(item, found[0])
    return out


def ask_for_stream_usage(api: str, body: dict[str, Any], stream: bool, settings: PlanSettings,
                         rewrites: dict[str, Any]) -> bool:
    """Whether the client itself asked for usage in its Chat/Completions stream; if it did not,
    add the ``stream_options`` rewrite that makes the server send it (``settings.inject_usage``),
    so the stream settles from the provider's own count and the usage chunk is hidden again."""
    if not (stream and api in ("chat", "completions")):
        return False
    opts = body.get("stream_options")
    wants = isinstance(opts, dict) and opts.get("include_usage") is True
    if not wants and settings.inject_usage:
        rewrites["stream_options"] = {**(opts if isinstance(opts, dict) else {}), "include_usage": True}
    return wants


#: the fields an API's output cap may be in (the first: where pouch injects one)
_CAP_FIELDS = {"chat": ("max_completion_tokens", "max_tokens"), "responses": ("max_output_tokens",),
               "completions": ("max_tokens",)}


def draft_plan(
    method: str,
    path: str,
    body: dict[str, Any],
    *,
    table: PriceTable,
    settings: PlanSettings = PlanSettings(),
) -> DraftPlan:
    """Read, validate and estimate a billed request (raises :class:`PlanError`); see :class:`DraftPlan`."""
    path = canonical_path(path)
    api = BILLED[path]
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise PlanError("pouch: the request has no `model`; nothing was sent", code="pouch_missing_model")
    try:
        price = table.resolve_bound(model)
    except UnknownModel as exc:
        raise PlanError(f"pouch: {str(exc).strip(chr(34) + chr(39))}; nothing was sent", code="pouch_unknown_model") from None
    try:
        tier = normalise_tier(body.get("service_tier"))
    except ValueError as exc:
        raise PlanError(f"pouch: {exc}") from None
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        # a lenient server may stream on any truthy value: pouch must know which it will be
        raise PlanError(f"pouch: `stream` must be true or false, not {stream!r}; nothing was sent")
    stream = stream is True
    notes: list[str] = []

    # Exact (tiktoken) only when its encoding is loaded already or the caller asks: loading one
    # costs ~40 MiB of resident memory and ~0.25 s. Else the same formula over UTF-8 bytes, which
    # bounds it from above (a token is at least one byte): the reservation is never smaller than
    # the exact one, and the gate asks for the exact count when the bound would not fit.
    exact = settings.exact_input or tokens.loaded_for(model)
    estimate = estimate_input_tokens(body, endpoint=path, model=model, exact=exact)
    reserved_input = math.ceil(estimate * (1 + settings.input_margin))
    if price.max_input_tokens is not None:
        # the provider cannot bill more input than the context window (longer prompts are rejected,
        # or cut to it with `truncation: auto`) for one model turn
        reserved_input = min(reserved_input, price.max_input_tokens)
    tools = _server_tools(api, body, price, table, model)
    hidden = tokens.hidden_inputs(body, api, model)
    if tools.hidden_input:
        hidden.append("tool results" if api == "chat" else "mcp tool list")
    if hidden or tools.server:
        if price.max_input_tokens is None:
            raise _unbounded(f"cannot bound the input of this request for {model}: its context window is "
                             f"unknown and the body does not show all of it ({', '.join(hidden) or 'tool turns'})")
    if hidden:
        # the server adds input the body does not show: bound by the context window
        reserved_input = max(reserved_input, price.max_input_tokens)  # type: ignore[type-var]
        notes.append(f"input bounded by the context window ({', '.join(hidden)})")

    choices = 1
    if api == "chat":
        choices = _int_field(body, "n", 1) or 1
    elif api == "completions":
        choices = max(_int_field(body, "n", 1) or 1, _int_field(body, "best_of", 1) or 1)

    tool_calls: int | None = None
    if tools.server:
        tool_calls = _int_field(body, "max_tool_calls", 0)
        if tool_calls is None and not settings.inject_max_tokens:
            raise _unbounded("the request uses server-side tools without `max_tool_calls`, so the number of "
                             "model turns and tool fees cannot be bounded; set max_tool_calls")

    rewrites: dict[str, Any] = {}
    cap: int | None
    cap_field: str | None = None
    if api == "embeddings":
        cap = 0
    else:
        fields = _CAP_FIELDS[api]
        caps = [c for c in (_int_field(body, f, 0) for f in fields) if c is not None]
        if caps:
            cap = min(caps)
        elif api == "completions":
            cap = COMPLETIONS_DEFAULT_MAX_TOKENS
        elif not settings.inject_max_tokens:
            if price.max_output_tokens is None:
                raise PlanError(
                    f"pouch: the request sets no output cap and {model}'s max output is unknown, so its "
                    "cost cannot be bounded; set max_completion_tokens/max_output_tokens", code="pouch_unbounded")
            cap = price.max_output_tokens
        else:
            cap, cap_field = None, fields[0]

    client_wants_usage = ask_for_stream_usage(api, body, stream, settings, rewrites)

    # positional, in DraftPlan's field order: a call with 20 keywords costs ~10k instructions more
    # (CPython matches each keyword to a parameter name), on the event loop for every billed call
    return DraftPlan(
        api, path, model, price, stream, estimate,  # api path model price stream input_tokens
        reserved_input, choices, tier, client_wants_usage,  # reserved_input_tokens choices tier client_wants_usage
        cap, cap_field, rewrites, notes, tuple(hidden),  # cap cap_field rewrites notes input_hidden
        tools.server, tool_calls, tools.per_call_fee, tools.fees,  # server_tools tool_calls per_call_fee fees
        tools.fixed_fee, 0, None, "tiktoken" if exact else "utf8_bytes",  # fixed_fee extra_output fit_cap input_method
    )


def _output_cost(price: ModelPrice, input_tokens: int, tier: str | None, output_tokens: int) -> Decimal:
    """``output_tokens`` at the dearest output rate the call may be billed at."""
    if not output_tokens:
        return ZERO
    return worst_token_cost(price, tier, input_tokens, output_tokens) - worst_token_cost(price, tier, input_tokens, 0)


def apply_rewrites(body: dict[str, Any], rewrites: Mapping[str, Any]) -> None:
    """Set each rewrite in ``body``; a dotted key names a nested member (``generationConfig.maxOutputTokens``),
    creating the objects on the way."""
    for key, value in rewrites.items():
        *outer, last = key.split(".")
        target = body
        for name in outer:
            inner = target.get(name)
            if not isinstance(inner, dict):
                inner = target[name] = {}
            target = inner
        target[last] = value


#: one encoder for the inserted members (``json.dumps`` with options builds one per call)
_COMPACT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
#: ``_COMPACT.encode`` for an object, without building a C encoder per call (``JSONEncoder.encode``
#: does: ~17k instructions for a stream's ``stream_options``); no circular check, the rewrites
#: being pouch's own values. The C encoder keeps no state between calls.
_C_MEMBERS = (None if json.encoder.c_make_encoder is None else json.encoder.c_make_encoder(
    None, _COMPACT.default, json.encoder.encode_basestring, None, ":", ",", False, False, True))


def _encode_members(obj: dict[str, Any]) -> str:
    if _C_MEMBERS is None:  # pragma: no cover - a Python without the json C accelerator
        return _COMPACT.encode(obj)
    return "".join(_C_MEMBERS(obj, 0))


#: JSON's insignificant whitespace (RFC 8259), which may come before a body's opening brace
_JSON_WS = b" \t\n\r"


def rewrite_bytes(raw: bytes, body: Mapping[str, Any], rewrites: Mapping[str, Any]) -> bytes | None:
    """``raw`` (the request body ``body`` was parsed from) with ``rewrites`` applied by inserting
    them as new members right after the opening brace: the client's own bytes follow unchanged
    (its numbers, escapes and spacing as sent; no re-serialisation of the whole body, which costs
    time proportional to it). None when an insertion cannot express the rewrites: a member the
    body already has (its value is replaced) or a nested one (``a.b``); then re-serialise the
    parsed body (:func:`apply_rewrites`). ``body`` passed ``parse_body``, so ``raw`` is one JSON
    object without repeated keys, and inserting a member it lacks makes exactly the object
    :func:`apply_rewrites` would."""
    if not rewrites:
        return raw
    if any("." in key or key in body for key in rewrites):
        return None
    start = 0
    while start < len(raw) and raw[start] in _JSON_WS:
        start += 1
    if raw[start:start + 1] != b"{":
        return None
    members = _encode_members(dict(rewrites)).encode()[1:-1]
    # one copy of the client's bytes (a memoryview slice copies nothing)
    return b"".join((raw[:start + 1], members, b"," if body else b"", memoryview(raw)[start + 1:]))


def _inject_cap(price: ModelPrice, input_tokens: int, choices: int, tier: str | None, remaining: Decimal,
                fees: Decimal = ZERO) -> int:
    """The output cap pouch adds: min(model max output, what ``remaining`` (the budget left after
    ``fees``) can pay at the worst-case prices)."""
    base = worst_token_cost(price, tier, input_tokens, 0)
    rate = max(price.rates_for(input_tokens, t).output for t in {tier, None}) / PER_MILLION
    affordable = int((remaining - base) / (rate * choices)) if rate > 0 else 0
    if price.max_output_tokens:
        affordable = min(affordable, price.max_output_tokens)
    # the worst case is at most base + n x the dearest rate; step down on any rounding surprise
    while affordable >= 1 and worst_token_cost(price, tier, input_tokens, affordable * choices) > remaining:
        affordable -= 1
    if affordable < 1:
        raise BudgetTooSmall(worst_token_cost(price, tier, input_tokens, choices) + fees, remaining + fees)
    return affordable


class BudgetTooSmall(Exception):
    """Even one output token cannot be paid for: the caller answers 402."""

    def __init__(self, needed: Decimal, remaining: Decimal) -> None:
        super().__init__(f"needs at least {format_usd(needed)}, {format_usd(remaining)} remains")
        self.needed = needed
        self.remaining = remaining
