"""Compressed SSE streams: ``decoding.StreamDecoder`` (bounded pieces, any chunk boundary, bombs
and corrupt data refused) and ``StreamMeter`` metering, hiding and cutting a compressed stream as
a plain one (``content_encoding``), failing closed on what it cannot decode."""

from __future__ import annotations

import random
import zlib
from decimal import Decimal as D

import pytest
import zstandard

from pouch_addon.decoding import MAX_CHUNK_OUTPUT, PIECE, UndecodableStream, stream_decoder
from pouch_addon.metering import UNDECODABLE
from test_metering import CHAT_NO_USAGE, CHAT_WITH_USAGE, DONE, chat, meter, pump

PLAIN = b"".join(b'data: {"n": %d, "text": "some words here"}\n\n' % i for i in range(3000))


def gzip_(data: bytes, wbits: int = 16 + zlib.MAX_WBITS, *, flush_every: int = 0) -> bytes:
    z = zlib.compressobj(6, zlib.DEFLATED, wbits)
    if not flush_every:
        return z.compress(data) + z.flush()
    out = [z.compress(data[i:i + flush_every]) + z.flush(zlib.Z_SYNC_FLUSH) for i in range(0, len(data), flush_every)]
    return b"".join(out) + z.flush()


def zstd_(data: bytes) -> bytes:
    return zstandard.ZstdCompressor().compress(data)


ENCODED = {
    "gzip": gzip_(PLAIN),
    "x-gzip": gzip_(PLAIN[:5000]) + gzip_(PLAIN[5000:]),  # two gzip members
    "deflate": gzip_(PLAIN, zlib.MAX_WBITS),  # zlib-wrapped, as RFC 9110 says
    "zstd": zstd_(PLAIN[:7000]) + zstd_(PLAIN[7000:]),  # two frames
}


def decode_all(encoding: str, chunks: list[bytes]) -> bytes:
    d = stream_decoder(encoding)
    out = []
    for chunk in chunks:
        for piece in d.decode(chunk):
            assert 0 < len(piece) <= PIECE
            out.append(piece)
    return b"".join(out)


def cuts(data: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out, i = [], 0
    while i < len(data):
        n = rng.choice([1, 2, 7, 100, 4096])
        out.append(data[i:i + n])
        i += n
    return out


@pytest.mark.parametrize("encoding", sorted(ENCODED))
def test_decodes_whole_and_however_cut(encoding):
    data = ENCODED[encoding]
    assert decode_all(encoding, [data]) == PLAIN
    for seed in range(3):
        assert decode_all(encoding, cuts(data, seed)) == PLAIN


def test_raw_deflate_is_decoded_too():
    assert decode_all("deflate", [gzip_(PLAIN, -zlib.MAX_WBITS)]) == PLAIN
    raw = gzip_(PLAIN, -zlib.MAX_WBITS)
    assert decode_all("deflate", [raw[:1], raw[1:]]) == PLAIN  # the wrapping decided on two bytes


@pytest.mark.parametrize("header", [None, "", "identity", " Identity "])
def test_no_encoding_needs_no_decoder(header):
    assert stream_decoder(header) is None


@pytest.mark.parametrize("header", ["br", "snappy", "gzip, zstd", "compress"])
def test_what_cannot_be_decoded_with_bounded_memory_is_refused(header):
    with pytest.raises(UndecodableStream, match="content-encoding"):
        stream_decoder(header)


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
def test_a_compression_bomb_is_refused_within_the_bound(encoding):
    bomb = gzip_(b"\n" * (64 << 20)) if encoding == "gzip" else zstd_(b"\n" * (64 << 20))
    assert len(bomb) < 100_000
    d = stream_decoder(encoding)
    seen = 0
    with pytest.raises(UndecodableStream, match="expands to more than"):
        for piece in d.decode(bomb):
            seen += len(piece)
    assert seen <= MAX_CHUNK_OUTPUT


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "zstd"])
def test_corrupt_data_is_refused(encoding):
    d = stream_decoder(encoding)
    with pytest.raises(UndecodableStream, match="corrupt"):
        list(d.decode(b"\x1f\x8b\x08\x00this is not compressed at all" if encoding == "gzip" else b"\xff" * 64))


def test_the_caller_may_stop_after_any_piece():
    d = stream_decoder("gzip")
    first = next(iter(d.decode(ENCODED["gzip"])))
    assert len(first) == PIECE and PLAIN.startswith(first)


# -- StreamMeter on a compressed stream ------------------------------------------------------------

@pytest.mark.parametrize("encoding", ["gzip", "deflate", "zstd"])
def test_meter_forwards_the_decoded_stream_and_hides_the_usage_chunk(encoding):
    plain = meter(hide=True)
    expected = pump(plain, [CHAT_WITH_USAGE])
    assert expected == CHAT_NO_USAGE
    compressed = gzip_(CHAT_WITH_USAGE, flush_every=50) if encoding == "gzip" else (
        gzip_(CHAT_WITH_USAGE, zlib.MAX_WBITS) if encoding == "deflate" else zstd_(CHAT_WITH_USAGE))
    m = meter(hide=True, content_encoding=encoding)
    assert pump(m, cuts(compressed, 1)) == expected
    assert m.done and m.usage_final and m.usage_hidden and m.running_cost == plain.running_cost


def test_meter_cuts_a_compressed_stream_where_it_cuts_a_plain_one():
    words = b"".join(chat({"content": " word"}) for _ in range(300)) + DONE
    res = D("0.0003")  # 100 input tokens at $2.50/M = $0.00025: room for a few output tokens
    plain = meter(reservation=res)
    plain_out = pump(plain, [words[i:i + 500] for i in range(0, len(words), 500)])
    m = meter(reservation=res, content_encoding="gzip")
    packed = gzip_(words, flush_every=500)
    out = pump(m, [packed[i:i + 300] for i in range(0, len(packed), 300)])
    assert plain.cut and m.cut and m.cut_reason == plain.cut_reason == "budget_exceeded"
    assert out == plain_out and m.output_tokens_counted == plain.output_tokens_counted < 300
    assert m.undecodable is None


def test_meter_fails_closed_on_an_undecodable_stream():
    m = meter(content_encoding="br")
    assert m.undecodable and "br" in m.undecodable
    [event] = m.feed(b"\x8b\x02\x80anything")
    assert b'"code": "%s"' % UNDECODABLE.encode() in event and event.endswith(DONE)
    assert m.cut and m.cut_reason == UNDECODABLE and m.feed(b"more") == [] and m.finish() == []


def test_meter_fails_closed_when_the_body_ends_before_any_chunk():
    m = meter(content_encoding="snappy")
    [event] = m.finish()
    assert UNDECODABLE.encode() in event and m.cut


def test_meter_fails_closed_on_corrupt_data_mid_stream():
    m = meter(content_encoding="gzip")
    good = gzip_(CHAT_WITH_USAGE[:400], flush_every=400)[:-8]  # flushed, not finished
    first = m.feed(good)
    assert first and b"assistant" in first[0] and not m.cut
    [event] = m.feed(b"\x00\xffgarbage" * 10)
    assert m.cut and m.cut_reason == UNDECODABLE and "corrupt gzip" in m.undecodable
    assert UNDECODABLE.encode() in event
