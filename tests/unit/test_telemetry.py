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
