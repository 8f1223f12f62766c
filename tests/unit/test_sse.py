"""SSE framing: every chunk boundary, every line ending, comments, multi-line data, UTF-8 splits."""

from __future__ import annotations

import random
import time

import pytest

from pouch_addon.sse import MAX_EVENT_BYTES, SSEError, SSEEvent, SSEParser

EMOJI = "\U0001F600"  # 4 bytes in UTF-8

# A stream mixing everything the parser must handle; each tuple is one event.
PARTS: list[tuple[bytes, SSEEvent]] = [
    (b": keep-alive comment\r\n\r\n",
     SSEEvent(None, "", b": keep-alive comment\r\n\r\n", has_data=False)),
    (b'event: response.created\r\ndata: {"a":1}\r\n\r\n',
     SSEEvent("response.created", '{"a":1}', b'event: response.created\r\ndata: {"a":1}\r\n\r\n')),
    (b"data: line one\ndata:line two\ndata:  two spaces\nid: 7\nretry: 100\n: inner comment\n\n",
     SSEEvent(None, "line one\nline two\n two spaces",
              b"data: line one\ndata:line two\ndata:  two spaces\nid: 7\nretry: 100\n: inner comment\n\n")),
    (b"\n", SSEEvent(None, "", b"\n", has_data=False)),  # a stray blank line
    (("event: emoji\rdata: caf\u00e9 " + EMOJI + " ok\r\r").encode(),
     SSEEvent("emoji", "caf\u00e9 " + EMOJI + " ok", ("event: emoji\rdata: caf\u00e9 " + EMOJI + " ok\r\r").encode())),
    (b"data\nunknown: field\n\n", SSEEvent(None, "", b"data\nunknown: field\n\n")),  # "data" alone = empty data
    (b"event: a\nevent: b\ndata:x\r\n\r\n", SSEEvent("b", "x", b"event: a\nevent: b\ndata:x\r\n\r\n")),
    (('data: {"delta":"\u4f60\u597d' + EMOJI + '"}\r\n\r\n').encode(),
     SSEEvent(None, '{"delta":"\u4f60\u597d' + EMOJI + '"}',
              ('data: {"delta":"\u4f60\u597d' + EMOJI + '"}\r\n\r\n').encode())),
    (b"data: [DONE]\r\n\r\n", SSEEvent(None, "[DONE]", b"data: [DONE]\r\n\r\n")),
]
STREAM = b"".join(p for p, _ in PARTS)
EXPECTED = [e for _, e in PARTS]


def run(chunks: list[bytes], parser: SSEParser | None = None) -> tuple[list[SSEEvent], bytes]:
    parser = parser or SSEParser()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    tail, leftover = parser.flush()
    return events + tail, leftover


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


def test_expected_table_is_consistent():
    assert b"".join(e.raw for e in EXPECTED) == STREAM
    assert EXPECTED[7].raw.startswith(b'data: {"delta":"') and EXPECTED[7].raw.endswith(b'"}\r\n\r\n')


def test_whole_stream_in_one_chunk():
    parser = SSEParser()
    events = parser.feed(STREAM)
    # the final blank line "\r\n" is complete, so everything is returned by feed already
    assert events == EXPECTED
    assert parser.flush() == ([], b"")


def test_every_single_boundary():
    for cut in range(1, len(STREAM)):
        assert run(split(STREAM, [cut])) == (EXPECTED, b""), f"split at byte {cut}"


def test_byte_by_byte():
    events, leftover = run([STREAM[i:i + 1] for i in range(len(STREAM))])
    assert events == EXPECTED
    assert leftover == b""


def test_random_multi_boundaries():
    rng = random.Random(1234)
    for _ in range(300):
        cuts = rng.sample(range(1, len(STREAM)), rng.randint(2, 12))
        events, leftover = run(split(STREAM, cuts))
        assert events == EXPECTED
        assert leftover == b""


def test_events_returned_as_soon_as_complete():
    parser = SSEParser()
    assert parser.feed(b'data: {"a":') == []
    assert parser.feed(b'1}\n') == []
    assert parser.feed(b"\ndata: next") == [SSEEvent(None, '{"a":1}', b'data: {"a":1}\n\n')]
    assert parser.flush() == ([SSEEvent(None, "next", b"data: next")], b"")


