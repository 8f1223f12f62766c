"""The Gemini provider module on its own: paths, bounds (thinking beside the cap), usage, streams."""

from __future__ import annotations

import json
from decimal import Decimal as D

import pytest

from pouch_addon.plan import PlanError, apply_rewrites
from pouch_addon.pricing import PriceTable, Usage, cost
from pouch_addon.providers import for_host, gemini

TABLE = PriceTable.load()
GEN = "/v1beta/models/gemini-2.5-flash:generateContent"
STREAM = "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"


def body(**kw):
    return {"contents": [{"role": "user", "parts": [{"text": "Hello"}]}], **kw}


@pytest.mark.parametrize("method,path,kind", [
    ("POST", GEN, "billed"), ("POST", STREAM, "billed"),
    ("POST", "/v1/models/gemini-2.5-pro:generateContent", "billed"),
    ("POST", "/v1beta/models/gemini-2.5-pro:countTokens", "free"),
    ("POST", "/v1beta/models/gemini-2.5-pro:batchGenerateContent", "refused"),
    ("POST", "/v1beta/models/gemini-embedding-001:embedContent", "refused"),
    ("POST", "/v1beta/cachedContents", "refused"), ("POST", "/upload/v1beta/files", "free"),
    ("GET", "/v1beta/models", "free"), ("POST", "/v1beta/tunedModels/x:generateContent", "refused"),
    ("POST", "/v1beta/somethingElse", "unknown"),
])
def test_classify(method, path, kind):
    assert gemini.classify(method, path) == kind


def test_model_from_path():
    assert gemini.split_path(STREAM) == ("gemini-2.5-flash", "streamGenerateContent")
    assert gemini.split_path("/v1beta/models/gemini-2.5-flash%3AgenerateContent") == ("gemini-2.5-flash", "generateContent")
    assert for_host("generativelanguage.googleapis.com") is gemini


def test_thinking_is_reserved_beside_the_cap_and_the_cap_injected():
    d = gemini.draft("POST", STREAM, body(), table=TABLE)
    assert d.stream and d.extra_output == d.price.max_output_tokens  # no thinkingBudget: the model's max
    plan = d.finish(D(100))
    assert plan.rewrites == {"generationConfig.maxOutputTokens": d.price.max_output_tokens}
    b = body()
    apply_rewrites(b, plan.rewrites)
    assert b["generationConfig"] == {"maxOutputTokens": d.price.max_output_tokens}
    rates = d.price.rates_for(plan.reserved_input_tokens)
    assert plan.worst_case == (D(plan.reserved_input_tokens) * max(rates.input, rates.cache_write, rates.cache_write_1h)
                               + D(2 * d.price.max_output_tokens) * rates.output) / D(1_000_000)


def test_an_explicit_budget_and_candidates_bound_the_output():
    cfg = {"maxOutputTokens": 500, "candidateCount": 3, "thinkingConfig": {"thinkingBudget": 1000}}
    d = gemini.draft("POST", GEN, body(generationConfig=cfg), table=TABLE)
    plan = d.finish(D(100))
    assert plan.rewrites == {} and plan.choices == 3 and d.extra_output == 1000
    rates = d.price.rates_for(plan.reserved_input_tokens)
    assert plan.worst_case == (D(plan.reserved_input_tokens) * max(rates.input, rates.cache_write, rates.cache_write_1h)
                               + D(3 * 1500) * rates.output) / D(1_000_000)
    off = gemini.draft("POST", GEN, body(generationConfig={"maxOutputTokens": 500, "thinkingConfig": {"thinkingBudget": 0}}),
                       table=TABLE)
    assert off.extra_output == 0
    dynamic = gemini.draft("POST", GEN, body(generationConfig={"thinkingConfig": {"thinkingBudget": -1}}), table=TABLE)
    assert dynamic.extra_output == dynamic.price.max_output_tokens


def test_an_injected_cap_fits_the_budget_next_to_the_thinking():
    d = gemini.draft("POST", GEN, body(generationConfig={"thinkingConfig": {"thinkingBudget": 1024}}), table=TABLE)
    plan = d.finish(D("0.01"))
    assert plan.worst_case <= D("0.01")
    assert 0 < plan.rewrites["generationConfig.maxOutputTokens"] < d.price.max_output_tokens


