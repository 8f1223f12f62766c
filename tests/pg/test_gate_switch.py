"""The budget gate's ledger switched while the proxy runs (``pouch_ledger`` set at runtime, e.g.
``:set`` in mitmproxy's console), with mitmproxy's own addon test context and a real PostgreSQL.

The new team ledger must hold this proxy's lease before its first reservation (else another proxy's
orphan rule may settle that reservation as abandoned), and the old one must be closed (its pool and
heartbeat thread) only once no call in flight still settles into it."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal

import psycopg
from mitmproxy.test import taddons

from pouch_addon.addons import BudgetGate, Core
from pouch_addon.addons.core import FlowCall
from pouch_addon.ledger_postgres import init


def test_switching_the_team_ledger_at_runtime_leases_the_new_and_closes_the_old_after_its_calls(pg_server, tmp_path):
    first, second = pg_server.new_database(), pg_server.new_database()
    init(first)
    init(second)

    async def run() -> None:
        core = Core()
        gate = BudgetGate(core)
        with taddons.context(gate) as tctx:
            tctx.configure(gate, pouch_home=str(tmp_path / "home"), pouch_ledger=first)
            await gate.running()
            old = core.ledger
            old.set_budget(Decimal("1"))
            res = old.reserve(Decimal("0.01"))
            call = FlowCall(plan=None, reservation=res, client="test", ledger=old)  # type: ignore[arg-type]
            core.active.add(call)

            tctx.configure(gate, pouch_ledger=second)
            new = core.ledger
            assert new is not old and new.display_url != old.display_url
            with psycopg.connect(second) as conn:
                leases = [r[0] for r in conn.execute("SELECT id FROM pouch_leases")]
            assert leases == [new.lease]  # leased before any reservation

            await asyncio.sleep(0.6)
            assert not old._closed.is_set()  # its call is still in flight: it must still settle there
            old.settle(res.id, Decimal("0.004"))
            core.active.discard(call)
            deadline = time.monotonic() + 10
            while not old._closed.is_set() and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            assert old._closed.is_set()
            assert not new._closed.is_set()
            new.close()

    asyncio.run(run())
