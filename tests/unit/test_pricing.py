"""Exact costs from real usage objects, usage adapters, tiers, long context and model resolution.

Every expected amount is worked out by hand in the comment beside it (tokens × $/1M, summed, then
/ 1,000,000) and written as a Decimal string, so a rounding or double-counting bug cannot hide.
"""

from __future__ import annotations

import json
from decimal import Decimal as D

import pytest

from pouch_addon.pricing import (
    ModelPrice, PriceTable, Rates, UnknownModel, Usage, cost, count_tool_calls, normalise_tier, tool_fee_cost,
)

TABLE = PriceTable.load()


def usd(model: str, usage: Usage, tier: str | None = None) -> D:
    return cost(TABLE.resolve(model), usage, tier)


# ------------------------------------------------------------------------------------------------
# The table of real usages -> exact USD

GPT4O_CACHED_CHAT = {  # wire-format example of the reference doc §1.2
    "prompt_tokens": 1200, "completion_tokens": 850, "total_tokens": 2050,
    "prompt_tokens_details": {"cached_tokens": 1024, "audio_tokens": 0, "text_tokens": 1200,
                              "image_tokens": 0, "cache_write_tokens": 0},
    "completion_tokens_details": {"reasoning_tokens": 640, "audio_tokens": 0, "text_tokens": 210,
                                  "accepted_prediction_tokens": 0, "rejected_prediction_tokens": 0},
}
RESPONSES_REASONING = {
    "input_tokens": 2000, "input_tokens_details": {"cached_tokens": 1500, "cache_write_tokens": 0},
    "output_tokens": 3000, "output_tokens_details": {"reasoning_tokens": 2500}, "total_tokens": 5000,
}
ANTHROPIC_CACHE = {
    "input_tokens": 25, "cache_creation_input_tokens": 3000, "cache_read_input_tokens": 12000,
    "cache_creation": {"ephemeral_5m_input_tokens": 2000, "ephemeral_1h_input_tokens": 1000},
    "output_tokens": 1200, "output_tokens_details": {"thinking_tokens": 900},
    "service_tier": "standard",
}
GEMINI_THOUGHTS = {
    "promptTokenCount": 1200, "cachedContentTokenCount": 1024, "candidatesTokenCount": 210,
    "thoughtsTokenCount": 640, "toolUsePromptTokenCount": 0, "totalTokenCount": 2050,
}
GEMINI_LONG = {"promptTokenCount": 250_000, "candidatesTokenCount": 1000, "thoughtsTokenCount": 3000,
               "totalTokenCount": 254_000}
GEMINI_AT_THRESHOLD = {"promptTokenCount": 200_000, "candidatesTokenCount": 1000, "thoughtsTokenCount": 3000,
                       "totalTokenCount": 204_000}

