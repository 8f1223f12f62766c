"""The pure core of local models at $0 (``providers/local.py``, the ledger's $0 reservation),
mock mode's answers (``mock.py``) and ``pouch models``' parsing."""

from __future__ import annotations

import base64
import json
import struct
from decimal import Decimal as D

import pytest

from pouch_addon import mock, models
from pouch_addon.budget import LedgerState, Owner, Refusal, Reservation
from pouch_addon.metering import StreamMeter
from pouch_addon.pricing import PriceTable
from pouch_addon.providers import PROVIDERS, local

OWNER = Owner(pid=1, started="1", host="h")


# -- which hosts are local ------------------------------------------------------------------------
def test_default_local_hosts_are_loopback_on_the_known_ports():
    h = local.LocalHosts.parse(local.DEFAULT_LOCAL_HOSTS)
    for host in ("localhost", "127.0.0.1", "::1", "LOCALHOST."):
        for port in (11434, 8080, 1234, 8000):
            assert h.match(host, port)
    assert not h.match("localhost", 9999) and not h.match("api.openai.com", 11434)
    assert not h.match("10.0.0.5", 11434)


def test_local_hosts_option_forms_and_errors():
    h = local.LocalHosts.parse(["gpu-box.lan:11434", "ollama.internal", "[fe80::1]:8000", " "])
    assert h.match("gpu-box.lan", 11434) and not h.match("gpu-box.lan", 80)
    assert h.match("ollama.internal", 1) and h.match("fe80::1", 8000)
    for bad in ("http://x:1", "x:99999", "[nothex]:1", "a b", "x:"):
        with pytest.raises(local.LocalHostsError):
            local.LocalHosts.parse([bad])
    assert local.LocalHosts.parse([]).entries() == []


def test_classify_local_endpoints():
    assert local.classify("POST", "/api/chat") == "billed"
    assert local.classify("POST", "/v1//chat/completions/") == "billed"
    assert local.classify("POST", "/completion") == "billed"
    assert local.classify("GET", "/api/tags") == "free"
    assert local.classify("POST", "/api/pull") == "free"
    assert local.classify("POST", "/api/whatever") == "unknown"
    assert local.classify("GET", "/api/tags", has_body=True) == "unknown"
    assert PROVIDERS["local"] is local


# -- plans: $0 whatever the budget ----------------------------------------------------------------
def test_a_local_plan_is_free_even_with_an_overspent_budget():
    d = local.draft("POST", "/api/chat", {"model": "llama3", "messages": [{"role": "user", "content": "hello"}],
                                          "options": {"num_predict": 40}})
    plan = d.finish(D("-3"))
    assert plan.worst_case == 0 and plan.price.provider == "local"
    assert plan.stream is True  # Ollama's native API streams unless told not to
    assert plan.output_cap == 40 and plan.input_tokens > 0 and plan.rewrites == {}


def test_local_plan_fields():
    d = local.draft("POST", "/v1/chat/completions", {"model": "qwen", "stream": True, "max_tokens": 7,
                                                     "messages": [{"role": "user", "content": "hi"}]})
    plan = d.finish(D(0))
    assert plan.rewrites == {"stream_options": {"include_usage": True}} and plan.output_cap == 7
    assert local.draft("POST", "/completion", {"prompt": "hi"}).finish(D(0)).model == "default"
    assert local.draft("POST", "/api/generate", {"model": "m", "prompt": "x", "stream": False}).stream is False
    with pytest.raises(Exception, match="stream"):
        local.draft("POST", "/api/chat", {"model": "m", "stream": "yes"})
    with pytest.raises(Exception, match="model"):
        local.draft("POST", "/api/chat", {"messages": []})


