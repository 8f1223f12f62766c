"""Pure parts of the metrics and traces (pouch_addon/telemetry.py)."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from pouch_addon.telemetry import LabelCap, parse_listen, span_attributes, tokens_by_type


def test_label_cap_folds_late_values_into_other():
    cap = LabelCap(2)
    assert [cap(x) for x in ("a", "b", "c", "a", None, "b")] == ["a", "b", "other", "a", "other", "b"]


@pytest.mark.parametrize("text,want", [("127.0.0.1:9464", ("127.0.0.1", 9464)), ("9464", ("127.0.0.1", 9464)),
                                       ("[::1]:9", ("::1", 9))])
def test_parse_listen(text, want):
    assert parse_listen(text) == want


@pytest.mark.parametrize("text", ["x", "1.2.3.4:-1", "h:70000"])
def test_parse_listen_refuses(text):
    with pytest.raises(ValueError):
        parse_listen(text)


def test_span_attributes_follow_the_genai_conventions():
    entry = {"provider": "anthropic", "endpoint": "/v1/messages", "model": "claude-sonnet-4-5", "input_tokens": 30,
             "cached_tokens": 10, "output_tokens": 7, "reasoning_tokens": 0, "cost": "0.000123", "id": "r1",
             "status": "ok", "usage_source": "provider", "output_cap": 20, "http_status": 200, "flags": ["usage_missing"]}
    a = span_attributes(entry, reserved=D("0.5"), wallet="app", request_model="claude-sonnet-4-5")
    assert a["gen_ai.system"] == "anthropic" and a["gen_ai.operation.name"] == "chat"
    assert a["gen_ai.request.model"] == a["gen_ai.response.model"] == "claude-sonnet-4-5"
    assert (a["gen_ai.usage.input_tokens"], a["gen_ai.usage.output_tokens"], a["gen_ai.usage.cached_tokens"]) == (30, 7, 10)
    assert "gen_ai.usage.reasoning_tokens" not in a and a["gen_ai.request.max_tokens"] == 20
    assert (a["pouch.cost_usd"], a["pouch.reserved_usd"], a["pouch.wallet"]) == ("0.000123", "0.5", "app")
    assert a["pouch.flags"] == ["usage_missing"] and a["http.response.status_code"] == 200
    assert tokens_by_type(entry) == {"input": 30, "cached": 10, "output": 7, "reasoning": 0}


def _decoded(attrs_pb) -> dict:
    out = {}
    for kv in attrs_pb:
        v = kv.value
        kind = v.WhichOneof("value")
        out[kv.key] = ([x.string_value for x in v.array_value.values] if kind == "array_value"
                       else getattr(v, kind))
    return out


def test_span_bytes_decode_as_otlp_with_every_attribute():
    pb = pytest.importorskip("opentelemetry.proto.collector.trace.v1.trace_service_pb2")
    from pouch_addon.telemetry import SpanEncoder, attributes_message, export_request, field

    entry = {"provider": "openai", "endpoint": "/v1/chat/completions", "model": "gpt-4o-mini", "input_tokens": 300,
             "cached_tokens": 10, "output_tokens": 7, "reasoning_tokens": 2, "cost": "0.000123", "id": "r1",
             "status": "upstream_error", "usage_source": "provider", "output_cap": 20, "http_status": 502,
             "flags": ["usage_missing", "x"], "model_reported": "gpt-4o-mini-2024"}
    attrs = span_attributes(entry, reserved=D("0.5"), wallet="app", request_model="gpt-4o-mini")
    attrs["test.negative"] = -5
    enc = SpanEncoder()
    spans = [enc.span("chat gpt-4o-mini", attrs, trace_id=bytes(range(16)), span_id=bytes(range(8)),
                      start_ns=1_700_000_000_000_000_000, end_ns=1_700_000_000_500_000_000, error="upstream_error"),
             enc.span("chat gpt-4o-mini", attrs, trace_id=b"\x01" * 16, span_id=b"\x02" * 8, start_ns=1, end_ns=2)]
    req = pb.ExportTraceServiceRequest()
    req.ParseFromString(export_request(attributes_message({"service.name": "pouch", "n": 3}), field(1, b"pouch"), spans))
    (rs,) = req.resource_spans
    assert _decoded(rs.resource.attributes) == {"service.name": "pouch", "n": 3}
    (ss,) = rs.scope_spans
    assert ss.scope.name == "pouch" and len(ss.spans) == 2
    s, s2 = ss.spans
    assert _decoded(s.attributes) == attrs and _decoded(s2.attributes) == attrs
    assert (s.name, s.kind, s.trace_id, s.span_id) == ("chat gpt-4o-mini", 3, bytes(range(16)), bytes(range(8)))
    assert (s.start_time_unix_nano, s.end_time_unix_nano) == (1_700_000_000_000_000_000, 1_700_000_000_500_000_000)
    assert (s.status.code, s.status.message) == (2, "upstream_error")
    assert not s2.HasField("status") and (s2.start_time_unix_nano, s2.end_time_unix_nano) == (1, 2)


def test_buckets_count_at_or_below_each_bound():
    from pouch_addon.telemetry import Buckets

    b = Buckets((0.1, 1, 0.5))
    for v in (0.05, 0.1, 0.3, 1.0, 7.0):
        b.observe(v)
    cum, total = b.cumulative()
    assert cum == [(0.1, 2), (0.5, 3), (1.0, 4), (float("inf"), 5)]
    assert total == pytest.approx(8.45)