CASES = [
    # id, model, usage, tier, expected USD
    ("gpt-4o plain", "gpt-4o", Usage.from_openai({"prompt_tokens": 1000, "completion_tokens": 500}), None,
     "0.0075"),  # 1000×2.5 + 500×10 = 7500
    ("gpt-4o cached", "gpt-4o", Usage.from_openai(GPT4O_CACHED_CHAT), None,
     "0.01022"),  # 176×2.5=440 + 1024×1.25=1280 + 850×10=8500 -> 10220
    ("gpt-4o-2024-08-06 snapshot", "gpt-4o-2024-08-06", Usage.from_openai(GPT4O_CACHED_CHAT), None,
     "0.01022"),
    ("gpt-4o-2024-05-13 own price", "gpt-4o-2024-05-13", Usage(input_tokens=1000, output_tokens=1000), None,
     "0.02"),  # 1000×5 + 1000×15 = 20000
    ("o3 reasoning not added twice", "o3", Usage.from_openai(
        {"prompt_tokens": 1200, "completion_tokens": 850, "completion_tokens_details": {"reasoning_tokens": 640}}),
     None, "0.0092"),  # 1200×2=2400 + 850×8=6800 -> 9200 (not 9200 + 640×8)
    ("gpt-5 responses reasoning", "gpt-5", Usage.from_openai(RESPONSES_REASONING), None,
     "0.0308125"),  # 500×1.25=625 + 1500×0.125=187.5 + 3000×10=30000 -> 30812.5
    ("gpt-5 priority", "gpt-5", Usage.from_openai(RESPONSES_REASONING), "priority",
     "0.061625"),  # 500×2.5=1250 + 1500×0.25=375 + 3000×20=60000 -> 61625
    ("gpt-5 fast = priority", "gpt-5", Usage.from_openai(RESPONSES_REASONING), "fast", "0.061625"),
    ("gpt-5 batch", "gpt-5", Usage.from_openai(RESPONSES_REASONING), "batch",
     "0.01540625"),  # 500×0.625=312.5 + 1500×0.0625=93.75 + 3000×5=15000 -> 15406.25
    ("o3 flex", "o3", Usage.from_openai(GPT4O_CACHED_CHAT), "flex",
     "0.003832"),  # 176×1=176 + 1024×0.25=256 + 850×4=3400 -> 3832
    ("o4-mini priority", "o4-mini", Usage(input_tokens=1000, output_tokens=1000), "priority",
     "0.01"),  # 1000×2 + 1000×8 = 10000
    ("anthropic 5m+1h writes and reads", "claude-sonnet-4-5-20250929", Usage.from_anthropic(ANTHROPIC_CACHE),
     None, "0.035175"),  # 25×3=75 + 12000×0.3=3600 + 2000×3.75=7500 + 1000×6=6000 + 1200×15=18000 -> 35175
    ("anthropic extra entry sonnet 4", "claude-sonnet-4-20250514", Usage.from_anthropic(ANTHROPIC_CACHE),
     None, "0.035175"),
    ("anthropic batch", "claude-opus-4-7", Usage(input_tokens=1000, output_tokens=1000), "batch",
     "0.015"),  # 1000×2.5 + 1000×12.5 = 15000
    ("anthropic priority (multiplier 2.5)", "claude-opus-4-7", Usage(input_tokens=1000, output_tokens=1000),
     "priority", "0.075"),  # 1000×12.5 + 1000×62.5 = 75000
    ("anthropic long context", "claude-sonnet-4-5", Usage(input_tokens=250_000, output_tokens=1000), None,
     "1.5225"),  # whole request at 6 / 22.5: 1,500,000 + 22,500
    ("gemini 2.5 pro thoughts", "gemini-2.5-pro", Usage.from_gemini(GEMINI_THOUGHTS), None,
     "0.008848"),  # 176×1.25=220 + 1024×0.125=128 + (210+640)×10=8500 -> 8848
    ("gemini 2.5 pro >200k", "gemini/gemini-2.5-pro", Usage.from_gemini(GEMINI_LONG), None,
     "0.685"),  # 250000×2.5=625000 + 4000×15=60000 -> 685000 (whole request repriced)
    ("gemini 2.5 pro at 200k exactly", "gemini-2.5-pro", Usage.from_gemini(GEMINI_AT_THRESHOLD), None,
     "0.29"),  # not strictly above: 200000×1.25=250000 + 4000×10=40000
    ("gemini 2.5 pro >200k priority", "gemini-2.5-pro", Usage.from_gemini(GEMINI_LONG), "priority",
     "1.233"),  # explicit long-context priority 4.5/27: 1,125,000 + 108,000
    ("gemini 2.5 pro >200k flex", "gemini-2.5-pro", Usage.from_gemini(GEMINI_LONG), "flex",
     "0.3425"),  # no explicit long-context flex: long-context × flex ratio 0.5 -> 1.25/7.5: 312500 + 30000
    ("gpt-5.4 >272k priority", "gpt-5.4", Usage(input_tokens=300_000, output_tokens=1000), "priority",
     "3.045"),  # long-context 5/22.5 × priority ratio 2 = 10/45: 3,000,000 + 45,000
    ("embedding 3-small", "text-embedding-3-small", Usage.from_openai({"prompt_tokens": 12345, "total_tokens": 12345}),
     None, "0.0002469"),  # 12345×0.02 = 246.9
    ("embedding 3-large", "text-embedding-3-large", Usage.from_openai({"prompt_tokens": 1000, "total_tokens": 1000}),
     None, "0.00013"),
    ("embedding ada batch", "text-embedding-ada-002-v2", Usage(input_tokens=1000), "batch", "0.00005"),
    ("deepseek field names", "gpt-4o", Usage.from_openai(
        {"prompt_tokens": 1000, "completion_tokens": 200, "prompt_cache_hit_tokens": 600,
         "prompt_cache_miss_tokens": 400}), None,
     "0.00375"),  # 400×2.5=1000 + 600×1.25=750 + 200×10=2000
    ("fine-tune", "ft:gpt-4o-mini-2024-07-18:my-org::A1b2C3", Usage(input_tokens=1000, cached_tokens=500,
                                                                    output_tokens=1000), None,
     "0.001425"),  # 500×0.3=150 + 500×0.15=75 + 1000×1.2=1200
    ("legacy completion", "gpt-3.5-turbo-instruct", Usage(input_tokens=1000, output_tokens=16), None,
     "0.001532"),  # 1000×1.5 + 16×2 = 1532
    ("gpt-5-nano one cached token", "gpt-5-nano", Usage(input_tokens=1, cached_tokens=1), None,
     "0.000000005"),
    ("gpt-4o flex (multiplier 0.5)", "gpt-4o", Usage(input_tokens=1000, output_tokens=100), "flex",
     "0.00175"),  # 1000×1.25 + 100×5
]


