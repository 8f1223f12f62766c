"""``ProviderStreamMeter``: the provider-independent part of metering a stream. Pure.

A provider's meter subclass reads its own events (``_on_json``) and reports what it learns
through four calls: ``_count`` (model output text, counted with tiktoken as it comes),
``_set_input`` (the provider's input usage, once known), ``_set_running`` (a running total of
the whole usage, as Gemini sends with every chunk) and ``_set_final`` (the final usage). This
base class frames the events (SSE, or a streamed JSON array: ``json_array=True``), keeps the
running cost and cuts the stream off when it would cross the reservation, with the same public
interface as the OpenAI ``metering.StreamMeter`` (the meter addon and settlement use either).

Per event the work is a JSON decode and an integer comparison: the output-token threshold at
which the running cost reaches the reservation is recomputed only when the input usage or the
tier changes, and text is tokenised only when the count could reach it (a token is at least
one byte, so counted + pending bytes bounds the count from above).
"""

from __future__ import annotations

import dataclasses
import json
from decimal import Decimal
from typing import Any, Literal

from ..decoding import UNDECODABLE, DecodingMeter
from ..metering import _never_below, output_threshold
from ..money import format_usd, usd_str
from ..pricing import ModelPrice, Usage, cost, normalise_tier
from ..sse import MAX_EVENT_BYTES, SSEError, SSEEvent, SSEParser
from .. import tokens
from ..tokens import StreamTokenCounter
from . import templates

__all__ = ["ProviderStreamMeter", "JSONArrayFramer", "BUDGET_EXCEEDED", "UNDECODABLE"]

BUDGET_EXCEEDED = "budget_exceeded"
_decoder = json.JSONDecoder()
_loads = json.loads


class JSONArrayFramer:
    """Splits a streamed top-level JSON array (``[{...},\\r\\n{...}]``) into its elements.

    Gemini's ``streamGenerateContent`` without ``alt=sse`` streams such an array. ``feed`` returns
    ``(raw bytes, element)`` pairs for the elements completed so far; the raw bytes of every
    element and the separators between them, concatenated, are the stream byte for byte."""

    def __init__(self, max_bytes: int = MAX_EVENT_BYTES) -> None:
        self._buf = ""
        self._raw = b""
        self._bytes = b""  # undecoded tail (a UTF-8 character cut in two)
        self.max_bytes = max_bytes

    def feed(self, chunk: bytes) -> list[tuple[bytes, Any]]:
        data = self._bytes + chunk
        try:
            text = data.decode("utf-8")
            self._bytes = b""
        except UnicodeDecodeError as exc:
            if exc.start < len(data) - 3:
                raise SSEError(f"the JSON stream is not UTF-8 ({exc.reason})") from None
            text, self._bytes = data[:exc.start].decode("utf-8"), data[exc.start:]
        self._buf += text
        out: list[tuple[bytes, Any]] = []
        pos, start = 0, 0
        buf = self._buf
        while True:
            while pos < len(buf) and buf[pos] in " \t\r\n,[]":
                pos += 1
            if pos >= len(buf):
                break
            try:
                obj, end = _decoder.raw_decode(buf, pos)
            except ValueError:
                if len(buf) - pos > self.max_bytes:
                    raise SSEError("a streamed JSON element is larger than pouch's limit") from None
                break  # incomplete: wait for more
            out.append((buf[start:end].encode("utf-8"), obj))
            pos = start = end
        self._buf = buf[start:]
        return out

    def flush(self) -> bytes:
        rest = self._buf.encode("utf-8") + self._bytes
        self._buf, self._bytes = "", b""
        return rest


