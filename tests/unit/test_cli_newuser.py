"""The first hour of a new user (issue 14): home handling, a fresh ledger, small CLI slips,
`pouch proxy`'s argument handling and `pouch doctor`'s pure checks."""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys
from decimal import Decimal as D
from pathlib import Path

import pytest

from pouch_addon.budget import Ledger, Refusal

ROOT = Path(__file__).resolve().parents[2]


def pouch(home, *args, env=None):
    env = {**os.environ, "POUCH_HOME": str(home), **(env or {})}
    return subprocess.run([sys.executable, "-m", "pouch_addon.cli", *args], env=env,
                          capture_output=True, text=True, timeout=60)


# -- item 6: a bad --home, and no ledger created by reading ------------------------------------------
def test_home_that_is_a_file_is_one_clear_line(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    r = pouch(tmp_path, "--home", str(f), "budget", "set", "5")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"pouch home {f} is not a directory" in r.stderr


def test_home_that_cannot_be_created_is_one_clear_line(tmp_path):
    r = pouch(tmp_path, "--home", "/proc/pouch-nope", "budget", "set", "5")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "cannot create pouch home /proc/pouch-nope" in r.stderr


@pytest.mark.parametrize("args", [("status",), ("history",), ("budget", "show"), ("ledger", "verify"),
                                  ("wallet", "list")])
def test_reading_commands_never_create_a_ledger(tmp_path, args):
    home = tmp_path / "typo" / "home"
    r = pouch(tmp_path, "--home", str(home), *args)
    assert r.returncode == 2, r.stdout
    assert f"no ledger at {home}: run `pouch budget set AMOUNT` to create one" in r.stderr
    assert not home.exists()


def test_budget_set_creates_the_ledger(tmp_path):
    home = tmp_path / "new"
    assert pouch(tmp_path, "--home", str(home), "budget", "set", "2").returncode == 0
    assert pouch(tmp_path, "--home", str(home), "status").returncode == 0


def test_status_into_a_closed_pipe_is_quiet(tmp_path):
    """`pouch status | head -2`: the reader is gone before pouch writes; no BrokenPipeError."""
    Ledger(tmp_path).set_budget(D(1))
    p = subprocess.Popen([sys.executable, "-m", "pouch_addon.cli", "status"], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env={**os.environ, "POUCH_HOME": str(tmp_path)})
    p.stdout.close()  # closed long before the child has imported anything
    err = p.stderr.read().decode()
    p.wait(timeout=60)
    assert "BrokenPipe" not in err and "Traceback" not in err, err


# -- item 5: a fresh ledger says so ---------------------------------------------------------------------
def test_status_of_a_ledger_without_budget_says_how_to_set_one(tmp_path):
    Ledger(tmp_path).set_budget(D(0))
    r = pouch(tmp_path, "status")
    assert "no budget set: `pouch budget set AMOUNT`" in r.stdout


def test_refusal_of_an_unset_budget_says_how_to_set_one():
    msg = Refusal("insufficient", D("0.01"), D(0), budget_unset=True).message
    assert "no budget set: `pouch budget set AMOUNT`" in msg


# -- item 9: small CLI slips -----------------------------------------------------------------------------
def test_budget_add_refuses_a_negative_amount(tmp_path):
    Ledger(tmp_path).set_budget(D(5))
    r = pouch(tmp_path, "budget", "add", "-1")
    assert r.returncode == 2 and "pouch budget set" in r.stderr
    assert Ledger(tmp_path).status().budget == D(5)


@pytest.mark.parametrize("n", ["0", "-1"])
def test_history_limit_below_one_is_refused(tmp_path, n):
    ledger = Ledger(tmp_path)
    ledger.set_budget(D(1))
    for _ in range(3):
        ledger.settle(ledger.reserve(D("0.1")).id, D("0.01"))
    r = pouch(tmp_path, "history", "--limit", n)
    assert r.returncode == 2 and "--limit" in r.stderr and "at least 1" in r.stderr


def test_cost_with_negative_tokens_names_the_option(tmp_path):
    r = pouch(tmp_path, "cost", "gpt-4o", "--input", "-10")
    assert r.returncode == 2 and "--input" in r.stderr and "input_tokens" not in r.stderr


def test_ledger_restore_says_what_it_went_back_to(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.set_budget(D(5))
    ledger.set_budget(D(7))
    r = pouch(tmp_path, "ledger", "restore")
    assert r.returncode == 0
    assert "budget $5.00" in r.stdout and "budget $7.00" in r.stdout, r.stdout


def test_plain_history_says_blocked_calls_are_hidden(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.set_budget(D(1))
    ledger.settle(ledger.reserve(D("0.1")).id, D("0.01"))
    ledger.record_block(Refusal("insufficient", D(5), D(1)), {"model": "gpt-4o"})
    r = pouch(tmp_path, "history")
    assert "1 blocked request not shown (`pouch history --blocked`)" in r.stdout


# -- item 8: README claims -----------------------------------------------------------------------------
def test_key_issue_for_a_missing_wallet_is_refused(tmp_path):
    Ledger(tmp_path).set_budget(D(1))
    r = pouch(tmp_path, "key", "issue", "--wallet", "agent")
    assert r.returncode == 2 and "no wallet named 'agent'" in r.stderr and "pouch wallet add agent" in r.stderr
    assert not r.stdout.startswith("pk-pouch-")


def test_expires_on_a_date_means_the_end_of_that_day_utc(tmp_path):
    Ledger(tmp_path).set_budget(D(1))
    assert pouch(tmp_path, "wallet", "add", "agent", "--budget", "1", "--expires", "2026-12-31").returncode == 0
    [w] = json.loads(pouch(tmp_path, "wallet", "list", "--json").stdout)
    assert w["expires"] == "2027-01-01T00:00:00.000Z", w
    r = pouch(tmp_path, "key", "issue", "--wallet", "agent", "--expires", "2026-12-31")
    assert r.returncode == 0 and "expires 2027-01-01T00:00Z" in r.stderr


def test_status_names_apps_without_a_wallet_seen_this_month(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.set_budget(D(1))
    ledger.settle(ledger.reserve(D("0.1"), {"model": "gpt-4o"}, wallet="python3.11").id, D("0.02"))
    out = pouch(tmp_path, "status").stdout
    assert "python3.11" in out and "$0.02" in out
    js = json.loads(pouch(tmp_path, "status", "--json").stdout)
    assert js["apps_without_wallet"] == [{"name": "python3.11", "spent_usd": "0.02", "requests": 1}]


def test_pouch_options_lists_pouchs_mitmproxy_options(tmp_path):
    r = pouch(tmp_path, "options")
    assert r.returncode == 0
    for name in ("pouch_home", "pouch_route", "pouch_hosts", "pouch_max_body_mb"):
        assert name in r.stdout


# -- item 10: set-up speed and reproducibility ---------------------------------------------------------
def test_client_requirements_are_pinned_and_used():
    reqs = (ROOT / "tests" / "e2e" / "clients" / "requirements.txt").read_text().splitlines()
    pins = [line for line in reqs if line.strip() and not line.startswith("#")]
    assert pins and all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][A-Za-z0-9.+-]*", p) for p in pins), pins
    assert any(p.startswith("openai==") for p in pins)
    assert "tests/e2e/clients/requirements.txt" in (ROOT / "scripts" / "make_client_venv.sh").read_text()


def test_setup_is_stamped_on_pyproject():
    text = (ROOT / "scripts" / "setup.sh").read_text()
    assert "pyproject.toml" in text and ".pouch-setup" in text and "pip-install.log" in text