@pytest.mark.parametrize("model,usage,tier,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_exact_costs(model, usage, tier, expected):
    got = usd(model, usage, tier)
    assert got == D(expected)
    assert isinstance(got, D)


def test_reasoning_tokens_are_informational():
    price = TABLE.resolve("o3")
    with_reasoning = Usage(input_tokens=100, output_tokens=1000, reasoning_tokens=900)
    without = Usage(input_tokens=100, output_tokens=1000)
    assert cost(price, with_reasoning) == cost(price, without)


def test_long_context_threshold_is_strict_and_reprices_everything():
    price = TABLE.resolve("gemini-2.5-pro")
    threshold = price.long_context[0]
    assert threshold == 200_000
    assert price.rates_for(threshold).input == D("1.25")
    above = price.rates_for(threshold + 1)
    assert (above.input, above.cached_input, above.output) == (D("2.5"), D("0.25"), D(15))


def test_cost_is_exact_beyond_float_precision():
    # 123,456,789 tokens at $0.005/1M = $0.617283945 exactly
    assert usd("gpt-5-nano", Usage(input_tokens=123_456_789, cached_tokens=123_456_789)) == D("0.617283945")


# ------------------------------------------------------------------------------------------------
# Cache-rate fallbacks, explicit tiers and multipliers (a synthetic table)


def synthetic(**models) -> PriceTable:
    return PriceTable({"source": "test", "updated": "2030-01-01", "models": models}, "synthetic.json")


def test_missing_cache_rates_fall_back_to_input_and_explicit_zero_is_zero():
    t = synthetic(
        plain={"provider": "x", "mode": "chat", "input": "2", "output": "4"},
        free_cache={"provider": "x", "mode": "chat", "input": "2", "output": "4", "cached_input": "0",
                    "cache_write": "3"},
    )
    u = Usage(input_tokens=100, cached_tokens=10, cache_write_tokens=20, cache_write_1h_tokens=30, output_tokens=5)
    # plain: every input token at 2 -> 100×2 + 5×4 = 220
    assert cost(t.resolve("plain"), u) == D("0.00022")
    # free_cache: 40×2 + 10×0 + 20×3 + 30×3 (1h falls back to the 5m write) + 5×4 = 250
    assert cost(t.resolve("free_cache"), u) == D("0.00025")


def test_partial_tier_blocks_scale_missing_parts_by_their_input_ratio():
    t = synthetic(m={"provider": "x", "mode": "chat", "input": "2", "cached_input": "0.5", "output": "8",
                     "tiers": {"priority": {"input": "4", "output": "16"}}})
    r = t.resolve("m").rates_for(10, "priority")
    assert (r.input, r.cached_input, r.output) == (D(4), D(1), D(16))  # cached 0.5 × 2, never the cheaper 0.5


def test_table_multipliers_price_tiers_without_explicit_prices():
    t = PriceTable({"updated": "x", "tier_multipliers": {"priority": "3"},
                    "models": {"m": {"provider": "x", "mode": "chat", "input": "2", "output": "8"}}})
    assert t.resolve("m").rates_for(10, "priority").output == D(24)
    assert t.resolve("m").rates_for(10, "batch").output == D(4)  # default multiplier 0.5


def test_packaged_table_multipliers():
    assert dict(TABLE.tier_multipliers) == {"batch": D("0.5"), "flex": D("0.5"), "priority": D("2.5"),
                                            "ultrafast": D(6)}


@pytest.mark.parametrize("raw,expected", [
    (None, None), ("auto", None), ("default", None), ("standard", None), ("scale", None),
    ("standard_only", None), ("DEFAULT", None), ("flex", "flex"), ("priority", "priority"), ("fast", "priority"),
    ("batch", "batch"), (" Priority ", "priority"), ("ultrafast", "ultrafast"),
])
def test_normalise_tier(raw, expected):
    assert normalise_tier(raw) == expected


@pytest.mark.parametrize("raw", ["turbo", "balanced", 3, ["flex"]])
def test_unknown_tier_is_a_value_error(raw):
    with pytest.raises(ValueError):
        normalise_tier(raw)
    with pytest.raises(ValueError):
        cost(TABLE.resolve("gpt-4o"), Usage(input_tokens=1), raw)


def test_ultrafast_explicit_and_fallback():
    # gpt-6-astra lists ultrafast prices (60 / 300); gpt-4o does not (multiplier 6)
    assert usd("gpt-6-astra", Usage(input_tokens=1000, output_tokens=100), "ultrafast") == D("0.09")
    assert usd("gpt-4o", Usage(input_tokens=1000, output_tokens=100), "ultrafast") == D("0.021")


# ------------------------------------------------------------------------------------------------
# Usage adapters


def test_from_openai_chat_and_null_details():
    u = Usage.from_openai(GPT4O_CACHED_CHAT)
    assert u.to_dict() == {"input_tokens": 1200, "cached_tokens": 1024, "cache_write_tokens": 0,
                           "cache_write_1h_tokens": 0, "output_tokens": 850, "reasoning_tokens": 640}
    u = Usage.from_openai({"prompt_tokens": 5, "completion_tokens": 7, "prompt_tokens_details": None,
                           "completion_tokens_details": {"reasoning_tokens": None}})
    assert (u.input_tokens, u.cached_tokens, u.output_tokens, u.reasoning_tokens) == (5, 0, 7, 0)


def test_from_openai_responses_with_cache_writes():
    u = Usage.from_openai({"input_tokens": 100, "input_tokens_details": {"cached_tokens": 10, "cache_write_tokens": 50},
                           "output_tokens": 9, "output_tokens_details": {"reasoning_tokens": 4}, "total_tokens": 109})
    assert (u.input_tokens, u.cached_tokens, u.cache_write_tokens, u.output_tokens, u.reasoning_tokens) == \
        (100, 10, 50, 9, 4)
    # gpt-5.6 prices cache writes above input: 40×4 + 10×0.4 + 50×5 + 9×20 = 594
    assert cost(TABLE.resolve("gpt-5.6"), u) == D("0.000594")


def test_from_openai_embeddings_and_deepseek():
    assert Usage.from_openai({"prompt_tokens": 8, "total_tokens": 8}) == Usage(input_tokens=8)
    u = Usage.from_openai({"prompt_cache_hit_tokens": 30, "prompt_cache_miss_tokens": 70, "completion_tokens": 3})
    assert (u.input_tokens, u.cached_tokens, u.output_tokens) == (100, 30, 3)


@pytest.mark.parametrize("bad", [
    {},  # no token counts at all: never settle that as $0
    {"prompt_tokens": "12", "completion_tokens": 1},
    {"prompt_tokens": 1.5, "completion_tokens": 1},
    {"prompt_tokens": True, "completion_tokens": 1},
    {"prompt_tokens": 10, "completion_tokens": 1, "prompt_tokens_details": "x"},
    {"prompt_tokens": 10, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 11}},
    {"prompt_tokens": 10, "completion_tokens": 1, "completion_tokens_details": {"reasoning_tokens": 2}},
    {"prompt_tokens": -1, "completion_tokens": 1},
])
def test_from_openai_rejects_bad_usage(bad):
    with pytest.raises(ValueError):
        Usage.from_openai(bad)