def test_emoji_split_inside_character():
    data = ("data: " + EMOJI + "\n\n").encode()
    for cut in range(7, 10):  # inside the 4 UTF-8 bytes
        parser = SSEParser()
        assert parser.feed(data[:cut]) == []
        assert parser.feed(data[cut:]) == [SSEEvent(None, EMOJI, data)]


def test_cr_at_end_of_chunk_waits_for_possible_lf():
    parser = SSEParser()
    assert parser.feed(b"data: a\r\n\r") == []  # "\r" might be the first half of "\r\n"
    assert parser.feed(b"\n") == [SSEEvent(None, "a", b"data: a\r\n\r\n")]
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\r") == []
    assert parser.feed(b"data: b\r\r") == [SSEEvent(None, "a", b"data: a\r\r")]
    assert parser.flush() == ([SSEEvent(None, "b", b"data: b\r\r")], b"")


def test_flush_unterminated_final_event():
    for tail in (b"data: {\"x\":1}", b"data: {\"x\":1}\n", b"data: {\"x\":1}\r", b"data: {\"x\":1}\r\n"):
        parser = SSEParser()
        assert parser.feed(b"data: first\n\n" + tail) == [SSEEvent(None, "first", b"data: first\n\n")]
        assert parser.flush() == ([SSEEvent(None, '{"x":1}', tail)], b"")


def test_flush_multiline_unterminated_and_event_name():
    parser = SSEParser()
    assert parser.feed(b"event: e\ndata: a\ndata: b") == []
    assert parser.flush() == ([SSEEvent("e", "a\nb", b"event: e\ndata: a\ndata: b")], b"")


def test_flush_returns_leftover_that_is_no_event():
    parser = SSEParser()
    assert parser.feed(b"data: a\n\n: trailing comment") == [SSEEvent(None, "a", b"data: a\n\n")]
    assert parser.flush() == ([], b": trailing comment")
    parser = SSEParser()
    parser.feed(b"event: only-a-name\n")
    assert parser.flush() == ([], b"event: only-a-name\n")


def test_flush_resets_the_parser():
    parser = SSEParser()
    parser.feed(b"data: a")
    parser.flush()
    assert parser.feed(b"data: b\n\n") == [SSEEvent(None, "b", b"data: b\n\n")]
    assert parser.flush() == ([], b"")


def test_empty_feed_and_empty_flush():
    parser = SSEParser()
    assert parser.feed(b"") == []
    assert parser.flush() == ([], b"")


def test_byte_order_mark_at_stream_start():
    data = b"\xef\xbb\xbfdata: x\n\n"
    for cut in range(1, len(data)):
        events, leftover = run(split(data, [cut]))
        assert events == [SSEEvent(None, "x", data)]
        assert leftover == b""
    # a BOM later in the stream is data
    events, _ = run([b"data: a\n\n\xef\xbb\xbfdata: b\n\n"])
    assert events[1].event is None and events[1].has_data is False  # field name is "\ufeffdata"


def test_invalid_utf8_is_replaced_not_fatal():
    events, _ = run([b"data: \xff\xfe ok\n\n"])
    assert events == [SSEEvent(None, "\ufffd\ufffd ok", b"data: \xff\xfe ok\n\n")]


def test_oversize_event_raises_with_earlier_events():
    assert MAX_EVENT_BYTES == 8 * 1024 * 1024
    parser = SSEParser(max_event_bytes=64)
    with pytest.raises(SSEError, match="exceeds the limit of 64 bytes") as info:
        parser.feed(b"data: ok\n\n" + b"data: " + b"x" * 100)
    assert info.value.events == [SSEEvent(None, "ok", b"data: ok\n\n")]


def test_oversize_event_growing_over_several_feeds():
    parser = SSEParser(max_event_bytes=64)
    assert parser.feed(b"data: " + b"x" * 40) == []
    with pytest.raises(SSEError, match="unfinished SSE event of at least 86 bytes"):
        parser.feed(b"y" * 40)


