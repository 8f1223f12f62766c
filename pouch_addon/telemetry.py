"""What pouch exports to monitoring, as pure functions: bounded metric labels and the attributes
of a call's OpenTelemetry span (the GenAI semantic conventions plus pouch's money). No I/O; the
shells are ``addons/metrics.py`` (Prometheus) and ``addons/tracing.py`` (OTLP).
"""

from __future__ import annotations

from bisect import bisect_left
from decimal import Decimal
from typing import Any

OTHER = "other"
TOKEN_TYPES = ("input", "cached", "output", "reasoning")


def parse_listen(text: str) -> tuple[str, int]:
    """``127.0.0.1:9464`` or ``9464`` (loopback) -> (host, port)."""
    host, _, port = str(text).strip().rpartition(":")
    try:
        n = int(port)
    except ValueError:
        raise ValueError(f"expected HOST:PORT like 127.0.0.1:9464, got {text!r}") from None
    if not 0 <= n < 65536:  # 0: any free port
        raise ValueError(f"port out of range in {text!r}")
    return (host.strip("[]") or "127.0.0.1"), n


class LabelCap:
    """Bounded label values: the first ``limit`` distinct values keep their name, every later one is
    ``other`` (a label per wallet or model must not grow a scrape without end)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.known: set[str] = set()

    def __call__(self, value: str | None) -> str:
        v = value or "unknown"
        if v in self.known:
            return v
        if len(self.known) < self.limit:
            self.known.add(v)
            return v
        return OTHER


def tokens_by_type(entry: dict[str, Any]) -> dict[str, int]:
    """Token counts of a settle entry by Prometheus ``type`` label."""
    return {t: int(entry.get(f"{t}_tokens") or 0) for t in TOKEN_TYPES}


def span_attributes(entry: dict[str, Any], *, reserved: Decimal, wallet: str, request_model: str) -> dict[str, Any]:
    """A settled call as span attributes: OpenTelemetry's GenAI conventions (``gen_ai.*``) and
    pouch's cost, reservation and outcome (``pouch.*``; amounts as exact decimal strings)."""
    provider = str(entry.get("provider") or "openai")
    endpoint = str(entry.get("endpoint") or "")
    op = ("embeddings" if "embeddings" in endpoint else "text_completion" if endpoint.endswith("/completions")
          and "chat" not in endpoint else "chat")
    attrs: dict[str, Any] = {
        "gen_ai.system": provider,
        "gen_ai.provider.name": provider,
        "gen_ai.operation.name": op,
        "gen_ai.request.model": request_model,
        "gen_ai.response.model": str(entry.get("model_reported") or request_model),
        "gen_ai.usage.input_tokens": int(entry.get("input_tokens") or 0),
        "gen_ai.usage.output_tokens": int(entry.get("output_tokens") or 0),
        "pouch.cost_usd": str(entry.get("cost", "0")),
        "pouch.reserved_usd": str(reserved),
        "pouch.reservation_id": str(entry.get("id", "")),
        "pouch.wallet": wallet,
        "pouch.status": str(entry.get("status", "")),
        "pouch.usage_source": str(entry.get("usage_source", "")),
    }
    if entry.get("output_cap") is not None:
        attrs["gen_ai.request.max_tokens"] = int(entry["output_cap"])
    for name in ("cached", "reasoning"):
        if entry.get(f"{name}_tokens"):
            attrs[f"gen_ai.usage.{name}_tokens"] = int(entry[f"{name}_tokens"])
    if entry.get("http_status") is not None:
        attrs["http.response.status_code"] = int(entry["http_status"])
    if entry.get("flags"):
        attrs["pouch.flags"] = [str(f) for f in entry["flags"]]
    return attrs


# -- OTLP protobuf, written directly ------------------------------------------------------------
# A span made through the SDK (start_span, attribute checks, ReadableSpan) and encoded by the OTLP
# exporter (a protobuf object per attribute) costs ~200 us of Python; these bytes, the same wire
# format (opentelemetry/proto/trace/v1/trace.proto), cost a few. Field numbers: ExportTraceService-
# Request.resource_spans=1; ResourceSpans.resource=1, .scope_spans=2; ScopeSpans.scope=1, .spans=2;
# Span.trace_id=1, span_id=2, name=5, kind=6, start=7 (fixed64), end=8 (fixed64), attributes=9,
# status=15; Status.message=2, code=3; KeyValue.key=1, value=2; AnyValue.string=1, int=3, array=5.

