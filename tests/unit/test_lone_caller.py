"""Issue 20, one call at a time: work that used to sit on a lone caller's path between its calls.

Each test counts what a call does (log records, loop callbacks, thread wake-ups), never time."""

import asyncio
import logging
import sys
from decimal import Decimal as D
from pathlib import Path

import pytest
from mitmproxy.addons import termlog
from mitmproxy.test import taddons

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import checkpoint_bench  # noqa: E402

from pouch_addon.addons import meter as meter_addon  # noqa: E402
from pouch_addon.addons.core import Core  # noqa: E402
from pouch_addon.budget import Ledger  # noqa: E402
from pouch_addon.pricing import PriceTable  # noqa: E402

TABLE = PriceTable.load()


@pytest.fixture
def setup(tmp_path):
    core = Core()
    core.ledger = Ledger(tmp_path, durable=False)
    core.ledger.set_budget(D("100"))
    return core, meter_addon.Metering(core)


def settle_one(core, metering) -> None:
    call = checkpoint_bench.streams_in_flight(core, TABLE, 1, events=20)[0]
    result = meter_addon.settlement.completed(TABLE, call.plan, call.meter.final_usage(), 0,
                                              model_reported=None, tier_reported=None, status="ok")

    async def main():
        metering._settle_soon(call, result, http_status=200)
        await metering.done()

    asyncio.run(main())


@pytest.fixture
def root_at_debug():
    """What mitmdump does at start: the root logger at DEBUG (its handlers filter by verbosity)."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.DEBUG)
    yield
    root.setLevel(level)


def settle_lines(caplog) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == meter_addon.__name__ and r.levelno == logging.DEBUG]


def test_a_settle_makes_no_log_record_unless_debug_lines_are_shown(setup, root_at_debug, caplog):
    """Under mitmdump every record reaches mitmproxy's legacy ``add_log`` handler (a loop wake-up
    and an event to every addon, ~0.2 ms), whatever ``termlog_verbosity`` shows: the per-call
    settle line is made only when debug lines are shown."""
    core, metering = setup
    caplog.set_level(logging.DEBUG)
    with taddons.context(termlog.TermLog(), metering) as tctx:
        tctx.configure(metering, termlog_verbosity="info")
        settle_one(core, metering)
        assert settle_lines(caplog) == []
        tctx.configure(metering, termlog_verbosity="debug")
        settle_one(core, metering)
        assert len(settle_lines(caplog)) == 1
