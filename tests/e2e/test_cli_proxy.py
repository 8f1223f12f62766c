"""`pouch proxy` as users start it, and mitmdump refusing bad pouch options at start."""

from __future__ import annotations

import os
import subprocess
import sys
from decimal import Decimal as D
from pathlib import Path

import pytest

from harness import free_port, mitmdump_path, pouch_entry_script, wait_until, port_open
from pouch_addon.budget import Ledger

POUCH = [sys.executable, "-m", "pouch_addon.cli"]


def test_pouch_proxy_budgets_llm_calls_and_tunnels_other_hosts(e2e, fake, tmp_path, e2e_certs):
    home = tmp_path / "home"
    Ledger(home).set_budget(D(1))
    port = free_port()
    log = open(tmp_path / "pouch-proxy.log", "wb")
    proc = subprocess.Popen(
        [*POUCH, "--home", str(home), "proxy", "--listen", f"127.0.0.1:{port}", "--",
         "--set", f"pouch_route=api.openai.com=127.0.0.1:{fake.port}",
         "--set", f"pouch_route=other.test=127.0.0.1:{fake.port}",
         "--set", f"ssl_verify_upstream_trusted_ca={e2e_certs.ca_cert}"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: port_open(port), 20, "pouch proxy listening")
        ca = home / "mitmproxy" / "mitmproxy-ca-cert.pem"
        assert ca.exists()  # pouch's own confdir, not ~/.mitmproxy
        env = e2e.client_env(extra={"HTTPS_PROXY": f"http://127.0.0.1:{port}", "https_proxy": f"http://127.0.0.1:{port}",
                                    "SSL_CERT_FILE": str(ca), "CURL_CA_BUNDLE": str(ca)})
        r = e2e.run_sdk("chat", {"model": "gpt-4o-mini", "max_tokens": 5,
                                 "extra_headers": {"x-fake-prompt-tokens": "10", "x-fake-chunks": "2"}}, env)
        assert r["ok"], r
        wait_until(lambda: Ledger(home).status().requests == 1, 10, "settled")
        assert Ledger(home).status().spent == D(10) * D("0.15") / 10**6 + D(2) * D("0.6") / 10**6
        # only the LLM host is decrypted: other.test keeps the fake's own certificate
        c = e2e.run_curl("https://other.test/ping", env=env, cacert=e2e_certs.ca_cert)
        assert c.rc == 0 and c.text == "pong"
        c = e2e.run_curl("https://other.test/ping", env=env, cacert=ca)
        assert c.rc != 0  # pouch's CA does not sign it: the TLS was never opened
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=10)
        log.close()


def run_mitmdump(home: Path, *sets: str) -> subprocess.CompletedProcess:
    cmd = [mitmdump_path(), "-s", pouch_entry_script(), "--listen-host", "127.0.0.1", "-p", str(free_port()),
           "--set", f"pouch_home={home}", "--set", f"confdir={home / 'mitmconf'}"]
    for s in sets:
        cmd += ["--set", s]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("setting,message", [
    ("pouch_budgte=5", "unknown pouch option(s): ['pouch_budgte']"),
    ("pouch_route=nonsense", "pouch_route 'nonsense': expected HOST=ADDRESS:PORT"),
    ("pouch_input_margin=lots", "pouch_input_margin: expected a fraction"),
    ("pouch_unknown_endpoints=maybe", "pouch_unknown_endpoints"),
    # mitmproxy would send a streamed request body upstream before pouch could price it
    ("stream_large_bodies=1", "stream_large_bodies cannot be used with pouch"),
])
def test_bad_pouch_options_stop_the_proxy_at_start(tmp_path, setting, message):
    r = run_mitmdump(tmp_path / "home", setting)
    assert r.returncode != 0
    assert message in r.stdout + r.stderr


def test_corrupt_ledger_stops_the_proxy_with_the_way_out(tmp_path):
    home = tmp_path / "home"
    Ledger(home).set_budget(D(1))
    Ledger(home).set_budget(D(2))
    (home / "state.json").write_text("{torn")
    r = run_mitmdump(home)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "state.json" in out and "pouch ledger restore" in out
    assert (home / "state.json").read_text() == "{torn"  # never replaced by an empty ledger