@pytest.mark.parametrize("bad,code", [
    (body(generation_config={"max_output_tokens": 10}, generationConfig={}), "pouch_invalid_request"),
    (body(generationConfig={"max_output_tokens": 10, "maxOutputTokens": 20}), "pouch_invalid_request"),
    (body(generationConfig={"thinking_config": {"thinking_budget": 1, "thinkingBudget": 2}}), "pouch_invalid_request"),
    (body(generationConfig={"maxOutputTokens": "10"}), "pouch_invalid_request"),
    (body(generationConfig={"thinkingConfig": {"thinkingBudget": -5}}), "pouch_invalid_request"),
    (body(tools=[{"googleSearch": {}}]), "pouch_unbounded"),
    (body(tools=[{"codeExecution": {}}]), "pouch_unbounded"),
    ({"contents": "hi"}, "pouch_invalid_request"),
])
def test_refusals(bad, code):
    with pytest.raises(PlanError) as e:
        gemini.draft("POST", GEN, bad, table=TABLE)
    assert e.value.code == code


def test_snake_case_fields_are_read_and_an_injected_cap_uses_their_spelling():
    """google-genai sends nested config dicts as written (``thinking_config``); Google's parser takes both."""
    d = gemini.draft("POST", GEN, body(generation_config={"max_output_tokens": 300, "candidate_count": 2,
                                                          "thinking_config": {"thinking_budget": 100}}), table=TABLE)
    assert (d.cap, d.choices, d.extra_output) == (300, 2, 100)
    d = gemini.draft("POST", GEN, body(generationConfig={"thinking_config": {"include_thoughts": True, "thinking_budget": 0}}),
                     table=TABLE)
    assert d.extra_output == 0
    plan = d.finish(D(100))
    assert plan.rewrites == {"generationConfig.max_output_tokens": d.price.max_output_tokens}
    plan = gemini.draft("POST", GEN, body(generation_config={}), table=TABLE).finish(D(100))
    assert list(plan.rewrites) == ["generation_config.max_output_tokens"]
    with pytest.raises(PlanError) as e:
        gemini.draft("POST", GEN, body(tools=[{"google_search": {}}]), table=TABLE)
    assert e.value.code == "pouch_unbounded"


def test_unknown_and_foreign_models_are_refused():
    for path in ("/v1beta/models/gemini-99-ultra:generateContent", "/v1beta/models/gpt-4o:generateContent"):
        with pytest.raises(PlanError) as e:
            gemini.draft("POST", path, body(), table=TABLE)
        assert e.value.code == "pouch_unknown_model"


def test_media_and_cached_content_are_bounded_by_the_context_window():
    parts = [{"text": "what is this"}, {"inlineData": {"mimeType": "video/mp4", "data": "AAAA"}}]
    d = gemini.draft("POST", GEN, {"contents": [{"role": "user", "parts": parts}]}, table=TABLE)
    assert d.input_hidden == ("inline video/mp4",) and d.reserved_input_tokens == d.price.max_input_tokens
    d = gemini.draft("POST", GEN, body(cachedContent="cachedContents/abc"), table=TABLE)
    assert "cached content" in d.input_hidden
    text = "ü" * 3000
    d = gemini.draft("POST", GEN, {"contents": [{"parts": [{"text": text}]}], "systemInstruction": {"parts": [{"text": "be brief"}]},
                                   "tools": [{"functionDeclarations": [{"name": "f"}]}]}, table=TABLE)
    assert d.input_hidden == () and d.reserved_input_tokens >= len(text.encode())


def test_usage_from_body_and_arrays():
    meta = {"promptTokenCount": 1200, "cachedContentTokenCount": 1024, "candidatesTokenCount": 210,
            "thoughtsTokenCount": 640, "toolUsePromptTokenCount": 0, "totalTokenCount": 2050}
    usage, model, _ = gemini.usage_from_body({"usageMetadata": meta, "modelVersion": "gemini-2.5-flash"})
    assert usage == Usage(input_tokens=1200, cached_tokens=1024, output_tokens=850, reasoning_tokens=640)
    assert model == "gemini-2.5-flash"
    price = TABLE.resolve("gemini-2.5-flash")
    r = price.rates
    assert cost(price, usage) == (176 * r.input + 1024 * r.cached_input + 850 * r.output) / D(1_000_000)
    running = [{"usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": n, "totalTokenCount": 10 + n}}
               for n in (1, 5, 9)]
    assert gemini.usage_from_body(running)[0] == Usage(input_tokens=10, output_tokens=9)


