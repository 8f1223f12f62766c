"""StreamMeter: usage extraction, usage-chunk hiding, running cost and the cut-off decision."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest

from pouch_addon.metering import StreamMeter
from pouch_addon.pricing import PriceTable, Usage, cost
from pouch_addon.tokens import count_text

D = Decimal
PRICE = PriceTable.load().resolve("gpt-4o")  # $2.50 in / $10 out per 1M tokens


def sse(obj, event: str | None = None) -> bytes:
    head = f"event: {event}\n".encode() if event else b""
    return head + b"data: " + json.dumps(obj, separators=(",", ":")).encode() + b"\n\n"


def chat(delta: dict | None = None, *, index: int = 0, finish=None, choices=None, usage=None,
         model: str = "gpt-4o-2024-08-06", tier: str | None = "default") -> bytes:
    if choices is None:
        choices = [{"index": index, "delta": delta or {}, "logprobs": None, "finish_reason": finish}]
    obj = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": model,
           "service_tier": tier, "system_fingerprint": "fp_1", "choices": choices, "usage": usage,
           "obfuscation": "xyz"}
    return sse(obj)


USAGE = {"prompt_tokens": 611, "completion_tokens": 13, "total_tokens": 624,
         "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
         "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}}
USAGE_CHUNK = chat(choices=[], usage=USAGE)
DONE = b"data: [DONE]\n\n"
CONTENT = [
    chat({"role": "assistant", "content": "", "refusal": None}),
    chat({"content": "Hello"}),
    chat({"content": " there"}),
    chat({"content": ", friend!"}),
    chat({}, finish="stop"),
]
CHAT_WITH_USAGE = b"".join(CONTENT) + USAGE_CHUNK + DONE


def unasked(stream: bytes) -> bytes:
    """What OpenAI sends a client that did not ask for usage: no ``"usage": null`` in any chunk."""
    return stream.replace(b',"usage":null', b"")


CHAT_NO_USAGE = unasked(b"".join(CONTENT) + DONE)


def meter(api="chat", *, input_tokens=100, reservation="1", hide=False, tier=None, **kw) -> StreamMeter:
    return StreamMeter(api, PRICE, "gpt-4o", input_tokens, D(reservation), hide, tier, **kw)


def pump(m: StreamMeter, chunks: list[bytes]) -> bytes:
    out = []
    for chunk in chunks:
        got = m.feed(chunk)
        assert len(got) <= 1 and b"" not in got
        out.extend(got)
    end = m.finish()
    assert len(end) <= 1 and b"" not in end
    return b"".join(out + end)


def test_price_assumption():
    assert (PRICE.rates.input, PRICE.rates.output) == (D("2.5"), D("10"))


# -- Chat Completions ------------------------------------------------------------------------------

def test_chat_usage_chunk_hidden_but_used():
    m = meter(hide=True)
    assert pump(m, [CHAT_WITH_USAGE]) == CHAT_NO_USAGE
    assert m.usage_hidden is True
    assert m.usage_source == "provider" and m.usage_final is True
    assert m.final_usage() == Usage(input_tokens=611, output_tokens=13)
    assert m.running_cost == D("0.0016575")
    assert m.output_tokens_counted == 5 == count_text("Hello there, friend!", "gpt-4o")
    assert (m.done, m.events, m.parse_errors, m.cut) == (True, 7, 0, False)
    assert (m.model_reported, m.service_tier, m.provider_error) == ("gpt-4o-2024-08-06", "default", None)
    assert m.checkpoint() == {"output_tokens": 5, "running_cost": "0.0016575", "events": 7,
                              "usage_source": "provider", "final_cost": "0.0016575"}


def test_chat_usage_chunk_forwarded_when_client_asked():
    m = meter(hide=False)
    assert pump(m, [CHAT_WITH_USAGE]) == CHAT_WITH_USAGE
    assert m.usage_hidden is False
    assert m.final_usage() == Usage(input_tokens=611, output_tokens=13)
    assert m.usage_source == "provider"


@pytest.mark.parametrize("hide", [True, False])
def test_chat_every_chunk_boundary(hide):
    expected = CHAT_NO_USAGE if hide else CHAT_WITH_USAGE
    for cut in range(1, len(CHAT_WITH_USAGE)):
        m = meter(hide=hide)
        out = pump(m, [CHAT_WITH_USAGE[:cut], CHAT_WITH_USAGE[cut:]])
        assert out == expected, cut
        assert (m.output_tokens_counted, m.events, m.done) == (5, 7, True), cut
        assert m.final_usage() == Usage(input_tokens=611, output_tokens=13), cut


def test_chat_without_usage_falls_back_to_counted():
    m = meter(hide=True)
    assert pump(m, [c for c in CONTENT] + [DONE]) == CHAT_NO_USAGE
    assert m.usage_source == "counted" and m.usage_final is False
    assert m.final_usage() == Usage(input_tokens=100, output_tokens=5)
    assert m.running_cost == D("0.0003")  # 100 × $2.50/1M + 5 × $10/1M
    assert m.done is True
    assert m.checkpoint() == {"output_tokens": 5, "running_cost": "0.0003", "events": 6,
                              "usage_source": "counted"}


def test_running_cost_and_checkpoint_grow_with_each_event():
    m = meter()
    assert m.running_cost == D("0.00025")
    m.feed(CONTENT[0] + CONTENT[1])
    assert m.running_cost == D("0.00026")
    assert m.checkpoint() == {"output_tokens": 1, "running_cost": "0.00026", "events": 2,
                              "usage_source": "counted"}


def test_chat_n2_interleaved_choices_counted_separately():
    a = ["Hel", "lo", " wor", "ld"]
    b = ["Goo", "dbye", " mo", "on"]
    chunks = []
    for x, y in zip(a, b):
        chunks.append(chat({"content": x}, index=0))
        chunks.append(chat({"content": y}, index=1))
    chunks += [chat({}, index=0, finish="stop"), chat({}, index=1, finish="stop")]
    m = meter()
    stream = b"".join(chunks) + DONE
    assert pump(m, [stream]) == stream
    # per choice ("Hello world" 2 + "Goodbye moon" 3), not the count of the interleaved text (8)
    assert m.output_tokens_counted == 5
    assert count_text("Hello world", "gpt-4o") + count_text("Goodbye moon", "gpt-4o") == 5
    assert count_text("".join(x + y for x, y in zip(a, b)), "gpt-4o") == 8


def test_chat_tool_call_and_function_call_and_refusal_deltas():
    chunks = [
        chat({"role": "assistant", "content": None, "tool_calls": [
            {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
        chat({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
        chat({"tool_calls": [{"index": 0, "function": {"arguments": ' "Paris"}'}}]}),
        chat({"tool_calls": [{"index": 1, "id": "call_2", "type": "function",
                              "function": {"name": "lookup", "arguments": '{"q":"x"}'}}]}),
        chat({"function_call": {"name": "lookup", "arguments": '{"q":"x"}'}}),
        chat({"refusal": "I cannot help with that."}),
        chat({}, finish="tool_calls"),
    ]
    m = meter()
    stream = b"".join(chunks) + DONE
    assert pump(m, [stream]) == stream
    # names are model output too: get_weather 2 + {"city": "Paris"} 6 + lookup 1 + {"q":"x"} 5
    # + legacy function_call 1 + 5 + refusal 6
    assert m.output_tokens_counted == 2 + 6 + 1 + 5 + 1 + 5 + 6


def test_chat_reasoning_content_of_compatible_providers_is_counted():
    m = meter()
    m.feed(chat({"reasoning_content": "Let me think."}) + chat({"reasoning": "A summary."}))
    assert m.output_tokens_counted == 4 + 3


def test_completions_text():
    chunks = [sse({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "gpt-3.5-turbo-instruct",
                   "choices": [{"text": t, "index": 0, "logprobs": None, "finish_reason": None}]})
              for t in ("Hi", " there")]
    chunks.append(sse({"id": "cmpl-1", "object": "text_completion", "created": 1,
                       "model": "gpt-3.5-turbo-instruct", "choices": [],
                       "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}))
    m = meter("completions", hide=True)
    out = pump(m, [b"".join(chunks) + DONE])
    assert out == chunks[0] + chunks[1] + DONE
    assert m.output_tokens_counted == 2
    assert m.final_usage() == Usage(input_tokens=3, output_tokens=2)
    assert m.model_reported == "gpt-3.5-turbo-instruct"


def test_interim_usage_is_not_final():
    # some OpenAI-compatible servers send a running usage in every chunk
    m = meter(hide=True)
    out = m.feed(chat({"content": "Hello"}, usage={"prompt_tokens": 10, "completion_tokens": 1}))
    assert out == [chat({"content": "Hello"}, usage={"prompt_tokens": 10, "completion_tokens": 1})]
    assert m.usage_source == "provider" and m.usage_final is False
    assert m.final_usage() == Usage(input_tokens=10, output_tokens=1)
    m.feed(chat({}, finish="stop", usage={"prompt_tokens": 10, "completion_tokens": 2}))
    assert m.usage_final is True and m.final_usage() == Usage(input_tokens=10, output_tokens=2)


def test_reported_service_tier_prices_the_running_cost():
    m = meter(tier="auto")
    m.feed(chat({"content": "Hello"}, tier="priority"))
    assert m.service_tier == "priority"
    assert m.running_cost == cost(PRICE, Usage(input_tokens=100, output_tokens=1), "priority")
    assert m.running_cost > cost(PRICE, Usage(input_tokens=100, output_tokens=1))
    m.feed(chat({"content": " there"}, tier="no-such-tier"))  # unknown: keep the last priceable tier
    assert m.service_tier == "no-such-tier"
    assert m.running_cost == cost(PRICE, Usage(input_tokens=100, output_tokens=2), "priority")


# -- Responses -------------------------------------------------------------------------------------

def resp_obj(status: str, usage=None, **extra) -> dict:
    return {"id": "resp_1", "object": "response", "created_at": 1, "status": status,
            "model": "gpt-4o-2024-08-06", "service_tier": "default", "output": [], "usage": usage, **extra}


def rev(seq: int, typ: str, **fields) -> bytes:
    return sse({"type": typ, "sequence_number": seq, **fields}, event=typ)


R_USAGE = {"input_tokens": 20, "input_tokens_details": {"cached_tokens": 8}, "output_tokens": 9,
           "output_tokens_details": {"reasoning_tokens": 4}, "total_tokens": 29}
R_HEAD = [
    rev(0, "response.created", response=resp_obj("in_progress")),
    rev(1, "response.in_progress", response=resp_obj("in_progress")),
    rev(2, "response.output_item.added", output_index=0, item={"id": "rs_1", "type": "reasoning"}),
    rev(3, "response.reasoning_summary_text.delta", item_id="rs_1", output_index=0, summary_index=0,
        delta="A summary."),
    rev(4, "response.output_text.delta", item_id="msg_1", output_index=1, content_index=0,
        delta="Hi! How", logprobs=[]),
    rev(5, "response.output_text.delta", item_id="msg_1", output_index=1, content_index=0,
        delta=" can I help?", logprobs=[]),
    rev(6, "response.function_call_arguments.delta", item_id="fc_1", output_index=2, delta='{"city":'),
    rev(7, "response.function_call_arguments.delta", item_id="fc_1", output_index=2, delta=' "Paris"}'),
    rev(8, "response.output_text.done", item_id="msg_1", output_index=1, content_index=0,
        text="Hi! How can I help?"),
]


def test_responses_usage_from_completed():
    stream = b"".join(R_HEAD) + rev(9, "response.completed", response=resp_obj("completed", R_USAGE))
    for cut in range(1, len(stream), 7):
        m = meter("responses")
        assert pump(m, [stream[:cut], stream[cut:]]) == stream
        assert m.output_tokens_counted == 3 + 7 + 6  # summary + text + arguments
        assert m.final_usage() == Usage(input_tokens=20, cached_tokens=8, output_tokens=9, reasoning_tokens=4)
        assert (m.usage_source, m.done, m.events, m.model_reported, m.service_tier) == (
            "provider", True, 10, "gpt-4o-2024-08-06", "default")
        # 12 × 2.5 + 8 × 1.25 + 9 × 10 per 1M
        assert m.running_cost == D("0.00013")


def test_responses_usage_from_incomplete():
    stream = b"".join(R_HEAD[:6]) + rev(6, "response.incomplete", response=resp_obj(
        "incomplete", {"input_tokens": 20, "output_tokens": 16}, incomplete_details={"reason": "max_output_tokens"}))
    m = meter("responses")
    assert pump(m, [stream]) == stream
    assert m.done is True and m.usage_final is True
    assert m.final_usage() == Usage(input_tokens=20, output_tokens=16)
    assert m.provider_error is None


def test_responses_failed_records_error_and_usage():
    err = {"code": "server_error", "message": "The model crashed."}
    stream = R_HEAD[0] + rev(1, "response.failed", response=resp_obj(
        "failed", {"input_tokens": 20, "output_tokens": 0}, error=err))
    m = meter("responses")
    assert pump(m, [stream]) == stream
    assert m.provider_error == err
    assert m.done is True and m.final_usage() == Usage(input_tokens=20)


def test_responses_without_terminal_event_is_counted():
    m = meter("responses")
    stream = b"".join(R_HEAD)
    assert pump(m, [stream]) == stream
    assert m.done is False and m.usage_source == "counted"
    assert m.final_usage() == Usage(input_tokens=100, output_tokens=16)


def test_responses_done_sentinel_accepted():
    m = meter("responses")
    assert pump(m, [R_HEAD[0] + DONE]) == R_HEAD[0] + DONE
    assert m.done is True


# -- cut-off ---------------------------------------------------------------------------------------

WORDS = [" one", " two", " three", " four", " five", " six", " seven", " eight"]  # 1 token each


def test_cut_off_chat_exact_bytes_then_nothing():
    # $0.00025 of input + 5 output tokens × $0.00001 = $0.0003: the 5th token reaches it
    m = meter(reservation="0.0003", hide=True)
    words = [chat({"content": w}) for w in WORDS]
    assert m.feed(CONTENT[0] + words[0] + words[1]) == [unasked(CONTENT[0] + words[0] + words[1])]
    assert m.cut is False
    out = m.feed(words[2] + words[3] + words[4] + words[5] + words[6][:20])
    expected_error = (
        b'data: {"error": {"message": "pouch: budget reservation of $0.0003 reached after 5 output '
        b'tokens; stream cut off", "type": "budget_exceeded", "code": "budget_exceeded"}}\n\n'
        b"data: [DONE]\n\n")
    assert out == [unasked(words[2] + words[3] + words[4]) + expected_error]
    assert (m.cut, m.cut_reason, m.output_tokens_counted) == (True, "budget_exceeded", 5)
    assert m.running_cost == D("0.0003")
    assert m.final_usage() == Usage(input_tokens=100, output_tokens=5)
    assert m.feed(words[6][20:] + words[7]) == []
    assert m.feed(USAGE_CHUNK + DONE) == []
    assert m.finish() == []
    assert m.output_tokens_counted == 5 and m.usage_source == "counted"


def test_cut_off_below_reservation_does_not_trigger():
    m = meter(reservation="0.00030001")
    stream = b"".join(chat({"content": w}) for w in WORDS[:5]) + DONE
    assert pump(m, [stream]) == stream
    assert m.cut is False


def test_cut_off_responses_exact_bytes():
    m = meter("responses", reservation="0.00027")  # 2 output tokens
    deltas = [rev(4 + i, "response.output_text.delta", item_id="msg_1", output_index=0, content_index=0,
                  delta=w, logprobs=[]) for i, w in enumerate(WORDS)]
    out = m.feed(R_HEAD[0] + deltas[0] + deltas[1] + deltas[2])
    expected_error = (
        b'event: error\ndata: {"type":"error","code":"budget_exceeded","message":"pouch: budget '
        b'reservation of $0.00027 reached after 2 output tokens; stream cut off","param":null,'
        b'"sequence_number":6,"error":{"message":"pouch: budget reservation of $0.00027 reached after '
        b'2 output tokens; stream cut off","type":"budget_exceeded","code":"budget_exceeded"}}\n\n')
    assert out == [R_HEAD[0] + deltas[0] + deltas[1] + expected_error]
    assert m.cut is True
    assert m.feed(deltas[3]) == [] and m.finish() == []


def test_no_cut_once_final_usage_arrived():
    # the usage alone costs more than the reservation, but the generation is over
    m = meter(reservation="0.0003", hide=True)
    stream = CONTENT[0] + USAGE_CHUNK + DONE
    assert pump(m, [stream]) == unasked(CONTENT[0]) + DONE
    assert m.cut is False
    assert m.running_cost == D("0.0016575")


def test_interim_usage_over_reservation_cuts():
    m = meter(reservation="0.0003")
    out = m.feed(chat({"content": "Hello"}, usage={"prompt_tokens": 10, "completion_tokens": 100}))
    assert m.cut is True and out[0].endswith(b"data: [DONE]\n\n")


def test_reservation_below_input_cost_cuts_at_first_event():
    m = meter(reservation="0.0001")
    out = m.feed(CONTENT[0])
    assert m.cut is True
    assert out[0].startswith(CONTENT[0] + b'data: {"error": {"message": "pouch: budget reservation of '
                                          b'$0.0001 reached after 0 output tokens; stream cut off"')


@pytest.mark.parametrize("reservation", ["0.00025", "0.000250001", "0.00026", "0.0002599999", "0.00033",
                                         "0.0003300001", "0.0125", "1"])
@pytest.mark.parametrize("input_tokens", [0, 1, 100, 127_999, 128_001])
def test_cut_threshold_is_exactly_running_cost_reaching_reservation(reservation, input_tokens):
    m = meter(input_tokens=input_tokens, reservation=reservation)
    n = m._cut_at
    res = D(reservation)

    def at(k):
        return cost(PRICE, Usage(input_tokens=input_tokens, output_tokens=k))

    assert at(n) >= res
    assert n == 0 or at(n - 1) < res


def test_finish_never_cuts_and_flushes_unterminated_event():
    m = meter(reservation="0.0003")
    tail = chat({"content": "".join(WORDS)})[:-2]  # 8 tokens, no blank line
    assert m.feed(tail) == []
    assert m.finish() == [tail]
    assert m.cut is False and m.output_tokens_counted == 8


def test_oversize_event_cuts_with_stream_error():
    m = meter(max_event_bytes=400)
    out = m.feed(CONTENT[1] + b"data: " + b"x" * 500)
    assert m.cut is True and m.cut_reason == "stream_error"
    assert out == [CONTENT[1] + b'data: {"error": {"message": "pouch: an unfinished SSE event of at least 506 '
                   b'bytes exceeds the limit of 400 bytes; refusing to buffer it; stream cut off", "type": '
                   b'"stream_error", "code": "stream_error"}}\n\ndata: [DONE]\n\n']
    assert m.feed(b"more") == []


# -- robustness ------------------------------------------------------------------------------------

def test_unparsable_and_odd_data_is_forwarded_and_counted_as_zero():
    odd = [
        b"data: {not json\n\n",
        b"data: 42\n\n",
        b'data: {"choices": "nope", "model": 7, "service_tier": null}\n\n',
        b'data: {"choices": [5, {"index": [1], "delta": ["x"]}, {"delta": {"content": 5, "tool_calls": "x"}}]}\n\n',
        b'data: {"choices": [{"delta": {"tool_calls": [null, {"function": "f"}, {"function": {"arguments": 3}}]}}]}\n\n',
        b'data: {"choices": [], "usage": {"prompt_tokens": "many"}}\n\n',
        b": comment\n\n",
        b"event: ping\n\n",
    ]
    m = meter(hide=False)
    stream = b"".join(odd) + CONTENT[1] + DONE
    assert pump(m, [stream]) == stream
    assert m.parse_errors == 3  # not JSON, not an object, malformed usage
    assert m.output_tokens_counted == 1
    assert m.usage_source == "counted" and m.model_reported == "gpt-4o-2024-08-06"
    assert m.events == 8


def test_unparsable_responses_event_is_forwarded():
    m = meter("responses")
    stream = b"event: response.output_text.delta\ndata: {oops\n\n" + R_HEAD[4]
    assert pump(m, [stream]) == stream
    assert m.parse_errors == 1 and m.output_tokens_counted == 3


def test_provider_error_chat():
    err = {"message": "The server is overloaded.", "type": "server_error", "code": None}
    stream = CONTENT[1] + sse({"error": err})
    m = meter()
    assert pump(m, [stream]) == stream
    assert m.provider_error == err
    assert m.done is False and m.output_tokens_counted == 1


def test_provider_error_responses_event():
    body = {"type": "error", "code": "rate_limit_exceeded", "message": "Slow down.", "param": None,
            "sequence_number": 3}
    stream = R_HEAD[0] + sse(body, event="error")
    m = meter("responses")
    assert pump(m, [stream]) == stream
    assert m.provider_error == body


def test_forwarded_output_is_one_chunk_and_never_empty_bytes():
    m = meter()
    assert m.feed(b"data: {") == []
    assert m.feed(b"}") == []
    assert m.feed(b"\n\n: a\n\ndata: [DONE]\n\n") == [b"data: {}\n\n: a\n\ndata: [DONE]\n\n"]
    assert m.feed(b"") == []
    assert m.finish() == []


def test_constructor_validation():
    with pytest.raises(ValueError, match="unknown api"):
        StreamMeter("embeddings", PRICE, "gpt-4o", 1, D(1), False)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown service_tier"):
        meter(tier="platinum")
    with pytest.raises(ValueError, match="input_tokens"):
        meter(input_tokens=-1)


# -- the fast paths: same bytes and state however the stream is cut --------------------------------

import random  # noqa: E402

from pouch_addon.sse import SSEEvent, SSEParser  # noqa: E402


class GeneralParser(SSEParser):
    """Every chunk through the SSE parser's general path only."""

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        return self._feed(bytes(chunk)) if chunk else []