def test_from_openai_rejects_non_mappings():
    with pytest.raises(ValueError):
        Usage.from_openai([1, 2])  # type: ignore[arg-type]


def test_from_anthropic_adds_cache_tokens_and_splits_ttls():
    u = Usage.from_anthropic(ANTHROPIC_CACHE)
    assert u.to_dict() == {"input_tokens": 15025, "cached_tokens": 12000, "cache_write_tokens": 2000,
                           "cache_write_1h_tokens": 1000, "output_tokens": 1200, "reasoning_tokens": 900}
    # no TTL breakdown: all writes are 5-minute writes
    u = Usage.from_anthropic({"input_tokens": 10, "cache_creation_input_tokens": 50, "output_tokens": 3})
    assert (u.input_tokens, u.cache_write_tokens, u.cache_write_1h_tokens) == (60, 50, 0)
    # the message_start shape (cache fields null)
    u = Usage.from_anthropic({"input_tokens": 25, "cache_creation_input_tokens": None,
                              "cache_read_input_tokens": None, "output_tokens": 1})
    assert u == Usage(input_tokens=25, output_tokens=1)
    with pytest.raises(ValueError):
        Usage.from_anthropic({"service_tier": "standard"})


def test_from_gemini_adds_thoughts_and_tool_prompt():
    u = Usage.from_gemini(GEMINI_THOUGHTS)
    assert (u.input_tokens, u.cached_tokens, u.output_tokens, u.reasoning_tokens) == (1200, 1024, 850, 640)
    u = Usage.from_gemini({"promptTokenCount": 100, "toolUsePromptTokenCount": 40, "candidatesTokenCount": 5,
                           "totalTokenCount": 145})
    assert (u.input_tokens, u.output_tokens) == (140, 5)
    # SDK snake_case
    u = Usage.from_gemini({"prompt_token_count": 10, "candidates_token_count": 2, "thoughts_token_count": 3})
    assert (u.input_tokens, u.output_tokens) == (10, 5)


