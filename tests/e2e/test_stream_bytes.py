"""A streamed answer reaches the client through pouch as the provider would have sent it
without pouch: pouch asks for ``stream_options.include_usage`` to meter exactly, and takes
back everything that added (the usage chunk, and the ``"usage": null`` in every other chunk)
for a client that did not ask for usage. Compared byte for byte against the fake's own answer
fetched directly with curl (only the per-request id differs)."""

from __future__ import annotations

import re

import pytest

from test_firewall import start

pytestmark = pytest.mark.e2e

URL = "https://api.openai.com/v1/chat/completions"
HEADERS = {"x-fake-chunks": "6", "x-fake-prompt-tokens": "12"}


def same_ids(body: bytes) -> bytes:
    return re.sub(rb"chatcmpl-fake\d+", b"chatcmpl-fakeN", body)


def direct(e2e, fake, body: dict) -> bytes:
    """The fake's own answer: curl straight to it, no proxy."""
    env = {k: v for k, v in e2e.client_env().items() if k.lower() != "https_proxy"}
    r = e2e.run_curl(f"https://127.0.0.1:{fake.port}/v1/chat/completions", env=env, cacert=e2e.certs.ca_cert,
                     headers=HEADERS, json_body=body)
    assert r.rc == 0 and r.status == 200, r.stderr
    return same_ids(r.body)


@pytest.mark.parametrize("client_asks_usage", [False, True], ids=["no-usage-asked", "usage-asked"])
def test_streamed_bytes_are_the_providers(e2e, fake, tmp_path, client_asks_usage):
    body = {"model": "gpt-4o-mini", "stream": True, "max_tokens": 50,
            "messages": [{"role": "user", "content": "say six words"}]}
    if client_asks_usage:
        body["stream_options"] = {"include_usage": True}
    expected = direct(e2e, fake, body)
    assert (b'"usage"' in expected) is client_asks_usage  # the fake, like OpenAI, adds it only when asked

    home, proxy, env = start(e2e, tmp_path)
    r = e2e.run_curl(URL, env=env, headers=HEADERS, json_body=body)
    assert r.rc == 0 and r.status == 200, r.stderr
    sent = fake.requests("/v1/chat/completions")[-1]["body"]
    assert sent["stream_options"] == {"include_usage": True}  # pouch asked for usage either way...
    assert same_ids(r.body) == expected  # ...and the client gets the provider's bytes as if it had not
