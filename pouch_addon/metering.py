"""``StreamMeter``: meter one streamed LLM response while forwarding it. Pure: no I/O, no mitmproxy.

The stream callable hands every upstream chunk to :meth:`StreamMeter.feed` and forwards what it
returns; :meth:`StreamMeter.finish` ends the stream. The meter

- frames the SSE events (:mod:`pouch_addon.sse`) and JSON-decodes each ``data`` once;
- counts the output tokens of the streamed text incrementally (one ``StreamTokenCounter`` per
  text stream: per choice and field for Chat / Completions, per output item and part for
  Responses, so interleaved ``n > 1`` choices do not merge words);
- keeps the provider's ``usage`` when it arrives (authoritative) and the reported model,
  ``service_tier``, end of stream and provider errors;
- records the server-side tool calls a Responses stream reports (``response.output_item.*`` and
  the terminal event's ``output``), whose fees (``fees``, USD per call by item type, plus
  ``fixed_fee``) are part of the running cost and so of the cut-off;
- drops the usage-only chunk (``choices: []``) when pouch injected ``include_usage`` for a client
  that did not ask for it, after taking its usage, and takes the ``"usage": null`` that
  ``include_usage`` adds to every other chunk back out (byte surgery, the rest of the chunk
  unchanged: see :func:`_strip_null_usage`);
- cuts the stream off when the running cost reaches the reservation before the final usage
  arrived: the forwarded events, then an error event the openai SDKs raise as ``APIError``, then
  nothing (``cut`` is set; the caller closes the upstream connection and settles).

Per chunk the work is O(len(chunk)): no accumulated text is re-tokenised, and the cut-off test
is an integer comparison against a token threshold computed once (exactly equivalent to
``running_cost >= reservation``). ``feed`` runs on mitmproxy's event loop for every chunk, so the
per-event path is kept lean (``bench/meter_bench.py``: close to the bare cost of splitting the
chunk and ``json.loads`` of each payload): the SSE parser's fast path for the usual framing, the
C scanner behind ``json.loads`` called directly, the ``[DONE]`` test only when the data is not a
JSON object, exact-type tests (the values come from json), and the rare branches (tool calls,
tier changes, usage, errors) out of line.

Compressed streams: a provider may compress its SSE although pouch asked for ``identity``. With
``content_encoding`` set, ``feed`` decodes each chunk first (:mod:`pouch_addon.decoding`: gzip,
deflate, zstd, in pieces of bounded size, stopping at a cut-off) and meters the decoded events
exactly as a plain stream's. What it returns is the *decoded* events: the caller forwards them
without ``content-encoding``. We chose that over forwarding the provider's compressed bytes
unchanged because pouch must be able to drop the injected usage chunk, take out ``"usage":
null`` and append its own error event at a cut-off, none of which can be spliced into a
compressed stream; and ``identity`` is acceptable to every client, whatever it asked for
(pouch itself asked the provider for it). An encoding that cannot be
decoded with bounded memory (``br``, unknown names, layered encodings) or corrupt data fails
closed: nothing of it is forwarded, the error event (``undecodable_stream``) is sent at once,
``cut`` is set and ``undecodable`` says why; the caller bills the whole reservation.

Forwarded bytes: ``feed`` / ``finish`` return ``[]`` (send nothing now) or ONE non-empty
``bytes`` (every forwarded event of the chunk joined, so mitmproxy writes one HTTP chunk). They
never return ``b""``, which would end an HTTP/1.1 chunked body.
"""

from __future__ import annotations

import dataclasses
import decimal
import json
from decimal import Decimal
from typing import Any, Literal

from .money import format_usd, usd_str
from .pricing import _CTX as _pricing_ctx
from .pricing import FREE_CALLS, ModelPrice, Usage, cost, count_tool_calls, normalise_tier, tool_fee_cost
from .decoding import UNDECODABLE, DecodingMeter
from .sse import MAX_EVENT_BYTES, SSEError, SSEEvent, SSEParser
from . import tokens
from .tokens import StreamTokenCounter

__all__ = ["StreamMeter", "BUDGET_EXCEEDED", "UNDECODABLE", "Api"]

Api = Literal["chat", "responses", "completions"]

#: ``type`` and ``code`` of the error event pouch sends when it cuts a stream off
BUDGET_EXCEEDED = "budget_exceeded"
#: ... and when the stream is compressed in a way pouch cannot decode (``cut_reason`` too)

#: Responses events whose ``delta`` is model output (billed as output tokens)
_RESPONSES_TEXT_DELTAS = frozenset({
    "response.output_text.delta",
    "response.refusal.delta",
    "response.function_call_arguments.delta",
    "response.reasoning_text.delta",
    "response.reasoning_summary_text.delta",
    "response.custom_tool_call_input.delta",
    "response.code_interpreter_call_code.delta",
    "response.mcp_call_arguments.delta",
})
#: Chat ``delta`` fields holding model output text: content, refusal, and the reasoning text of
#: OpenAI-compatible providers (DeepSeek ``reasoning_content``, OpenRouter / vLLM ``reasoning``)
_CHAT_TEXT_FIELDS = frozenset({"content", "refusal", "reasoning_content", "reasoning"})
_RESPONSES_TERMINAL = frozenset({"response.completed", "response.incomplete", "response.failed"})
_RESPONSES_ITEM = frozenset({"response.output_item.added", "response.output_item.done"})