def test_from_gemini_candidates_already_including_thoughts():
    # total = prompt + candidates: the candidates count already holds the thoughts (LiteLLM's check)
    u = Usage.from_gemini({"promptTokenCount": 10, "candidatesTokenCount": 50, "thoughtsTokenCount": 30,
                           "totalTokenCount": 60})
    assert (u.output_tokens, u.reasoning_tokens) == (50, 30)


def test_from_gemini_rejects_empty():
    with pytest.raises(ValueError):
        Usage.from_gemini({"trafficType": "ON_DEMAND"})


@pytest.mark.parametrize("kwargs,needle", [
    ({"input_tokens": -1}, "negative"),
    ({"input_tokens": 10, "cached_tokens": 11}, "exceed"),
    ({"input_tokens": 10, "cached_tokens": 5, "cache_write_tokens": 4, "cache_write_1h_tokens": 2}, "exceed"),
    ({"output_tokens": 5, "reasoning_tokens": 6}, "reasoning"),
    ({"input_tokens": 1.0}, "int"),
    ({"output_tokens": True}, "int"),
])
def test_invalid_usage_is_a_clear_value_error(kwargs, needle):
    with pytest.raises(ValueError, match=needle):
        Usage(**kwargs)


# ------------------------------------------------------------------------------------------------
# Model resolution


@pytest.mark.parametrize("asked,name", [
    ("gpt-4o", "gpt-4o"),
    ("GPT-4o", "gpt-4o"),
    ("openai/gpt-4o", "gpt-4o"),
    ("gpt-4o-2024-11-20", "gpt-4o-2024-11-20"),  # in the table: its own entry
    ("gpt-4o-2031-01-01", "gpt-4o"),  # a snapshot the table does not know: the undated base
    ("gpt-4.1-mini-2099-12-31", "gpt-4.1-mini"),
    ("gpt-4-0613", "gpt-4-0613"),
    ("gpt-4-0314", "gpt-4"),
    ("gpt-35-turbo", "gpt-3.5-turbo"),  # Azure spelling
    ("gpt-35-turbo-16k", "gpt-3.5-turbo-16k"),
    ("chatgpt-4o-latest", "chatgpt-4o-latest"),
    ("o1-mini", "o1-mini"),
    ("gpt-4-32k", "gpt-4-32k"),
    ("text-embedding-3-small", "text-embedding-3-small"),
    ("gemini-2.5-pro", "gemini-2.5-pro"),
    ("gemini/gemini-2.5-pro", "gemini-2.5-pro"),
    ("models/gemini-2.5-flash", "gemini-2.5-flash"),
    ("claude-sonnet-4-20250514", "claude-sonnet-4-20250514"),
    ("claude-sonnet-4-0", "claude-sonnet-4-20250514"),
    ("anthropic/claude-opus-4-1", "claude-opus-4-1-20250805"),
    ("claude-3-5-haiku-20241022", "claude-3-5-haiku-20241022"),
    ("claude-sonnet-4@20250514", "claude-sonnet-4-20250514"),
    ("anthropic/claude-sonnet-4.5", "claude-sonnet-4-5"),
    ("ft:gpt-4o-mini-2024-07-18:my-org::A1b2C3", "ft:gpt-4o-mini-2024-07-18"),
    ("ft:gpt-4o-mini:my-org:custom-name:A1b2C3", "ft:gpt-4o-mini-2024-07-18"),
    ("ft:gpt-3.5-turbo-0125:org::x", "ft:gpt-3.5-turbo-0125"),
    ("ft:gpt-4.1-2025-04-14:org::x", "ft:gpt-4.1-2025-04-14"),
])
def test_resolution(asked, name):
    assert TABLE.resolve(asked).name == name
    assert asked in TABLE


