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
    ("pouch_durability=fsync", "pouch_durability: expected one of overlap, strict, got 'fsync'"),
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
        assert "pouch: no budget set: `pouch budget set AMOUNT`" in p.output()  # a fresh ledger says so
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


# -- issue 14: `pouch run` refuses to start an app that would not be budgeted; `pouch doctor` -------------
SCRUB = ("HTTPS_PROXY", "https_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
         "NODE_EXTRA_CA_CERTS", "NO_PROXY", "no_proxy")


def _pouch(home: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """`pouch` in a shell that has not run `pouch env` (the host's CA settings removed), plus ``env``."""
    base = {k: v for k, v in os.environ.items() if k not in SCRUB}
    return subprocess.run([*POUCH, "--home", str(home), *args], capture_output=True, text=True, timeout=120,
                          env={**base, **(env or {})})


def _env_of(home: Path, port: int) -> dict[str, str]:
    out = _pouch(home, "env", "--listen", str(port)).stdout
    import shlex
    env = {}
    for line in out.splitlines():
        if line.startswith("export "):
            k, _, v = line[7:].partition("=")
            env[k] = shlex.split(v)[0] if v else ""
    return env


def test_run_refuses_when_no_proxy_answers(tmp_path):
    home = tmp_path / "home"
    Ledger(home).set_budget(D(1))
    marker = tmp_path / "ran"
    r = _pouch(home, "run", "--listen", str(free_port()), "--", "touch", str(marker))
    assert r.returncode != 0 and not marker.exists()
    assert "pouch run: not started: nothing answers at 127.0.0.1:" in r.stderr and "pouch proxy" in r.stderr


def test_run_refuses_a_proxy_whose_ca_is_not_this_homes(tmp_path):
    home, other = tmp_path / "home", tmp_path / "other"
    for h in (home, other):
        Ledger(h).set_budget(D(1))
    port = free_port()
    p = PouchProxy(tmp_path, other, "--listen", str(port))
    marker = tmp_path / "ran"
    _pouch(home, "env")  # this home's CA exists (as after `eval "$(pouch env)"`), the proxy uses another
    try:
        p.wait_listening()
        r = _pouch(home, "run", "--listen", str(port), "--", "touch", str(marker))
        assert r.returncode != 0 and not marker.exists(), r.stderr
        assert "is issued by" in r.stderr and "not by pouch's CA" in r.stderr and "--home" in r.stderr
        r = _pouch(other, "run", "--listen", str(port), "--", "touch", str(marker))
        assert r.returncode == 0 and marker.exists(), r.stderr
    finally:
        p.stop()


def _node_reaches_loopback() -> bool:
    """Whether node's CONNECT to a listener on 127.0.0.1 reaches it (a sandbox may divert node's HTTP)."""
    import socket
    import threading
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    def serve():
        c, _ = srv.accept()
        if c.recv(1000).startswith(b"CONNECT api.openai.com:443"):
            c.sendall(b"loopback-ok")
        c.close()
    threading.Thread(target=serve, daemon=True).start()
    js = ("const s=require('net').connect(+process.argv[1],'127.0.0.1',()=>s.write("
          "'CONNECT api.openai.com:443 HTTP/1.1\\r\\nHost: api.openai.com:443\\r\\n\\r\\n'));"
          "s.on('data',d=>{process.stdout.write(d.toString());process.exit(0)});s.on('error',()=>process.exit(1))")
    try:
        r = subprocess.run(["node", "-e", js, str(srv.getsockname()[1])], capture_output=True, text=True, timeout=20)
        return r.stdout.startswith("loopback-ok")
    finally:
        srv.close()


def test_doctor_without_and_with_a_proxy(e2e, fake, tmp_path, e2e_certs):
    home = tmp_path / "home"
    Ledger(home).set_budget(D(1))
    port = free_port()
    r = _pouch(home, "doctor", "--listen", str(port))
    assert r.returncode == 1
    assert f"FAIL  proxy            nothing answers at 127.0.0.1:{port}" in r.stdout and "fix: start it" in r.stdout
    p = PouchProxy(tmp_path, home, "--listen", str(port), "--set", f"pouch_route=api.openai.com=127.0.0.1:{fake.port}",
                   "--set", f"ssl_verify_upstream_trusted_ca={e2e_certs.ca_cert}")
    try:
        p.wait_listening()
        r = _pouch(home, "doctor", "--listen", str(port))  # a shell without `pouch env`: a warning only
        assert "WARN  environment" in r.stdout and 'eval "$(pouch env)"' in r.stdout
        r = _pouch(home, "doctor", "--listen", str(port), env=_env_of(home, port))
        for line in ("OK    proxy", "OK    proxy CA", "OK    environment", "OK    trust: python", "OK    trust: curl",
                     "OK    ledger", "OK    vault"):
            assert line in r.stdout, r.stdout
        if _node_reaches_loopback():
            assert r.returncode == 0 and "OK    trust: node" in r.stdout, r.stdout
        else:  # this machine diverts node's sockets (even to loopback) to a proxy of its own: doctor says so
            assert r.returncode == 1 and "FAIL  trust: node" in r.stdout and r.stdout.count("FAIL") == 1, r.stdout
        # a shell whose apps would not trust pouch's CA fails, with the fix
        r = _pouch(home, "doctor", "--listen", str(port),
                   env={**_env_of(home, port), "SSL_CERT_FILE": str(e2e_certs.ca_cert)})
        assert r.returncode == 1 and f"FAIL  environment      SSL_CERT_FILE={e2e_certs.ca_cert}" in r.stdout, r.stdout
        assert 'fix: eval "$(pouch env)"' in r.stdout
    finally:
        p.stop()


def test_status_counts_the_calls_the_proxy_has_in_flight(e2e, fake, tmp_path, e2e_certs):
    home = tmp_path / "home"
    Ledger(home).set_budget(D(1))
    port = free_port()
    p = PouchProxy(tmp_path, home, "--listen", str(port), "--set", f"pouch_route=api.openai.com=127.0.0.1:{fake.port}",
                   "--set", f"ssl_verify_upstream_trusted_ca={e2e_certs.ca_cert}")
    try:
        p.wait_listening()
        ca = home / "mitmproxy" / "mitmproxy-ca-cert.pem"
        env = e2e.client_env(extra={"HTTPS_PROXY": f"http://127.0.0.1:{port}", "SSL_CERT_FILE": str(ca)})
        bg = e2e.start_sdk("chat_stream", {"model": "gpt-4o-mini", "max_tokens": 200, "extra_headers": {
            "x-fake-prompt-tokens": "10", "x-fake-chunks": "40", "x-fake-delay-ms": "150"}}, env)
        wait_until(lambda: "1 call(s) in flight" in _pouch(home, "status").stdout, 20, "status showing the stream")
        assert bg.result(60)["ok"]
        wait_until(lambda: "0 call(s) in flight" in _pouch(home, "status").stdout, 20, "status after the stream")
    finally:
        p.stop()


def test_a_clean_stop_leaves_the_ledger_compacted(e2e, fake, tmp_path, e2e_certs):
    """While running, the write-ahead log is preallocated with zeros (a pouch from before that
    change reads them as corrupt records); a clean stop writes a snapshot and empties it, so the
    home is read by any version and the next start replays nothing."""
    home = tmp_path / "home"
    Ledger(home).set_budget(D(1))
    port = free_port()
    p = PouchProxy(tmp_path, home, "--listen", str(port), "--set", f"pouch_route=api.openai.com=127.0.0.1:{fake.port}",
                   "--set", f"ssl_verify_upstream_trusted_ca={e2e_certs.ca_cert}")
    wal = home / "ledger.wal"
    try:
        p.wait_listening()
        ca = home / "mitmproxy" / "mitmproxy-ca-cert.pem"
        env = e2e.client_env(extra={"HTTPS_PROXY": f"http://127.0.0.1:{port}", "SSL_CERT_FILE": str(ca)})
        r = e2e.run_sdk("chat", {"model": "gpt-4o-mini", "max_tokens": 5,
                                 "extra_headers": {"x-fake-prompt-tokens": "10", "x-fake-chunks": "2"}}, env)
        assert r["ok"], r
        wait_until(lambda: Ledger(home).status().requests == 1, 10, "settled")
        assert wal.stat().st_size >= 64 * 1024  # records, then zeros
    finally:
        p.stop()
    assert p.proc.returncode is not None and wal.stat().st_size == 0, (wal.stat().st_size, p.output()[-2000:])
    st = Ledger(home).status()
    assert st.requests == 1 and st.spent > 0 and Ledger(home).verify() == []
