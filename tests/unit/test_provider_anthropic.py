"""The Anthropic provider module on its own: classification, the input bound, caps, usage, streams."""

from __future__ import annotations

import json
from decimal import Decimal as D

import pytest

from pouch_addon.plan import BudgetTooSmall, PlanError, PlanSettings, apply_rewrites
from pouch_addon.pricing import PriceTable, Usage, cost
from pouch_addon.providers import anthropic, for_host

TABLE = PriceTable.load()
WEATHER_TOOL = {
    "name": "get_weather", "description": "Get the current weather in a given location",
    "input_schema": {"type": "object", "properties": {"location": {
        "type": "string", "description": "The city and state, e.g. San Francisco, CA"}}, "required": ["location"]},
}


def body(**kw):
    return {"model": "claude-sonnet-4-5", "max_tokens": 1024, "messages": [{"role": "user", "content": "Hello"}], **kw}


@pytest.mark.parametrize("method,path,kind", [
    ("POST", "/v1/messages", "billed"), ("POST", "/v1/messages?beta=true", "billed"),
    ("POST", "/v1/messages/", "billed"), ("POST", "/v1/messages/count_tokens", "free"),
    ("POST", "/v1/messages/batches", "refused"), ("GET", "/v1/messages/batches/x", "free"),
    ("GET", "/v1/models", "free"), ("POST", "/api/event_logging/v2/batch", "free"),
    ("POST", "/v1/complete", "unknown"), ("PUT", "/v1/messages", "unknown"),
])
def test_classify(method, path, kind):
    assert anthropic.classify(method, path) == kind


def test_registry_by_host():
    assert for_host("api.anthropic.com") is anthropic
    assert for_host("API.Anthropic.com.") is anthropic
    assert for_host("api.openai.com").NAME == "openai" and for_host("llm.internal").NAME == "openai"


# Published count_tokens figures (Anthropic's token-counting guide, as quoted in LangChain's
# ChatAnthropic.get_num_tokens_from_messages reference): the bound must never be below them.
@pytest.mark.parametrize("request_body,published", [
    ({"system": "You are a scientist", "messages": [{"role": "user", "content": "Hello, Claude"}]}, 14),
    ({"tools": [WEATHER_TOOL], "messages": [{"role": "user", "content": "What's the weather like in San Francisco?"}]}, 403),
])
def test_input_bound_is_above_published_counts(request_body, published):
    bound, hidden = anthropic.estimate_input_bound(request_body)
    assert hidden == []
    assert bound >= published
    print(f"bound {bound} for published {published}: slack x{bound / published:.1f}")


def test_input_bound_is_at_least_the_utf8_bytes_of_the_text():
    text = "naïve café — 東京 " * 500
    bound, _ = anthropic.estimate_input_bound({"messages": [{"role": "user", "content": text}]})
    assert bound >= len(text.encode())