_CTX = decimal.Context(prec=50, rounding=decimal.ROUND_CEILING)
_MILLION = Decimal(1_000_000)
#: the context ``pricing.cost`` computes in
_PRICE_CTX = _pricing_ctx


#: the scanner ``json.loads`` runs (a decoder with the same default settings), called directly
_scan_json = json.JSONDecoder().scan_once


def _json_object(data: str) -> dict[str, Any] | None:
    """``json.loads(data)`` when that is a JSON object, else None (not JSON, or another value).

    The common case calls the C scanner behind ``json.loads`` directly, without the two
    whitespace regex matches around it; whenever it does not consume exactly the whole string
    (leading or trailing whitespace, extra data, an error) ``json.loads`` decides."""
    try:
        obj, end = _scan_json(data, 0)
    except (StopIteration, ValueError):
        end = -1
    if end != len(data):
        try:
            obj = json.loads(data)
        except ValueError:
            return None
    return obj if obj.__class__ is dict else None


def _never_below(meter: Any, snap: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's output and running cost never fall below the last one's: a stream first
    checkpointed on its byte bound, then counted exactly (the encoding loaded meanwhile), keeps
    showing the larger figure until its exact count passes it (still an upper bound)."""
    last = getattr(meter, "_last_checkpoint", None)
    if last is not None and "final_cost" not in snap:
        if snap["output_tokens"] < last[0]:
            snap["output_tokens"] = last[0]
        if Decimal(snap["running_cost"]) < last[1]:
            snap["running_cost"] = usd_str(last[1])
    meter._last_checkpoint = (snap["output_tokens"], Decimal(snap["running_cost"]))
    return snap


def output_threshold(price: ModelPrice, input_usage: Usage, tier: str | None, reservation: Decimal,
                     fees: Decimal = Decimal(0)) -> int | None:
    """The least output-token count n with cost(input_usage + n output tokens) + fees >=
    reservation (exactly, in ``tier``); None when output is free and the input alone stays below
    it. Computed once per change of the input or tier, so the per-chunk cut-off test is an integer
    comparison (every stream meter uses it)."""
    # (a usage without output is its own input part: no copy; output 0 means reasoning 0 too)
    base = cost(price, input_usage if input_usage.output_tokens == 0
                else dataclasses.replace(input_usage, output_tokens=0), tier) + fees
    if base >= reservation:
        return 0
    rate = price.rates_for(input_usage.input_tokens, tier).output
    if rate <= 0:
        return None

    def at(n: int) -> Decimal:
        # ``pricing.cost`` is a sum of exact products divided by a power of ten: adding the output
        # term to the cost without output is the same Decimal (and no Usage is built per step)
        with decimal.localcontext(_PRICE_CTX):
            return base + Decimal(n) * rate / _MILLION

    with decimal.localcontext(_CTX):
        n = int(((reservation - base) * _MILLION / rate).to_integral_value(decimal.ROUND_CEILING))
    while n > 0 and at(n - 1) >= reservation:
        n -= 1
    while at(n) < reservation:
        n += 1
    return n


def _key_part(value: Any) -> str | int | None:
    """A JSON value usable in a dict key (ints and strings only; anything else -> None)."""
    return value if isinstance(value, (str, int)) and not isinstance(value, bool) else None


def _strip_null_usage(raw: bytes, obj: dict[str, Any]) -> bytes:
    """The event ``raw`` without the top-level ``"usage": null`` of its chunk ``obj``.

    OpenAI (and the fake) write it near the end, after ``choices``, as ``,"usage":null`` (or
    ``, "usage": null``); that member is cut out and every other byte kept. A quote inside a
    JSON string is escaped, so the match is a real member, and it is the top-level one when
    what follows it closes one object only (one ``}``, no ``]``: a nested member would be
    followed by at least two closers). Any other layout of a one-line data event is
    re-serialised compactly without the key; an event of several lines (rare) is forwarded as
    it came. Per chunk: a search from the end and a copy, well under a microsecond."""
    cut = _cut_null_usage(raw)
    if cut is not None:
        return cut
    line = raw.rstrip(b"\r\n")
    if line.startswith(b"data:") and b"\n" not in line and b"\r" not in line:
        data = json.dumps({k: v for k, v in obj.items() if k != "usage"}, ensure_ascii=False, separators=(",", ":"))
        return b"data: " + data.encode("utf-8", "surrogatepass") + raw[len(line):]
    return raw


def _cut_null_usage(raw: bytes) -> bytes | None:
    """``raw`` with its last ``,"usage":null`` member cut out when that is the top-level one (see
    :func:`_strip_null_usage`), else None."""
    span = _null_usage_span(raw)
    if span is None:
        return None
    return raw[:span[0]] + raw[span[1]:]


def _null_usage_span(raw: bytes) -> tuple[int, int] | None:
    """Where :func:`_cut_null_usage` cuts ``raw`` (start, end), or None."""
    i = raw.rfind(b',"usage":null')
    n = 13
    if i < 0:
        i = raw.rfind(b', "usage": null')
        n = 15
    if i >= 0:
        end = i + n
        if raw.count(b"}", end) == 1 and raw.find(b"]", end) < 0:
            return i, end
    return None


@dataclasses.dataclass(frozen=True, slots=True)
class _ContentTemplate:
    """The bytes around the text of a plain Chat content chunk, learnt from one that was parsed.

    Within one stream OpenAI repeats every byte of a content chunk but its text and its
    ``obfuscation`` padding (id, created, model, tier, fingerprint, index, the nulls): ``data`` =
    ``prefix`` + text + ``mid`` + padding + ``end`` (or ``prefix`` + text + ``end`` without
    padding). An event of exactly that shape whose text and padding need no JSON unescaping (no
    quote, backslash or control character) means the same as the learnt chunk with that text, so
    :meth:`StreamMeter._templated` takes its text without running the JSON scanner (the larger
    part of a chunk's cost), and ``feed`` frames a chunk that is exactly one such event without
    the SSE parser. Anything else is parsed as before."""

    prefix: str
    mid: str | None        # from the quote closing the text to the padding's opening quote
    end: str
    min_len: int           # len(prefix) + len(mid) + len(end)
    key: tuple             # the pending-text key (index, "content")
    model: str | None
    tier: str | None
    hide_null_usage: bool  # _process cuts the chunk's "usage": null out
    # where _cut_null_usage cuts a whole chunk ``data: `` + data + ``\n\n`` of this shape: the
    # member's start and end, in bytes before the chunk's end, not counting the padding when the
    # member lies before it (``cut_before_pad``); None: found per chunk
    cut_back: tuple[int, int] | None = None
    cut_before_pad: bool = False
    # the same shape as a whole chunk, in bytes (``feed``'s path, :meth:`StreamMeter._whole`): ``head`` +
    # text + (``bmid`` + padding) + ``tail``; ``fixed`` their length, ``max_len`` the parser's event limit
    head: bytes = b""
    tail: bytes = b""
    bmid: bytes | None = None
    fixed: int = 0
    max_len: int = 0
    # hide_null_usage: the ``tail`` (member after the text and padding) or the ``bmid`` (member
    # between them) with the member cut out; both None: the whole-chunk path leaves such a chunk
    # to the parser
    tail_cut: bytes | None = None
    mid_cut: bytes | None = None


def _plain(text: str) -> bool:
    """A JSON string body that is its own value: no quote, backslash or control character."""
    return '"' not in text and "\\" not in text and text.isprintable()


def _member_value(data: str, name: str, value: str) -> int:
    """Where the string value ``value`` of the only member ``name`` begins in the JSON ``data``
    (written ``"name":"value"`` as OpenAI does, or ``"name": "value"`` as ``json.dumps`` does),
    else -1. ``"name":"`` cannot lie inside a JSON string (a quote there is escaped, so no quote
    follows a letter), so a match is the member; the caller checks the split by parsing."""
    for key in (f'"{name}":"', f'"{name}": "'):
        at = data.find(key + value + '"')
        if at >= 0:
            start = at + len(key)
            if data.find(key, start) >= 0 or data.find(f'"{name}":', 0, at) >= 0:
                return -1
            return start
    return -1


#: ``"`` and ``\\`` as the ints ``x in some_bytes`` tests: ``b"x" in some_bytes`` first tries its
#: argument as an int and raises and clears a TypeError (~0.2 us, per chunk)
_QUOTE, _BACKSLASH = ord('"'), ord("\\")

#: a chunk that is exactly the end of an OpenAI stream (``feed`` needs no parser for it)
_DONE_CHUNK = b"data: [DONE]\n\n"

#: the keys a plain content chunk's choice may have (all null but index and delta)
_PLAIN_CHOICE_KEYS = frozenset({"index", "delta", "logprobs", "finish_reason"})
#: how many qualifying chunks a stream may try to learn a template from (each try parses twice)
_TEMPLATE_TRIES = 3


class StreamMeter(DecodingMeter):
    """Meters one streamed response; see the module docstring."""

    def __init__(self, api: Api, price: ModelPrice, model: str, input_tokens: int,
                 reservation: Decimal, hide_usage_chunk: bool, tier: str | None = None, *,
                 max_event_bytes: int = MAX_EVENT_BYTES, fees: dict[str, Decimal] | None = None,
                 fixed_fee: Decimal = Decimal(0), content_encoding: str | None = None) -> None:
        if api not in ("chat", "responses", "completions"):
            raise ValueError(f"StreamMeter: unknown api {api!r}")
        if isinstance(input_tokens, bool) or not isinstance(input_tokens, int) or input_tokens < 0:
            raise ValueError(f"StreamMeter: input_tokens must be a non-negative int, got {input_tokens!r}")
        self.api: Api = api
        self._responses = api == "responses"
        self._completions = api == "completions"
        self.price = price
        self.model = model
        self.input_tokens = input_tokens
        self.reservation = Decimal(reservation)
        self.hide_usage_chunk = hide_usage_chunk
        self.tier = normalise_tier(tier)  # the requested tier (raises for an unknown one)

        # public state
        self.cut = False                       # the meter cut the stream off (or the caller did)
        self.cut_reason: str | None = None     # "budget_exceeded" | "stream_error"
        self.done = False                      # saw [DONE] or a terminal Responses event
        self.events = 0                        # SSE events with data seen (incl. dropped ones)
        self.parse_errors = 0                  # data that was not JSON / usage that was malformed
        self.model_reported: str | None = None
        self.service_tier: str | None = None   # as reported by the provider (not normalised)
        self.provider_error: dict[str, Any] | None = None  # first error the provider streamed
        self.usage_hidden = False              # the usage-only chunk was dropped
        self._null_usage: dict[str, Any] | None = None  # this chunk's "usage": null is to be cut out
        self._cut_raw: bytes | None = None     # ... already cut out (a templated content chunk)

        self._parser = SSEParser(max_event_bytes)
        self._counters: dict[tuple, StreamTokenCounter] = {}
        self._output = 0                       # sum of the counters
        # text not yet tokenised, per stream; a token is at least one byte, so
        # _output + _pending_bytes bounds the true count from above and tiktoken runs only
        # when that bound reaches the cut threshold or someone reads the count
        self._pending: dict[tuple, list[str]] = {}
        self._pending_bytes = 0
        self._usage: Usage | None = None       # the provider's usage (latest seen)
        self._usage_final = False              # ... and it is the final one
        self._seq: int | None = None           # last Responses sequence_number
        self._fees = dict(fees or {})          # USD per server-side tool call, by item type
        self._fixed_fee = Decimal(fixed_fee)
        self._fee_cost = self._fixed_fee       # fees of the calls seen so far (+ the fixed fee)
        self._items: dict[Any, dict[str, Any]] = {}  # billable tool-call items seen, by id
        self.unpriced_calls = False            # a tool call with no fee was seen
        self._pricing_tier = self.tier
        self._set_cut()
        # Chat only: the shape of a plain content chunk, once one was parsed (see _ContentTemplate)
        self._tpl: _ContentTemplate | None = None
        self._tpl_tries = 0 if api == "chat" else _TEMPLATE_TRIES
        self._boundary = False  # the parser holds nothing (``at_boundary``), as of its last feed

        # a compressed stream (see the module docstring): decoded before it is framed
        self.undecodable: str | None = None    # why the stream cannot be decoded (fail closed)
        self._setup_decoding(content_encoding)

    # -- the stream ------------------------------------------------------------------------------
    def feed(self, chunk: bytes) -> list[bytes]:
        """Meter a chunk; return what to forward now (complete events only)."""
        if self.cut or not chunk:
            return []
        tpl = self._tpl
        if tpl is not None and self._boundary and chunk.__class__ is bytes and len(chunk) <= tpl.max_len:
            # the usual chunk: exactly one templated content event (its data, one line, has no line
            # end: the template's bytes have none and a plain text or padding none either)
            fwd = self._whole(tpl, chunk)
            if fwd is not None:
                self.events += 1
                if (not self.done and not self._usage_final
                        and (self._usage is not None
                             or (self._cut_at is not None and self._output + self._pending_bytes >= self._cut_at))
                        and self._over()):
                    return [fwd + self._budget_cut()]
                return [fwd]
        if chunk == _DONE_CHUNK and self._boundary:  # the usual last chunk: what parsing it does
            self.events += 1
            self.done = True
            return [chunk]
        try:
            events = self._parser.feed(chunk)
            self._boundary = self._parser.at_boundary()
        except SSEError as exc:
            out = self._process(exc.events, may_cut=True)
            if not self.cut:
                out.append(self._cut_event("stream_error", f"pouch: {exc}; stream cut off"))
                self.cut = True
            return self._join(out)
        out = self._process(events, may_cut=True)
        if len(out) == 1 and out[0]:
            return out  # one event (or an error event): nothing to join
        return self._join(out)

    def finish(self) -> list[bytes]:
        """End of stream: forward the held tail (a final event without its blank line too).

        The provider has finished generating, so nothing is cut off here (except a stream that
        cannot be decoded, which no byte of has been forwarded)."""
        if self.cut:
            return []
        if self.undecodable is not None:
            return self._fail_undecodable()
        try:
            events, leftover = self._parser.flush()
        except SSEError as exc:
            events, leftover = exc.events, b""
            self.parse_errors += 1
        out = self._process(events, may_cut=False)
        if leftover:
            out.append(leftover)
        return self._join(out)

    # -- results ---------------------------------------------------------------------------------
    @property
    def output_tokens_counted(self) -> int:
        self._flush()
        return self._output

    @property
    def usage_source(self) -> Literal["provider", "counted"]:
        return "provider" if self._usage is not None else "counted"

    @property
    def usage_final(self) -> bool:
        """The provider's final usage has arrived (no cut-off after that)."""
        return self._usage_final

    @property
    def tool_calls(self) -> dict[str, int]:
        """The billable server-side tool calls seen (``pricing.count_tool_calls``)."""
        return count_tool_calls(list(self._items.values()))

    def final_usage(self) -> Usage:
        """The provider's usage when seen (authoritative), else estimated input + counted output."""
        if self._usage is not None:
            return self._usage
        return Usage(input_tokens=self.input_tokens, output_tokens=self.output_tokens_counted)

    @property
    def running_cost(self) -> Decimal:
        """Exact USD cost so far: of the provider's usage once known, else of the estimated input
        plus the output counted so far (priced in the reported service tier once known), plus
        the fees of the tool calls seen."""
        return cost(self.price, self.final_usage(), self._pricing_tier) + self._fee_cost

    def _compact_pending(self) -> None:
        """Join each stream's uncounted pieces into one string (a checkpoint leaves them
        uncounted): a long stream keeps its text, not one object per event."""
        for texts in self._pending.values():
            if len(texts) > 1:
                texts[:] = ["".join(texts)]

    def checkpoint(self) -> dict[str, Any]:
        return _never_below(self, self._checkpoint())

    def _checkpoint(self) -> dict[str, Any]:
        """A small snapshot for the ledger (O(1)). ``final_cost`` once the final usage is known.
        While the model's encoding is not loaded, text not counted yet counts as its UTF-8 bytes
        (``output_bound``: an upper bound; loading the encoding here would stall the event loop)."""
        if self._pending and not tokens.stream_ready(self.model):
            output = self._output + self._pending_bytes
            self._compact_pending()
            if self._usage is not None:  # the provider's (no count needed)
                running = self.running_cost
            else:
                running = min(self.reservation, cost(self.price, Usage(input_tokens=self.input_tokens, output_tokens=output),
                                                     self._pricing_tier) + self._fee_cost)
            bounded: dict[str, Any] = {"output_tokens": output, "running_cost": usd_str(running), "events": self.events,
                                       "usage_source": self.usage_source, "output_bound": "utf8_bytes"}
            if self._usage_final and not self.unpriced_calls:
                bounded["final_cost"] = bounded["running_cost"]
            return bounded
        snap: dict[str, Any] = {
            "output_tokens": self.output_tokens_counted,
            "running_cost": usd_str(self.running_cost),
            "events": self.events,
            "usage_source": self.usage_source,
        }
        if self._usage_final and not self.unpriced_calls:  # else settlement bills the reservation
            snap["final_cost"] = snap["running_cost"]
        return snap

    # -- per event -------------------------------------------------------------------------------
    # The hot path: this runs for every event of every metered stream on mitmproxy's event loop.
    # Values come from json, so a JSON object is exactly a dict, a string exactly a str, etc.:
    # ``x.__class__ is str`` is ``isinstance(x, str)`` here, only cheaper.
    def _process(self, events: list[SSEEvent], *, may_cut: bool) -> list[bytes]:
        """Update the state from each event; return the raw bytes to forward (and the cut-off)."""
        out: list[bytes] = []
        for ev in events:
            if not ev.has_data or self._on_event(ev):  # no data: comments, keep-alives, blank lines
                if self._cut_raw is not None:  # a templated content chunk without its "usage": null
                    out.append(self._cut_raw)
                    self._cut_raw = None
                elif self._null_usage is None:
                    out.append(ev.raw)
                else:
                    out.append(_strip_null_usage(ev.raw, self._null_usage))
                    self._null_usage = None
            # _over, with its cheap part inline: most events cannot reach the reservation
            if (may_cut and not self.done and not self._usage_final
                    and (self._usage is not None
                         or (self._cut_at is not None
                             and self._output + self._pending_bytes >= self._cut_at))
                    and self._over()):
                out.append(self._budget_cut())
                break
        return out

    def _budget_cut(self) -> bytes:
        """The error event of a cut-off at the reservation (``cut`` is set)."""
        msg = (f"pouch: budget reservation of {format_usd(self.reservation)} reached after "
               f"{self._output} output tokens; stream cut off")
        self.cut = True
        return self._cut_event(BUDGET_EXCEEDED, msg)

    def _on_event(self, ev: SSEEvent) -> bool:
        """Update the state from one event with data; True to forward it."""
        self.events += 1
        data = ev.data
        tpl = self._tpl
        if tpl is not None and ev.event is None:
            fwd = self._templated(tpl, data, ev.raw)
            if fwd is not None:
                self._cut_raw = fwd if fwd is not ev.raw else None
                return True
        try:  # _json_object, inline
            obj, end = _scan_json(data, 0)
        except (StopIteration, ValueError):
            end = -1
        if end != len(data):
            # "[DONE]" is never a JSON object: test for it here, not for every event
            obj = None if data.startswith("[DONE]") else _json_object(data)
        elif obj.__class__ is not dict:
            obj = None
        if obj is None:
            if data.startswith("[DONE]"):
                self.done = True
            else:
                self.parse_errors += 1  # not JSON, or not an object
            return True
        typ = obj.get("type")
        if typ == "error" or ev.event == "error":
            err = obj.get("error")
            self._record_error(err if err.__class__ is dict else obj)
            return True
        err = obj.get("error")
        if err:
            self._record_error(err if err.__class__ is dict else {"message": str(err)})
            return True
        if self._responses:
            self._responses_event(obj, typ if typ.__class__ is str else (ev.event or ""))
            return True
        keep = self._chat_chunk(obj)
        if self._tpl_tries < _TEMPLATE_TRIES and ev.event is None:
            self._learn_template(ev, obj)
        return keep

    def _templated(self, tpl: _ContentTemplate, data: str, raw: bytes, whole: bool = False) -> bytes | None:
        """When ``data`` is the learnt content chunk with another plain text (and padding), do
        what :meth:`_chat_chunk` does for it and return the bytes to forward (``raw``, or ``raw``
        without its ``"usage": null``); else None, and nothing changed (see
        :class:`_ContentTemplate`). ``whole``: ``raw`` is ``data: `` + data + ``\n\n``. The
        caller counts the event."""
        if len(data) < tpl.min_len or not data.startswith(tpl.prefix) or not data.endswith(tpl.end):
            return None
        start, stop = len(tpl.prefix), len(data) - len(tpl.end)
        if tpl.mid is None:
            text = data[start:stop]
            if not _plain(text):
                return None
            pad = ""
        else:  # the text ends at the first quote; the padding lies between mid and end
            at = data.find('"', start, stop)
            if at < 0 or not data.startswith(tpl.mid, at) or at + len(tpl.mid) > stop:
                return None
            text = data[start:at]
            pad = data[at + len(tpl.mid):stop]
            if "\\" in text or not text.isprintable() or not _plain(pad):
                return None
        fwd = raw
        if tpl.hide_null_usage:
            back = tpl.cut_back
            if whole and back is not None and (not tpl.cut_before_pad or (
                    pad.isascii() and "}" not in pad and "]" not in pad)):
                # the member's place is fixed from the chunk's end (plus the padding before it):
                # what _cut_null_usage finds, without searching (the text and padding hold no quote)
                n = len(raw) - back[0] - (len(pad) if tpl.cut_before_pad else 0)
                fwd = raw[:n] + raw[n + back[0] - back[1]:]
            else:
                fwd = _cut_null_usage(raw)
                if fwd is None:
                    return None
        self._take(tpl, text, len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass")))
        return fwd

    def _take(self, tpl: _ContentTemplate, text: str, nbytes: int) -> None:
        """What a templated content chunk says (:meth:`_templated`, :meth:`_whole`): the template's
        model and tier, and its text (``nbytes`` long in UTF-8) pending for the count."""
        if tpl.model is not None:
            self.model_reported = tpl.model
        if tpl.tier is not None and tpl.tier != self.service_tier:
            self._set_tier(tpl.tier)
        if text:
            texts = self._pending.get(tpl.key)
            if texts is None:
                self._pending[tpl.key] = [text]
            else:
                texts.append(text)
            self._pending_bytes += nbytes

    def _whole(self, tpl: _ContentTemplate, chunk: bytes) -> bytes | None:
        """:meth:`_templated` for a chunk that is exactly one event (``feed``'s usual chunk), on its
        bytes: the template's bytes around the text, and the text and padding checked where they lie,
        without decoding the chunk. The same bytes and state as :meth:`_templated` (and so as
        parsing); None, nothing changed, for anything else (an unusual padding or ``"usage": null``
        included: :meth:`_templated` decides those)."""
        if len(chunk) < tpl.fixed or not chunk.startswith(tpl.head) or not chunk.endswith(tpl.tail):
            return None
        start = len(tpl.head)
        stop = len(chunk) - len(tpl.tail)
        bmid = tpl.bmid
        if bmid is None:
            raw = chunk[start:stop]
            if _QUOTE in raw or _BACKSLASH in raw:
                return None
            if tpl.tail_cut is not None:
                fwd = chunk[:stop] + tpl.tail_cut
            elif tpl.hide_null_usage:
                return None
            else:
                fwd = chunk
        else:  # the text ends at the first quote; the padding (alphanumeric, or left to _templated) follows mid
            at = chunk.find(b'"', start, stop)
            if at < 0 or not chunk.startswith(bmid, at):
                return None
            pad = at + len(bmid)
            if pad > stop or (pad < stop and not chunk[pad:stop].isalnum()):
                return None
            raw = chunk[start:at]
            if _BACKSLASH in raw:
                return None
            if tpl.tail_cut is not None:
                fwd = chunk[:stop] + tpl.tail_cut
            elif tpl.mid_cut is not None:
                fwd = chunk[:at] + tpl.mid_cut + chunk[pad:]
            elif tpl.hide_null_usage:
                return None
            else:
                fwd = chunk
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if not text.isprintable():
            return None
        self._take(tpl, text, len(raw))
        return fwd

    def _learn_template(self, ev: SSEEvent, obj: dict[str, Any]) -> None:
        """Remember the shape of a plain Chat content chunk (see :class:`_ContentTemplate`).

        A chunk qualifies when it holds nothing the meter acts on but one choice's text: one
        choice, whose delta is only a non-empty ``content`` that needs no unescaping, no usage
        but null, no error, no ``type``. The text's place in ``data`` is the only ``"content":"``
        (a quote inside a JSON string is escaped, so that is the key), the padding's the only
        ``"obfuscation":"``; the split is checked by parsing ``data`` with another text (and
        padding) in those places: it must give the same chunk with them."""
        choices = obj.get("choices")
        if choices.__class__ is not list or len(choices) != 1:
            return
        choice = choices[0]
        if choice.__class__ is not dict or not _PLAIN_CHOICE_KEYS.issuperset(choice):
            return
        delta = choice.get("delta")
        if delta.__class__ is not dict or len(delta) != 1:
            return
        text = delta.get("content")
        if (text.__class__ is not str or not text or not _plain(text)
                or choice.get("logprobs") is not None or choice.get("finish_reason") is not None):
            return
        if obj.get("usage") is not None or "error" in obj or "type" in obj:
            return
        self._tpl_tries += 1
        data = ev.data
        if "\n" in data or "\r" in data:  # one data line: feed frames a templated chunk itself
            return
        start = _member_value(data, "content", text)
        if start < 0:
            return
        prefix, suffix = data[:start], data[start + len(text):]
        expect = {**obj, "choices": [{**choice, "delta": {"content": "x"}}]}
        pad = obj.get("obfuscation")
        mid = None
        if pad.__class__ is str:
            if not _plain(pad):
                return
            i = _member_value(suffix, "obfuscation", pad)
            if i < 0:
                return
            mid, end = suffix[:i], suffix[i + len(pad):]
            filled = prefix + "x" + mid + "y" + end
            expect["obfuscation"] = "y"
        else:
            end = suffix
            filled = prefix + "x" + end
        try:
            if json.loads(filled) != expect:
                return
        except ValueError:
            return
        idx = choice.get("index", 0)
        model, tier = obj.get("model"), obj.get("service_tier")
        hide = self.hide_usage_chunk and "usage" in obj
        cut_back = None
        pad_back = len((end + "\n\n").encode("utf-8"))  # where the padding goes, from the end
        if hide:  # where _cut_null_usage cuts a whole chunk of this shape (text "x", no padding)
            whole = ("data: " + prefix + "x" + (mid or "") + end + "\n\n").encode("utf-8")
            span = _null_usage_span(whole)
            if span is not None and span[0] >= len(("data: " + prefix + "x").encode("utf-8")):
                cut_back = (len(whole) - span[0], len(whole) - span[1])
                if mid is not None and cut_back[0] > pad_back > cut_back[1]:
                    cut_back = None  # (cannot be: the member would hold the padding)
        cut_before_pad = mid is not None and cut_back is not None and cut_back[0] > pad_back
        head = ("data: " + prefix).encode("utf-8")
        tail = (end + "\n\n").encode("utf-8")
        bmid = None if mid is None else mid.encode("utf-8")
        tail_cut = mid_cut = None
        if cut_back is not None:
            if cut_before_pad:  # the member lies in mid: its place from mid's start (the text "x" before it)
                s, e = (len(whole) - cut_back[0] - len(head) - 1, len(whole) - cut_back[1] - len(head) - 1)
                mid_cut = bmid[:s] + bmid[e:]
            else:  # in the tail
                tail_cut = tail[:len(tail) - cut_back[0]] + tail[len(tail) - cut_back[1]:]
        self._tpl = _ContentTemplate(
            prefix, mid, end, len(prefix) + len(mid or "") + len(end),
            (idx if idx.__class__ is int or idx.__class__ is str else None, "content"),
            model if model.__class__ is str and model else None,
            tier if tier.__class__ is str and tier else None,
            hide, cut_back, cut_before_pad,
            head, tail, bmid, len(head) + len(tail) + len(bmid or b""), self._parser.max_event_bytes,
            tail_cut, mid_cut)
        self._tpl_tries = _TEMPLATE_TRIES

    def _chat_chunk(self, obj: dict[str, Any]) -> bool:
        """Chat Completions / legacy Completions chunk; False to drop it."""
        get = obj.get
        model = get("model")
        if model.__class__ is str and model:
            self.model_reported = model
        tier = get("service_tier")
        if tier != self.service_tier and tier.__class__ is str and tier:  # every chunk repeats it
            self._set_tier(tier)
        choices = get("choices")
        if choices.__class__ is list:
            pending = self._pending
            for choice in choices:
                if choice.__class__ is not dict:
                    continue
                idx = choice.get("index", 0)
                if idx.__class__ is not int and idx.__class__ is not str:
                    idx = None  # see _key_part
                if self._completions:
                    self._count((idx, "text"), choice.get("text"))
                delta = choice.get("delta")
                if delta.__class__ is not dict:
                    continue
                for field, value in delta.items():  # usually a single key
                    if field in _CHAT_TEXT_FIELDS:
                        if value.__class__ is str and value:  # _count, inline
                            key = (idx, field)
                            texts = pending.get(key)
                            if texts is None:
                                pending[key] = [value]
                            else:
                                texts.append(value)
                            self._pending_bytes += (len(value) if value.isascii()
                                                    else len(value.encode("utf-8", "surrogatepass")))
                    elif field == "tool_calls" or field == "function_call":
                        self._chat_call_delta(idx, field, value)
        usage = get("usage")
        if usage.__class__ is not dict:
            if usage is None and self.hide_usage_chunk and "usage" in obj:
                self._null_usage = obj  # added by the injected include_usage: cut out (see _process)
            return True
        try:
            self._usage = Usage.from_openai(usage)
        except ValueError:
            self.parse_errors += 1
        else:
            # OpenAI sends usage once, in a chunk with choices == []; some compatible servers send
            # a running usage in every chunk: only a chunk that ends every choice is final
            self._usage_final = not isinstance(choices, list) or all(
                choice.get("finish_reason") is not None for choice in choices if isinstance(choice, dict))
        if self.hide_usage_chunk and not choices:
            self.usage_hidden = True
            return False
        return True

    def _chat_call_delta(self, idx: str | int | None, field: str, value: Any) -> None:
        if field == "tool_calls":
            if isinstance(value, list):
                for call in value:
                    if isinstance(call, dict):
                        fn = call.get("function")
                        if isinstance(fn, dict):
                            t = _key_part(call.get("index", 0))
                            self._count((idx, "tool", t, "name"), fn.get("name"))
                            self._count((idx, "tool", t, "arguments"), fn.get("arguments"))
        elif isinstance(value, dict):  # function_call: deprecated, still streamed by some servers
            self._count((idx, "function_call", "name"), value.get("name"))
            self._count((idx, "function_call", "arguments"), value.get("arguments"))

    def _responses_event(self, obj: dict[str, Any], typ: str) -> None:
        get = obj.get
        seq = get("sequence_number")
        if seq.__class__ is int:
            self._seq = seq
        if typ in _RESPONSES_TEXT_DELTAS:
            key = (typ, _key_part(get("item_id")), _key_part(get("output_index")),
                   _key_part(get("content_index")), _key_part(get("summary_index")))
            self._count(key, get("delta"))
            return
        if typ in _RESPONSES_ITEM:
            item = get("item")
            if item.__class__ is dict:
                self._record_item(item, get("output_index"))
            return
        resp = get("response")
        if resp.__class__ is not dict:
            return
        model = resp.get("model")
        if model.__class__ is str and model:
            self.model_reported = model
        tier = resp.get("service_tier")
        if tier != self.service_tier and tier.__class__ is str and tier:
            self._set_tier(tier)
        if typ in _RESPONSES_TERMINAL:
            self.done = True
            output = resp.get("output")
            if isinstance(output, list):
                for index, item in enumerate(output):
                    if isinstance(item, dict):
                        self._record_item(item, index)
            if typ == "response.failed":
                err = resp.get("error")
                self._record_error(err if isinstance(err, dict) else {"message": "response.failed"})
            usage = resp.get("usage")
            if isinstance(usage, dict):
                try:
                    self._usage = Usage.from_openai(usage)
                except ValueError:
                    self.parse_errors += 1
                else:
                    self._usage_final = True

    # -- helpers ---------------------------------------------------------------------------------
    def _count(self, key: tuple, text: Any) -> None:
        if text.__class__ is not str or not text:
            return
        self._pending.setdefault(key, []).append(text)
        self._pending_bytes += len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))

    def _flush(self) -> None:
        """Tokenise the pending text (one tiktoken call per stream instead of one per event)."""
        if not self._pending:
            return
        for key, texts in self._pending.items():
            counter = self._counters.get(key)
            if counter is None:
                counter = self._counters[key] = StreamTokenCounter(self.model)
            before = counter.count
            self._output += counter.feed("".join(texts)) - before
        self._pending.clear()
        self._pending_bytes = 0

    def _record_item(self, item: dict[str, Any], index: Any) -> None:
        """Remember a server-side tool call (once per item id) and reprice the fees seen."""
        kind = item.get("type")
        if not isinstance(kind, str) or not kind.endswith("_call") or kind in FREE_CALLS:
            return
        item_id = item.get("id")
        key = item_id if isinstance(item_id, str) and item_id else ("index", _key_part(index))
        if key in self._items:
            return
        self._items[key] = {"type": kind, "container_id": item.get("container_id")}
        fees, unpriced = tool_fee_cost(self._fees, self.tool_calls)
        self.unpriced_calls = bool(unpriced)
        self._fee_cost = self._fixed_fee + fees
        self._set_cut()

    def _record_error(self, err: dict[str, Any]) -> None:
        if self.provider_error is None:
            self.provider_error = err

    def _set_tier(self, reported: str) -> None:
        if reported == self.service_tier:
            return  # every chunk repeats it
        self.service_tier = reported
        try:
            tier = normalise_tier(reported)
            if tier != self._pricing_tier:
                self.price.rates_for(self.input_tokens, tier)  # priceable?
            else:
                return
        except ValueError:
            return  # an unknown tier: keep pricing the requested one (settlement decides)
        self._pricing_tier = tier
        self._set_cut()

    def _threshold(self) -> int | None:
        """The least output-token count n with cost(input estimate, n) + fees so far >=
        reservation, in the current pricing tier; None when output is free and the input alone
        stays below it."""
        return output_threshold(self.price, Usage(input_tokens=self.input_tokens), self._pricing_tier,
                                self.reservation, self._fee_cost)

    def _set_cut(self) -> None:
        """The cut-off threshold. While the model's encoding is not loaded, the per-event test
        first fires at half of it (``_cut_at``): ``_over`` then starts loading the encoding in a
        background thread and moves the test to the threshold (``_cut_exact``), where the
        exact count is needed (a stream far from its cap never loads it)."""
        t = self._threshold()
        self._cut_exact = t
        self._cut_at = t // 2 if t is not None and not tokens.stream_ready(self.model) else t

    def _over(self) -> bool:
        if self.done or self._usage_final:
            return False
        if self._usage is not None:  # a running (non-final) provider usage
            return self.running_cost >= self.reservation
        if self._cut_at is None or self._output + self._pending_bytes < self._cut_at:
            return False  # even if every pending byte were a token
        if self._cut_at != self._cut_exact:  # half way, in bytes: the exact count may be needed soon
            tokens.preload_stream(self.model)
            self._cut_at = self._cut_exact
            if self._output + self._pending_bytes < self._cut_at:
                return False
        self._flush()
        return self._output >= self._cut_at

    def _cut_event(self, code: str, message: str) -> bytes:
        error = {"message": message, "type": code, "code": code}
        self.cut_reason = code
        if self.api == "responses":
            # the Responses error event; its extra "error" object makes the openai SDKs raise
            # APIError (they raise on any data with an "error" key) instead of yielding an event
            seq = 0 if self._seq is None else self._seq + 1
            body = {"type": "error", "code": code, "message": message, "param": None,
                    "sequence_number": seq, "error": error}
            return b"event: error\ndata: " + json.dumps(body, separators=(",", ":")).encode() + b"\n\n"
        return b"data: " + json.dumps({"error": error}).encode() + b"\n\ndata: [DONE]\n\n"

    @staticmethod
    def _join(out: list[bytes]) -> list[bytes]:
        if not out:
            return []
        joined = b"".join(out)
        return [joined] if joined else []
