"""Virtual keys on disk (hash only), their states, and the identity helpers of the proxy."""

import base64
import json
import os
import stat
import subprocess
import sys

from pouch_addon.addons.identity import app_label, local_process, parse_basic
from pouch_addon.keystore import KeyStore, check_key
from pouch_addon.vault import hash_virtual_key


def test_issue_stores_only_the_hash_and_checks_states(tmp_path):
    store = KeyStore(tmp_path)
    key, rec = store.issue("agent", expires=1000.0, now=10.0)
    assert key.startswith("pk-pouch-") and rec.hash == hash_virtual_key(key)
    text = (tmp_path / "keys.json").read_text()
    assert key not in text and json.loads(text)["keys"][rec.id]["fingerprint"] == rec.fingerprint
    assert stat.S_IMODE((tmp_path / "keys.json").stat().st_mode) == 0o600
    records = store.by_hash()
    assert check_key(records, key, 999.0) == (rec, "active")
    assert check_key(records, key, 1000.0)[1] == "expired"
    assert check_key(records, "pk-pouch-nope", 1.0) == (None, "unknown")
    assert check_key(records, "sk-real", 1.0) == (None, "unknown")
    store.revoke(rec.id, now=20.0)
    assert check_key(store.by_hash(), key, 30.0)[1] == "revoked"  # re-read after the file changed


def test_parse_basic_and_app_label():
    token = base64.b64encode(b"billing:s3:cret").decode()
    assert parse_basic(f"Basic {token}") == ("billing", "s3:cret")
    assert parse_basic("Bearer x") is None and parse_basic("Basic !!!") is None
    assert parse_basic("Basic " + base64.b64encode(b"nocolon").decode()) is None
    assert app_label("python3.11") == "python3.11" and app_label("my app (x)") == "my_app__x_"


def test_local_process_finds_the_program_behind_a_loopback_port():
    import socket

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    port = srv.getsockname()[1]
    child = subprocess.Popen([sys.executable, "-c", (
        "import socket, sys, time; s = socket.create_connection(('127.0.0.1', %d)); "
        "print(s.getsockname()[1], flush=True); time.sleep(30)") % port], stdout=subprocess.PIPE, text=True)
    try:
        conn, _ = srv.accept()
        client_port = int(child.stdout.readline())
        found = local_process(client_port, port)
        assert found == (child.pid, os.path.basename(os.path.realpath(sys.executable)))
        conn.close()
    finally:
        child.kill()
        child.wait()
        srv.close()


def test_the_vault_is_refreshed_before_a_request_with_a_virtual_key_and_only_then():
    """``KeySwap.requestheaders`` asks for the vault's refresh (a stat off the loop) when a virtual
    key is in any of its places (any case) or the path; other requests get no coroutine at all
    (mitmproxy awaits only what a hook returns)."""
    import asyncio

    from mitmproxy import http
    from mitmproxy.test import tflow

    from pouch_addon.addons.core import Core
    from pouch_addon.addons.keys import KeySwap

    swap = KeySwap(Core())
    refreshed = []

    async def refresh():
        refreshed.append(1)
    swap._refresh = refresh

    def asks(headers, path="/v1/chat/completions"):
        f = tflow.tflow()
        f.request = http.Request.make("POST", f"https://api.openai.com{path}", b"{}",
                                      {"Host": "api.openai.com", "User-Agent": "pk-pouch-not-a-key-place", **headers})
        before = len(refreshed)
        res = swap.requestheaders(f)
        if res is not None:
            asyncio.run(res)
        return len(refreshed) > before, res is None

    assert asks({"Authorization": "Bearer sk-real"}) == (False, True)
    assert asks({}) == (False, True)
    for name in ("Authorization", "x-api-key", "X-Goog-Api-Key", "api-key"):
        assert asks({name: "Bearer pk-pouch-abc" if name == "Authorization" else "pk-pouch-abc"})[0], name
    assert asks({}, path="/v1beta/models/m:generateContent?key=pk-pouch-abc")[0]