def test_images_get_a_fixed_bound_and_pdfs_the_context_window():
    img = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A" * 100_000}}
    bound, hidden = anthropic.estimate_input_bound({"messages": [{"role": "user", "content": [img, img]}]})
    assert hidden == [] and 2 * anthropic.IMAGE_TOKENS <= bound < 2 * anthropic.IMAGE_TOKENS + 200
    pdf = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBER"}}
    d = anthropic.draft("POST", "/v1/messages", body(messages=[{"role": "user", "content": [pdf]}]), table=TABLE)
    assert d.input_hidden == ("a PDF document",)
    assert d.reserved_input_tokens == d.price.max_input_tokens
    text_doc = {"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "x" * 5000}}
    bound, hidden = anthropic.estimate_input_bound({"messages": [{"role": "user", "content": [text_doc]}]})
    assert hidden == [] and bound >= 5000


def test_tool_results_with_images_are_bounded_too():
    img = {"type": "image", "source": {"type": "url", "url": "https://example.com/x.png"}}
    msg = {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t", "content": [img]}]}
    bound, hidden = anthropic.estimate_input_bound({"messages": [msg]})
    assert bound >= anthropic.IMAGE_TOKENS and hidden == []


def test_client_tools_get_an_allowance_and_server_tools_are_refused():
    plain, _ = anthropic.estimate_input_bound(body(tools=[WEATHER_TOOL]))
    with_bash, _ = anthropic.estimate_input_bound(body(tools=[WEATHER_TOOL, {"type": "bash_20250124", "name": "bash"}]))
    assert with_bash >= plain + anthropic.CLIENT_TOOL_TOKENS
    for tool in ({"type": "web_search_20250305", "name": "web_search"}, {"type": "code_execution_20250522"}):
        with pytest.raises(PlanError) as e:
            anthropic.draft("POST", "/v1/messages", body(tools=[tool]), table=TABLE)
        assert e.value.code == "pouch_unbounded"
    with pytest.raises(PlanError) as e:
        anthropic.draft("POST", "/v1/messages", body(mcp_servers=[{"type": "url", "url": "https://x"}]), table=TABLE)
    assert e.value.code == "pouch_unbounded"


def test_refusals_are_clear():
    with pytest.raises(PlanError, match="max_tokens"):
        anthropic.draft("POST", "/v1/messages", {"model": "claude-sonnet-4-5", "messages": []}, table=TABLE)
    with pytest.raises(PlanError) as e:
        anthropic.draft("POST", "/v1/messages", body(model="claude-nonexistent-9"), table=TABLE)
    assert e.value.code == "pouch_unknown_model"
    with pytest.raises(PlanError) as e:
        anthropic.draft("POST", "/v1/messages", body(model="gpt-4o-mini"), table=TABLE)
    assert e.value.code == "pouch_unknown_model"
    with pytest.raises(PlanError, match="max_tokens"):
        anthropic.draft("POST", "/v1/messages", body(max_tokens="1000"), table=TABLE)
    assert "Batches" in anthropic.refusal("POST", "/v1/messages/batches")


def test_worst_case_is_max_tokens_at_the_output_rate_plus_the_input_bound():
    d = anthropic.draft("POST", "/v1/messages", body(max_tokens=2000), table=TABLE)
    plan = d.finish(D(100))
    price = d.price
    rates = price.rates_for(plan.reserved_input_tokens)
    expected = (D(plan.reserved_input_tokens) * max(rates.input, rates.cache_write, rates.cache_write_1h)
                + D(2000) * rates.output) / D(1_000_000)
    assert plan.worst_case == expected and plan.rewrites == {}


def test_a_cap_the_budget_cannot_cover_is_lowered_with_the_thinking_budget():
    b = body(max_tokens=128000, model="claude-opus-4-5", thinking={"type": "enabled", "budget_tokens": 100000})
    d = anthropic.draft("POST", "/v1/messages", b, table=TABLE)
    plan = d.finish(D("0.50"))
    assert plan.worst_case <= D("0.50")
    new_cap = plan.rewrites["max_tokens"]
    assert plan.output_cap == new_cap < 128000
    assert plan.rewrites["thinking"] == {"type": "enabled", "budget_tokens": new_cap - 1}
    apply_rewrites(b, plan.rewrites)
    assert b["max_tokens"] == new_cap and b["thinking"]["budget_tokens"] == new_cap - 1
    # too little for a valid thinking budget: refused
    with pytest.raises(BudgetTooSmall):
        d.finish(D("0.02"))
    # fitting switched off: the explicit cap stands and the gate answers 402 (worst > remaining)
    plan = anthropic.draft("POST", "/v1/messages", body(max_tokens=128000, model="claude-opus-4-5"), table=TABLE,
                           settings=PlanSettings(fit_caps=False)).finish(D("0.50"))
    assert plan.rewrites == {} and plan.worst_case > D("0.50")


def test_usage_from_body_converts_cache_fields():
    usage, model, tier = anthropic.usage_from_body({"model": "claude-sonnet-4-5-20250929", "usage": {
        "input_tokens": 25, "cache_creation_input_tokens": 3000, "cache_read_input_tokens": 12000,
        "cache_creation": {"ephemeral_5m_input_tokens": 1000, "ephemeral_1h_input_tokens": 2000},
        "output_tokens": 1200, "service_tier": "standard"}})
    assert usage == Usage(input_tokens=15025, cached_tokens=12000, cache_write_tokens=1000,
                          cache_write_1h_tokens=2000, output_tokens=1200)
    assert model == "claude-sonnet-4-5-20250929" and tier == "standard"
    price = TABLE.resolve("claude-sonnet-4-5")
    # 25 x 3 + 1000 x 3.75 + 2000 x 6 + 12000 x 0.3 + 1200 x 15, per million
    assert cost(price, usage) == D("0.037425")


def test_error_body_shape():
    b = anthropic.error_body(402, "pouch: budget exceeded", "budget_exceeded")
    assert b["type"] == "error" and b["error"] == {"type": "billing_error", "message": "pouch: budget exceeded"}


# -- streams ------------------------------------------------------------------------------------
def sse(event, data):
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def stream(texts, *, input_tokens=25, output_tokens=None, model="claude-sonnet-4-5-20250929"):
    out = [sse("message_start", {"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": model,
        "usage": {"input_tokens": input_tokens, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
                  "output_tokens": 1}}}),
           sse("content_block_start", {"type": "content_block_start", "index": 0,
                                       "content_block": {"type": "text", "text": ""}}),
           sse("ping", {"type": "ping"})]
    for t in texts:
        out.append(sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                               "delta": {"type": "text_delta", "text": t}}))
    out.append(sse("content_block_stop", {"type": "content_block_stop", "index": 0}))
    out.append(sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                                     "usage": {"output_tokens": output_tokens if output_tokens is not None else len(texts)}}))
    out.append(sse("message_stop", {"type": "message_stop"}))
    return b"".join(out)