def test_fine_tune_is_priced_above_its_base():
    ft = TABLE.resolve("ft:gpt-4o-mini:org::id")
    base = TABLE.resolve("gpt-4o-mini")
    assert ft.rates.input > base.rates.input and ft.rates.output > base.rates.output


def test_fine_tune_without_an_ft_entry_is_unknown_never_the_base_price():
    with pytest.raises(UnknownModel) as exc:
        TABLE.resolve("ft:gpt-5-mini-2025-08-07:org::x")
    msg = str(exc.value)
    assert "fine-tune" in msg and "gpt-5-mini" in msg and "base model" in msg


def test_unknown_model_message_is_helpful():
    with pytest.raises(UnknownModel) as exc:
        TABLE.resolve("gpt-unknown-9")
    err = exc.value
    msg = str(err)
    assert isinstance(err, LookupError)
    assert "gpt-unknown-9" in msg and "pricing.json" in msg and TABLE.updated in msg
    assert "scripts/update_pricing.py" in msg and "add an entry" in msg
    assert err.model == "gpt-unknown-9" and err.updated == TABLE.updated
    assert "gpt-unknown-9" not in TABLE


def test_unknown_model_suggests_close_names():
    with pytest.raises(UnknownModel) as exc:
        TABLE.resolve("gpt-4o-mnii")
    assert "gpt-4o-mini" in exc.value.suggestions


def test_zero_priced_models_are_not_in_the_table():
    # LiteLLM prices these 0/0; a $0 price would let unbounded spend through, so they are unknown
    for model in ("gemini/gemma-3-27b-it", "gemini/lyria-3.5"):
        assert model not in TABLE


# ------------------------------------------------------------------------------------------------
# The packaged table


def test_load_default_is_cached_and_path_loads(tmp_path):
    assert PriceTable.load() is PriceTable.load()
    p = tmp_path / "t.json"
    p.write_text(json.dumps({"source": "s", "updated": "2030-01-02", "models": {
        "m": {"provider": "x", "mode": "chat", "input": "1", "output": "2"}}}))
    t = PriceTable.load(p)
    assert t.names() == ["m"] and t.updated == "2030-01-02" and t.source == "s"
    with pytest.raises(UnknownModel) as exc:
        t.resolve("n")
    assert str(p) in str(exc.value) and "2030-01-02" in str(exc.value)


@pytest.mark.parametrize("bad", [
    {"models": {"m": {"mode": "chat", "input": 1.5, "output": "2"}}},  # float price
    {"models": {"m": {"mode": "chat", "input": "-1", "output": "2"}}},
    {"models": {"m": {"mode": "chat", "output": "2"}}},
    {"models": {"m": {"mode": "chat", "input": "1", "output": "2", "long_context": {"threshold": "200k"}}}},
    {"models": []},
    {"models": {"m": {"mode": "chat", "input": "1", "output": "2"}}, "aliases": {"a": "missing"}},
])
def test_bad_tables_are_refused(bad):
    with pytest.raises(ValueError):
        PriceTable(bad)


def test_packaged_table_covers_the_model_families():
    names = set(TABLE.names())
    required = {
        "gpt-5", "gpt-5-mini", "gpt-5-nano", "gpt-5-pro", "gpt-5.1", "gpt-5.2", "gpt-5.4", "gpt-5.5",
        "gpt-4.1", "gpt-4.1-mini", "gpt-4.1-nano", "gpt-4o", "gpt-4o-mini", "gpt-4o-2024-05-13",
        "gpt-4o-2024-08-06", "gpt-4o-2024-11-20", "chatgpt-4o-latest", "o1", "o1-mini", "o1-pro", "o3",
        "o3-mini", "o3-pro", "o4-mini", "gpt-4", "gpt-4-turbo", "gpt-4-32k", "gpt-3.5-turbo",
        "gpt-3.5-turbo-instruct", "davinci-002", "babbage-002", "text-embedding-3-small",
        "text-embedding-3-large", "text-embedding-ada-002", "ft:gpt-4o-2024-08-06", "ft:gpt-4o-mini-2024-07-18",
        "claude-sonnet-4-20250514", "claude-opus-4-20250514", "claude-3-5-haiku-20241022",
        "claude-sonnet-4-5-20250929", "claude-haiku-4-5-20251001", "claude-opus-4-7",
        "gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite",
    }
    assert required <= names, sorted(required - names)
    modes = {TABLE.resolve(n).mode for n in names}
    assert modes <= {"chat", "responses", "completion", "embedding"}
    assert TABLE.source and len(TABLE.updated) == 10


