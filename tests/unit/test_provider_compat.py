"""The OpenAI-compatible hosts (providers/compat.py) and Azure OpenAI (providers/azure.py): pure parts."""

from __future__ import annotations

import json
from decimal import Decimal as D

import pytest

from pouch_addon import settlement
from pouch_addon.plan import PlanError
from pouch_addon.pricing import PriceTable, Usage, cost
from pouch_addon.providers import DEFAULT_HOSTS, PROVIDERS, azure, compat, for_host

M = D(1_000_000)
TABLE = PriceTable.load()
BODY = {"model": "deepseek-chat", "messages": [{"role": "user", "content": "hello there"}]}


def prov(name):
    return PROVIDERS[name]


def plan(name, path, body, remaining=D(10)):
    return prov(name).draft("POST", path, body, table=TABLE).finish(remaining)


def sse(*objs, done=True) -> bytes:
    out = b"".join(b"data: " + json.dumps(o).encode() + b"\n\n" for o in objs)
    return out + (b"data: [DONE]\n\n" if done else b"")


def test_host_table_covers_the_hosts_and_registers_them():
    names = {h.name for h in compat.HOSTS_TABLE}
    assert names == {"openrouter", "deepseek", "groq", "mistral", "xai", "together", "fireworks", "perplexity"}
    for h in compat.HOSTS_TABLE:
        for host in h.hosts:
            assert host in DEFAULT_HOSTS and for_host(host).NAME == h.name
    assert for_host("myres.openai.azure.com") is azure and for_host("a.b.openai.azure.com").NAME == "openai"
    assert {h.name: h.stream_options for h in compat.HOSTS_TABLE}["mistral"] is False


@pytest.mark.parametrize("name,path,expected", [
    ("openrouter", "/api/v1/chat/completions", "/v1/chat/completions"),
    ("deepseek", "/chat/completions", "/v1/chat/completions"),
    ("deepseek", "/v1/chat/completions", "/v1/chat/completions"),
    ("deepseek", "/beta/completions", "/v1/completions"),
    ("groq", "/openai/v1/chat/completions", "/v1/chat/completions"),
    ("fireworks", "/inference/v1/chat/completions", "/v1/chat/completions"),
    ("openrouter", "/v1/chat/completions", None),
])
def test_paths_map_onto_openais(name, path, expected):
    assert compat.openai_path(prov(name).host, path) == expected
    assert prov(name).classify("POST", path) == ("billed" if expected else "unknown")


def test_a_model_prices_only_on_its_own_host():
    p = plan("deepseek", "/chat/completions", BODY)
    assert p.price.name == "deepseek/deepseek-chat" and p.price.provider == "deepseek"
    for name, model in (("deepseek", "gpt-4o"), ("groq", "deepseek-chat"), ("mistral", "nope-1")):
        with pytest.raises(PlanError) as exc:
            prov(name).draft("POST", "/v1/chat/completions" if name != "groq" else "/openai/v1/chat/completions",
                             {**BODY, "model": model}, table=TABLE)
        assert exc.value.code == "pouch_unknown_model" and model in str(exc.value)


def test_input_is_bounded_by_bytes_and_the_cap_injected_as_max_tokens():
    p = plan("deepseek", "/chat/completions", BODY)
    assert p.reserved_input_tokens == p.input_tokens >= len(json.dumps(BODY, separators=(",", ":")))
    assert "max_tokens" in p.rewrites and "max_completion_tokens" not in p.rewrites


def test_stream_options_only_where_accepted():
    stream = {**BODY, "stream": True}
    p = plan("deepseek", "/chat/completions", stream)
    assert p.rewrites["stream_options"] == {"include_usage": True}
    m = plan("mistral", "/v1/chat/completions", {**stream, "model": "mistral-large-latest"})
    assert "stream_options" not in m.rewrites
    assert prov("deepseek").new_meter(p, p.worst_case).hide_usage_chunk is True
    assert prov("mistral").new_meter(m, m.worst_case).hide_usage_chunk is False


