"""The request planner: endpoint classes, worst-case cost, injected caps and body rewrites."""

import math
from decimal import Decimal as D

import pytest

from pouch_addon import tokens
from pouch_addon.plan import (
    BudgetTooSmall, PlanError, PlanSettings, classify, draft_plan, estimate_input_tokens, make_plan, parse_body,
)
from pouch_addon.pricing import PriceTable

TABLE = PriceTable.load()
M = D(1_000_000)
MSGS = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello to the world."}]


def plan(body, remaining="100", path="/v1/chat/completions", **settings):
    return make_plan("POST", path, body, table=TABLE, remaining=D(remaining), settings=PlanSettings(**settings))


@pytest.mark.parametrize("method,path,kind", [
    ("GET", "/v1/models", "free"),
    ("GET", "/v1/files?limit=3", "free"),
    ("POST", "/v1/chat/completions", "billed"),
    ("POST", "/v1/chat/completions?x=1", "billed"),
    ("POST", "/v1/responses", "billed"),
    ("POST", "/v1/completions", "billed"),
    ("POST", "/v1/embeddings", "billed"),
    ("POST", "/v1/moderations", "free"),
    ("POST", "/v1/responses/input_tokens", "free"),
    ("POST", "/v1/batches", "unknown"),
    ("POST", "/v1/images/generations", "unknown"),
    ("DELETE", "/v1/files/abc", "unknown"),
])
def test_classify(method, path, kind):
    assert classify(method, path) == kind


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"\xff\xfe", b""])
def test_bad_bodies_are_clear_errors(raw):
    with pytest.raises(PlanError) as exc:
        parse_body(raw)
    assert exc.value.code == "pouch_bad_json" and exc.value.status == 400
    assert exc.value.body()["error"]["code"] == "pouch_bad_json"


def test_chat_worst_case_is_margin_input_plus_cap_times_n_priced_exactly():
    body = {"model": "gpt-4o", "messages": MSGS, "max_tokens": 100, "n": 3}
    p = plan(body)
    est = tokens.estimate_chat_prompt(body, "gpt-4o")
    assert p.input_tokens == est and p.reserved_input_tokens == math.ceil(est * 1.1)
    assert (p.output_cap, p.choices, p.rewrites) == (100, 3, {})
    assert p.worst_case == D(math.ceil(est * 1.1)) * D("2.5") / M + D(300) * D(10) / M


def test_smallest_of_both_caps_counts():
    p = plan({"model": "gpt-4o", "messages": MSGS, "max_tokens": 500, "max_completion_tokens": 50})
    assert p.output_cap == 50


def test_cap_above_the_models_max_output_is_bounded_by_it():
    p = plan({"model": "gpt-4o", "messages": MSGS, "max_completion_tokens": 10**9})
    assert p.output_cap == 16384


def test_missing_cap_is_injected_at_model_max_when_affordable():
    p = plan({"model": "gpt-4o", "messages": MSGS})
    assert p.rewrites == {"max_completion_tokens": 16384} and p.output_cap == 16384


def test_missing_cap_is_injected_at_what_the_budget_can_pay():
    body = {"model": "gpt-4o", "messages": MSGS}
    p = plan(body, remaining="0.01")
    input_cost = D(p.reserved_input_tokens) * D("2.5") / M
    expected = int((D("0.01") - input_cost) / (D(10) / M))
    assert p.rewrites == {"max_completion_tokens": expected} and expected < 1000
    assert p.worst_case <= D("0.01")


def test_budget_that_cannot_pay_one_token_is_refused_before_reserving():
    with pytest.raises(BudgetTooSmall) as exc:
        plan({"model": "gpt-4o", "messages": MSGS}, remaining="0.00001")
    assert exc.value.remaining == D("0.00001") and exc.value.needed > D("0.00001")


def test_injection_off_reserves_the_models_max_output():
    p = plan({"model": "gpt-4o", "messages": MSGS}, remaining="0.01", inject_max_tokens=False)
    assert p.rewrites == {} and p.output_cap == 16384


def test_streamed_chat_gets_include_usage_and_remembers_the_client_did_not_ask():
    p = plan({"model": "gpt-4o", "messages": MSGS, "stream": True, "max_tokens": 5,
              "stream_options": {"include_obfuscation": False}})
    assert p.rewrites == {"stream_options": {"include_obfuscation": False, "include_usage": True}}
    assert p.client_wants_usage is False and p.stream is True


def test_client_that_asked_for_usage_is_left_alone():
    p = plan({"model": "gpt-4o", "messages": MSGS, "stream": True, "max_tokens": 5,
              "stream_options": {"include_usage": True}})
    assert p.rewrites == {} and p.client_wants_usage is True


def test_non_streaming_requests_never_get_stream_options():
    p = plan({"model": "gpt-4o", "messages": MSGS, "max_tokens": 5})
    assert "stream_options" not in p.rewrites