SPAN_KIND_CLIENT = 3
STATUS_ERROR = 2
_KV_CACHE_MAX = 4096


_SMALL = [bytes((i,)) for i in range(0x80)]


def varint(n: int) -> bytes:
    """Protobuf base-128 varint (negative int64: its 64-bit two's complement)."""
    if 0 <= n < 0x80:
        return _SMALL[n]
    n &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return varint(number << 3 | 2) + varint(len(payload)) + payload


def any_value(value: Any) -> bytes:
    """An ``AnyValue``: str, int (bool: int) or a list of those."""
    if isinstance(value, str):
        return field(1, value.encode())
    if isinstance(value, bool):
        return b"\x10" + (b"\x01" if value else b"\x00")
    if isinstance(value, int):
        return b"\x18" + varint(value)
    if isinstance(value, (list, tuple)):
        return field(5, b"".join(field(1, any_value(v)) for v in value))
    return field(1, str(value).encode())


class SpanEncoder:
    """A settled call's span as OTLP protobuf bytes; the key-value pairs that repeat from call to
    call (provider, model, wallet, status) are encoded once and kept (at most ``_KV_CACHE_MAX``)."""

    def __init__(self) -> None:
        self._kv: dict[tuple[str, Any], bytes] = {}
        self._keys: dict[str, bytes] = {}

    def key_value(self, key: str, value: Any) -> bytes:
        """A span's attribute: field 9, a ``KeyValue``."""
        kind = type(value)
        if kind is str:
            hit = self._kv.get((key, value))
            if hit is not None:
                return hit
        k = self._keys.get(key)
        if k is None:
            k = self._keys[key] = field(1, key.encode())
        v = b"\x18" + varint(value) if kind is int else any_value(value)
        kv = k + b"\x12" + varint(len(v)) + v
        kv = b"\x4a" + varint(len(kv)) + kv
        if kind is str and len(value) <= 64:  # names, models, statuses repeat; ids and amounts do not
            if len(self._kv) >= _KV_CACHE_MAX:
                self._kv.clear()
            self._kv[(key, value)] = kv
        return kv

    def span(self, name: str, attrs: dict[str, Any], *, trace_id: bytes, span_id: bytes, start_ns: int, end_ns: int,
             error: str | None = None) -> bytes:
        """One ``Span`` message (without its field tag); ``error``: an ERROR status with this message."""
        kv = self.key_value
        body = b"".join((b"\x0a\x10", trace_id, b"\x12\x08", span_id, field(5, name.encode()),
                         b"\x30", varint(SPAN_KIND_CLIENT), b"\x39", start_ns.to_bytes(8, "little"),
                         b"\x41", end_ns.to_bytes(8, "little"), *[kv(k, v) for k, v in attrs.items()]))
        if error is not None:
            body += b"\x7a" + varint(len(e := field(2, error.encode()) + b"\x18" + varint(STATUS_ERROR))) + e
        return body


def attributes_message(attrs: dict[str, Any], number: int = 1) -> bytes:
    """Repeated ``KeyValue`` fields ``number`` (a ``Resource``'s attributes: field 1)."""
    return b"".join([field(number, field(1, k.encode()) + field(2, any_value(v))) for k, v in attrs.items()])


def export_request(resource: bytes, scope: bytes, spans: list[bytes]) -> bytes:
    """An ``ExportTraceServiceRequest`` of ``spans`` (each from ``SpanEncoder.span``) under one
    resource and instrumentation scope (both already encoded messages)."""
    scope_spans = field(1, scope) + b"".join([field(2, s) for s in spans])
    return field(1, field(1, resource) + field(2, scope_spans))


class Buckets:
    """A Prometheus histogram's state as plain numbers: one count per upper bound (not cumulative;
    the last one is ``+Inf``), the sum and the count. ``observe`` is a bisect and two additions,
    a fraction of prometheus-client's locked ``Histogram.observe``; ``cumulative`` is for a scrape."""

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = tuple(sorted(bounds))
        self.counts = [0] * (len(self.bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value

    def cumulative(self) -> tuple[list[tuple[float, int]], float]:
        """(upper bound, observations at or below it) for each bound and ``inf``; the sum."""
        counts, total = list(self.counts), self.sum  # a copy: the event loop keeps adding
        out, run = [], 0
        for bound, n in zip((*self.bounds, float("inf")), counts):
            run += n
            out.append((float(bound), run))
        return out, total