def test_openrouter_prices_the_vendor_caps_the_route_and_asks_for_usage():
    p = plan("openrouter", "/api/v1/chat/completions", {**BODY, "model": "openai/gpt-4o:nitro", "stream": True})
    assert p.price.provider == "openai" and p.price.name == "gpt-4o"
    assert p.rewrites["usage"] == {"include": True} and p.rewrites["stream_options"] == {"include_usage": True}
    assert p.rewrites["provider"]["max_price"] == {"prompt": float(p.price.rates.input),
                                                   "completion": float(p.price.rates.output)}
    low = plan("openrouter", "/api/v1/chat/completions",
               {**BODY, "model": "openai/gpt-4o", "provider": {"order": ["x"], "max_price": {"prompt": 1}}})
    assert low.rewrites["provider"] == {"order": ["x"], "max_price": {"prompt": 1.0, "completion": 15.0}}
    claude = plan("openrouter", "/api/v1/chat/completions", {**BODY, "model": "anthropic/claude-sonnet-4.5"})
    assert claude.price.provider == "anthropic"
    for body, code in (({**BODY, "model": "meta-llama/llama-3-70b"}, "pouch_unknown_model"),
                       ({**BODY, "model": "openai/gpt-4o:online"}, "pouch_unbounded"),
                       ({**BODY, "model": "openai/gpt-4o", "models": ["openai/gpt-4o", "x/y"]}, "pouch_unbounded"),
                       ({**BODY, "model": "openai/gpt-4o", "plugins": [{"id": "web"}]}, "pouch_unbounded")):
        with pytest.raises(PlanError) as exc:
            prov("openrouter").draft("POST", "/api/v1/chat/completions", body, table=TABLE)
        assert exc.value.code == code


def test_openrouter_cost_is_the_bill_and_byok_adds_the_upstream_cost():
    p = plan("openrouter", "/api/v1/chat/completions", {**BODY, "model": "openai/gpt-4o-mini"})
    body = {"model": "openai/gpt-4o-mini", "choices": [],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15, "cost": 0.0000123}}
    usage, model, _ = prov("openrouter").usage_from_body(body)
    assert usage.billed == D("0.0000123") and model == "gpt-4o-mini"
    s = settlement.from_response_body(TABLE, p, json.dumps(body).encode(), prov("openrouter"))
    assert s.cost == D("0.0000123") and s.usage_source == "provider" and s.details()["billed_usd"] == "0.0000123"
    byok = {**body["usage"], "is_byok": True, "cost": 0.000001, "cost_details": {"upstream_inference_cost": 0.00002}}
    assert compat.with_billed(Usage.from_openai(byok), byok).billed == D("0.000021")
    no_upstream = {**body["usage"], "is_byok": True, "cost": 0.000001}
    assert compat.with_billed(Usage.from_openai(no_upstream), no_upstream).billed is None
    # another host's `cost` member is not a bill pouch knows
    other, _, _ = prov("groq").usage_from_body({"usage": {**body["usage"], "cost": 1}})
    assert other.billed is None


def test_deepseek_cache_hits_settle_exactly():
    p = plan("deepseek", "/chat/completions", BODY)
    body = {"model": "deepseek-chat", "usage": {"prompt_tokens": 1000, "completion_tokens": 100,
                                                 "prompt_cache_hit_tokens": 600, "prompt_cache_miss_tokens": 400}}
    s = settlement.from_response_body(TABLE, p, json.dumps(body).encode(), prov("deepseek"))
    r = TABLE.resolve("deepseek/deepseek-chat").rates
    assert s.cost == (400 * r.input + 600 * r.cached_input + 100 * r.output) / M
    assert s.model_reported == "deepseek/deepseek-chat" and s.flags == []


