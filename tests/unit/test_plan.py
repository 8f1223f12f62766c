"""The request planner: endpoint classes, worst-case cost, injected caps and body rewrites."""

import math
from decimal import Decimal as D

import pytest

from pouch_addon import tokens
from pouch_addon.plan import (
    BudgetTooSmall, PlanError, PlanSettings, classify, draft_plan, estimate_input_tokens, make_plan, parse_body,
)
from pouch_addon.pricing import PriceTable, Usage, cost

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
    # the exact count first: it loads the encoding, so the plan counts exactly too (before the
    # encoding is loaded a plan bounds the input by its UTF-8 bytes, see test_lazy_tokens.py)
    est = tokens.estimate_chat_prompt(body, "gpt-4o")
    p = plan(body)
    assert p.input_tokens == est and p.reserved_input_tokens == math.ceil(est * 1.1)
    assert (p.output_cap, p.choices, p.rewrites) == (100, 3, {})
    # gpt-4o is an alias: it may be served (and billed) as gpt-4o-2024-05-13, $5 / $15 per 1M
    assert p.worst_case == D(math.ceil(est * 1.1)) * D(5) / M + D(300) * D(15) / M


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
    input_cost = D(p.reserved_input_tokens) * D(5) / M
    expected = int((D("0.01") - input_cost) / (D(15) / M))
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
    p = plan({"model": "gpt-4o-2024-08-06", "messages": MSGS, "max_tokens": 100, "service_tier": "priority"})
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
    table = type("T", (), {"resolve_bound": staticmethod(lambda m: no_max)})()
    with pytest.raises(PlanError, match="cannot be bounded"):
        draft_plan("POST", "/v1/chat/completions", {"model": "gpt-4o", "messages": []}, table=table,
                   settings=PlanSettings(inject_max_tokens=False))


# ------------------------------------------------------------------------------------------------
# input the body does not show, server-side tools, aliases (issue 13: the reservation is a bound)

def responses(body, remaining="100", **settings):
    return plan(body, remaining=remaining, path="/v1/responses", **settings)


def ctx(model):
    return TABLE.resolve_bound(model).max_input_tokens


@pytest.mark.parametrize("extra", [
    {"prompt": {"id": "pmpt_abc", "variables": {"city": "Paris"}}, "max_tool_calls": 0},
    {"previous_response_id": "resp_1"},
    {"conversation": "conv_1"},
    {"conversation": {"id": "conv_1"}, "truncation": "auto"},
    {"input": [{"type": "item_reference", "id": "msg_1"}]},
    {"input": [{"role": "user", "content": [{"type": "input_file", "file_id": "file-1"}]}]},
    {"input": [{"role": "user", "content": [{"type": "input_file", "file_url": "https://x.test/a.pdf"}]}]},
    {"input": [{"role": "user", "content": [{"type": "input_file", "filename": "a.pdf",
                                             "file_data": "data:application/pdf;base64,JVBERi0xLjQK"}]}]},
    {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "https://x.test/a.png",
                                             "detail": "original"}]}]},
])
def test_input_the_body_does_not_show_is_reserved_at_the_context_window(extra):
    """A stored prompt was estimated at 8 tokens and billed for 100,000: whatever the server adds
    to the input is bounded by what one model turn can read, the context window."""
    p = responses({"model": "gpt-4o-mini", "input": "hi", "max_output_tokens": 20, **extra})
    assert p.reserved_input_tokens == ctx("gpt-4o-mini") == 128000
    assert p.input_tokens == 128000  # what a call without usage is billed for
    assert p.worst_case >= D(128000) * D("0.15") / M + D(20) * D("0.6") / M


def test_chat_files_and_images_without_a_rule_are_bounded_by_the_context_window():
    file_part = {"type": "file", "file": {"file_id": "file-1"}}
    p = plan({"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": [file_part]}]})
    assert p.reserved_input_tokens == 128000
    image = {"type": "image_url", "image_url": {"url": "https://x.test/a.png"}}
    body = {"max_tokens": 5, "messages": [{"role": "user", "content": [image]}]}
    assert plan({**body, "model": "chat-latest"}).reserved_input_tokens == ctx("chat-latest")
    # a model with a published vision rule: the rule's largest image bounds it, no context window
    assert plan({**body, "model": "gpt-4o-mini"}).reserved_input_tokens < 128000