def test_responses_cap_field_and_continued_conversations_bounded_by_context_window():
    body = {"model": "gpt-4o", "input": "hi", "max_output_tokens": 10, "previous_response_id": "resp_1"}
    p = plan(body, path="/v1/responses")
    assert p.reserved_input_tokens == 128000 and p.output_cap == 10
    q = plan({"model": "gpt-4o", "input": "hi"}, path="/v1/responses")
    assert q.rewrites == {"max_output_tokens": 16384}


def test_legacy_completions_default_cap_and_best_of():
    p = plan({"model": "gpt-3.5-turbo-instruct", "prompt": "Once", "n": 2, "best_of": 3}, path="/v1/completions")
    assert (p.output_cap, p.choices, p.rewrites) == (16, 3, {})


def test_embeddings_cost_input_only():
    p = plan({"model": "text-embedding-3-small", "input": ["a b c", "d e"]}, path="/v1/embeddings")
    assert p.output_cap == 0
    assert p.worst_case == D(p.reserved_input_tokens) * D("0.02") / M


def test_flex_requests_reserve_at_least_the_standard_price():
    p = plan({"model": "o3", "messages": MSGS, "max_tokens": 100, "service_tier": "flex"})
    assert p.tier == "flex"
    assert p.worst_case == D(p.reserved_input_tokens) * D(2) / M + D(100) * D(8) / M


def test_priority_tier_reserves_at_priority_prices():
    p = plan({"model": "gpt-4o", "messages": MSGS, "max_tokens": 100, "service_tier": "priority"})
    assert p.worst_case == D(p.reserved_input_tokens) * D("4.25") / M + D(100) * D(17) / M


@pytest.mark.parametrize("body,code", [
    ({"messages": MSGS}, "pouch_missing_model"),
    ({"model": 4, "messages": MSGS}, "pouch_missing_model"),
    ({"model": "gpt-unknown-9", "messages": MSGS}, "pouch_unknown_model"),
    ({"model": "gpt-4o", "messages": MSGS, "max_tokens": "ten"}, "pouch_invalid_request"),
    ({"model": "gpt-4o", "messages": MSGS, "max_tokens": -1}, "pouch_invalid_request"),
    ({"model": "gpt-4o", "messages": MSGS, "n": 0}, "pouch_invalid_request"),
    ({"model": "gpt-4o", "messages": MSGS, "max_tokens": True}, "pouch_invalid_request"),
    ({"model": "gpt-4o", "messages": "not a list"}, "pouch_invalid_request"),
])
def test_invalid_requests_are_refused_with_a_code(body, code):
    with pytest.raises(PlanError) as exc:
        plan(body)
    assert exc.value.code == code
    if code == "pouch_unknown_model":
        assert "gpt-unknown-9" in str(exc.value)


def test_estimate_input_tokens_for_the_cli():
    body = {"model": "gpt-4o", "messages": MSGS}
    assert estimate_input_tokens(body, endpoint="/v1/chat/completions") == tokens.estimate_chat_prompt(body, "gpt-4o")
    with pytest.raises(PlanError, match="unknown endpoint"):
        estimate_input_tokens(body, endpoint="/v1/nope")


def test_a_draft_finishes_to_the_same_plan_at_any_balance():
    """draft_plan does the reading and estimating once; finish(remaining) is make_plan's result."""
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello there " * 40}], "stream": True}
    draft = draft_plan("POST", "/v1/chat/completions", body, table=TABLE)
    for remaining in ("100", "0.5", "0.02"):
        direct = make_plan("POST", "/v1/chat/completions", body, table=TABLE, remaining=D(remaining))
        assert draft.finish(D(remaining)) == direct
    # finishing never changes the draft (it is reused inside a ledger transaction)
    assert draft.cap is None and draft.rewrites == {"stream_options": {"include_usage": True}}
    with pytest.raises(BudgetTooSmall):
        draft.finish(D("0.00001"))


def test_a_draft_raises_every_input_error_before_the_ledger_is_touched():
    for body in ({"messages": []}, {"model": "no-such-model", "messages": []}):
        with pytest.raises(PlanError):
            draft_plan("POST", "/v1/chat/completions", body, table=TABLE)
    # no cap, injection off and an unknown max output: unbounded, refused while drafting
    from pouch_addon.pricing import ModelPrice
    entry = TABLE.resolve("gpt-4o")
    no_max = ModelPrice(**{**entry.__dict__, "max_output_tokens": None})
    table = type("T", (), {"resolve": staticmethod(lambda m: no_max)})()
    with pytest.raises(PlanError, match="cannot be bounded"):
        draft_plan("POST", "/v1/chat/completions", {"model": "gpt-4o", "messages": []}, table=table,
                   settings=PlanSettings(inject_max_tokens=False))
