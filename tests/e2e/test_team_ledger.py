"""The team ledger end to end (issue 17): real mitmdump proxies with pouch sharing one real
PostgreSQL (started by the test, ``tests/pg/pgserver.py``), the fake provider over TLS, the
async openai SDK.

- three proxies, 60 concurrent streams spread over them, a budget covering a third: no
  overspend, nothing left reserved, the invariant exact; the same for one wallet;
- a proxy SIGKILLed mid-stream: its reservations are settled by another proxy once its lease
  expired;
- PostgreSQL stopped for 5 s under load: new calls get a clear 503, admitted streams finish,
  their settles are spooled and written when the database is back, and service recovers.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from decimal import Decimal as D
from pathlib import Path

import pytest

from harness import wait_until
from pouch_addon.ledger_postgres import PostgresLedger, init
from pouch_addon.plan import PlanSettings, make_plan
from pouch_addon.pricing import PriceTable

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pg"))
from pgserver import PASSWORD, PGServer  # noqa: E402

pytestmark = pytest.mark.e2e
CLIENTS = Path(__file__).with_name("clients")
TABLE = PriceTable.load()
CAP = 20
BODY = {"model": "gpt-4o-mini", "max_tokens": CAP, "messages": [{"role": "user", "content": "count for me please"}]}
# exact: the calls here are near the budget, where pouch counts the input with tiktoken
ONE = make_plan("POST", "/v1/chat/completions", BODY, table=TABLE, remaining=D(1),
                settings=PlanSettings(exact_input=True)).worst_case


@pytest.fixture(scope="module")
def pg():
    server = PGServer()
    server.start()
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def team(pg, tmp_path):
    url = pg.new_database()
    init(url)
    ledger = PostgresLedger(url, tmp_path / "cli-home")
    try:
        yield url, ledger
    finally:
        ledger.close()


def proxies(e2e, url, n, **sets):
    return [e2e.start_proxy(None, {"pouch_ledger": url, **sets}, quiet=False) for _ in range(n)]


def burst(e2e, proxy, specs, *, app=None):
    env = e2e.client_env(proxy)
    if app is not None:
        proxy_url = f"http://{app}:x@127.0.0.1:{proxy.port}"
        env = {**env, "HTTPS_PROXY": proxy_url, "https_proxy": proxy_url}
    return subprocess.Popen([str(e2e.client_python), str(CLIENTS / "burst.py"), "--json-args", json.dumps(specs)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def results(proc):
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 0, err[-3000:]
    return json.loads(out)["results"]


def stream_spec(chunks=10, delay_ms=40, prompt_tokens=6):
    return {"args": {"model": "gpt-4o-mini", "max_tokens": CAP,
                     "extra_headers": {"x-fake-chunks": str(chunks), "x-fake-delay-ms": str(delay_ms),
                                       "x-fake-prompt-tokens": str(prompt_tokens)}},
            "disconnect_after": None}


def settled(ledger, n, timeout=30.0):
    wait_until(lambda: ledger.status().in_flight == 0 and len(ledger.history(kinds=("settle",))) >= n,
               timeout, f"{n} settles in the team ledger")
    return ledger.history(kinds=("settle",))


def no_password_logged(ps):
    for p in ps:
        assert PASSWORD not in p.stdout() + p.stderr()


def sixty_streams_over_three_proxies(e2e, url, ledger, app=None):
    ps = proxies(e2e, url, 3)
    clients = [burst(e2e, p, [stream_spec() for _ in range(20)], app=app) for p in ps]
    rs = [results(c) for c in clients]
    answered = [r for per in rs for r in per if r["ok"]]
    refused = [r for per in rs for r in per if r["status_code"] == 402]
    assert len(answered) + len(refused) == 60, [r for per in rs for r in per if not r["ok"]][:3]
    assert refused and answered, "the budget binds"
    # every proxy asked the shared ledger (a local one would say "no budget set")
    assert all("no budget set" not in (r["message"] or "") for per in rs for r in per)
    entries = settled(ledger, len(answered))
    assert len(entries) == len(answered)
    no_password_logged(ps)
    return entries


def test_three_proxies_sixty_streams_never_overspend(e2e, fake, team):
    url, ledger = team
    ledger.set_budget(ONE * 20)  # a third of the 60 streams' worst case
    entries = sixty_streams_over_three_proxies(e2e, url, ledger)
    st = ledger.status()
    assert st.spent <= st.budget and st.reserved == 0 and st.in_flight == 0
    assert st.budget == st.remaining + st.reserved + st.spent
    assert st.spent == sum(D(e["cost"]) for e in entries)
    assert st.blocked == 60 - len(entries)
    assert ledger.verify() == []


def test_one_wallet_over_three_proxies_never_overspends(e2e, fake, team):
    url, ledger = team
    ledger.set_budget(ONE * 100)
    ledger.add_wallet("team-app", ONE * 20)
    entries = sixty_streams_over_three_proxies(e2e, url, ledger, app="team-app")
    [w] = ledger.wallets()
    assert w.spent <= w.budget and w.reserved == 0 and w.in_flight == 0
    assert w.spent == sum(D(e["cost"]) for e in entries) and {e["wallet"] for e in entries} == {"team-app"}
    blocks = ledger.history(kinds=("block",))
    assert len(blocks) == 60 - len(entries) and {b.get("refused_by") for b in blocks} == {"wallet"}
    st = ledger.status()
    assert st.budget == st.remaining + st.reserved + st.spent and ledger.verify() == []


def test_a_killed_proxy_is_recovered_after_its_lease(e2e, fake, team):
    url, ledger = team
    ledger.set_budget(ONE * 3 + ONE / 2)
    doomed, live = proxies(e2e, url, 2, pouch_ledger_lease_s=3)
    long = burst(e2e, doomed, [stream_spec(chunks=10, delay_ms=2000) for _ in range(3)])
    wait_until(lambda: ledger.status().in_flight == 3, 30, "three long streams admitted through the doomed proxy")
    doomed.proc.popen.send_signal(signal.SIGKILL)
    long.kill()
    # the budget is held by the dead proxy's reservations: the live proxy refuses
    [r] = results(burst(e2e, live, [stream_spec(chunks=2, delay_ms=0)]))
    assert r["status_code"] == 402
    wait_until(lambda: ledger.status().in_flight == 0, 30, "the dead proxy's reservations recovered")
    orphaned = [e for e in ledger.history(kinds=("settle",)) if e["status"] == "orphaned"]
    assert len(orphaned) == 3 and all(D(e["cost"]) == ONE for e in orphaned)  # the full reservation
    st = ledger.status()
    assert (st.reserved, st.spent) == (0, ONE * 3) and ledger.verify() == []


def test_postgres_down_for_five_seconds_under_load(e2e, fake, team, pg):
    url, ledger = team
    ledger.set_budget(D(1))
    a, b = proxies(e2e, url, 2)
    admitted = [burst(e2e, p, [stream_spec(chunks=10, delay_ms=1000) for _ in range(5)]) for p in (a, b)]
    wait_until(lambda: ledger.status().in_flight == 10, 30, "ten long streams admitted")
    pg.stop()
    stopped = time.monotonic()
    try:
        refused = [results(burst(e2e, p, [stream_spec(chunks=2, delay_ms=0) for _ in range(3)])) for p in (a, b)]
        for r in (r for per in refused for r in per):
            assert r["status_code"] == 503 and "team ledger database" in r["message"] and "unreachable" in r["message"]
            assert PASSWORD not in r["message"]
        time.sleep(max(0.0, 5 - (time.monotonic() - stopped)))
    finally:
        pg.start()
    streams = [r for c in admitted for r in results(c)]
    assert all(r["ok"] and r["chunks"] >= 10 for r in streams), streams
    entries = settled(ledger, 10, timeout=60)  # spooled while down, written once it is back
    assert len(entries) == 10 and all(e["status"] == "ok" for e in entries)
    st = ledger.status()
    assert st.reserved == 0 and st.budget == st.remaining + st.reserved + st.spent and ledger.verify() == []
    # service recovers by itself
    def served():
        rs = results(burst(e2e, a, [stream_spec(chunks=2, delay_ms=0)]))
        return rs[0]["ok"]
    wait_until(served, 30, "the proxy admitting again", interval=0.5)
    no_password_logged([a, b])


def test_rpm_is_enforced_across_proxies(e2e, fake, team):
    """A wallet with rpm 4, eight calls through two proxies: four pass in all, not four per proxy."""
    url, ledger = team
    ledger.set_budget(D(1))
    ledger.add_wallet("limited", D(1), rpm=4)
    a, b = proxies(e2e, url, 2)
    rs = []
    for p in (a, b, a, b, a, b, a, b):
        rs += results(burst(e2e, p, [stream_spec(chunks=2, delay_ms=0)], app="limited"))
    assert [r["ok"] for r in rs].count(True) == 4, rs
    assert sorted(r["status_code"] for r in rs if not r["ok"]) == [429] * 4
    with ledger._connection() as conn:
        assert conn.execute("SELECT count(*) FROM pouch_rate WHERE wallet = 'limited'").fetchone()[0] == 4


def test_spooled_settles_survive_a_proxy_restart(e2e, fake, team, pg):
    """Streams end while PostgreSQL is down: their settles are spooled in the proxy's home; the
    proxy is stopped, the database comes back, a new proxy on the same home writes them."""
    url, ledger = team
    ledger.set_budget(D(1))
    first = proxies(e2e, url, 1)[0]
    streams = burst(e2e, first, [stream_spec(chunks=6, delay_ms=600) for _ in range(2)])
    wait_until(lambda: ledger.status().in_flight == 2, 30, "two streams admitted")
    pg.stop()
    try:
        rs = results(streams)
        assert all(r["ok"] for r in rs), rs
        def spooled():
            return sum(len(p.read_text().splitlines()) for p in first.home.glob("ledger-spool-*.jsonl"))
        wait_until(lambda: spooled() == 2, 30, "two settles spooled")
        first.stop()
    finally:
        pg.start()
    assert ledger.status().in_flight == 2  # nothing of them reached the database yet
    again = e2e.start_proxy(first.home, {"pouch_ledger": url}, quiet=False)
    entries = settled(ledger, 2, timeout=60)
    assert len(entries) == 2 and all(e["status"] == "ok" for e in entries)
    assert not list(first.home.glob("ledger-spool-*.jsonl"))
    st = ledger.status()
    assert st.reserved == 0 and st.spent == sum(D(e["cost"]) for e in entries) and ledger.verify() == []
    no_password_logged([first, again])