def test_usage_is_read_and_the_reported_model_never_priced():
    assert local.usage_from_body({"model": "gpt-4o", "prompt_eval_count": 12, "eval_count": 5, "done": True}) \
        == (local.Usage(input_tokens=12, output_tokens=5), None, None)
    usage, model, _ = local.usage_from_body({"model": "gpt-4o", "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
    assert (usage.input_tokens, usage.output_tokens, model) == (3, 2, None)
    usage, _, _ = local.usage_from_body({"content": "x", "timings": {"prompt_n": 4, "predicted_n": 9}})
    assert (usage.input_tokens, usage.output_tokens) == (4, 9)
    assert local.output_texts({"message": {"content": "a"}, "response": "b"}) == ["b", "a"]


# -- meters ---------------------------------------------------------------------------------------
def ndjson(*objs: dict) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objs)


def test_ollama_ndjson_lines_are_forwarded_as_soon_as_complete_and_never_cut():
    plan = local.draft("POST", "/api/chat", {"model": "llama3", "messages": []}).finish(D(0))
    m = local.new_meter(plan, D(0), sse=False)
    line1 = ndjson({"model": "llama3", "message": {"content": "word " * 500}, "done": False})
    assert m.feed(line1 + b'{"model":') == [line1]  # the line, with its newline, at once
    rest = b'"llama3","message":{"content":"x"},"done":false}\n'
    last = ndjson({"model": "gpt-4o", "message": {"content": ""}, "done": True, "prompt_eval_count": 8,
                   "eval_count": 501})
    assert m.feed(rest + last) == [b'{"model":' + rest + last]
    assert m.finish() == [] and not m.cut and m.done
    assert m.final_usage() == local.Usage(input_tokens=8, output_tokens=501)
    assert m.model_reported is None and m.running_cost == 0


def test_local_openai_stream_meter_hides_usage_and_reports_no_model():
    plan = local.draft("POST", "/v1/chat/completions",
                       {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).finish(D(0))
    m = local.new_meter(plan, D(0))
    assert isinstance(m, StreamMeter)
    out = m.feed(b'data: {"model":"gpt-4o","choices":[{"index":0,"delta":{"content":"' + b"tok " * 300 + b'"}}],'
                 b'"usage":null}\n\ndata: {"model":"gpt-4o","choices":[],"usage":{"prompt_tokens":5,'
                 b'"completion_tokens":300}}\n\ndata: [DONE]\n\n')
    assert not m.cut and b'"usage"' not in b"".join(out) and out[0].endswith(b"data: [DONE]\n\n")
    assert m.final_usage().output_tokens == 300 and m.model_reported is None and m.running_cost == 0


# -- the ledger's $0 reservation ------------------------------------------------------------------
def reserve(st: LedgerState, amount: str, meta: dict, wallet: str | None = None) -> Reservation | Refusal:
    return st.reserve(D(amount), res_id=f"r{len(st.open)}", owner=OWNER, now=100.0, meta=meta, wallet=wallet)


def test_only_a_local_call_may_reserve_zero_and_money_never_refuses_it():
    st = LedgerState(budget=D(0))
    assert reserve(st, "0", {"model": "gpt-4o"}).reason == "invalid"
    res = reserve(st, "0", {"model": "llama3", "local": True})
    assert isinstance(res, Reservation) and st.problems() == []
    st.spent = D(2)  # overspent: remaining is negative
    st.budget = D(1)
    assert st.remaining < 0
    assert isinstance(reserve(st, "0", {"local": True}), Reservation)
    assert reserve(st, "-1", {"local": True}).reason == "invalid"
    st.paused = True
    assert reserve(st, "0", {"local": True}).reason == "paused"


def test_a_zero_reservation_without_the_mark_is_a_problem():
    st = LedgerState(budget=D(1))
    st.open["x"] = Reservation("x", D(0), 1.0, OWNER, {})
    assert "a reservation is not positive" in st.problems()
    st.open["x"] = Reservation("x", D(0), 1.0, OWNER, {"local": True})
    assert st.problems() == []


# -- mock answers ---------------------------------------------------------------------------------
def kw(**over):
    base = {"model": "gpt-4o-mini", "stream": False, "input_tokens": 9, "output_cap": 50, "length": 5}
    return {**base, **over}


def test_mock_chat_non_stream_and_stream_with_usage():
    r = mock.reply("openai", "chat", {}, **kw())
    body = json.loads(r.body)
    assert body["choices"][0]["message"]["content"] == "Pouch keeps every call inside."
    assert body["usage"] == {"prompt_tokens": 9, "completion_tokens": 5, "total_tokens": 14}
    s = mock.reply("openai", "chat", {}, **kw(stream=True), client_wants_usage=True)
    events = [e[len("data: "):] for e in s.body.decode().split("\n\n") if e]
    assert events[-1] == "[DONE]" and json.loads(events[-2])["usage"]["completion_tokens"] == 5
    text = "".join((json.loads(e)["choices"] or [{}])[0].get("delta", {}).get("content", "") or ""
                   for e in events[:-1])
    assert text == "Pouch keeps every call inside." and s.content_type == "text/event-stream"


def test_mock_length_never_exceeds_the_output_cap():
    r = json.loads(mock.reply("openai", "chat", {}, **kw(output_cap=2, length=10)).body)
    assert r["usage"]["completion_tokens"] == 2 and r["choices"][0]["finish_reason"] == "length"


def test_mock_embeddings_base64_and_floats():
    r = json.loads(mock.reply("openai", "embeddings", {"input": ["a", "b"], "encoding_format": "base64"}, **kw()).body)
    assert [d["index"] for d in r["data"]] == [0, 1] and r["usage"]["prompt_tokens"] == 9
    raw = base64.b64decode(r["data"][0]["embedding"])
    assert len(struct.unpack(f"<{len(raw) // 4}f", raw)) == mock.EMBEDDING_DIMENSIONS
    f = json.loads(mock.reply("openai", "embeddings", {"input": "a"}, **kw()).body)
    assert len(f["data"]) == 1 and isinstance(f["data"][0]["embedding"][0], float)


def test_mock_anthropic_gemini_responses_and_ollama_shapes():
    a = json.loads(mock.reply("anthropic", "messages", {}, **kw()).body)
    assert a["content"][0]["text"].startswith("Pouch") and a["usage"]["output_tokens"] == 5
    s = mock.reply("anthropic", "messages", {}, **kw(stream=True)).body.decode()
    assert s.startswith("event: message_start") and "event: message_stop" in s
    g = json.loads(mock.reply("gemini", "gemini", {}, **kw(stream=True), sse=False).body)
    assert isinstance(g, list) and g[-1]["usageMetadata"]["candidatesTokenCount"] == 5
    resp = mock.reply("openai", "responses", {}, **kw(stream=True)).body.decode()
    assert "event: response.completed" in resp and resp.count("response.output_text.delta") == 10
    o = mock.reply("local", "ollama_generate", {}, **kw(stream=True))
    lines = [json.loads(x) for x in o.body.decode().splitlines()]
    assert "".join(x["response"] for x in lines) == "Pouch keeps every call inside." and lines[-1]["eval_count"] == 5


def test_mock_flag_and_models_listing():
    assert mock.expand_flag(["-p", "1", "--mock"]) == ["-p", "1", "--set", "pouch_mock=true"]
    assert models.parse_listing("/api/tags", {"models": [{"name": "a"}, {"x": 1}]}) == ["a"]
    assert models.parse_listing("/v1/models", {"data": [{"id": "b"}]}) == ["b"]
    assert models.parse_listing("/v1/models", {"error": "x"}) is None
    priced = models.hosted(PriceTable.load(), "openai")
    assert list(priced) == ["openai"] and any(m["model"] == "gpt-4o-mini" for m in priced["openai"])


def test_the_tui_marks_a_local_call():
    from pouch_tui.widgets.history_table import HistoryTable

    entry = {"kind": "settle", "status": "ok", "provider": "local", "model": "llama3", "local": True, "cost": "0",
             "input_tokens": 9, "output_tokens": 5, "flags": [], "ts": 100.0}
    cells = HistoryTable.cells(entry, 100.0, {})
    assert cells["status"].plain == "ok (local)" and cells["model"].plain == "local/llama3"
    assert cells["cost"].plain == "$0.00"
    assert HistoryTable.cells({**entry, "local": None, "provider": "openai"}, 100.0, {})["status"].plain == "ok"
