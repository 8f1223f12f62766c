"""Which cost settles a call, on each way it can end."""

from decimal import Decimal as D

from pouch_addon import settlement
from pouch_addon.plan import PlanSettings, make_plan
from pouch_addon.pricing import PriceTable, Usage

TABLE = PriceTable.load()
M = D(1_000_000)


def chat_plan(model="gpt-4o", cap=100):
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
    plan = chat_plan("gpt-4o")
    s = settlement.completed(TABLE, plan, Usage(input_tokens=10, output_tokens=10), 0, model_reported="gpt-4o-mini")
    assert s.cost == D(10) * D("0.15") / M + D(10) * D("0.6") / M
    s = settlement.completed(TABLE, plan, Usage(input_tokens=10, output_tokens=10), 0, model_reported="weird-x")
    assert s.cost == D(10) * D("2.5") / M + D(10) * D(10) / M


def test_completed_prices_the_tier_the_provider_reports():
    plan = chat_plan("gpt-4o")
    s = settlement.completed(TABLE, plan, Usage(input_tokens=10, output_tokens=10), 0, tier_reported="priority")
    assert s.cost == D(10) * D("4.25") / M + D(10) * D(17) / M


def test_partial_bills_input_plus_counted_output_never_above_reservation():
    plan = chat_plan()
    s = settlement.partial(plan, D(1), counted_output=5, status="client_disconnect")
    assert s.cost == D(plan.input_tokens) * D("2.5") / M + D(5) * D(10) / M and s.cost > 0
    capped = settlement.partial(plan, D("0.00001"), counted_output=5000, status="cut_off")
    assert capped.cost == D("0.00001") and "capped_at_reservation" in capped.flags


def test_unanswered_and_provider_errors():
    assert settlement.unanswered(D("0.5"), sent=True).cost == D("0.5")
    assert settlement.unanswered(D("0.5"), sent=True).flags == ["outcome_unknown"]
    assert settlement.unanswered(D("0.5"), sent=False).cost == 0
    assert settlement.provider_error(503).status == "http_503" and settlement.provider_error(503).cost == 0


def test_from_response_body():
    plan = chat_plan()
    body = (b'{"model":"gpt-4o-2024-08-06","choices":[{"message":{"content":"hello there"}}],'
            b'"usage":{"prompt_tokens":20,"completion_tokens":4,"total_tokens":24}}')
    s = settlement.from_response_body(TABLE, plan, body)
    assert s.cost == D(20) * D("2.5") / M + D(4) * D(10) / M and s.model_reported == "gpt-4o-2024-08-06"
    no_usage = settlement.from_response_body(TABLE, plan, b'{"choices":[{"message":{"content":"hello there"}}]}')
    assert no_usage.usage.output_tokens == 2 and no_usage.usage_source == "counted"
    garbage = settlement.from_response_body(TABLE, plan, b"<html>")
    assert garbage.cost == plan.worst_case and garbage.status == "unreadable_response"