def test_a_continued_conversation_without_a_known_context_window_is_refused():
    from pouch_addon.pricing import ModelPrice
    no_ctx = ModelPrice(**{**TABLE.resolve("gpt-4o").__dict__, "max_input_tokens": None})
    table = type("T", (), {"resolve_bound": staticmethod(lambda m: no_ctx)})()
    with pytest.raises(PlanError) as exc:
        draft_plan("POST", "/v1/responses", {"model": "gpt-4o", "input": "hi", "previous_response_id": "r"},
                   table=table)
    assert exc.value.code == "pouch_unbounded" and exc.value.status == 400


def test_server_side_tools_get_a_tool_call_cap_and_reserve_a_turn_and_a_fee_per_call():
    body = {"model": "gpt-4o-mini", "input": "news?", "max_output_tokens": 50,
            "tools": [{"type": "web_search", "search_context_size": "high"}, {"type": "function", "name": "f"}]}
    p = responses(body)
    assert p.rewrites["max_tool_calls"] == 8
    first = math.ceil(tokens.estimate_responses_input(body, "gpt-4o-mini") * 1.1)
    assert p.reserved_input_tokens == first + 8 * 128000
    fee = D("0.025")  # LiteLLM's search_context_cost_per_query for gpt-4o-mini
    assert p.worst_case == D(first + 8 * 128000) * D("0.15") / M + D(50) * D("0.6") / M + 8 * fee
    # the request's own max_tool_calls is kept
    q = responses({**body, "max_tool_calls": 2})
    assert "max_tool_calls" not in q.rewrites and q.reserved_input_tokens == first + 2 * 128000
    assert q.worst_case == D(first + 2 * 128000) * D("0.15") / M + D(50) * D("0.6") / M + 2 * fee


def test_the_injected_tool_call_cap_fits_the_budget():
    body = {"model": "gpt-4o-mini", "input": "news?", "max_output_tokens": 50, "tools": [{"type": "web_search"}]}
    p = responses(body, remaining="0.1")
    assert 1 <= p.rewrites["max_tool_calls"] < 8 and p.worst_case <= D("0.1")
    with pytest.raises(BudgetTooSmall):
        responses(body, remaining="0.01")


def test_code_interpreter_and_mcp_reserve_turns_and_mcp_reads_its_tool_list_first():
    body = {"model": "gpt-4.1", "input": "plot it", "max_output_tokens": 10, "max_tool_calls": 1,
            "tools": [{"type": "code_interpreter", "container": {"type": "auto"}}]}
    p = responses(body)
    assert p.reserved_input_tokens < 2 * ctx("gpt-4.1")  # one visible turn + one tool turn
    assert p.worst_case > D(ctx("gpt-4.1")) * D(2) / M + D("0.03")  # the container session fee
    mcp = responses({**body, "tools": [{"type": "mcp", "server_label": "x", "server_url": "https://x.test"}]})
    assert mcp.reserved_input_tokens == 2 * ctx("gpt-4.1")


@pytest.mark.parametrize("tool", [
    {"type": "file_search", "vector_store_ids": ["vs_1"]},  # LiteLLM has no file search fee
    {"type": "image_generation"},
    {"type": "shell", "environment": {"type": "container_auto"}},
    {"type": "tool_search"},
    {"type": "some_future_tool"},
])
def test_server_side_tools_pouch_cannot_price_are_refused(tool):
    with pytest.raises(PlanError) as exc:
        responses({"model": "gpt-4o-mini", "input": "hi", "max_output_tokens": 5, "tools": [tool]})
    assert exc.value.code == "pouch_unbounded" and exc.value.status == 400
    assert "cannot be bounded" in str(exc.value) and "nothing was sent" in str(exc.value)


