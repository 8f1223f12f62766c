"""The `pouch` command, run as a user would (a real subprocess, a temporary POUCH_HOME)."""

import csv
import io
import json
import os
import subprocess
import sys
from decimal import Decimal as D

import pytest

from pouch_addon.budget import Ledger, Refusal


def pouch(home, *args, stdin=None):
    env = {**os.environ, "POUCH_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "pouch_addon.cli", *args], env=env, input=stdin,
                          capture_output=True, text=True, timeout=60)


def test_budget_and_status_json(tmp_path):
    assert pouch(tmp_path, "budget", "set", "10").returncode == 0
    assert pouch(tmp_path, "budget", "add", "$2.50").returncode == 0
    ledger = Ledger(tmp_path)
    r = ledger.reserve(D("0.75"))
    ledger.settle(r.id, D("0.125"))
    ledger.reserve(D("0.5"))
    out = json.loads(pouch(tmp_path, "status", "--json").stdout)
    one, day = out.pop("forecast")  # $0.125 spent in the last hour, $11.875 left: 95 h at that rate
    assert (one["window"], one["usd_per_hour"], one["runs_out_in_s"]) == ("1h", "0.125", 95 * 3600)
    assert (day["window"], day["usd_per_hour"]) == ("24h", "0.0052083333")
    assert out == {"budget_usd": "12.5", "spent_usd": "0.125", "reserved_usd": "0.5", "remaining_usd": "11.875",
                   "in_flight": 1, "requests": 1, "blocked": 0, "flagged": 0, "paused": False,
                   "month_by_provider": {"openai": "0.125"}, "proxy": None}
    text = pouch(tmp_path, "status").stdout
    assert "$11.875" in text and "1 in flight" in text and "this month openai $0.125" in text
    assert "forecast   burn $0.125/h (1 h), $0.0052083333/h (24 h); runs out in 4.0 days at the 1 h rate" in text
    r = ledger.reserve(D("0.5"), {"provider": "anthropic", "model": "claude-sonnet-4-5"})
    ledger.settle(r.id, D("0.25"))
    assert "this month anthropic $0.25, openai $0.125" in pouch(tmp_path, "status").stdout
    [row] = [line for line in pouch(tmp_path, "history").stdout.splitlines() if "claude" in line]
    assert "anthropic/claude-sonnet-4-5" in row


def test_home_flag_overrides_env(tmp_path):
    other = tmp_path / "other"
    assert pouch(tmp_path, "budget", "set", "3", "--home", str(other)).returncode == 0
    assert Ledger(other).status().budget == D(3) and Ledger(tmp_path).status().budget == 0


@pytest.mark.parametrize("args,needle", [
    (("budget", "set", "abc"), "not a USD amount"),
    (("budget", "set", "-1"), "must not be negative"),
    (("cost", "gpt-99-ultra", "--input", "5"), "unknown model 'gpt-99-ultra'"),
    (("history", "--since", "yesterday"), "not an ISO date"),
])
def test_bad_input_is_one_clear_line(tmp_path, args, needle):
    r = pouch(tmp_path, *args)
    assert r.returncode == 2 and needle in r.stderr and "Traceback" not in r.stderr


def test_cost_is_exact(tmp_path):
    r = pouch(tmp_path, "cost", "gpt-4o-2024-08-06", "--input", "1200", "--cached", "1024", "--output", "850",
              "--reasoning", "640", "--json")
    assert json.loads(r.stdout)["usd"] == "0.01022"  # 176*2.5 + 1024*1.25 + 850*10 per 1M


def test_cost_reads_counts_as_each_provider_reports_them(tmp_path):
    # Anthropic: input_tokens excludes the cache; 25 x 3 + 1000 x 3.75 + 2000 x 6 + 12000 x 0.3 + 1200 x 15 per 1M
    r = pouch(tmp_path, "cost", "claude-sonnet-4-5", "--input", "25", "--cache-write", "1000", "--cache-write-1h", "2000",
              "--cached", "12000", "--output", "1200", "--json")
    assert json.loads(r.stdout)["usd"] == "0.037425" and json.loads(r.stdout)["provider"] == "anthropic"
    # Gemini: promptTokenCount includes the cached tokens, thoughts are billed beside the candidates
    # (176 x 0.30 + 1024 x 0.03 + (210 + 640) x 2.50 per 1M)
    r = pouch(tmp_path, "cost", "gemini-2.5-flash", "--input", "1200", "--cached", "1024", "--output", "210",
              "--thoughts", "640", "--json")
    assert json.loads(r.stdout)["usd"] == "0.00220852"
    r = pouch(tmp_path, "cost", "gemini-2.5-flash", "--input", "5", "--reasoning", "3")
    assert r.returncode == 2 and "--thoughts" in r.stderr


