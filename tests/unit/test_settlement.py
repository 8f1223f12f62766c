"""Which cost settles a call, on each way it can end."""

from decimal import Decimal as D

from pouch_addon.providers import openai
from pouch_addon import settlement
from pouch_addon.plan import PlanSettings, make_plan
from pouch_addon.pricing import PriceTable, Usage

TABLE = PriceTable.load()
M = D(1_000_000)


def chat_plan(model="gpt-4o-2024-08-06", cap=100):  # a pinned snapshot: reserved at its own price
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": cap}
    return make_plan("POST", "/v1/chat/completions", body, table=TABLE, remaining=D(100), settings=PlanSettings())


def test_completed_uses_provider_usage_with_cached_and_reasoning():
    plan = chat_plan()
    usage = Usage(input_tokens=1200, cached_tokens=1024, output_tokens=850, reasoning_tokens=640)
    s = settlement.completed(TABLE, plan, usage, counted_output=3)
    assert s.usage_source == "provider" and s.status == "ok"
    assert s.cost == D(176) * D("2.5") / M + D(1024) * D("1.25") / M + D(850) * D(10) / M


def test_completed_without_usage_falls_back_to_the_count_and_flags_it():
    plan = chat_plan()
    s = settlement.completed(TABLE, plan, None, counted_output=7)
    assert s.usage_source == "counted" and "usage_missing" in s.flags
    assert s.cost == D(plan.input_tokens) * D("2.5") / M + D(7) * D(10) / M


def test_completed_prices_the_model_the_provider_reports():
    plan = chat_plan()
    s = settlement.completed(TABLE, plan, Usage(input_tokens=10, output_tokens=10), 0, model_reported="gpt-4o-mini")
    assert s.cost == D(10) * D("0.15") / M + D(10) * D("0.6") / M
    s = settlement.completed(TABLE, plan, Usage(input_tokens=10, output_tokens=10), 0, model_reported="weird-x")
    assert s.cost == D(10) * D("2.5") / M + D(10) * D(10) / M


def test_completed_prices_the_tier_the_provider_reports():
    plan = chat_plan()
    s = settlement.completed(TABLE, plan, Usage(input_tokens=10, output_tokens=10), 0, tier_reported="priority")
    assert s.cost == D(10) * D("4.25") / M + D(10) * D(17) / M


def test_partial_bills_input_plus_counted_output_never_above_reservation():
    plan = chat_plan()
    s = settlement.partial(plan, D(1), counted_output=5, status="client_disconnect")
    assert s.cost == D(plan.input_tokens) * D("2.5") / M + D(5) * D(10) / M and s.cost > 0
    capped = settlement.partial(plan, D("0.00001"), counted_output=5000, status="cut_off")
    assert capped.cost == D("0.00001") and "capped_at_reservation" in capped.flags


def test_partial_flags_its_own_count_but_not_the_providers_usage():
    plan = chat_plan()
    counted = settlement.partial(plan, D(1), counted_output=5, status="client_disconnect")
    assert counted.usage_source == "counted" and counted.flags == ["usage_missing"]
    reported = settlement.partial(plan, D(1), 0, "client_disconnect", usage=Usage(input_tokens=9, output_tokens=5))
    assert reported.usage_source == "provider" and reported.flags == []


def test_an_undecodable_stream_bills_its_whole_reservation_flagged():
    s = settlement.undecodable(D("0.0042"), {"web_search_call": 1})
    assert (s.cost, s.status, s.flags, s.usage_source) == (D("0.0042"), "cut_off", ["undecodable_stream"], "none")
    assert s.details()["flags"] == ["undecodable_stream"] and s.tool_calls == {"web_search_call": 1}


def test_unanswered_and_provider_errors():
    assert settlement.unanswered(D("0.5"), sent=True).cost == D("0.5")
    assert settlement.unanswered(D("0.5"), sent=True).flags == ["outcome_unknown"]
    assert settlement.unanswered(D("0.5"), sent=False).cost == 0
    assert settlement.provider_error(503).status == "http_503" and settlement.provider_error(503).cost == 0


def test_from_response_body():
    plan = chat_plan()
    body = (b'{"model":"gpt-4o-2024-08-06","choices":[{"message":{"content":"hello there"}}],'
            b'"usage":{"prompt_tokens":20,"completion_tokens":4,"total_tokens":24}}')
    s = settlement.from_response_body(TABLE, plan, body, openai)
    assert s.cost == D(20) * D("2.5") / M + D(4) * D(10) / M and s.model_reported == "gpt-4o-2024-08-06"
    no_usage = settlement.from_response_body(TABLE, plan, b'{"choices":[{"message":{"content":"hello there"}}]}', openai)
    assert no_usage.usage.output_tokens == 2 and no_usage.usage_source == "counted"
    garbage = settlement.from_response_body(TABLE, plan, b"<html>", openai)
    assert garbage.cost == plan.worst_case and garbage.status == "unreadable_response"


# ------------------------------------------------------------------------------------------------
# settles within their reservation when the body did not show everything (issue 13)

def responses_plan(body, remaining="100"):
    return make_plan("POST", "/v1/responses", {"input": "hi", **body}, table=TABLE, remaining=D(remaining),
                     settings=PlanSettings())