def state(m: StreamMeter) -> dict:
    """Everything observable about a meter (read after the stream: reading the count tokenises)."""
    return {
        "cut": m.cut, "cut_reason": m.cut_reason, "done": m.done, "events": m.events,
        "parse_errors": m.parse_errors, "model_reported": m.model_reported,
        "service_tier": m.service_tier, "provider_error": m.provider_error,
        "usage_hidden": m.usage_hidden, "usage_source": m.usage_source, "usage_final": m.usage_final,
        "final_usage": m.final_usage(), "running_cost": m.running_cost,
        "output_tokens": m.output_tokens_counted, "checkpoint": m.checkpoint(),
    }


def metered(make, chunks: list[bytes], *, general: bool = False) -> tuple[bytes, dict]:
    m = make()
    if general:
        m._parser = GeneralParser(m._parser.max_event_bytes)
    out = []
    for chunk in chunks:
        got = m.feed(chunk)
        assert len(got) <= 1 and b"" not in got
        out += got
    end = m.finish()
    assert len(end) <= 1 and b"" not in end
    return b"".join(out + end), state(m)


def by_event(stream: bytes, crlf: bool = False) -> list[bytes]:
    sep = b"\r\n\r\n" if crlf else b"\n\n"
    parts = stream.split(sep)
    return [p + sep for p in parts[:-1]] + ([parts[-1]] if parts[-1] else [])