def test_status_history_and_cost_show_money_by_the_one_rule(tmp_path):
    """Every amount as ``format_usd`` shows it: cents at least, every digit of a small spend,
    never rounded to $0.00 and never in scientific notation (it used to print "($1.5E-7)")."""
    ledger = Ledger(tmp_path)
    ledger.set_budget(D(3))
    r = ledger.reserve(D("0.05"), {"model": "gpt-4o-mini"}, wallet="notebook")
    ledger.settle(r.id, D("0.0000001"), details={"input_tokens": 1, "output_tokens": 0})
    lines = pouch(tmp_path, "status").stdout.splitlines()
    assert lines[:4] == ["budget     $3.00", "spent      $0.0000001", "reserved   $0.00  (0 in flight)",
                         "remaining  $2.9999999"]
    [row] = pouch(tmp_path, "history").stdout.splitlines()
    assert row.split()[-1] == "$0.0000001" and "notebook" in row
    out = pouch(tmp_path, "cost", "gpt-4o-mini", "--input", "1").stdout.strip()
    assert out == "gpt-4o-mini (openai): $0.00000015"  # 1 token at $0.15 per 1M


def test_tokens_of_a_request_file(tmp_path):
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hello world"}]}
    (tmp_path / "req.json").write_text(json.dumps(body))
    assert pouch(tmp_path, "tokens", str(tmp_path / "req.json")).stdout.strip() == "9"
    assert pouch(tmp_path, "tokens", "-", stdin=json.dumps(body)).stdout.strip() == "9"
    bad = pouch(tmp_path, "tokens", "-", stdin="{nope")
    assert bad.returncode == 2 and "not JSON" in bad.stderr