def test_oversize_complete_event_in_one_chunk():
    parser = SSEParser(max_event_bytes=64)
    with pytest.raises(SSEError, match="an SSE event of 108 bytes exceeds"):
        parser.feed(b"data: " + b"x" * 100 + b"\n\n")


def test_event_at_the_limit_is_fine():
    raw = b"data: " + b"x" * 56 + b"\n\n"
    assert len(raw) == 64
    assert SSEParser(max_event_bytes=64).feed(raw) == [SSEEvent(None, "x" * 56, raw)]


def test_long_line_in_small_chunks_is_linear():
    # a quadratic parser rescans the growing line on every feed: ~10 GB of scanning here
    size, step = 6 * 1024 * 1024, 2048
    payload = b"data: " + b"a" * size + b"\n\n"
    parser = SSEParser()
    t0 = time.perf_counter()
    events = []
    for i in range(0, len(payload), step):
        events.extend(parser.feed(payload[i:i + step]))
    elapsed = time.perf_counter() - t0
    assert len(events) == 1 and len(events[0].data) == size
    assert elapsed < 2.0, elapsed


def test_many_events_in_one_chunk():
    data = b"".join(b"data: %d\n\n" % i for i in range(5000))
    events = SSEParser().feed(data)
    assert [e.data for e in events] == [str(i) for i in range(5000)]
    assert b"".join(e.raw for e in events) == data


# -- the fast path gives exactly what the general path gives --------------------------------------

class GeneralParser(SSEParser):
    """Every chunk through the general path only (as before the fast path existed)."""

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        return self._feed(bytes(chunk)) if chunk else []


def reference(stream: bytes) -> tuple[list[SSEEvent], bytes]:
    """The general path, byte by byte."""
    return run([stream[i:i + 1] for i in range(len(stream))], GeneralParser())


def random_stream(rng: random.Random, crlf: bool = False) -> bytes:
    """Events of every shape the fast path handles, and a few it hands to the general path."""
    shapes = [
        lambda: b'data: {"choices":[{"delta":{"content":"%d"}}]}\n\n' % rng.randint(0, 99),
        lambda: b"data:" + ("caf\u00e9 " + EMOJI).encode() + b"\n\n",
        lambda: b"event: response.output_text.delta\ndata: {\"delta\":\"x\"}\n\n",
        lambda: b"event:e\ndata:\n\n",
        lambda: b": keep-alive\n\n",
        lambda: b":\n\n",
        lambda: b"data: line one\ndata: line two\n\n",          # multi-line data
        lambda: b"event: a\nid: 7\ndata: x\n\n",                 # another field
        lambda: b"id: 1\n\n",                                    # no data
        lambda: b"event: only-a-name\n\n",
        lambda: b"\n",                                           # a stray blank line
        lambda: b"data: [DONE]\n\n",
        lambda: b"data\n\n",
        lambda: b"data: \xff\xfe bad utf-8\n\n",
        lambda: b"data: a\r\n\r\n",                              # CRLF inside an LF stream
        lambda: b"data: b\r\r",
        lambda: b"data: c\r\n\n",                                # mixed line ends
        lambda: b"event: e\rdata: d\n\n",
        lambda: b"\xef\xbb\xbfdata: bom in the middle\n\n",
    ]
    weights = [30, 5, 15, 2, 4, 1, 3, 2, 1, 1, 2, 1, 1, 1, 1, 1, 1, 1, 1]
    out = b"".join(rng.choices(shapes, weights)[0]() for _ in range(rng.randint(1, 40)))
    if crlf:
        out = out.replace(b"\r", b"").replace(b"\n", b"\r\n")
    if rng.random() < 0.1:
        out = _BOM_BYTES + out
    if rng.random() < 0.3:
        out += rng.choice([b"data: unterminated", b"data: x\n", b": trailing comment", b"event: e\ndata: y\r"])
    return out


_BOM_BYTES = b"\xef\xbb\xbf"