def test_openrouter_stream_comments_hidden_usage_and_cost():
    p = plan("openrouter", "/api/v1/chat/completions", {**BODY, "model": "openai/gpt-4o-mini", "stream": True})
    m = prov("openrouter").new_meter(p, p.worst_case)
    chunk = {"id": "c", "object": "chat.completion.chunk", "model": "openai/gpt-4o-mini", "usage": None,
             "choices": [{"index": 0, "delta": {"content": " one"}, "finish_reason": None}]}
    usage = {"id": "c", "object": "chat.completion.chunk", "model": "openai/gpt-4o-mini", "choices": [],
             "usage": {"prompt_tokens": 7, "completion_tokens": 1, "total_tokens": 8, "cost": 0.00042}}
    out = b"".join(m.feed(b": OPENROUTER PROCESSING\n\n") + m.feed(sse(chunk, usage)) + m.finish())
    assert b": OPENROUTER PROCESSING" in out and b'"usage"' not in out and b"[DONE]" in out
    assert m.usage_final and m.final_usage().billed == D("0.00042") and m.running_cost == D("0.00042")
    assert m.model_reported == "gpt-4o-mini"


def test_openrouter_mid_stream_error_is_recorded_and_metered_by_count():
    p = plan("openrouter", "/api/v1/chat/completions", {**BODY, "model": "openai/gpt-4o-mini", "stream": True})
    m = prov("openrouter").new_meter(p, p.worst_case)
    ok = {"id": "c", "model": "openai/gpt-4o-mini", "choices": [{"index": 0, "delta": {"content": " one two"}}]}
    err = {"id": "c", "model": "openai/gpt-4o-mini", "error": {"code": 502, "message": "upstream"},
           "choices": [{"index": 0, "delta": {"content": ""}, "finish_reason": "error"}]}
    out = b"".join(m.feed(sse(ok, err)) + m.finish())
    assert b"upstream" in out and not m.cut and m.provider_error["code"] == 502
    assert m.usage_source == "counted" and m.output_tokens_counted == 2