def test_packaged_table_matches_reference_prices():
    # reference doc §6.2 (LiteLLM 1.109.1), per 1M: input / cached / output
    expected = {
        "gpt-4o": ("2.5", "1.25", "10"), "gpt-4o-mini": ("0.15", "0.075", "0.6"), "gpt-4.1": ("2", "0.5", "8"),
        "gpt-4.1-nano": ("0.1", "0.025", "0.4"), "o1": ("15", "7.5", "60"), "o3": ("2", "0.5", "8"),
        "o3-mini": ("1.1", "0.55", "4.4"), "o4-mini": ("1.1", "0.275", "4.4"), "gpt-5": ("1.25", "0.125", "10"),
        "gpt-5-mini": ("0.25", "0.025", "2"), "gpt-5-nano": ("0.05", "0.005", "0.4"),
        "gemini-2.5-pro": ("1.25", "0.125", "10"), "gemini-2.5-flash": ("0.3", "0.03", "2.5"),
        "claude-haiku-4-5-20251001": ("1", "0.1", "5"),
    }
    for model, (i, c, o) in expected.items():
        r = TABLE.resolve(model).rates
        assert (r.input, r.cached_input, r.output) == (D(i), D(c), D(o)), model
    p = TABLE.resolve("gpt-4o").tiers["priority"]
    assert (p.input, p.cached_input, p.output) == (D("4.25"), D("2.125"), D(17))
    s4 = TABLE.resolve("claude-sonnet-4-20250514")
    assert (s4.rates.cache_write, s4.rates.cache_write_1h) == (D("3.75"), D(6))


def test_every_entry_prices_every_tier():
    for name in TABLE.names():
        price = TABLE.resolve(name)
        assert isinstance(price, ModelPrice) and isinstance(price.rates, Rates)
        for tier in (None, "batch", "flex", "priority", "ultrafast"):
            for n in (0, 10**7):
                rates = price.rates_for(n, tier)
                assert all(getattr(rates, f) >= 0 for f in ("input", "cached_input", "output", "cache_write",
                                                            "cache_write_1h")), (name, tier)


def test_openai_encodings_agree_with_the_token_counter():
    tokens = pytest.importorskip("pouch_addon.tokens")
    for name in TABLE.names():
        price = TABLE.resolve(name)
        if price.provider == "openai":
            assert price.encoding == tokens.encoding_for_model(name), name
        else:
            assert price.encoding is None, name


# ------------------------------------------------------------------------------------------------
# Bounds for aliases, tool fees (issue 13: the reservation is an upper bound)

FAMILY = PriceTable({"tool_fees": {"x": {"web_search_call": {"low": "0.02", "medium": "0.03", "high": "0.05"},
                                         "code_interpreter_call": "0.03"}},
                     "models": {
    "m": {"provider": "x", "mode": "chat", "input": "1", "output": "4", "max_input_tokens": 1000,
          "max_output_tokens": 100, "fees": {"web_search_call": {"low": "0.01", "medium": "0.01", "high": "0.01"}}},
    "m-2024-01-01": {"provider": "x", "mode": "chat", "input": "3", "cached_input": "0.3", "output": "2",
                     "max_input_tokens": 2000, "max_output_tokens": 50,
                     "long_context": {"threshold": 500, "input": "6", "output": "9"}},
    "m-2025-01-01": {"provider": "x", "mode": "chat", "input": "2", "output": "5", "max_input_tokens": 1000,
                     "max_output_tokens": 200, "tiers": {"priority": {"input": "9", "output": "11"}},
                     "long_context": {"threshold": 800, "input": "4", "output": "12"}},
    "m-mini": {"provider": "x", "mode": "chat", "input": "0.1", "output": "0.4"},
}})


