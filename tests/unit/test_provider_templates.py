"""Anthropic and Gemini templated events (``providers/templates.py``): a meter that learns
templates forwards the same bytes and reaches the same state and cut-off, chunk by chunk, as one
that parses every event, over random streams (escapes, unicode, look-alike events, usage events)
cut at random points."""

from __future__ import annotations

import json
import random
from decimal import Decimal

import pytest

from pouch_addon.pricing import PriceTable
from pouch_addon.providers import anthropic, gemini, streams, templates

D = Decimal
A_PRICE = PriceTable.load().resolve("claude-sonnet-4-5")
G_PRICE = PriceTable.load().resolve("gemini-2.5-flash")

TEXTS = ["Hello", " there", "", " caf\u00e9", " \u4f60\u597d", " \U0001F600", ' say "hi"', " back\\slash",
         " tab\there", " line\nend", "\n\n", " \u2028sep", " \x7f", " \x00nul", '"}}', ' "text":"x"',
         "\ud83d", " 0", "1", " \"index\":3,", "data: x", "\r\n\r\n", "{\"type\":\"ping\"}", "\\u0041",
         "x" * 300]


def dumps(obj, rng: random.Random, spaced: bool) -> str:
    seps = (", ", ": ") if spaced else (",", ":")
    return json.dumps(obj, separators=seps, ensure_ascii=rng.random() < 0.3)


def sse(data: str, event: str | None, crlf: bool = False) -> bytes:
    nl = "\r\n" if crlf else "\n"
    head = f"event: {event}{nl}" if event is not None else ""
    return (head + "data: " + data + nl + nl).encode("utf-8", "surrogatepass")