def test_history_csv_json_and_since(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.set_budget(D(1))
    r = ledger.reserve(D("0.1"), {"model": "gpt-4o", "endpoint": "/v1/chat/completions"})
    ledger.settle(r.id, D("0.01"), details={"input_tokens": 3, "output_tokens": 4})
    rows = list(csv.DictReader(io.StringIO(pouch(tmp_path, "history", "--csv").stdout)))
    assert [(x["model"], x["cost"], x["input_tokens"], x["status"]) for x in rows] == [("gpt-4o", "0.01", "3", "ok")]
    assert json.loads(pouch(tmp_path, "history", "--json").stdout)[0]["cost"] == "0.01"
    assert json.loads(pouch(tmp_path, "history", "--json", "--since", "2999-01-01").stdout) == []


def test_history_of_one_wallet(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.set_budget(D(1))
    for wallet, cost in (("ci", "0.01"), ("notebook", "0.02"), ("ci", "0.03")):
        r = ledger.reserve(D("0.1"), {"model": "gpt-4o"}, wallet=wallet)
        ledger.settle(r.id, D(cost))
    ledger.record_block(Refusal("insufficient", D(5), D("0.94")), {"wallet": "ci"})
    ci = json.loads(pouch(tmp_path, "history", "--json", "--wallet", "ci").stdout)
    assert [(e["wallet"], e["cost"]) for e in ci] == [("ci", "0.01"), ("ci", "0.03")]
    with_blocks = json.loads(pouch(tmp_path, "history", "--json", "--wallet", "ci", "--blocked").stdout)
    assert [e["kind"] for e in with_blocks] == ["settle", "settle", "block"]
    # --limit counts the wallet's entries, not everyone's
    assert [e["cost"] for e in json.loads(pouch(tmp_path, "history", "--json", "--wallet", "ci", "--limit", "1").stdout)] == ["0.03"]
    r = pouch(tmp_path, "history", "--wallet", "nobody")
    assert r.returncode == 0 and "no settled requests for wallet 'nobody'" in r.stdout


def test_corrupt_ledger_is_reported_with_the_way_out(tmp_path):
    Ledger(tmp_path).set_budget(D(1))
    Ledger(tmp_path).set_budget(D(2))
    (tmp_path / "state.json").write_text("{garbage")
    r = pouch(tmp_path, "status")
    assert r.returncode == 2 and "state.json" in r.stderr and "pouch ledger restore" in r.stderr
    assert pouch(tmp_path, "ledger", "restore").returncode == 0
    assert json.loads(pouch(tmp_path, "status", "--json").stdout)["budget_usd"] == "1"
    assert pouch(tmp_path, "ledger", "verify").returncode == 0


def test_pause_and_resume(tmp_path):
    pouch(tmp_path, "pause")
    assert Ledger(tmp_path).status().paused
    pouch(tmp_path, "resume")
    assert not Ledger(tmp_path).status().paused


def test_env_prints_proxy_and_a_ca_bundle_with_pouchs_ca(tmp_path):
    r = pouch(tmp_path, "env", "--listen", "127.0.0.1:9999")
    lines = dict(line.removeprefix("export ").split("=", 1) for line in r.stdout.splitlines())
    assert lines["HTTPS_PROXY"] == "http://127.0.0.1:9999"
    bundle = lines["SSL_CERT_FILE"]
    ca = (tmp_path / "mitmproxy" / "mitmproxy-ca-cert.pem").read_text()
    assert ca.strip() in open(bundle).read()
    assert lines["REQUESTS_CA_BUNDLE"] == lines["CURL_CA_BUNDLE"] == bundle
    assert lines["NODE_EXTRA_CA_CERTS"].endswith("mitmproxy-ca-cert.pem")


def test_run_passes_the_environment_to_the_command(tmp_path):
    r = pouch(tmp_path, "run", "--no-check", "--", sys.executable, "-c", "import os; print(os.environ['HTTPS_PROXY'])")
    assert r.stdout.strip() == "http://127.0.0.1:8080"


def test_wallets_keys_and_the_audit_trail(tmp_path):
    assert pouch(tmp_path, "budget", "set", "5").returncode == 0
    r = pouch(tmp_path, "wallet", "add", "app", "--budget", "1", "--period", "weekly", "--rpm", "10", "--secret")
    assert r.returncode == 0 and "proxy secret for app (shown once)" in r.stdout
    secret = r.stdout.split("(shown once): ")[1].split()[0]
    assert pouch(tmp_path, "wallet", "set", "app", "--add", "0.5", "--rpm", "none").returncode == 0
    [w] = json.loads(pouch(tmp_path, "wallet", "list", "--json").stdout)
    assert (w["budget_usd"], w["period"], w["rpm"], w["has_secret"]) == ("1.5", "weekly", None, True)
    assert json.loads(pouch(tmp_path, "status", "--json").stdout)["wallets"][0]["name"] == "app"
    bad = pouch(tmp_path, "wallet", "set", "nope", "--add", "1")
    assert bad.returncode == 2 and "no wallet named 'nope'" in bad.stderr
    real = "sk-proj-" + "R" * 40
    r = pouch(tmp_path, "key", "add", "openai", "--no-passphrase", stdin=real + "\n")
    assert r.returncode == 0 and real not in r.stdout and "sk-proj-…RRRR" in r.stdout
    assert (tmp_path / "vault.key").stat().st_mode & 0o777 == 0o600
    r = pouch(tmp_path, "key", "issue", "--wallet", "app", "--expires", "2099-01-01")
    vkey = r.stdout.strip()
    assert r.returncode == 0 and vkey.startswith("pk-pouch-")
    [rec] = json.loads(pouch(tmp_path, "key", "list", "--json").stdout)["virtual_keys"]
    assert rec["state"] == "active" and rec["wallet"] == "app"
    assert pouch(tmp_path, "key", "revoke", rec["id"]).returncode == 0
    assert json.loads(pouch(tmp_path, "key", "list", "--json").stdout)["virtual_keys"][0]["state"] == "revoked"
    assert pouch(tmp_path, "wallet", "rm", "app").returncode == 0
    shown = pouch(tmp_path, "audit", "show", "--json")
    actions = [e["action"] for e in json.loads(shown.stdout)]
    assert actions == ["budget.set", "wallet.add", "wallet.set", "key.add", "key.issue", "key.revoke", "wallet.rm"]
    for secret_text in (real, vkey, secret):
        assert secret_text not in shown.stdout
        assert all(secret_text not in p.read_text(errors="replace") for p in tmp_path.rglob("*") if p.is_file()
                   and p.name not in ("vault.key",))
    assert pouch(tmp_path, "audit", "verify").returncode == 0