def test_groq_x_groq_usage_is_read():
    p = plan("groq", "/openai/v1/chat/completions", {**BODY, "model": "openai/gpt-oss-20b", "stream": True})
    m = prov("groq").new_meter(p, p.worst_case)
    last = {"id": "c", "model": "openai/gpt-oss-20b", "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "x_groq": {"usage": {"prompt_tokens": 20, "completion_tokens": 3, "total_tokens": 23}}}
    m.feed(sse(last))
    assert m.usage_final and m.final_usage() == Usage(input_tokens=20, output_tokens=3)
    assert m.model_reported == "groq/openai/gpt-oss-20b"


# -- Azure ---------------------------------------------------------------------------------------
@pytest.fixture()
def mapped():
    azure.set_deployments({"Chat4o": "gpt-4o-mini"})
    yield
    azure.set_deployments({})


AZ = "/openai/deployments/chat4o/chat/completions?api-version=2024-10-21"


def test_azure_paths():
    assert azure.split(AZ) == ("/v1/chat/completions", "chat4o")
    assert azure.split("/openai/v1/responses") == ("/v1/responses", None)
    assert azure.classify("POST", AZ) == "billed"
    assert azure.classify("POST", "/openai/deployments/d/images/generations?api-version=2024-10-21") == "unknown"
    assert azure.classify("GET", "/openai/v1/models") == "free"


def test_azure_unmapped_deployment_is_refused_naming_the_command():
    azure.set_deployments({})
    with pytest.raises(PlanError) as exc:
        azure.draft("POST", AZ, {"messages": [{"role": "user", "content": "hi"}]}, table=TABLE)
    assert exc.value.code == "pouch_unmapped_deployment" and "pouch azure map chat4o MODEL" in str(exc.value)


def test_azure_mapped_deployment_is_priced_and_usage_asked_only_where_accepted(mapped):
    body = {"messages": [{"role": "user", "content": "hi"}], "stream": True}
    p = azure.draft("POST", AZ, body, table=TABLE).finish(D(10))
    assert p.model == "gpt-4o-mini" and p.price.name == "azure/gpt-4o-mini" and "stream_options" in p.rewrites
    old = azure.draft("POST", AZ.replace("2024-10-21", "2024-02-01"), body, table=TABLE).finish(D(10))
    assert "stream_options" not in old.rewrites and "max_tokens" in old.rewrites
    assert azure.new_meter(old, old.worst_case).hide_usage_chunk is False
    v1 = azure.draft("POST", "/openai/v1/chat/completions", {**body, "model": "chat4o"}, table=TABLE).finish(D(10))
    assert v1.price.name == "azure/gpt-4o-mini" and "stream_options" in v1.rewrites
    assert "model" not in v1.rewrites  # the deployment name stays what the client sent


def test_azure_stream_quirks_and_model_mismatch(mapped):
    p = azure.draft("POST", AZ, {"messages": [{"role": "user", "content": "hi"}], "stream": True},
                    table=TABLE).finish(D(10))
    m = azure.new_meter(p, p.worst_case)
    first = {"id": "", "object": "", "created": 0, "model": "", "choices": [],
             "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}]}
    content = {"id": "c", "model": "gpt-4o-2024-08-06", "usage": None,
               "choices": [{"index": 0, "delta": {"content": " one"}, "content_filter_results": {"hate": {}}}]}
    usage = {"id": "c", "model": "gpt-4o-2024-08-06", "choices": [],
             "usage": {"prompt_tokens": 9, "completion_tokens": 1, "total_tokens": 10}}
    out = b"".join(m.feed(sse(first, content, usage)) + m.finish())
    assert b"prompt_filter_results" in out and b'"usage"' not in out
    assert m.model_reported == "azure/gpt-4o-2024-08-06"
    s = settlement.completed(TABLE, p, m.final_usage(), 0, model_reported=m.model_reported)
    assert "model_reported_mismatch" in s.flags and "model_reported_dearer" in s.flags
    assert s.cost == cost(TABLE.resolve("azure/gpt-4o-2024-08-06"), Usage(input_tokens=9, output_tokens=1))
    same = settlement.completed(TABLE, p, m.final_usage(), 0, model_reported="azure/gpt-4o-mini-2024-07-18")
    assert "model_reported_mismatch" not in same.flags


def test_allow_hosts_pattern_decrypts_one_label_under_a_wildcard():
    import re

    from pouch_addon.addons.scope import allow_hosts_pattern

    pat = re.compile(allow_hosts_pattern(["api.openai.com", "*.openai.azure.com"]))
    assert pat.match("myres.openai.azure.com:443") and pat.match("myres.openai.azure.com.:443")
    assert not pat.match("openai.azure.com:443") and not pat.match("a.b.openai.azure.com:443")
    assert not pat.match("myres.openai.azure.com.evil.example:443")


def test_azure_map_file_and_checks(tmp_path):
    from pouch_addon import azure_map

    assert azure_map.load(tmp_path) == {}
    assert azure_map.check_mapping("Chat4o", "gpt-4o-2024-08-06", TABLE) == "gpt-4o-2024-08-06"
    for dep, model in (("chat4o", "claude-sonnet-4-5"), ("chat4o", "no-such-model"), ("bad/name", "gpt-4o")):
        with pytest.raises(azure_map.AzureMapError):
            azure_map.check_mapping(dep, model, TABLE)
    path = azure_map.save(tmp_path, {"chat4o": "gpt-4o"})
    assert path.stat().st_mode & 0o777 == 0o600 and azure_map.load(tmp_path) == {"chat4o": "gpt-4o"}
    path.write_text("[1]")
    with pytest.raises(azure_map.AzureMapError):
        azure_map.load(tmp_path)


def test_reasoning_reported_beside_completion_tokens_is_billed_as_output():
    """xAI reports completion_tokens without the reasoning (total = prompt + completion +
    reasoning): pouch bills both as output; OpenAI's convention (reasoning inside) is unchanged."""
    p = plan("xai", "/v1/chat/completions", {**BODY, "model": "grok-4.20", "stream": True})
    beside = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 315,
              "completion_tokens_details": {"reasoning_tokens": 300}}
    usage, _, _ = prov("xai").usage_from_body({"usage": beside})
    assert usage == Usage(input_tokens=10, output_tokens=305, reasoning_tokens=300)
    inside = {"prompt_tokens": 10, "completion_tokens": 305, "total_tokens": 315,
              "completion_tokens_details": {"reasoning_tokens": 300}}
    assert prov("xai").usage_from_body({"usage": inside})[0] == usage
    m = prov("xai").new_meter(p, p.worst_case)
    m.feed(sse({"id": "c", "model": "grok-4.20", "choices": [], "usage": beside}))
    assert m.usage_final and m.final_usage() == usage and m.parse_errors == 0