def anthropic_stream(rng: random.Random) -> list[bytes]:
    spaced = rng.random() < 0.3
    out = [sse(dumps({"type": "message_start", "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "content": [], "model": "claude-sonnet-4-5-20250929",
        "usage": {"input_tokens": rng.randint(1, 500), "output_tokens": 1,
                  "cache_read_input_tokens": rng.choice([0, 7, None])}}}, rng, spaced), "message_start")]
    kinds = [("text_delta", "text"), ("thinking_delta", "thinking"), ("input_json_delta", "partial_json")]
    for _ in range(rng.randint(0, 40)):
        r = rng.random()
        kind, field = rng.choice(kinds)
        index = rng.choice([0, 0, 0, 1, 2, 10])
        ev = {"type": "content_block_delta", "index": index, "delta": {"type": kind, field: rng.choice(TEXTS)}}
        name: str | None = "content_block_delta"
        if r < 0.04:
            ev["index"] = rng.choice(["1", -1, 1.0, None, True, 10 ** 20, 0])
        elif r < 0.07:
            del ev["index"]
        elif r < 0.09:
            ev["delta"] = {"type": "signature_delta", "signature": "abc"}
        elif r < 0.11:
            ev["delta"][field] = rng.choice([1, None, ["x"]])
        elif r < 0.13:
            ev["delta"]["type"] = "text_deltaX"
        elif r < 0.15:
            ev["extra"] = {"text": "hidden"}
        elif r < 0.17:
            name = rng.choice([None, "other", "content_block_delta "])
        elif r < 0.2:
            out.append(sse(dumps({"type": "ping"}, rng, spaced), "ping"))
            continue
        elif r < 0.22:
            out.append(sse(dumps({"type": "message_delta", "delta": {"stop_reason": None},
                                  "usage": {"output_tokens": rng.randint(1, 400)}}, rng, spaced), "message_delta"))
            continue
        elif r < 0.23:
            out.append(sse(dumps({"type": "error", "error": {"type": "overloaded_error", "message": "x"}}, rng, spaced),
                           "error"))
            continue
        elif r < 0.24:
            out.append(b": keep-alive\n\n")
            continue
        elif r < 0.25:
            out.append(sse('{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a"}} x',
                           "content_block_delta"))
            continue
        elif r < 0.26:
            out.append(sse('{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"a",'
                           '"text":"bb"}}', "content_block_delta"))
            continue
        elif r < 0.27:
            out.append(sse('{"type":"content_block_delta","index":01,"delta":{"type":"text_delta","text":"a"}}',
                           "content_block_delta"))
            continue
        out.append(sse(dumps(ev, rng, spaced), name, crlf=rng.random() < 0.03))
    if rng.random() < 0.8:
        out.append(sse(dumps({"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                              "usage": {"output_tokens": rng.randint(1, 400)}}, rng, spaced), "message_delta"))
        out.append(sse(dumps({"type": "message_stop"}, rng, spaced), "message_stop"))
    return out


def gemini_stream(rng: random.Random) -> list[bytes]:
    spaced = rng.random() < 0.5
    crlf = rng.random() < 0.8
    prompt = rng.randint(1, 900)
    thoughts = rng.random() < 0.3
    out_n = 0
    chunks = []
    for i in range(rng.randint(0, 40)):
        r = rng.random()
        out_n += rng.randint(0, 9)
        meta = {"promptTokenCount": prompt, "candidatesTokenCount": out_n, "totalTokenCount": prompt + out_n,
                "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt}]}
        if thoughts:
            meta["thoughtsTokenCount"] = out_n // 2
        cand = {"content": {"parts": [{"text": rng.choice(TEXTS)}], "role": "model"}, "index": 0}
        obj = {"candidates": [cand], "usageMetadata": meta, "modelVersion": "gemini-2.5-flash", "responseId": "r1"}
        if r < 0.03:
            cand["finishReason"] = "STOP"
        elif r < 0.05:
            del obj["usageMetadata"]
        elif r < 0.07:
            meta["candidatesTokenCount"] = rng.choice([None, 1.0, -3, True, 10 ** 19])
        elif r < 0.09:
            meta["promptTokenCount"] = prompt + 5
        elif r < 0.11:
            meta["cachedContentTokenCount"] = 3
        elif r < 0.13:
            cand["content"]["parts"].append({"text": "second"})
        elif r < 0.15:
            obj["candidates"].append({"content": {"parts": [{"text": "other"}]}, "index": 1})
        elif r < 0.17:
            cand["index"] = rng.choice([1, "0", None])
        elif r < 0.19:
            obj["modelVersion"] = rng.choice(["gemini-2.5-pro", "", 3])
        elif r < 0.2:
            obj = {"error": {"code": 500, "message": "x"}}
        elif r < 0.22:
            cand["content"]["parts"][0] = {"text": rng.choice(TEXTS), "thought": True}
        elif r < 0.23:
            cand["content"]["parts"][0]["text"] = rng.choice([None, 5])
        elif r < 0.24:
            chunks.append(b": ping\r\n\r\n")
            continue
        elif r < 0.25:
            obj["usageMetadata"] = "x"
        chunks.append(sse(dumps(obj, rng, spaced), None, crlf=crlf))
    return chunks


def cuts(chunks: list[bytes], rng: random.Random) -> list[bytes]:
    """The stream as sent (one event per chunk), or cut at random places, or a mix."""
    mode = rng.random()
    if mode < 0.4:
        return chunks
    data = b"".join(chunks)
    if mode < 0.7:  # events together, events split (incl. inside a UTF-8 character)
        out, pos = [], 0
        while pos < len(data):
            n = rng.randint(1, 400)
            out.append(data[pos:pos + n])
            pos += n
        return out
    out = []  # mostly whole events, sometimes two together or one in pieces
    for c in chunks:
        if out and rng.random() < 0.2:
            out[-1] += c
        elif rng.random() < 0.1 and len(c) > 2:
            k = rng.randint(1, len(c) - 1)
            out += [c[:k], c[k:]]
        else:
            out.append(c)
    return out


def state(m) -> dict:
    st = {k: getattr(m, k) for k in ("cut", "cut_reason", "done", "events", "parse_errors", "model_reported",
                                     "service_tier", "provider_error", "_pending_bytes", "_counted", "_raw_usage",
                                     "_input", "_reported_output", "_usage", "_cut_at", "_pricing_tier")}
    st["_pending"] = {k: list(v) for k, v in m._pending.items()}
    for k in ("_last_meta", "_input_key", "_finished"):
        if hasattr(m, k):
            st[k] = getattr(m, k)
    return st


def run_both(make, chunks: list[bytes]) -> tuple[int, int]:
    """Feed the same chunks to a templating meter and to a parsing one; every output and every
    state must be equal. Returns (events matched by a template, events)."""
    fast, slow = make(), make()
    slow._tries = 0  # never learns a template: every event parsed
    hits = [0]
    apply = fast._apply_template

    def counting(*a):
        hits[0] += 1
        return apply(*a)
    fast._apply_template = counting
    for i, c in enumerate(chunks):
        got, want = outcome(lambda m: m.feed(c), fast), outcome(lambda m: m.feed(c), slow)
        assert got == want, f"chunk {i} {c!r}: forwarded bytes differ"
        assert state(fast) == state(slow), f"chunk {i} {c!r}: state differs"
        if want.__class__ is str:  # both raised (the meter addon then cuts the stream: fail closed)
            return hits[0], slow.events
    assert outcome(lambda m: m.finish(), fast) == outcome(lambda m: m.finish(), slow)
    assert state(fast) == state(slow)
    for read in (lambda m: m.final_usage(), lambda m: m.running_cost, lambda m: m.checkpoint()):
        assert outcome(read, fast) == outcome(read, slow)
    assert slow._tpls == []
    return hits[0], slow.events


def outcome(read, m):
    """What ``read(m)`` gives, or the exception it raises (the same on both sides)."""
    try:
        return read(m)
    except Exception as exc:  # e.g. tiktoken on a lone surrogate: not the templates' business
        return type(exc).__name__


RESERVATIONS = ["0.0000001", "0.00005", "0.0003", "0.002", "1"]


@pytest.mark.parametrize("seed", range(300))
def test_anthropic_templated_events_match_parsing_each(seed):
    rng = random.Random(seed)
    res = D(rng.choice(RESERVATIONS))
    run_both(lambda: anthropic.AnthropicStreamMeter(A_PRICE, "claude-sonnet-4-5", 50, res),
             cuts(anthropic_stream(rng), rng))


@pytest.mark.parametrize("seed", range(300))
def test_gemini_templated_events_match_parsing_each(seed):
    rng = random.Random(seed)
    res = D(rng.choice(RESERVATIONS))
    run_both(lambda: gemini.GeminiStreamMeter(G_PRICE, "gemini-2.5-flash", 50, res), cuts(gemini_stream(rng), rng))


def test_the_random_streams_do_take_the_templated_path():
    """The differential tests above compare something: most text events go through templates."""
    hits = events = 0
    for seed in range(40):
        rng = random.Random(seed)
        h, e = run_both(lambda: anthropic.AnthropicStreamMeter(A_PRICE, "claude-sonnet-4-5", 50, D(1)),
                        anthropic_stream(rng))
        hits, events = hits + h, events + e
        rng = random.Random(seed)
        h, e = run_both(lambda: gemini.GeminiStreamMeter(G_PRICE, "gemini-2.5-flash", 50, D(1)), gemini_stream(rng))
        hits, events = hits + h, events + e
    assert hits > events / 3, (hits, events)


def test_usual_streams_skip_the_json_scanner(monkeypatch):
    """One event per chunk as the providers send it: only the first text event of each shape and
    the other events are parsed."""
    calls = []
    real = streams._loads
    monkeypatch.setattr(streams, "_loads", lambda s: calls.append(s) or real(s))
    a = anthropic.AnthropicStreamMeter(A_PRICE, "claude-sonnet-4-5", 50, D(1))
    chunks = [sse(json.dumps({"type": "content_block_delta", "index": i // 10, "delta": {
        "type": "text_delta", "text": f" word{i} \u00e9\n"}}, separators=(",", ":")), "content_block_delta")
              for i in range(30)]
    ping = sse('{"type": "ping"}', "ping")
    for c in chunks + [ping]:
        assert a.feed(c) == [c]
    assert len(calls) == 2  # the first delta (learnt; index 1 and 2 are holes) and the ping
    assert a._pending_bytes == sum(len(f" word{i} \u00e9\n".encode()) for i in range(30))
    calls.clear()
    g = gemini.GeminiStreamMeter(G_PRICE, "gemini-2.5-flash", 50, D(1))
    for i in range(20):
        c = sse(json.dumps({"candidates": [{"content": {"parts": [{"text": f"t{i}"}], "role": "model"}, "index": 0}],
                            "usageMetadata": {"promptTokenCount": 9, "candidatesTokenCount": i + 1,
                                              "totalTokenCount": 10 + i}, "modelVersion": "gemini-2.5-flash"}),
                None, crlf=True)
        assert g.feed(c) == [c]
    assert len(calls) == 1
    assert g._reported_output == 20 and g._last_meta["totalTokenCount"] == 29


def test_a_learnt_template_refuses_what_it_cannot_read_exactly():
    data = '{"a":1,"t":"xy","n":5}'
    tpl = templates.learn(None, data, b"data: " + data.encode() + b"\n\n", json.loads(data), [("t",), ("n",)], None)
    assert tpl is not None and tpl.header == b"data: "
    assert tpl.match('{"a":1,"t":"z\\"q","n":17}')[0] == 'z"q'
    for other in ('{"a":1,"t":"x","n":05}', '{"a":1,"t":"x","n":5.0}', '{"a":1,"t":"x","n":-5}',
                  '{"a":2,"t":"x","n":5}', '{"a":1,"t":"x\ty","n":5}', '{"a":1,"t":"x","n":5} ',
                  '{"a":1,"t":"x\\q","n":5}', '{"a":1,"t":"x","n":1234567890123456789}'):
        assert tpl.match(other) is None, other
    # a key that is not unique, a value that is not where its key is, a float: no template
    assert templates.learn(None, '{"t":"a","b":{"t":"a"}}', b"", {"t": "a", "b": {"t": "a"}}, [("t",)], None) is None
    assert templates.learn(None, '{"t":1.0}', b"", {"t": 1.0}, [("t",)], None) is None
