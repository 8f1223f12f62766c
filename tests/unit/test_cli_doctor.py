"""`pouch doctor`'s pure checks: each failure names what is wrong and the fix."""

from __future__ import annotations

from pathlib import Path

from pouch_addon.doctor import (Check, Probe, check_ca, check_env, check_ledger, check_proxy, check_trust,
                                check_vault, failed, render)

EXPECTED = {"HTTPS_PROXY": "http://127.0.0.1:8080", "https_proxy": "http://127.0.0.1:8080",
            "SSL_CERT_FILE": "/h/ca-bundle.pem", "REQUESTS_CA_BUNDLE": "/h/ca-bundle.pem",
            "CURL_CA_BUNDLE": "/h/ca-bundle.pem", "NODE_EXTRA_CA_CERTS": "/h/mitmproxy/mitmproxy-ca-cert.pem"}


def test_proxy_down_says_how_to_start_it():
    c = check_proxy("127.0.0.1:8080", Probe(False, error="refused"), None, None)
    assert c.status == "fail" and "nothing answers at 127.0.0.1:8080" in c.detail and "pouch proxy" in c.fix


def test_proxy_of_this_ledger_elsewhere_names_its_address():
    c = check_proxy("127.0.0.1:8080", Probe(False), "127.0.0.1:9090", 42)
    assert c.status == "fail" and "--listen 127.0.0.1:9090" in c.fix


def test_a_proxy_of_another_ledger_is_a_warning():
    c = check_proxy("127.0.0.1:8080", Probe(True, "HTTP/1.1 200", b"der"), None, None)
    assert c.status == "warn" and "another --home" in c.fix
    assert check_proxy("127.0.0.1:8080", Probe(True, "HTTP/1.1 200", b"der"), "127.0.0.1:8080", 7).status == "ok"
    assert check_proxy("127.0.0.1:8080", Probe(True, "HTTP/1.1 502 Bad Gateway"), None, None).status == "fail"


def test_a_foreign_ca_fails_with_the_fix():
    c = check_ca(Probe(True, "200", b"x"), False, Path("/h/ca.pem"), "CN=other")
    assert c.status == "fail" and "CN=other" in c.detail and "--home" in c.fix
    assert check_ca(Probe(True, "200", b"x"), True, Path("/h/ca.pem"), "CN=mitmproxy").status == "ok"


def test_environment():
    assert check_env({}, EXPECTED).status == "warn"
    assert check_env(dict(EXPECTED), EXPECTED).status == "ok"
    c = check_env({**EXPECTED, "SSL_CERT_FILE": "/etc/ssl/cert.pem"}, EXPECTED)
    assert c.status == "fail" and "SSL_CERT_FILE=/etc/ssl/cert.pem" in c.detail and "pouch env" in c.fix
    c = check_env({**EXPECTED, "NO_PROXY": "localhost,api.openai.com"}, EXPECTED)
    assert c.status == "fail" and "NO_PROXY" in c.detail


def test_trust_results():
    assert check_trust("node", None, "").status == "warn"
    assert check_trust("curl", "ok", "").status == "ok"
    c = check_trust("python", "untrusted", "unable to get local issuer certificate")
    assert c.status == "fail" and "does not trust" in c.detail and "pouch env" in c.fix


def test_ledger_checks():
    [c] = check_ledger(Path("/x"), False, [], False, False)
    assert c.status == "fail" and "pouch budget set AMOUNT" in c.fix
    [c] = check_ledger(Path("/x"), True, ["spent != history"], False, False)
    assert c.status == "fail" and "pouch ledger restore" in c.fix
    cs = check_ledger(Path("/x"), True, [], True, True)
    assert [c.status for c in cs] == ["ok", "fail", "warn"] and "no budget set" in cs[1].detail


def test_vault_checks():
    assert check_vault(False, False, False, None).status == "ok"
    assert check_vault(True, False, False, None).status == "warn"
    assert check_vault(True, False, True, "wrong passphrase").status == "fail"
    assert check_vault(True, True, False, None).status == "ok"


def test_render_and_exit_rule():
    checks = [Check("a", "ok", "fine"), Check("b", "warn", "hm", "do x"), Check("c", "fail", "bad", "do y")]
    text = render(checks)
    assert "FAIL  c" in text and "fix: do y" in text and "fix: do x" in text
    assert failed(checks) and not failed(checks[:2])
