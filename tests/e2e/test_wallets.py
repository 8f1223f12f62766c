"""Wallets, keys and who is spending, end to end: real mitmdump + pouch, the fake provider, the openai SDK.

Identification (proxy auth, virtual key, local process), per-wallet budgets under concurrency
with a shared global cap, key swap, revoked/expired keys, rate limits, period rollover and the
audit log.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from decimal import Decimal as D
from pathlib import Path


from pouch_addon.audit import AUDIT_FILE, AuditLog
from pouch_addon.budget import Ledger
from pouch_addon.keystore import KeyStore
from pouch_addon.plan import PlanSettings, make_plan
from pouch_addon.pricing import PriceTable
from pouch_addon.vault import Vault, hash_virtual_key
from test_firewall import settled

TABLE = PriceTable.load()
CLIENTS = Path(__file__).with_name("clients")
URL = "https://api.openai.com/v1/chat/completions"
REAL_KEY = "sk-proj-REALkey0123456789abcdefghijklmnopqrstuv"
PASSPHRASE = "correct horse battery staple"
CHAT = {"model": "gpt-4o-mini", "max_tokens": 20, "extra_headers": {"x-fake-prompt-tokens": "10", "x-fake-chunks": "4"}}


def as_app(env: dict, proxy, app: str, secret: str = "x") -> dict:
    url = f"http://{app}:{secret}@127.0.0.1:{proxy.port}"
    return {**env, "HTTPS_PROXY": url, "https_proxy": url}


def no_retry(args: dict) -> dict:
    return {**args, "client": {"max_retries": 0}}


def all_text(home: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in home.rglob("*") if p.is_file() and p.suffix != ".bak")


def test_two_apps_with_wallets_and_a_shared_global_cap_under_concurrency(e2e, fake, tmp_path):
    body = {"model": "gpt-4o", "max_tokens": 20, "messages": [{"role": "user", "content": "count for me please"}]}
    one = make_plan("POST", "/v1/chat/completions", body, table=TABLE, remaining=D(1), settings=PlanSettings()).worst_case
    home = tmp_path / "home"
    ledger = Ledger(home)
    ledger.set_budget(one * 14)  # less than the two wallets together
    ledger.add_wallet("alpha", one * 9)
    ledger.add_wallet("beta", one * 9)
    proxy = e2e.start_proxy(home, {})
    env = e2e.client_env(proxy)
    args = {"model": "gpt-4o", "max_tokens": 20,
            "extra_headers": {"x-fake-chunks": "10", "x-fake-delay-ms": "40", "x-fake-prompt-tokens": "6"}}
    procs = {app: subprocess.Popen([str(e2e.client_python), str(CLIENTS / "concurrent_streams.py"), "25",
                                    "--json-args", json.dumps(args)], env=as_app(env, proxy, app),
                                   stdout=subprocess.PIPE, text=True)
             for app in ("alpha", "beta")}
    results = {app: json.loads(p.communicate(timeout=120)[0])["results"] for app, p in procs.items()}
    ok = {app: [r for r in rs if r["ok"]] for app, rs in results.items()}
    for app, rs in results.items():
        assert all(r["ok"] or r["status_code"] == 402 for r in rs), rs
    entries = settled(home, len(ok["alpha"]) + len(ok["beta"]))
    st = ledger.status()
    wallets = {w.name: w for w in ledger.wallets()}
    assert st.spent <= st.budget and st.reserved == 0
    for app in ("alpha", "beta"):
        assert wallets[app].spent <= wallets[app].budget and wallets[app].reserved == 0
        assert wallets[app].spent == sum(D(e["cost"]) for e in entries if e["wallet"] == app)
        assert len([e for e in entries if e["wallet"] == app]) == len(ok[app]) > 0
    assert st.blocked == 50 - len(entries) > 0  # the caps really bound
    assert {e["via"] for e in entries} == {"proxy_auth"}
    blocks = ledger.history(kinds=("block",))
    assert {b["wallet"] for b in blocks} <= {"alpha", "beta"}
    assert ledger.verify() == []


def test_proxy_auth_names_the_wallet_and_a_wallet_secret_is_checked(e2e, fake, tmp_path):
    home = tmp_path / "home"
    ledger = Ledger(home)
    ledger.set_budget(D(1))
    ledger.add_wallet("billing", D("0.5"), secret_hash=hash_virtual_key("s3cret-for-billing"))
    proxy = e2e.start_proxy(home, {})
    env = e2e.client_env(proxy)
    assert e2e.run_sdk("chat", CHAT, as_app(env, proxy, "billing", "s3cret-for-billing"))["ok"]
    assert e2e.run_sdk("chat", CHAT, as_app(env, proxy, "notebook", "anything"))["ok"]  # no wallet: a label
    bad = e2e.run_sdk("chat", no_retry(CHAT), as_app(env, proxy, "billing", "guess-xyz-123"))
    assert bad["error"]["status_code"] == 401 and bad["error"]["code"] == "pouch_proxy_auth_failed"
    assert "guess-xyz-123" not in bad["error"]["message"]
    entries = settled(home, 2)
    assert [(e["wallet"], e["via"]) for e in entries] == [("notebook", "proxy_auth"), ("billing", "proxy_auth")]
    assert len(fake.requests("/v1/chat/completions")) == 2
    assert all("proxy-authorization" not in r["headers"] for r in fake.requests())
    assert [w.spent > 0 for w in ledger.wallets()] == [True]


def test_virtual_key_is_swapped_for_the_real_key_and_revocation_and_expiry_answer_401(e2e, fake, tmp_path,
                                                                                         monkeypatch):
    home = tmp_path / "home"
    ledger = Ledger(home)
    ledger.set_budget(D(1))
    Vault.create(home / "vault.json", PASSPHRASE).put("openai", REAL_KEY)
    store = KeyStore(home)
    vkey, rec = store.issue("agent", now=time.time())
    soon, _ = store.issue("agent", expires=time.time() + 3, now=time.time())
    monkeypatch.setenv("POUCH_VAULT_PASSPHRASE", PASSPHRASE)  # the proxy reads it at start
    proxy = e2e.start_proxy(home, {})
    env = e2e.client_env(proxy, api_key=vkey)
    r = e2e.run_sdk("chat", CHAT, env)
    assert r["ok"], r
    seen = fake.requests("/v1/chat/completions")[-1]["headers"]
    assert seen["authorization"] == f"Bearer {REAL_KEY}"  # the provider sees the real key
    [entry] = settled(home)
    assert (entry["wallet"], entry["via"], entry["key_id"]) == ("agent", "key", rec.id)
    # a real key passes through unchanged (and is still budgeted)
    assert e2e.run_sdk("chat", CHAT, e2e.client_env(proxy, api_key="sk-direct-key-of-the-app-0000"))["ok"]
    assert fake.requests("/v1/chat/completions")[-1]["headers"]["authorization"] == "Bearer sk-direct-key-of-the-app-0000"
    settled(home, 2)
    # expired, revoked, unknown -> 401 in OpenAI's shape, nothing sent
    time.sleep(max(0.0, 3.2 - (time.time() - rec.created)))
    store.revoke(rec.id, now=time.time())
    sent = len(fake.requests())
    for key, word in ((vkey, "revoked"), (soon, "expired"), ("pk-pouch-" + "x" * 32, "not a key pouch issued")):
        r = e2e.run_sdk("chat", no_retry(CHAT), e2e.client_env(proxy, api_key=key))
        err = r["error"]
        assert err["status_code"] == 401 and err["code"] == "invalid_api_key" and word in err["message"], err
        assert key not in err["message"] and "…" in err["message"]  # a fingerprint at most
    assert len(fake.requests()) == sent
    # the real key is nowhere on disk in the clear, nor in the proxy's output
    assert REAL_KEY not in all_text(home) and vkey not in all_text(home)
    assert REAL_KEY not in proxy.stdout() + proxy.stderr()
    actions = [e["action"] for e in AuditLog(home / AUDIT_FILE).entries()]
    assert actions.count("block") == 3


def test_a_local_client_is_charged_to_its_program(e2e, fake, tmp_path):
    home = tmp_path / "home"
    Ledger(home).set_budget(D(1))
    proxy = e2e.start_proxy(home, {})
    r = e2e.run_sdk("chat", CHAT, e2e.client_env(proxy))
    assert r["ok"]
    [entry] = settled(home)
    exe = os.path.basename(os.path.realpath(e2e.client_python))  # e.g. python3.11
    assert (entry["wallet"], entry["via"]) == (exe, "process") and entry["pid"] > 0


def test_wallet_budget_expiry_and_rate_limit(e2e, fake, tmp_path):
    home = tmp_path / "home"
    ledger = Ledger(home)
    ledger.set_budget(D(1))
    ledger.add_wallet("tiny", D("0.000001"))
    ledger.add_wallet("old", D(1), expires=time.time() - 1)
    ledger.add_wallet("slow", D(1), rpm=1)
    ledger.add_wallet("narrow", D(1), tpm=50)
    proxy = e2e.start_proxy(home, {})
    env = e2e.client_env(proxy)
    r = e2e.run_sdk("chat", CHAT, as_app(env, proxy, "tiny"))
    assert r["error"]["status_code"] == 402 and "wallet 'tiny'" in r["error"]["message"]
    r = e2e.run_sdk("chat", CHAT, as_app(env, proxy, "old"))
    assert r["error"]["status_code"] == 402 and r["error"]["code"] == "pouch_wallet_expired"
    first, second = e2e.run_sdk_batch([("chat", no_retry(CHAT)), ("chat", no_retry(CHAT))], as_app(env, proxy, "slow"))
    assert first["ok"] and second["error"]["status_code"] == 429 and second["error"]["code"] == "rate_limit_exceeded"
    c = e2e.run_curl(URL, env=as_app(env, proxy, "slow"), json_body={"model": "gpt-4o-mini", "max_tokens": 5,
                                                                     "messages": []})
    assert c.status == 429 and 1 <= int(c.headers["retry-after"]) <= 60 and c.headers["x-should-retry"] == "true"
    c = e2e.run_curl(URL, env=as_app(env, proxy, "narrow"), json_body={"model": "gpt-4o-mini", "max_tokens": 500,
                                                                       "messages": []})
    assert c.status == 429 and c.headers["x-should-retry"] == "false" and "retry-after" not in c.headers
    assert len(fake.requests("/v1/chat/completions")) == 1
    blocks = ledger.history(kinds=("block",))
    assert sorted(b["reason"] for b in blocks) == ["expired", "insufficient", "rate_limited", "rate_limited",
                                                   "rate_limited"]
    audited = [e["details"]["code"] for e in AuditLog(home / AUDIT_FILE).entries() if e["action"] == "block"]
    assert sorted(audited) == sorted(["budget_exceeded", "pouch_wallet_expired", "rate_limit_exceeded",
                                      "rate_limit_exceeded", "pouch_request_exceeds_tpm"])
    assert AuditLog(home / AUDIT_FILE).verify() == []


def test_a_daily_wallet_rolls_over(e2e, fake, tmp_path):
    """Yesterday's spend used up the daily wallet; today it starts again from zero, history kept."""
    home = tmp_path / "home"
    yesterday = time.time() - 86400
    past = Ledger(home, clock=lambda: yesterday)
    past.set_budget(D(1))
    past.add_wallet("daily-app", D("0.001"), period="daily")
    r = past.reserve(D("0.001"), {"model": "gpt-4o-mini"}, wallet="daily-app")
    past.settle(r.id, D("0.001"))
    assert past.reserve(D("0.0001"), wallet="daily-app").wallet == "daily-app"  # used up yesterday
    proxy = e2e.start_proxy(home, {})
    r = e2e.run_sdk("chat", CHAT, as_app(e2e.client_env(proxy), proxy, "daily-app"))
    assert r["ok"], r
    entries = settled(home, 2)
    [w] = Ledger(home).wallets()
    assert w.spent == D(entries[0]["cost"]) < D("0.001")  # only today's call counts
    assert Ledger(home).status().spent == D("0.001") + w.spent  # the global total keeps both


def test_audit_verify_catches_an_edited_entry(tmp_path):
    env = {**os.environ, "POUCH_HOME": str(tmp_path)}

    def pouch(*args):
        return subprocess.run([sys.executable, "-m", "pouch_addon.cli", *args], env=env, capture_output=True,
                              text=True, timeout=60)

    assert pouch("budget", "set", "5").returncode == 0
    assert pouch("wallet", "add", "app", "--budget", "1", "--period", "monthly").returncode == 0
    assert pouch("pause").returncode == 0 and pouch("resume").returncode == 0
    ok = pouch("audit", "verify")
    assert ok.returncode == 0 and "intact (4 entries)" in ok.stdout
    log = tmp_path / AUDIT_FILE
    lines = log.read_text().splitlines()
    lines[0] = lines[0].replace('"budget":"5"', '"budget":"500"')
    log.write_text("\n".join(lines) + "\n")
    bad = pouch("audit", "verify")
    assert bad.returncode == 1 and "entry edited" in bad.stdout
    # truncation is caught as well
    log.write_text("\n".join(lines[:-1]).replace('"budget":"500"', '"budget":"5"') + "\n")
    bad = pouch("audit", "verify")
    assert bad.returncode == 1 and "removed from the end" in bad.stdout