def random_chunks(rng: random.Random, stream: bytes) -> list[bytes]:
    mode = rng.randrange(3)
    if mode == 0:  # random cuts
        k = rng.randint(0, min(30, len(stream) - 1))
        return split(stream, rng.sample(range(1, len(stream)), k))
    # at event ends (one or several events per chunk), sometimes cut inside an event too
    ends = [i + 2 for i in range(len(stream) - 1) if stream[i:i + 2] == b"\n\n"]
    cuts = [e for e in ends if e < len(stream) and (mode == 1 or rng.random() < 0.4)]
    if rng.random() < 0.3 and len(stream) > 1:
        cuts.append(rng.randrange(1, len(stream)))
    return split(stream, sorted(set(cuts)))


@pytest.mark.parametrize("seed", range(40))
def test_fast_path_equals_general_path_on_random_streams_and_splits(seed):
    rng = random.Random(seed)
    for _ in range(25):
        stream = random_stream(rng, crlf=rng.random() < 0.15)
        expected = reference(stream)
        assert b"".join(e.raw for e in expected[0]) + expected[1] == stream
        for _ in range(4):
            chunks = random_chunks(rng, stream)
            assert run(chunks) == expected, (stream, chunks)


def test_held_event_with_a_cr_completed_by_a_chunk_without_one():
    for stream in (b"data: a\r\n\ndata: b\n\n", b"data: a\r\rdata: b\n\n", b"data: a\rdata: c\n\ndata: b\n\n",
                   b"event: e\r\ndata: a\n\n", b": c\r\n\ndata: a\n\n", b"data: a\n\r\ndata: b\n\n"):
        expected = reference(stream)
        for cut in range(1, len(stream)):
            assert run(split(stream, [cut])) == expected, (stream, cut)
            for cut2 in range(cut + 1, len(stream)):
                assert run(split(stream, [cut, cut2])) == expected, (stream, cut, cut2)


def test_fast_path_is_taken_for_usual_streams(monkeypatch):
    calls = []
    general = SSEParser._feed
    monkeypatch.setattr(SSEParser, "_feed", lambda self, chunk: calls.append(chunk) or general(self, chunk))
    chat = [b'data: {"n":%d}\n\n' % i for i in range(20)] + [b"data: [DONE]\n\n"]
    responses = [b'event: response.output_text.delta\ndata: {"n":%d}\n\n' % i for i in range(20)]
    for chunks in (chat, responses, [b"".join(chat)], [b": ping\n\n" + b"".join(responses)]):
        parser = SSEParser()
        events = [e for c in chunks for e in parser.feed(c)]
        assert b"".join(e.raw for e in events) == b"".join(chunks)
        assert all(e.raw is c for e, c in zip(events, chunks)) or len(chunks) == 1  # no copy
    assert calls == []
    # a chunk ending inside an event: the tail is stored, then framed with the chunk that ends it
    parser = SSEParser()
    assert parser.feed(chat[0] + chat[1][:5]) == [SSEEvent(None, '{"n":0}', chat[0])]
    assert parser.feed(chat[1][5:] + chat[2]) == [SSEEvent(None, '{"n":1}', chat[1]),
                                                  SSEEvent(None, '{"n":2}', chat[2])]
    assert calls == []


def test_fast_path_single_event_shapes():
    for raw, expected in [
        (b"data:x\n\n", SSEEvent(None, "x", b"data:x\n\n")),
        (b"data:\n\n", SSEEvent(None, "", b"data:\n\n")),
        (b"data:  x\n\n", SSEEvent(None, " x", b"data:  x\n\n")),
        (b"event:\ndata:\n\n", SSEEvent("", "", b"event:\ndata:\n\n")),
        (b"event:  e\ndata:  d\n\n", SSEEvent(" e", " d", b"event:  e\ndata:  d\n\n")),
        (b"event: e\ndata: d\ndata: f\n\n", SSEEvent("e", "d\nf", b"event: e\ndata: d\ndata: f\n\n")),
        (b"event: e\n\n", SSEEvent("e", "", b"event: e\n\n", has_data=False)),
        (b"data: x\n\n\n", None),  # an event and a stray blank line
        (b"\n\n", None),
        (b"dat: x\n\n", SSEEvent(None, "", b"dat: x\n\n", has_data=False)),
    ]:
        got = SSEParser().feed(raw)
        assert got == GeneralParser().feed(raw)
        if expected is not None:
            assert got == [expected]