def test_client_side_tools_add_no_turns():
    tools = [{"type": "function", "name": "f"}, {"type": "computer_use_preview", "display_width": 1,
                                                  "display_height": 1, "environment": "browser"},
             {"type": "shell"}, {"type": "apply_patch"}, {"type": "custom", "name": "c"}]
    p = responses({"model": "gpt-4o-mini", "input": "hi", "max_output_tokens": 5, "tools": tools})
    assert "max_tool_calls" not in p.rewrites and p.reserved_input_tokens < 1000


def test_server_side_tools_without_max_tool_calls_are_refused_when_injection_is_off():
    with pytest.raises(PlanError) as exc:
        responses({"model": "gpt-4o-mini", "input": "hi", "max_output_tokens": 5, "tools": [{"type": "web_search"}]},
                  inject_max_tokens=False)
    assert exc.value.code == "pouch_unbounded" and "max_tool_calls" in str(exc.value)


def test_a_stored_prompt_may_carry_tools_so_it_reserves_tool_turns_unless_told_otherwise():
    p = responses({"model": "gpt-4o-mini", "prompt": {"id": "pmpt_1"}, "max_output_tokens": 5})
    calls = p.rewrites["max_tool_calls"]
    assert calls >= 1 and p.reserved_input_tokens == (1 + calls) * 128000
    assert p.worst_case > calls * D("0.025")  # at least the dearest priced tool fee per call


def test_chat_web_search_pays_one_search_and_its_results_are_input():
    body = {"model": "gpt-4o-mini-search-preview", "max_tokens": 10, "messages": MSGS}
    for b in (body, {**body, "web_search_options": {"search_context_size": "low"}}):
        p = plan(b)
        assert p.reserved_input_tokens == 128000
        assert p.worst_case == D(128000) * D("0.15") / M + D(10) * D("0.6") / M + D("0.025")


def test_an_alias_is_reserved_at_its_dearest_snapshot():
    """The provider bills the snapshot it reports; gpt-4o was served as gpt-4o-2024-05-13 once."""
    body = {"model": "gpt-4o", "messages": MSGS, "max_tokens": 100}
    p = plan(body)
    for snapshot in ("gpt-4o", "gpt-4o-2024-05-13", "gpt-4o-2024-08-06", "gpt-4o-2024-11-20"):
        price = TABLE.resolve(snapshot)
        for tier in (None, "priority"):
            usage = Usage(input_tokens=p.reserved_input_tokens, output_tokens=100)
            assert cost(price, usage, tier) <= plan({**body, "service_tier": tier}).worst_case
    pinned = plan({**body, "model": "gpt-4o-2024-08-06"})
    assert pinned.worst_case == D(pinned.reserved_input_tokens) * D("2.5") / M + D(100) * D(10) / M


def test_the_worst_case_prices_input_at_the_dearest_input_side_rate():
    """Anthropic bills a 1-hour cache write at twice the input price."""
    p = plan({"model": "claude-sonnet-4-5", "messages": MSGS, "max_tokens": 10})
    written = Usage(input_tokens=p.reserved_input_tokens, cache_write_1h_tokens=p.reserved_input_tokens,
                    output_tokens=10)
    assert p.worst_case == cost(TABLE.resolve("claude-sonnet-4-5"), written)


def test_draft_plan_builds_its_draft_in_field_order():
    """``draft_plan`` builds ``DraftPlan`` positionally (on the event loop per billed call, 20
    keywords cost ~10k instructions): its fields must stay in this order."""
    from dataclasses import fields

    from pouch_addon.plan import DraftPlan

    assert [f.name for f in fields(DraftPlan)] == [
        "api", "path", "model", "price", "stream", "input_tokens", "reserved_input_tokens", "choices", "tier",
        "client_wants_usage", "cap", "cap_field", "rewrites", "notes", "input_hidden", "server_tools", "tool_calls",
        "per_call_fee", "fees", "fixed_fee", "extra_output", "fit_cap", "input_method"]
