"""Reading a billed request body: strict JSON and content-encodings with caps (plan.py)."""

import gzip
import json
import zlib

import brotli
import pytest
import zstandard

from pouch_addon.plan import BodyTooLarge, PlanError, decode_content, parse_body

BODY = json.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}).encode()


@pytest.mark.parametrize("raw,key", [
    (b'{"model":"o1-pro","model":"gpt-4o-mini"}', "model"),
    (b'{"messages":[{"role":"user","content":"a","content":"b"}]}', "content"),
    (b'{"a":{"b":{"c":1,"c":1}}}', "c"),
])
def test_duplicate_keys_at_any_depth_are_refused_by_name(raw, key):
    with pytest.raises(PlanError) as exc:
        parse_body(raw)
    assert exc.value.code == "pouch_duplicate_key" and exc.value.status == 400 and f"`{key}`" in str(exc.value)


@pytest.mark.parametrize("raw", [
    b'{"t":NaN}', b'{"t":Infinity}', b'{"t":-Infinity}', b'{"t":"\\ud800"}', b'{"\\udfff":1}', b'{"t":["\\ud83d x"]}',
    b'\xef\xbb\xbf{}', b'{"t":"\xff"}', "{}".encode("utf-16"), b"[" * 50000, b"null", b'"x"',
])
def test_what_is_not_strict_json_is_refused(raw):
    with pytest.raises(PlanError) as exc:
        parse_body(raw)
    assert exc.value.code == "pouch_bad_json" and exc.value.status == 400


def test_strict_json_still_reads_pairs_and_escapes():
    assert parse_body(b'{"t":"\\ud83d\\ude00 \\u00e9","n":[1,{"a":1}],"b":{"a":2}}') == {
        "t": "\U0001F600 é", "n": [1, {"a": 1}], "b": {"a": 2}}


def raw_deflate(data: bytes) -> bytes:
    z = zlib.compressobj(6, zlib.DEFLATED, -15)
    return z.compress(data) + z.flush()


@pytest.mark.parametrize("encoding,raw", [
    ("", BODY), ("identity", BODY), ("gzip", gzip.compress(BODY)), ("GZIP", gzip.compress(BODY)),
    ("x-gzip", gzip.compress(BODY)), ("deflate", zlib.compress(BODY)), ("deflate", raw_deflate(BODY)),
    ("br", brotli.compress(BODY)), ("zstd", zstandard.ZstdCompressor().compress(BODY)),
    ("gzip, br", brotli.compress(gzip.compress(BODY))), ("br,gzip", gzip.compress(brotli.compress(BODY))),
    ("gzip, identity", gzip.compress(BODY)),
])
def test_encodings_are_decoded_last_applied_first(encoding, raw):
    assert decode_content(raw, encoding, 1 << 20) == BODY


@pytest.mark.parametrize("encoding,raw,status,code", [
    ("compress", b"\x1f\x9d", 415, "pouch_unsupported_encoding"),
    ("gzip, snappy", gzip.compress(BODY), 415, "pouch_unsupported_encoding"),
    ("gzip", BODY, 400, "pouch_bad_encoding"),
    ("gzip", gzip.compress(BODY)[:-8], 400, "pouch_bad_encoding"),
    ("gzip", gzip.compress(BODY) + b"x", 400, "pouch_bad_encoding"),
    ("gzip", gzip.compress(BODY) + gzip.compress(b""), 400, "pouch_bad_encoding"),
    ("deflate", b"\x00\x01 not deflate at all \xff", 400, "pouch_bad_encoding"),
    ("br", b"\xff\xff\xff", 400, "pouch_bad_encoding"),
    ("br", brotli.compress(BODY)[:-3], 400, "pouch_bad_encoding"),
    ("zstd", b"\x28\xb5\x2f\xfd junk", 400, "pouch_bad_encoding"),
])
def test_unknown_or_corrupt_encodings_are_clear_4xx(encoding, raw, status, code):
    with pytest.raises(PlanError) as exc:
        decode_content(raw, encoding, 1 << 20)
    assert (exc.value.status, exc.value.code) == (status, code)
    assert str(exc.value).startswith("pouch:") and "nothing was sent" in str(exc.value)


@pytest.mark.parametrize("encoding,pack", [
    ("gzip", gzip.compress), ("deflate", zlib.compress), ("br", brotli.compress),
    ("zstd", lambda d: zstandard.ZstdCompressor().compress(d)),
    ("gzip, gzip", lambda d: gzip.compress(gzip.compress(d))),
])
def test_a_decompression_bomb_stops_at_the_cap(encoding, pack):
    bomb = pack(b"a" * (8 << 20))
    assert len(bomb) < (1 << 20)
    with pytest.raises(BodyTooLarge) as exc:
        decode_content(bomb, encoding, 1 << 20)
    assert exc.value.status == 413 and exc.value.code == "pouch_body_too_large"
