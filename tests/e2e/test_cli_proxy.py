"""`pouch proxy` as users start it, and mitmdump refusing bad pouch options at start."""

from __future__ import annotations

import json
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


# -- issue 14: `pouch proxy` takes mitmdump's options, says where it listens, refuses misspellings --------
class PouchProxy:
    """`pouch proxy ...` as a user starts it, output in a file."""

    def __init__(self, tmp_path: Path, home: Path, *args: str, env: dict | None = None):
        self.log_path = tmp_path / f"pouch-proxy-{free_port()}.log"
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([*POUCH, "--home", str(home), "proxy", *args], stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, **(env or {})})

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_listening(self) -> None:
        wait_until(lambda: "pouch: proxy listening on" in self.output(), 30, "the listening line",
                   alive=lambda: self.proc.poll() is None, on_fail=self.output)

    def wait_exit(self) -> int:
        return self.proc.wait(timeout=60)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 15)
            self.proc.wait(timeout=10)
        self._log.close()


def test_mitmdump_options_without_double_dash_and_the_users_win(e2e, fake, tmp_path, e2e_certs):
    home, confdir = tmp_path / "home", tmp_path / "myconf"
    Ledger(home).set_budget(D(1))
    port = free_port()
    p = PouchProxy(tmp_path, home, "-p", str(port), "--set", f"pouch_route=api.openai.com=127.0.0.1:{fake.port}",
                   "--set", f"ssl_verify_upstream_trusted_ca={e2e_certs.ca_cert}",
                   "--set", f"confdir={confdir}", "--set", "http2=true")
    try:
        p.wait_listening()
        assert f"pouch: proxy listening on http://127.0.0.1:{port}" in p.output()
        ca = confdir / "mitmproxy-ca-cert.pem"  # the user's confdir won over pouch's
        assert ca.exists() and not (home / "mitmproxy" / "mitmproxy-ca-cert.pem").exists()
        env = e2e.client_env(extra={"HTTPS_PROXY": f"http://127.0.0.1:{port}", "SSL_CERT_FILE": str(ca)})
        r = e2e.run_sdk("chat", {"model": "gpt-4o-mini", "max_tokens": 5,
                                 "extra_headers": {"x-fake-prompt-tokens": "10", "x-fake-chunks": "2"}}, env)
        assert r["ok"], r
        wait_until(lambda: Ledger(home).status().requests == 1, 10, "settled")
    finally:
        p.stop()


def test_listen_port_only_means_loopback_and_the_banner_says_so(tmp_path):
    home = tmp_path / "home"
    port = free_port()
    p = PouchProxy(tmp_path, home, "--listen", str(port))
    try:
        p.wait_listening()
        assert port_open(port)
        assert f"http://127.0.0.1:{port}" in p.output() and f"http://{port}" not in p.output()
    finally:
        p.stop()


def test_no_listening_line_when_binding_fails(tmp_path):
    import socket
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    try:
        p = PouchProxy(tmp_path, tmp_path / "home", "--listen", str(busy.getsockname()[1]))
        rc = p.wait_exit()
        p.stop()
        assert rc != 0
        assert "pouch: proxy listening on" not in p.output() and "pouch: proxy on http" not in p.output(), p.output()
    finally:
        busy.close()


def test_a_misspelt_mitmproxy_option_stops_pouch_proxy(tmp_path):
    p = PouchProxy(tmp_path, tmp_path / "home", "--listen", str(free_port()),
                   "--set", "ssl_verify_upstream_trusted_caa=/nowhere")
    rc = p.wait_exit()
    p.stop()
    assert rc != 0 and "ssl_verify_upstream_trusted_caa" in p.output(), p.output()


def test_refused_calls_get_the_402_when_the_provider_is_unreachable(e2e, tmp_path):
    """Offline (the provider's address is a closed port): a $0 budget and a paused proxy still
    answer pouch's 402, because pouch connects upstream only for a request it forwards."""
    home = tmp_path / "home"
    Ledger(home).set_budget(D(0))
    port = free_port()
    p = PouchProxy(tmp_path, home, "--listen", str(port), "--set", f"pouch_route=api.openai.com=127.0.0.1:{free_port()}")
    try:
        p.wait_listening()
        ca = home / "mitmproxy" / "mitmproxy-ca-cert.pem"
        env = e2e.client_env(extra={"HTTPS_PROXY": f"http://127.0.0.1:{port}", "SSL_CERT_FILE": str(ca)})
        r = e2e.run_sdk("chat", {"model": "gpt-4o-mini", "max_tokens": 5}, env)
        assert not r["ok"] and r["error"]["status_code"] == 402, r
        assert "no budget set: `pouch budget set AMOUNT`" in json.dumps(r["error"])
        Ledger(home).set_budget(D(5))
        Ledger(home).set_paused(True)
        c = e2e.run_curl("https://api.openai.com/v1/chat/completions", env=env, cacert=ca,
                         json_body={"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]})
        assert c.status == 402 and c.json()["error"]["code"] == "pouch_paused", (c.rc, c.stderr[-500:])
    finally:
        p.stop()


def test_status_says_which_proxy_serves_the_ledger(tmp_path):
    home = tmp_path / "home"
    Ledger(home).set_budget(D(1))
    port = free_port()
    p = PouchProxy(tmp_path, home, "--listen", str(port))
    try:
        p.wait_listening()
        out = subprocess.run([*POUCH, "--home", str(home), "status"], capture_output=True, text=True).stdout
        assert f"serving this ledger on http://127.0.0.1:{port} (pid {p.proc.pid}), 0 call(s) in flight" in out, out
        js = json.loads(subprocess.run([*POUCH, "--home", str(home), "status", "--json"], capture_output=True,
                                       text=True).stdout)
        assert js["proxy"]["pid"] == p.proc.pid and js["proxy"]["in_flight"] == 0
    finally:
        p.stop()
    out = subprocess.run([*POUCH, "--home", str(home), "status"], capture_output=True, text=True).stdout
    assert "none is serving this ledger" in out
