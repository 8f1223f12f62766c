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


def test_parse_body_reads_and_refuses_what_json_loads_with_its_hooks_did():
    """``parse_body`` decodes with one decoder built once: the same bodies, and the same refusals
    with the same messages, as ``json.loads`` building one per call (the BOM check included)."""
    import json as _json
    import threading

    from pouch_addon import plan as _plan

    def reference(raw):
        try:
            text = raw.decode("utf-8") if isinstance(raw, (bytes, bytearray)) else raw
            return ("ok", _json.loads(text, object_pairs_hook=_plan._no_duplicates, parse_constant=_plan._no_constant))
        except _plan.PlanError as exc:
            return ("plan", exc.code, str(exc))
        except ValueError as exc:
            return ("json", str(exc))

    bodies = [b'{"model":"m","messages":[{"role":"user","content":"hi"}]}', '\ufeff{"a":1}', b'\xef\xbb\xbf{"a":1}',
              b'{"a":1,"a":2}', b'{"a":{"b":1,"b":1}}', b'{"a":NaN}', b'{"a":-Infinity}', b'{"a":1} x', b'',
              b'[1,2]', b'{"a":1e400,"b":0.50,"c":"\\ud83d\\ude00"}', b'{"a":', b'{"k":"v"}  ', b'  {"k":[]}']
    for raw in bodies:
        want = reference(raw)
        try:
            got = ("ok", parse_body(raw))
        except PlanError as exc:
            got = ("plan", exc.code, str(exc))
        if want[0] == "ok" and isinstance(want[1], dict):
            assert got == want, raw
        elif want[0] == "json":
            assert got[0] == "plan" and got[1] == "pouch_bad_json" and want[1] in got[2], (raw, got, want)
        elif want[0] == "plan":
            assert got == want, raw
    # one decoder shared by threads parses each thread's bodies whole (worker threads plan large bodies)
    errors = []

    def parse_many(n):
        for i in range(300):
            b = {"model": f"m{n}", "i": i, "messages": [{"role": "user", "content": "x" * (i % 50), f"k{n}": n}]}
            if parse_body(_json.dumps(b).encode()) != b:
                errors.append((n, i))
    threads = [threading.Thread(target=parse_many, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
