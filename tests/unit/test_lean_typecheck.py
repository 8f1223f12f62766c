"""``addons/typecheck.py``: mitmproxy's debug type check of its objects, same outcome, no cycles."""

from __future__ import annotations

import gc
import io
import typing
from collections import abc

import pytest
from mitmproxy import http
from mitmproxy.utils import typecheck as mitm_typecheck

from pouch_addon.addons import typecheck

ORIGINAL = mitm_typecheck.check_option_type

TYPES = [int, float, str, bytes, bool, type(None), typing.Any, typing.Optional[str], bytes | None, str | int | None,
         typing.Union[int, str], tuple[int, str], typing.Sequence[str], abc.Sequence[int], typing.TextIO,
         typing.BinaryIO, typing.IO[str], typing.Optional[typing.Sequence[str]], http.Headers | None, float | None]
VALUES = [None, 0, 1, True, 1.5, "", "x", b"", b"x", (1, "a"), [1, "a"], ("a", "b"), [1, 2], (), io.StringIO(""),
          io.BytesIO(b""), http.Headers(), object()]


def outcome(fn, value, typeinfo):
    try:
        fn("field", value, typeinfo)
    except TypeError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("typeinfo", TYPES, ids=str)
def test_same_outcome_and_message_as_mitmproxys(typeinfo):
    for value in VALUES:
        assert outcome(typecheck.check_option_type, value, typeinfo) == outcome(ORIGINAL, value, typeinfo), (value, typeinfo)


def test_installed_only_over_the_known_source(monkeypatch):
    monkeypatch.setattr(mitm_typecheck, "check_option_type", ORIGINAL)
    assert typecheck.install()
    assert mitm_typecheck.check_option_type is typecheck.check_option_type
    monkeypatch.setattr(mitm_typecheck, "check_option_type", lambda name, value, typeinfo: None)
    assert not typecheck.install()  # another source: left as it is


def _cycles_of_a_streamed_flows_objects() -> int:
    gc.collect()
    gc.disable()
    try:
        for _ in range(20):
            http.Request.make("POST", "https://api.openai.com/v1/chat/completions", b"{}", {"Host": "api.openai.com"})
            resp = http.Response.make(200, b"", {"content-type": "text/event-stream"})
            resp.data.content = None
        return gc.collect()
    finally:
        gc.enable()


def test_a_flows_objects_leave_no_reference_cycle(monkeypatch):
    monkeypatch.setattr(mitm_typecheck, "check_option_type", ORIGINAL)
    assert typecheck.install()
    assert _cycles_of_a_streamed_flows_objects() == 0


def test_post_init_checks_every_field_as_mitmproxys(monkeypatch):
    own = http.MessageData.__post_init__
    monkeypatch.setattr(mitm_typecheck, "check_option_type", ORIGINAL)
    monkeypatch.setattr(http.MessageData, "__post_init__", own)
    req = http.Request.make("POST", "https://api.openai.com/v1/chat/completions", b"{}", {"Host": "api.openai.com"})
    resp = http.Response.make(200, b"", {"content-type": "text/event-stream"})
    cases = [(req.data, "port", "443"), (req.data, "content", "text"), (req.data, "timestamp_end", "now"),
             (resp.data, "status_code", None), (resp.data, "trailers", {}), (resp.data, "reason", b"OK")]

    def outcomes() -> list[str | None]:
        got = []
        for data, name, bad in cases:
            good = getattr(data, name)
            setattr(data, name, bad)
            try:
                data.__post_init__()
                got.append(None)
            except TypeError as exc:
                got.append(str(exc))
            setattr(data, name, good)
            data.__post_init__()  # the good value passes
        return got

    before = outcomes()
    assert typecheck.install()
    assert http.MessageData.__post_init__ is typecheck.post_init
    assert outcomes() == before
    assert before[1] == "Expected bytes | None for content, but got <class 'str'>."