class ProviderStreamMeter(DecodingMeter):
    """Base meter; see the module doc. Subclasses implement ``_on_json`` and ``_cut_event``."""

    api = "provider"
    json_array = False
    #: how many events a stream may learn a template from (each try parses its event twice);
    #: 0 turns the templated path off (a subclass without ``_template_paths`` never learns)
    template_tries = 0
    #: templates a stream keeps (one per shape: text / thinking / tool-input deltas ...)
    MAX_TEMPLATES = 4

    def __init__(self, price: ModelPrice, model: str, input_tokens: int, reservation: Decimal,
                 tier: str | None = None, *, max_event_bytes: int = MAX_EVENT_BYTES,
                 content_encoding: str | None = None) -> None:
        self.price = price
        self.model = model
        self.input_tokens = input_tokens
        self.reservation = Decimal(reservation)
        self.tier = normalise_tier(tier)
        self.cut = False
        self.cut_reason: str | None = None
        self.done = False
        self.events = 0
        self.parse_errors = 0
        self.model_reported: str | None = None
        self.service_tier: str | None = None
        self.provider_error: dict[str, Any] | None = None
        self.usage_hidden = False
        self._parser: Any = JSONArrayFramer(max_event_bytes) if self.json_array else SSEParser(max_event_bytes)
        self._counters: dict[Any, StreamTokenCounter] = {}
        self._pending: dict[Any, list[str]] = {}
        self._pending_bytes = 0
        self._counted = 0
        self._raw_usage: dict[str, Any] | None = None  # the provider's usage fields so far
        self._input = Usage(input_tokens=input_tokens)  # the input part (the provider's once known)
        self._reported_output = 0  # a running output total the provider reported
        self._usage: Usage | None = None  # final usage
        self._pricing_tier = self.tier
        self._set_cut()
        # the shapes of text events already parsed (``templates``): matched without the JSON scanner
        self._tpls: list[templates.EventTemplate] = []
        self._tries = 0 if self.json_array else self.template_tries
        # a compressed stream: decoded before it is framed, as ``metering.StreamMeter`` does
        # (``decoding``); what cannot be decoded fails closed (cut at once, billed the reservation)
        self.undecodable: str | None = None
        self._setup_decoding(content_encoding)

    # -- the stream ------------------------------------------------------------------------------
    def feed(self, chunk: bytes) -> list[bytes]:
        """Meter a chunk; return what to forward now (complete events only)."""
        if self.cut or not chunk:
            return []
        if self._tpls and chunk.__class__ is bytes and len(chunk) <= self._parser.max_event_bytes \
                and self._parser.at_boundary():
            # the usual chunk: exactly one event of a learnt shape, framed as the SSE parser's inline
            # path frames it (header + one data line + blank line; a hole holds no line end)
            for tpl in self._tpls:
                if tpl.raw_rx is not None:
                    got = tpl.match_raw(chunk)
                    if got is not None:
                        self.events += 1
                        self._apply_template(tpl, got[0], got[1])
                        if (self._cut_at is not None and not self.done and self._usage is None
                                and (self._counted + self._pending_bytes >= self._cut_at
                                     or self._reported_output >= self._cut_at)
                                and self._over()):
                            return [chunk + self._budget_cut()]
                        return [chunk]
        try:
            items = self._parser.feed(chunk)
        except SSEError as exc:
            out = self._process(getattr(exc, "events", []), may_cut=True)
            if not self.cut:
                out.append(self._cut_event("stream_error", f"pouch: {exc}; stream cut off"))
                self.cut = True
            return self._join(out)
        return self._join(self._process(items, may_cut=True))

    def finish(self) -> list[bytes]:
        if self.cut:
            return []
        if self.undecodable is not None:
            return self._fail_undecodable()
        if self.json_array:
            return self._join([self._parser.flush()])
        try:
            events, leftover = self._parser.flush()
        except SSEError as exc:
            events, leftover = exc.events, b""
            self.parse_errors += 1
        out = self._process(events, may_cut=False)
        if leftover:
            out.append(leftover)
        return self._join(out)

    def _process(self, items: list[Any], *, may_cut: bool) -> list[bytes]:
        out: list[bytes] = []
        on_json = self._on_json
        for item in items:
            if item.__class__ is SSEEvent:
                raw = item.raw
                if item.has_data:
                    self.events += 1
                    if not self._tpls or not self._templated(item):
                        try:
                            obj = _loads(item.data)
                        except ValueError:
                            obj = None
                        if obj.__class__ is dict:
                            on_json(obj, item.event)
                            if self._tries:
                                self._learn(item, obj)
                        else:
                            self.parse_errors += 1
            else:
                raw, obj = item
                self.events += 1
                if obj.__class__ is dict:
                    self._on_json(obj, None)
                else:
                    self.parse_errors += 1
            out.append(raw)
            # _over, with its cheap part inline: most events cannot reach the reservation
            if (may_cut and self._cut_at is not None and not self.done and self._usage is None
                    and (self._counted + self._pending_bytes >= self._cut_at or self._reported_output >= self._cut_at)
                    and self._over()):
                out.append(self._budget_cut())
                break
        return out

    def _budget_cut(self) -> bytes:
        """The error event of a cut-off at the reservation (``cut`` is set)."""
        msg = (f"pouch: budget reservation of {format_usd(self.reservation)} reached after "
               f"{self._output()} output tokens; stream cut off")
        self.cut = True
        return self._cut_event(BUDGET_EXCEEDED, msg)

    # -- templated events (``templates``) ----------------------------------------------------------
    def _templated(self, ev: SSEEvent) -> bool:
        """Apply ``ev`` through a learnt template when it has that shape; False: parse it."""
        data = ev.data
        for tpl in self._tpls:
            if tpl.event == ev.event:
                got = tpl.match(data)
                if got is not None:
                    self._apply_template(tpl, got[0], got[1])
                    return True
        return False

    def _learn(self, ev: SSEEvent, obj: dict[str, Any]) -> None:
        """Learn the shape of a parsed text event (``_template_paths`` says which qualify)."""
        got = self._template_paths(obj, ev.event)
        if got is None:
            return
        self._tries -= 1
        paths, info = got
        tpl = templates.learn(ev.event, ev.data, ev.raw, obj, paths, info)
        if tpl is not None:
            self._template_learnt(tpl)
            if len(self._tpls) >= self.MAX_TEMPLATES:
                del self._tpls[0]
            self._tpls.append(tpl)

    def _template_paths(self, obj: dict[str, Any], event: str | None) -> tuple[list[tuple], Any] | None:
        """The hole paths of an event whose effect on the meter, but for the values at those paths,
        is fixed (and what ``_apply_template`` needs to repeat it); None: not such an event."""
        return None

    def _template_learnt(self, tpl: templates.EventTemplate) -> None:
        """A template was learnt (its holes in ``tpl.paths`` order): complete ``tpl.info``."""

    def _apply_template(self, tpl: templates.EventTemplate, text: str, holes: Any) -> None:  # pragma: no cover
        """Do what ``_on_json`` does for the learnt object with ``text`` in its string hole and
        ``holes`` in its holes (``EventTemplate.match``: hole i at 2i + 1, integers as digits, ``str`` or ``bytes``: ``int()`` them)."""
        raise NotImplementedError

    # -- what a subclass reports -------------------------------------------------------------------
    def _on_json(self, obj: dict[str, Any], event: str | None) -> bool:  # pragma: no cover - abstract
        raise NotImplementedError

    def _cut_event(self, code: str, message: str) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def _count(self, key: Any, text: Any) -> None:
        if text.__class__ is not str or not text:
            return
        self._pending.setdefault(key, []).append(text)
        self._pending_bytes += len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))

    def _set_input(self, usage: Usage) -> None:
        """The provider's input usage (its output part is ignored)."""
        usage = dataclasses.replace(usage, output_tokens=0, reasoning_tokens=0)
        if usage != self._input:
            self._input = usage
            self._set_cut()

    def _set_running(self, usage: Usage) -> None:
        """A running total of the whole usage (input and output so far)."""
        self._set_input(usage)
        self._reported_output = usage.output_tokens

    def _set_final(self, usage: Usage) -> None:
        self._usage = usage

    def _set_tier(self, reported: str) -> None:
        if reported == self.service_tier:
            return
        self.service_tier = reported
        try:
            tier = normalise_tier(reported)
            self.price.rates_for(self._input.input_tokens, tier)
        except ValueError:
            return
        if tier != self._pricing_tier:
            self._pricing_tier = tier
            self._set_cut()

    def _record_error(self, err: dict[str, Any]) -> None:
        if self.provider_error is None:
            self.provider_error = err

    # -- results ---------------------------------------------------------------------------------
    def _flush(self) -> None:
        for key, texts in self._pending.items():
            counter = self._counters.get(key)
            if counter is None:
                counter = self._counters[key] = StreamTokenCounter(self.model)
            before = counter.count
            self._counted += counter.feed("".join(texts)) - before
        self._pending.clear()
        self._pending_bytes = 0

    def _output(self) -> int:
        self._flush()
        return max(self._counted, self._reported_output)

    @property
    def output_tokens_counted(self) -> int:
        return self._output()

    @property
    def usage_source(self) -> Literal["provider", "counted"]:
        return "provider" if self._usage is not None else "counted"

    @property
    def usage_final(self) -> bool:
        return self._usage is not None

    @property
    def tool_calls(self) -> dict[str, int]:
        return {}

    def partial_usage(self) -> Usage:
        """What the call has used so far: the provider's input usage (or the estimate) plus the
        larger of the output counted and the output the provider reported."""
        return dataclasses.replace(self._input, output_tokens=self._output())

    def final_usage(self) -> Usage:
        return self._usage if self._usage is not None else self.partial_usage()

    @property
    def running_cost(self) -> Decimal:
        return cost(self.price, self.final_usage(), self._pricing_tier)

    def _compact_pending(self) -> None:
        """Join each stream's uncounted pieces into one string (a checkpoint leaves them
        uncounted): a long stream keeps its text, not one object per event."""
        for texts in self._pending.values():
            if len(texts) > 1:
                texts[:] = ["".join(texts)]

    def checkpoint(self) -> dict[str, Any]:
        return _never_below(self, self._checkpoint())

    def _checkpoint(self) -> dict[str, Any]:
        if self._pending and not tokens.stream_ready(self.model):
            # never load the encoding on the event loop for a checkpoint: uncounted text as its
            # UTF-8 bytes, an upper bound (``output_bound``)
            output = max(self._counted + self._pending_bytes, self._reported_output)
            self._compact_pending()
            final = self._usage is not None
            usage = self._usage if final else dataclasses.replace(self._input, output_tokens=output)
            running = cost(self.price, usage, self._pricing_tier)
            snap: dict[str, Any] = {"output_tokens": output, "running_cost": usd_str(running if final else min(running, self.reservation)),
                                    "events": self.events, "usage_source": self.usage_source}
            if final:
                snap["final_cost"] = snap["running_cost"]
            else:
                snap["output_bound"] = "utf8_bytes"
            return snap
        snap = {"output_tokens": self.output_tokens_counted, "running_cost": usd_str(self.running_cost),
                "events": self.events, "usage_source": self.usage_source}
        if self._usage is not None:
            snap["final_cost"] = snap["running_cost"]
        return snap

    # -- the cut-off -----------------------------------------------------------------------------
    def _threshold(self) -> int | None:
        """The least output count n with cost(input usage, n) >= reservation (None: never)."""
        return output_threshold(self.price, self._input, self._pricing_tier, self.reservation)

    def _set_cut(self) -> None:
        """The cut-off threshold; while the encoding is not loaded the test first fires at half
        of it, to start loading it in the background (as ``metering.StreamMeter._set_cut``)."""
        t = self._threshold()
        self._cut_exact = t
        self._cut_at = t // 2 if t is not None and not tokens.stream_ready(self.model) else t

    def _over(self) -> bool:
        if self._cut_at is None:
            return False
        if max(self._counted + self._pending_bytes, self._reported_output) < self._cut_at:
            return False
        if self._cut_at != self._cut_exact:  # half way: the exact count may be needed soon
            tokens.preload_stream(self.model)
            self._cut_at = self._cut_exact
            if max(self._counted + self._pending_bytes, self._reported_output) < self._cut_at:
                return False
        return self._output() >= self._cut_at

    @staticmethod
    def _join(out: list[bytes]) -> list[bytes]:
        joined = b"".join(out)
        return [joined] if joined else []