def test_fast_path_respects_the_size_limit():
    ok = b"data: " + b"x" * 56 + b"\n\n"  # 64 bytes
    assert SSEParser(max_event_bytes=64).feed(ok) == [SSEEvent(None, "x" * 56, ok)]
    with pytest.raises(SSEError, match="an SSE event of 65 bytes exceeds"):
        SSEParser(max_event_bytes=64).feed(b"data: " + b"x" * 57 + b"\n\n")
    with pytest.raises(SSEError, match="an SSE event of 65 bytes exceeds") as info:
        SSEParser(max_event_bytes=64).feed(b"event: e\ndata: " + b"x" * 48 + b"\n\n")
    # several events in a chunk: the ones before the big one come with the error
    with pytest.raises(SSEError, match="an SSE event of 108 bytes") as info:
        SSEParser(max_event_bytes=64).feed(b"data: a\n\ndata: b\n\n" + b"data: " + b"x" * 100 + b"\n\ndata: c\n\n")
    assert [e.data for e in info.value.events] == ["a", "b"]
    # whole events, then an unfinished tail over the limit
    with pytest.raises(SSEError, match="unfinished SSE event of at least 106 bytes") as info:
        SSEParser(max_event_bytes=64).feed(b"data: a\n\ndata: " + b"x" * 100)
    assert [e.data for e in info.value.events] == ["a"]
    # a held event completed by a later chunk
    parser = SSEParser(max_event_bytes=64)
    parser.feed(b"data: a\n\ndata: " + b"x" * 50)
    with pytest.raises(SSEError, match="an SSE event of 68 bytes") as info:
        parser.feed(b"y" * 10 + b"\n\ndata: b\n\n")
    assert info.value.events == []


def test_bytearray_and_memoryview_chunks():
    data = b"data: a\n\nevent: e\ndata: b\n\n"
    for kind in (bytearray, memoryview):
        events, leftover = run([kind(data[:12]), kind(data[12:])])
        assert events == reference(data)[0] and leftover == b""
        assert all(type(e.raw) is bytes for e in events)


@pytest.mark.parametrize("seed", range(20))
def test_crlf_single_event_chunks_equal_the_general_path(seed):
    """Gemini's framing, one ``data:<line>\\r\\n\\r\\n`` per chunk, takes an inline fast path: it must
    frame exactly as the general parser, however the CRLF stream is cut."""
    rng = random.Random(seed)
    for _ in range(25):
        stream = random_stream(rng, crlf=True)
        expected = reference(stream)
        ends = [i + 4 for i in range(len(stream) - 3) if stream[i:i + 4] == b"\r\n\r\n"]
        cuts = sorted({e for e in ends if e < len(stream) and rng.random() < 0.8})
        assert run(split(stream, cuts)) == expected, (stream, cuts)


def test_crlf_single_event_shapes():
    for raw in (b"data:x\r\n\r\n", b"data:\r\n\r\n", b"data:  x\r\n\r\n", b"data: a\r\nb\r\n\r\n",
                b"data: a\r\r\n\r\n", b"data: a\n\r\n\r\n", b"data: x\r\n\r\n\r\n", b"event: e\r\ndata: d\r\n\r\n"):
        assert SSEParser().feed(raw) == GeneralParser().feed(raw), raw
    assert SSEParser().feed(b"data: {}\r\n\r\n") == [SSEEvent(None, "{}", b"data: {}\r\n\r\n")]


def test_at_boundary_only_when_nothing_is_held():
    p = SSEParser()
    assert not p.at_boundary()  # the byte-order mark is not settled yet
    assert [e.data for e in p.feed(b"data: a\n\n")] == ["a"] and p.at_boundary()
    p.feed(b"data: b\n")
    assert not p.at_boundary()
    assert [e.data for e in p.feed(b"\n")] == ["b"] and p.at_boundary()
    p.feed(b"data: c\n\ndata: d")
    assert not p.at_boundary()