def assert_same_however_cut(make, stream: bytes, seeds=range(30), crlf: bool = False) -> tuple[bytes, dict]:
    expected = metered(make, [stream[i:i + 1] for i in range(len(stream))], general=True)
    assert metered(make, [stream]) == expected
    assert metered(make, by_event(stream, crlf)) == expected
    for seed in seeds:
        rng = random.Random(seed)
        events = by_event(stream, crlf)
        # several events per chunk
        grouped, i = [], 0
        while i < len(events):
            k = rng.randint(1, 4)
            grouped.append(b"".join(events[i:i + k]))
            i += k
        assert metered(make, grouped) == expected, seed
        # random cuts
        cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randint(1, 25))))
        assert metered(make, split_at(stream, cuts)) == expected, (seed, cuts)
    return expected


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


N2 = [chat({"content": w}, index=i % 2) for i, w in enumerate(WORDS)] + [
    chat({}, index=0, finish="stop"), chat({}, index=1, finish="stop")]
TOOLS = [
    chat({"role": "assistant", "content": None, "tool_calls": [
        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": ""}}]}),
    chat({"tool_calls": [{"index": 0, "function": {"arguments": '{"city":'}}]}),
    chat({"function_call": {"name": "lookup", "arguments": '{"q":"x"}'}}),
    chat({"refusal": "I cannot help with that."}),
    chat({"reasoning_content": "Let me think \u4f60\u597d \U0001F600."}),
]


@pytest.mark.parametrize("hide", [True, False])
def test_same_however_cut_chat(hide):
    stream = b"".join(CONTENT + N2 + TOOLS) + chat({"content": "caf\u00e9"}, tier="priority") + USAGE_CHUNK + DONE
    out, st = assert_same_however_cut(lambda: meter(hide=hide, tier="auto"), stream)
    assert (out == stream) is (not hide)
    assert st["usage_hidden"] is hide and st["done"] and st["service_tier"] == "default"


def test_same_however_cut_completions():
    chunks = [sse({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "gpt-3.5-turbo-instruct",
                   "choices": [{"text": t, "index": 0, "logprobs": None, "finish_reason": None}]})
              for t in ("Hi", " there", " \U0001F600")]
    chunks.append(sse({"id": "cmpl-1", "object": "text_completion", "created": 1, "model": "gpt-3.5-turbo-instruct",
                       "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}}))
    out, st = assert_same_however_cut(lambda: meter("completions", hide=True), b"".join(chunks) + DONE)
    assert out == b"".join(chunks[:3]) + DONE and st["usage_hidden"]


def test_same_however_cut_responses():
    stream = (b"".join(R_HEAD) + b": keep-alive\n\n"
              + rev(9, "response.completed", response=resp_obj("completed", R_USAGE)))
    out, st = assert_same_however_cut(lambda: meter("responses"), stream)
    assert out == stream and st["output_tokens"] == 16 and st["usage_source"] == "provider"


def test_same_however_cut_crlf_stream():
    lf = b"".join(CONTENT) + USAGE_CHUNK + DONE
    stream = lf.replace(b"\n", b"\r\n")
    out, st = assert_same_however_cut(lambda: meter(hide=True), stream, crlf=True)
    assert out == unasked(b"".join(CONTENT)).replace(b"\n", b"\r\n") + b"data: [DONE]\r\n\r\n"
    responses = (b"".join(R_HEAD)).replace(b"\n", b"\r\n")
    assert_same_however_cut(lambda: meter("responses"), responses, seeds=range(10), crlf=True)


def test_same_however_cut_comments_multiline_data_and_odd_events():
    multi = b"data: " + json.dumps({"choices": [{"index": 0, "delta": {"content": " multi line"}}]}).encode()
    multi = multi.replace(b'"delta": ', b'"delta":\ndata: ')  # the JSON split over two data lines
    stream = b"".join([
        b": keep-alive\n\n", CONTENT[0], b":\n\n", multi + b"\n\n", b"\n",
        b"id: 3\nevent: message\ndata: " + json.dumps({"choices": [{"delta": {"content": " x"}}]}).encode() + b"\n\n",
        b"data: {not json\n\n", b'data:  {"choices": []}\n\n', b"event: ping\n\n",
        b'data: {"choices":[{"delta":{"content":"\\"usage\\": 5"}}], "usage": null}\n\n',
        b'data: {"error": "overloaded"}\n\n', CONTENT[1], DONE, b": trailing",
    ])
    out, st = assert_same_however_cut(lambda: meter(), stream)
    assert out == stream
    assert st["parse_errors"] == 1 and st["provider_error"] == {"message": "overloaded"}
    assert st["output_tokens"] == count_text(" multi line", "gpt-4o") + 1 + count_text('"usage": 5', "gpt-4o") + 1


@pytest.mark.parametrize("reservation", ["0.0003", "0.00027", "0.0001"])
def test_same_however_cut_with_a_cut_off(reservation):
    words = [chat({"content": w}) for w in WORDS]
    stream = CONTENT[0] + b"".join(words) + USAGE_CHUNK + DONE
    out, st = assert_same_however_cut(lambda: meter(reservation=reservation, hide=True), stream)
    assert st["cut"] and st["cut_reason"] == "budget_exceeded"
    assert out.endswith(b"data: [DONE]\n\n") and b"budget reservation" in out
    deltas = [rev(4 + i, "response.output_text.delta", item_id="msg_1", output_index=0, content_index=0,
                  delta=w, logprobs=[]) for i, w in enumerate(WORDS)]
    out, st = assert_same_however_cut(lambda: meter("responses", reservation=reservation),
                                      R_HEAD[0] + b"".join(deltas), seeds=range(10))
    assert st["cut"] and out.endswith(b"}}\n\n") and b"event: error\n" in out


def test_same_however_cut_oversize_event():
    # the error message depends on where the stream was cut (an unfinished event of at least N
    # bytes, or a complete event of M bytes), as it always did; everything else does not
    stream = CONTENT[1] + CONTENT[2] + b"data: " + b"x" * 500 + b"\n\n" + CONTENT[3]
    make = lambda: meter(max_event_bytes=400)  # noqa: E731
    ref_out, ref_state = metered(make, [stream[i:i + 1] for i in range(len(stream))], general=True)
    assert ref_state["cut_reason"] == "stream_error"
    head = CONTENT[1] + CONTENT[2] + b'data: {"error": {"message": "pouch: an '
    assert ref_out.startswith(head)
    rng = random.Random(5)
    for chunks in ([stream], by_event(stream), *(
            split_at(stream, sorted(rng.sample(range(1, len(stream)), rng.randint(1, 20)))) for _ in range(30))):
        out, st = metered(make, chunks)
        assert st == ref_state and out.startswith(head) and out.endswith(b"data: [DONE]\n\n"), chunks


def test_escaped_usage_in_content_is_text_not_usage():
    tricky = chat({"content": '{"usage": {"prompt_tokens": 1}}, "choices": []'})
    m = meter(hide=True)
    assert pump(m, [tricky + DONE]) == unasked(tricky) + DONE
    assert m.usage_source == "counted" and m.usage_hidden is False


def test_reservation_below_input_cost_cuts_even_after_a_keep_alive():
    # the cut-off test runs after every event, a comment too (not only after events with data)
    m = meter(reservation="0.0001")
    out = m.feed(b": ping\n\n" + CONTENT[0])
    assert m.cut is True and m.events == 0
    assert out[0].startswith(b': ping\n\ndata: {"error": {"message": "pouch: budget reservation of $0.0001')


# -- server-side tool calls (issue 13) -------------------------------------------------------------

WS_FEES = {"web_search_call": D("0.01"), "code_interpreter_call": D("0.03")}


def tool_item(seq: int, typ: str, item: dict, index: int) -> bytes:
    return rev(seq, typ, output_index=index, item=item)


def test_responses_tool_calls_are_counted_once_and_their_fees_are_in_the_running_cost():
    ws1, ws2 = {"id": "ws_1", "type": "web_search_call", "status": "in_progress"}, {"id": "ws_2", "type": "web_search_call"}
    ci = {"id": "ci_1", "type": "code_interpreter_call", "container_id": "c1"}
    fn = {"id": "fc_9", "type": "function_call", "name": "f", "arguments": "{}"}
    stream = b"".join([
        R_HEAD[0],
        tool_item(1, "response.output_item.added", ws1, 0), tool_item(2, "response.output_item.done", ws1, 0),
        tool_item(3, "response.output_item.added", ws2, 1), tool_item(4, "response.output_item.added", ci, 2),
        tool_item(5, "response.output_item.added", fn, 3),
    ])
    m = meter("responses", fees=WS_FEES)
    assert pump(m, [stream]) == stream
    assert m.tool_calls == {"web_search_call": 2, "code_interpreter_call": 1}
    assert m.running_cost == cost(PRICE, Usage(input_tokens=100)) + D("0.05")
    # the terminal event repeats the items (same ids): still counted once; plus the usage
    final = rev(6, "response.completed", response=resp_obj("completed", R_USAGE, output=[ws1, ws2, ci, fn]))
    m.feed(final)
    assert m.tool_calls == {"web_search_call": 2, "code_interpreter_call": 1}
    assert m.running_cost == D("0.00013") + D("0.05")
    assert m.checkpoint()["final_cost"] == "0.05013"


def test_tool_fees_bring_the_cut_off_forward():
    """The reservation pays for tokens and fees: fees seen leave less for output tokens."""
    deltas = [rev(10 + i, "response.output_text.delta", item_id="msg_1", output_index=1, content_index=0,
                  delta=w, logprobs=[]) for i, w in enumerate(WORDS)]
    # 100 input tokens ($0.00025) + one search ($0.01) + 2 output tokens ($0.00002)
    m = meter("responses", reservation="0.01027", fees=WS_FEES)
    m.feed(R_HEAD[0] + tool_item(1, "response.output_item.added", {"id": "ws_1", "type": "web_search_call"}, 0))
    out = m.feed(b"".join(deltas[:4]))
    assert m.cut is True and b"budget_exceeded" in out[0] and m.output_tokens_counted == 2
    # without the fee the same stream would have run on
    m2 = meter("responses", reservation="0.01027", fees=WS_FEES)
    m2.feed(R_HEAD[0])
    m2.feed(b"".join(deltas[:4]))
    assert m2.cut is False


def test_a_tool_call_without_a_fee_leaves_no_final_cost_checkpoint():
    m = meter("responses", fees=WS_FEES)
    item = {"id": "fs_1", "type": "file_search_call"}
    m.feed(R_HEAD[0] + tool_item(1, "response.output_item.added", item, 0)
           + rev(2, "response.completed", response=resp_obj("completed", R_USAGE, output=[item])))
    assert m.unpriced_calls is True and m.tool_calls == {"file_search_call": 1}
    assert "final_cost" not in m.checkpoint()  # the orphan rule bills the whole reservation


def test_a_fixed_fee_is_part_of_the_running_cost():
    m = meter(fixed_fee=D("0.025"))
    pump(m, [CHAT_WITH_USAGE])
    assert m.running_cost == D("0.0016575") + D("0.025")


# -- "usage": null, added by the injected include_usage, is taken back out -----------------------

def test_null_usage_is_cut_out_byte_for_byte_when_pouch_asked_for_usage():
    spaced = b'data: {"id": "c", "choices": [{"index": 0, "delta": {"content": "Hi"}}], "usage": null}\n\n'
    compact = b'data: {"id":"c","choices":[{"index":0,"delta":{"content":" you"}}],"usage":null,"obfuscation":"q"}\n\n'
    out = pump(meter(hide=True), [spaced, compact, DONE])
    assert out == (b'data: {"id": "c", "choices": [{"index": 0, "delta": {"content": "Hi"}}]}\n\n'
                   b'data: {"id":"c","choices":[{"index":0,"delta":{"content":" you"}}],"obfuscation":"q"}\n\n' + DONE)
    assert pump(meter(hide=False), [spaced, compact, DONE]) == spaced + compact + DONE  # the client asked


def test_null_usage_in_other_layouts():
    # the word "usage" as a string value, braces and brackets in the text: still byte for byte
    word = chat({"content": '"usage":null}] {[usage'})
    assert meter(hide=True).feed(word) == [unasked(word)] and b'"usage":null,' not in unasked(word)
    # a "usage": null nested in a choice is the provider's own: only the top-level one goes
    nested = b'data: {"usage":null,"choices":[{"delta":{"content":"x"},"usage":null}]}\n\n'
    [got] = meter(hide=True).feed(nested)
    assert got == b'data: {"choices":[{"delta":{"content":"x"},"usage":null}]}\n\n'
    # a brace in a string after the key: re-serialised, same JSON without the key
    brace = chat({"content": "x"}).replace(b'"obfuscation":"xyz"', b'"obfuscation":"x}z"')
    [got] = meter(hide=True).feed(brace)
    expected = json.loads(brace[6:])
    del expected["usage"]
    assert json.loads(got[6:]) == expected and got.endswith(b"}\n\n") and b'"usage"' not in got
    # usage first: re-serialised too
    [got] = meter(hide=True).feed(b'data: {"usage": null, "choices": [{"delta": {"content": "x"}}]}\r\n\r\n')
    assert got == b'data: {"choices":[{"delta":{"content":"x"}}]}\r\n\r\n'
    # JSON over two data lines: forwarded as it came (never seen from a provider)
    multi = b'data: {"choices": [{"delta": {"content": "x"}}],\ndata: "usage": null}\n\n'
    assert meter(hide=True).feed(multi) == [multi]
    # a running usage some compatible servers send in every chunk is theirs, not pouch's: kept
    running = chat({"content": "x"}, usage={"prompt_tokens": 3, "completion_tokens": 1})
    assert meter(hide=True).feed(running) == [running]


def test_output_threshold_is_exact_for_every_model_tier_cache_and_fee():
    """``output_threshold`` adds the output term to the cost without output instead of pricing a
    Usage per step: the least n with cost(input + n output) + fees >= reservation, exactly, for
    every model of the table, tiers, cached input, long context and fees."""
    from pouch_addon.metering import output_threshold

    table = PriceTable.load()
    names = sorted(table.names())
    rng = random.Random(16)
    checked = 0
    for _ in range(3000):
        price = table.resolve(rng.choice(names))
        inp = rng.choice([0, 1, 17, 1000, 123_457, 200_001, 1_000_000])
        usage = Usage(input_tokens=inp, cached_tokens=rng.randint(0, inp) // 2)
        tier = rng.choice([None, None, "flex", "priority", "batch"])
        res = Decimal(rng.randint(1, 10**9)) / Decimal(10 ** rng.randint(3, 12))
        fees = rng.choice([Decimal(0), Decimal("0.01"), Decimal("0.0000001")])
        try:
            n = output_threshold(price, usage, tier, res, fees)
        except ValueError:  # a tier the model has no price for
            continue

        def at(k):
            return cost(price, Usage(input_tokens=inp, cached_tokens=usage.cached_tokens, output_tokens=k), tier) + fees

        if n is None:
            assert price.rates_for(inp, tier).output <= 0 and at(0) < res
        else:
            assert at(n) >= res and (n == 0 or at(n - 1) < res)
        checked += 1
    assert checked > 1000