def test_error_body_shape():
    b = gemini.error_body(402, "pouch: budget exceeded", "budget_exceeded")
    assert b["error"]["code"] == 402 and b["error"]["status"] == "FAILED_PRECONDITION"


# -- streams ------------------------------------------------------------------------------------
def chunks(texts, prompt=20, thoughts=0, final_extra=0):
    out = []
    for i, t in enumerate(texts):
        last = i == len(texts) - 1
        cand = {"content": {"role": "model", "parts": [{"text": t}]}, "index": 0}
        if last:
            cand["finishReason"] = "STOP"
        n = i + 1 + (final_extra if last else 0)
        out.append({"candidates": [cand], "modelVersion": "gemini-2.5-flash",
                    "usageMetadata": {"promptTokenCount": prompt, "candidatesTokenCount": n, "thoughtsTokenCount": thoughts,
                                      "totalTokenCount": prompt + n + thoughts}})
    return out


def as_sse(objs):
    return b"".join(b"data: " + json.dumps(o).encode() + b"\r\n\r\n" for o in objs)


def as_array(objs):
    return ("[" + ",\r\n".join(json.dumps(o) for o in objs) + "]").encode()


def plan_for(budget=D(100)):
    return gemini.draft("POST", STREAM, body(generationConfig={"maxOutputTokens": 100_000, "thinkingConfig": {"thinkingBudget": 0}}),
                        table=TABLE).finish(budget)


@pytest.mark.parametrize("sse", [True, False])
@pytest.mark.parametrize("size", [1, 13, 1_000_000])
def test_stream_settles_from_the_last_running_total(sse, size):
    objs = chunks(["Hello", " there", " friend"], thoughts=30, final_extra=4)
    raw = as_sse(objs) if sse else as_array(objs)
    plan = plan_for()
    m = gemini.new_meter(plan, plan.worst_case, sse=sse)
    out = b""
    for i in range(0, len(raw), size):
        out += b"".join(m.feed(raw[i:i + size]))
    out += b"".join(m.finish())
    assert out == raw
    assert m.done and m.usage_final
    assert m.final_usage() == Usage(input_tokens=20, output_tokens=7 + 30, reasoning_tokens=30)
    assert m.model_reported == "gemini-2.5-flash"


@pytest.mark.parametrize("sse", [True, False])
def test_the_stream_is_cut_at_the_reservation(sse):
    plan = plan_for()
    reservation = cost(plan.price, Usage(input_tokens=20, output_tokens=50))
    objs = chunks(["word "] * 200)
    m = gemini.new_meter(plan, reservation, sse=sse)
    out = b"".join(m.feed(as_sse(objs) if sse else as_array(objs)))
    assert m.cut and m.cut_reason == "budget_exceeded"
    assert 50 <= m.output_tokens_counted <= 52
    if sse:
        assert out.endswith(b"\r\n\r\n") and b"FAILED_PRECONDITION" in out.split(b"data: ")[-1]
    else:
        parsed = json.loads(out)  # still a well-formed JSON array for the client
        assert parsed[-1]["error"]["code"] == 402 and len(parsed) <= 52


def test_reported_thinking_counts_toward_the_cut_off_even_when_no_text_is_streamed():
    plan = plan_for()
    reservation = cost(plan.price, Usage(input_tokens=20, output_tokens=1000))
    objs = [{"candidates": [{"content": {"parts": [{"text": ""}]}}],
             "usageMetadata": {"promptTokenCount": 20, "candidatesTokenCount": 0, "thoughtsTokenCount": 400 * k,
                               "totalTokenCount": 20 + 400 * k}} for k in range(1, 6)]
    m = gemini.new_meter(plan, reservation, sse=True)
    m.feed(as_sse(objs))
    assert m.cut  # 1200 thinking tokens reported > 1000 reserved


def test_an_interrupted_stream_is_not_final():
    plan = plan_for()
    m = gemini.new_meter(plan, plan.worst_case, sse=True)
    m.feed(as_sse(chunks(["a", "b", "c"]))[:-40])
    assert not m.usage_final and m.final_usage().input_tokens == 20