def test_an_alias_is_bounded_by_every_snapshot_it_may_be_served_as():
    bound = FAMILY.resolve_bound("m")
    members = [FAMILY.resolve(n) for n in ("m", "m-2024-01-01", "m-2025-01-01")]
    for tokens_in in (0, 400, 600, 900, 2000):
        for tier in (None, "batch", "flex", "priority", "ultrafast"):
            for usage in (Usage(input_tokens=tokens_in, output_tokens=30),
                          Usage(input_tokens=tokens_in, cached_tokens=tokens_in, output_tokens=7)):
                assert cost(bound, usage, tier) >= max(cost(m, usage, tier) for m in members), (tokens_in, tier)
    assert (bound.max_input_tokens, bound.max_output_tokens) == (2000, 200)
    assert bound.rates.input == D(3) and bound.rates.output == D(5) and bound.long_context[0] == 500
    # a pinned snapshot and a different model are served as themselves
    assert FAMILY.resolve_bound("m-2024-01-01") is FAMILY.resolve("m-2024-01-01")
    assert FAMILY.resolve_bound("m-mini") is FAMILY.resolve("m-mini")
    assert FAMILY.resolve_bound("openai/m") is bound
    # the packaged gpt-4o: gpt-4o-2024-05-13 is dearer than the alias's own entry
    gpt4o = TABLE.resolve_bound("gpt-4o")
    assert (gpt4o.rates.input, gpt4o.rates.output, gpt4o.max_output_tokens) == (D(5), D(15), 16384)
    assert TABLE.resolve_bound("gpt-4o-mini") is TABLE.resolve("gpt-4o-mini")


def test_tool_fees_come_from_the_model_else_its_providers_dearest():
    m, mini = FAMILY.resolve("m"), FAMILY.resolve("m-mini")
    assert FAMILY.call_fee(m, "web_search_call", "high") == (D("0.01"), False)
    assert FAMILY.call_fee(mini, "web_search_call") == (D("0.03"), True)  # medium: the API's default
    assert FAMILY.call_fee(mini, "web_search_call", "huge") == (D("0.05"), True)  # unknown size: the dearest
    assert FAMILY.call_fee(mini, "code_interpreter_call") == (D("0.03"), True)
    assert FAMILY.call_fee(mini, "file_search_call") is None
    # the bound of a family keeps a fee only if every member has one: else the provider's applies
    assert FAMILY.call_fee(FAMILY.resolve_bound("m"), "web_search_call", "high") == (D("0.05"), True)
    # the packaged table: LiteLLM's fees, and OpenAI's container session fee for code interpreter
    assert TABLE.call_fee(TABLE.resolve("gpt-4o-mini"), "web_search_call") == (D("0.025"), False)
    assert TABLE.call_fee(TABLE.resolve("gpt-5"), "web_search_call") == (D("0.01"), False)
    assert TABLE.call_fee(TABLE.resolve("gpt-5"), "code_interpreter_call") == (D("0.03"), True)
    assert TABLE.call_fee(TABLE.resolve("gpt-5"), "file_search_call") is None


def test_tool_calls_are_counted_per_call_and_code_interpreter_per_container():
    output = [
        {"type": "web_search_call", "id": "ws_1", "status": "completed"},
        {"type": "web_search_call", "id": "ws_2"},
        {"type": "code_interpreter_call", "id": "ci_1", "container_id": "cntr_a"},
        {"type": "code_interpreter_call", "id": "ci_2", "container_id": "cntr_a"},
        {"type": "code_interpreter_call", "id": "ci_3", "container_id": "cntr_b"},
        {"type": "function_call", "name": "f"}, {"type": "mcp_call"}, {"type": "message"}, {"type": "reasoning"},
        {"type": "file_search_call"}, "junk", {"type": 3}, None,
    ]
    calls = count_tool_calls(output)
    assert calls == {"web_search_call": 2, "code_interpreter_call": 2, "file_search_call": 1}
    assert count_tool_calls(None) == {} and count_tool_calls("x") == {}
    fees = {"web_search_call": D("0.01"), "code_interpreter_call": D("0.03")}
    assert tool_fee_cost(fees, calls) == (D("0.08"), ["file_search_call"])


@pytest.mark.parametrize("bad", [
    {"models": {}, "tool_fees": []},
    {"models": {}, "tool_fees": {"x": {"web_search_call": 0.01}}},  # a float fee
    {"models": {"m": {"mode": "chat", "input": "1", "output": "2", "fees": {"web_search_call": "-1"}}}},
    {"models": {"m": {"mode": "chat", "input": "1", "output": "2", "fees": ["web_search_call"]}}},
])
def test_bad_fees_are_refused(bad):
    with pytest.raises(ValueError):
        PriceTable(bad)
