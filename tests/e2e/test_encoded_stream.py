"""A provider that compresses its SSE stream although pouch asked for ``accept-encoding:
identity`` (issue 13, item 7), through a real mitmdump with pouch.

Seen before the fix: a gzipped stream was neither metered nor cut off (300 chunks passed against
a 100-token cap, billed as input only). pouch decodes gzip, deflate and zstd as they stream, meters
and cuts off as for a plain stream, and forwards the decoded events without
``content-encoding``; an encoding it cannot decode with bounded memory fails closed: cut off at
once, billed at the reservation, flagged ``undecodable_stream``.
"""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from fake_openai import fake_text
from pouch_addon.pricing import PriceTable, Usage, cost
from test_firewall import URL, headers, settled, start

pytestmark = pytest.mark.e2e

TABLE = PriceTable.load()


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "zstd"])
def test_a_compressed_stream_over_its_cap_is_cut_off(e2e, fake, tmp_path, encoding):
    home, proxy, env = start(e2e, tmp_path)
    r = e2e.run_sdk("chat_stream", {"model": "gpt-4o", "max_tokens": 100, "extra_headers": headers(
        prompt_tokens=5, chunks=300, ignore_cap=1, delay_ms=2, content_encoding=encoding)}, env)
    assert not r["ok"] and "cut off" in r["error"]["message"], r
    assert 90 < len(r["content"].split()) < 110  # where a plain stream is cut (at its reservation)
    [entry] = settled(home)
    assert entry["status"] == "cut_off" and D(entry["cost"]) == D(entry["reserved"]), entry
    assert not fake.entries("stream_done")  # the provider was stopped


@pytest.mark.parametrize("encoding", ["gzip", "x-gzip", "deflate", "zstd"])
def test_a_compressed_stream_within_its_cap_settles_exactly(e2e, fake, tmp_path, encoding):
    home, proxy, env = start(e2e, tmp_path)
    r = e2e.run_sdk("chat_stream", {"model": "gpt-4o-mini", "max_tokens": 100, "extra_headers": headers(
        prompt_tokens=30, chunks=60, content_encoding=encoding)}, env)
    assert r["ok"] and r["content"] == fake_text(60), r
    assert not r["any_empty_choices"]  # the injected usage chunk is hidden, as for a plain stream
    [entry] = settled(home)
    assert entry["status"] == "ok" and entry["usage_source"] == "provider" and entry["flags"] == [], entry
    assert D(entry["cost"]) == cost(TABLE.resolve("gpt-4o-mini"), Usage(input_tokens=30, output_tokens=60))
    c = e2e.run_curl(URL, env=env, headers=headers(prompt_tokens=30, chunks=4, content_encoding=encoding),
                     json_body={"model": "gpt-4o-mini", "stream": True, "max_tokens": 10, "messages": []})
    # curl decodes nothing: what it gets is plain SSE, and says so
    assert c.status == 200 and "content-encoding" not in c.headers and c.sse_data()[-1] == "[DONE]", c.headers


@pytest.mark.parametrize("encoding", ["snappy", "br", "gzip, zstd"])
def test_a_stream_in_an_encoding_pouch_does_not_decode_fails_closed(e2e, fake, tmp_path, encoding):
    home, proxy, env = start(e2e, tmp_path)
    c = e2e.run_curl(URL, env=env, headers=headers(prompt_tokens=5, chunks=50, delay_ms=20, content_encoding=encoding),
                     json_body={"model": "gpt-4o-mini", "stream": True, "max_tokens": 100, "messages": []})
    assert c.status == 200 and "content-encoding" not in c.headers, c.headers
    [error] = [d for d in c.sse_data() if "error" in d]
    assert "content-encoding" in error and encoding in error
    [entry] = settled(home)
    assert entry["status"] == "cut_off" and D(entry["cost"]) == D(entry["reserved"]) > 0, entry
    assert "undecodable_stream" in entry["flags"]
    assert not fake.entries("stream_done")