def responses_body(usage, output=(), model="gpt-4o-mini"):
    import json
    return json.dumps({"model": model, "output": [*output, {"type": "message", "content": []}],
                       "usage": usage}).encode()


def test_a_stored_prompt_billed_far_above_its_visible_input_stays_within_the_reservation():
    """Seen: estimated at 8 input tokens, the provider reported 100,000 (245x the reservation)."""
    plan = responses_plan({"model": "gpt-4o-mini", "prompt": {"id": "pmpt_1"}, "max_output_tokens": 20})
    s = settlement.from_response_body(TABLE, plan, responses_body(
        {"input_tokens": 100000, "output_tokens": 20, "total_tokens": 100020}), openai)
    assert s.cost == D(100000) * D("0.15") / M + D(20) * D("0.6") / M
    assert s.cost <= plan.worst_case and s.flags == []


def test_reported_tool_calls_are_billed_and_stay_within_the_reservation():
    plan = responses_plan({"model": "gpt-4o-mini", "max_output_tokens": 50, "max_tool_calls": 3,
                           "tools": [{"type": "web_search"}, {"type": "code_interpreter", "container": {"type": "auto"}}]})
    calls = [{"type": "web_search_call", "id": "ws_1"}, {"type": "web_search_call", "id": "ws_2"},
             {"type": "code_interpreter_call", "id": "ci_1", "container_id": "c1"}]
    # three model turns, each reading (at most) the whole context window
    usage = {"input_tokens": 3 * 128000, "output_tokens": 50, "total_tokens": 3 * 128000 + 50}
    s = settlement.from_response_body(TABLE, plan, responses_body(usage, calls), openai)
    tokens = D(3 * 128000) * D("0.15") / M + D(50) * D("0.6") / M
    assert s.cost == tokens + 2 * D("0.025") + D("0.03")  # two searches, one container session
    assert s.cost <= plan.worst_case and s.flags == []


def test_a_tool_call_pouch_cannot_price_bills_the_whole_reservation_flagged():
    plan = responses_plan({"model": "gpt-4o-mini", "prompt": {"id": "pmpt_1"}, "max_output_tokens": 5})
    s = settlement.from_response_body(TABLE, plan, responses_body(
        {"input_tokens": 10, "output_tokens": 5, "total_tokens": 15}, [{"type": "file_search_call", "id": "fs"}]), openai)
    assert s.cost == plan.worst_case and "unpriced_tool_call" in s.flags


def test_partial_bills_the_tool_calls_seen_capped_at_the_reservation():
    plan = responses_plan({"model": "gpt-4o-mini", "max_output_tokens": 50, "max_tool_calls": 2,
                           "tools": [{"type": "web_search"}]})
    s = settlement.partial(plan, plan.worst_case, 3, "client_disconnect", tool_calls={"web_search_call": 1})
    assert s.cost == D(plan.input_tokens) * D("0.15") / M + D(3) * D("0.6") / M + D("0.025")
    capped = settlement.partial(plan, plan.worst_case, 10**9, "cut_off", tool_calls={"web_search_call": 2})
    assert capped.cost == plan.worst_case and "capped_at_reservation" in capped.flags


def test_chat_web_search_bills_its_search():
    plan = chat_plan("gpt-4o-mini-search-preview")
    s = settlement.completed(TABLE, plan, Usage(input_tokens=5000, output_tokens=50), 0,
                             model_reported="gpt-4o-mini-search-preview-2025-03-11")
    assert s.cost == D(5000) * D("0.15") / M + D(50) * D("0.6") / M + D("0.025") <= plan.worst_case


def test_an_alias_served_as_its_dearest_snapshot_settles_within_the_reservation():
    plan = chat_plan("gpt-4o", cap=100)
    usage = Usage(input_tokens=plan.reserved_input_tokens, output_tokens=100)
    s = settlement.completed(TABLE, plan, usage, 0, model_reported="gpt-4o-2024-05-13")
    assert s.cost == D(plan.reserved_input_tokens) * D(5) / M + D(100) * D(15) / M
    assert s.cost <= plan.worst_case and s.flags == []
    # a cheaper snapshot is billed as such
    cheap = settlement.completed(TABLE, plan, usage, 0, model_reported="gpt-4o-2024-08-06")
    assert cheap.cost == D(plan.reserved_input_tokens) * D("2.5") / M + D(100) * D(10) / M


def test_a_model_outside_the_reservation_is_billed_as_reported_and_flagged():
    plan = chat_plan("gpt-4o-mini")
    usage = Usage(input_tokens=10, output_tokens=10)
    s = settlement.completed(TABLE, plan, usage, 0, model_reported="gpt-4o")
    assert s.cost == D(10) * D("2.5") / M + D(10) * D(10) / M and "model_reported_dearer" in s.flags
    unknown = settlement.completed(TABLE, plan, usage, 0, model_reported="weird-x")
    assert unknown.cost == D(10) * D("0.15") / M + D(10) * D("0.6") / M  # the reserved price
    assert "model_reported_unknown" in unknown.flags


def test_a_settle_from_the_providers_partial_usage_is_marked_as_counted():
    s = settlement.Settlement(D("0.01"), "upstream_disconnect", None, "provider", None, [])
    assert settlement.counted(s) is s and s.usage_source == "counted" and s.flags == ["usage_missing"]
    assert settlement.counted(s).flags == ["usage_missing"]  # once