def plan_for(max_tokens=1000, budget=D(100)):
    return anthropic.draft("POST", "/v1/messages", body(max_tokens=max_tokens, stream=True), table=TABLE).finish(budget)


@pytest.mark.parametrize("size", [1, 7, 64, 100_000])
def test_stream_settles_from_the_last_message_delta_whatever_the_chunking(size):
    raw = stream(["Hello", " world"] * 10, output_tokens=42)
    plan = plan_for()
    m = anthropic.new_meter(plan, plan.worst_case)
    out = b""
    for i in range(0, len(raw), size):
        out += b"".join(m.feed(raw[i:i + size]))
    out += b"".join(m.finish())
    assert out == raw  # forwarded byte for byte
    assert m.done and m.usage_final and m.usage_source == "provider"
    assert m.final_usage() == Usage(input_tokens=25, output_tokens=42)  # never 1 + 42
    assert m.model_reported == "claude-sonnet-4-5-20250929"


def test_message_delta_input_fields_overwrite():
    raw = stream(["x"], output_tokens=5).replace(b'"usage": {"output_tokens": 5}',
                                                 b'"usage": {"output_tokens": 5, "input_tokens": 30, "cache_read_input_tokens": 100}')
    plan = plan_for()
    m = anthropic.new_meter(plan, plan.worst_case)
    m.feed(raw)
    assert m.final_usage() == Usage(input_tokens=130, cached_tokens=100, output_tokens=5)


def test_a_disconnect_bills_the_input_plus_what_was_counted():
    raw = stream(["word "] * 50)
    cut = raw[: raw.index(b"message_delta")]
    plan = plan_for()
    m = anthropic.new_meter(plan, plan.worst_case)
    m.feed(cut)
    assert not m.usage_final
    u = m.final_usage()
    assert u.input_tokens == 25 and 45 <= u.output_tokens <= 55


def test_the_stream_is_cut_at_the_reservation():
    plan = plan_for(max_tokens=100_000)
    reservation = cost(plan.price, Usage(input_tokens=25, output_tokens=100))  # room for ~100 tokens
    m = anthropic.new_meter(plan, reservation)
    out = b"".join(m.feed(stream(["word "] * 500)))
    assert m.cut and m.cut_reason == "budget_exceeded"
    assert out.endswith(b"\n\n") and b'"billing_error"' in out.split(b"event: error")[-1]
    assert 95 <= m.output_tokens_counted <= 110
    assert m.running_cost >= reservation
    assert m.feed(b"more") == []


def test_a_provider_error_event_is_recorded():
    plan = plan_for()
    m = anthropic.new_meter(plan, plan.worst_case)
    m.feed(sse("error", {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))
    assert m.provider_error == {"type": "overloaded_error", "message": "Overloaded"}


def test_a_gzipped_stream_is_decoded_and_metered_and_an_unknown_encoding_fails_closed():
    import zlib
    raw = stream(["Hello", " world"] * 5, output_tokens=12)
    z = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    gz = z.compress(raw) + z.flush()
    plan = plan_for()
    m = anthropic.new_meter(plan, plan.worst_case, content_encoding="gzip")
    out = b"".join(b"".join(m.feed(gz[i:i + 50])) for i in range(0, len(gz), 50)) + b"".join(m.finish())
    assert out == raw  # forwarded decoded
    assert m.usage_final and m.final_usage() == Usage(input_tokens=25, output_tokens=12)
    m = anthropic.new_meter(plan, plan.worst_case, content_encoding="br")
    out = b"".join(m.feed(b"\x1b\x00"))
    assert m.cut and m.undecodable and b"undecodable_stream" in out


def test_the_openai_provider_refuses_background_responses():
    from pouch_addon.providers import openai

    body = {"model": "gpt-4o-mini", "input": "hi", "background": True}
    with pytest.raises(PlanError) as e:
        openai.draft("POST", "/v1/responses", body, table=TABLE)
    assert e.value.code == "pouch_unsupported" and "background" in str(e.value)
    assert openai.draft("POST", "/v1/responses", {**body, "background": False}, table=TABLE).api == "responses"
