"""The per-call DEBUG line of a settle (``Metering._settled``) is built only when a log handler
keeps DEBUG records: mitmdump's root logger is at DEBUG and its terminal handler at INFO, so
``isEnabledFor(DEBUG)`` alone would build (and drop) a record per call on the event loop."""

import asyncio
import logging
import sys
import time
from decimal import Decimal as D
from pathlib import Path
from types import SimpleNamespace

import pytest
from mitmproxy.log import LegacyLogEvents

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import checkpoint_bench  # noqa: E402

from pouch_addon.addons import meter as meter_addon  # noqa: E402
from pouch_addon.addons.core import Core  # noqa: E402
from pouch_addon.budget import Ledger  # noqa: E402
from pouch_addon.pricing import PriceTable  # noqa: E402


class Quiet(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        pass


class QuietLegacy(LegacyLogEvents):
    def emit(self, record: logging.LogRecord) -> None:  # no master here
        pass


@pytest.mark.parametrize("handler_level, legacy, logged", [
    (logging.INFO, False, 0), (logging.DEBUG, False, 1), (logging.NOTSET, False, 1),
    (logging.NOTSET, True, 0),  # mitmproxy's LegacyLogEvents keeps all only to re-send it as add_log
])
def test_the_settle_debug_line_only_when_a_handler_keeps_debug(tmp_path, monkeypatch, handler_level, legacy, logged):
    core = Core()
    core.ledger = Ledger(tmp_path, durable=False)
    core.ledger.set_budget(D("100"))
    metering = meter_addon.Metering(core)
    call = checkpoint_bench.streams_in_flight(core, PriceTable.load(), 1, events=3)[0]
    handlers = [Quiet(handler_level)]  # as mitmdump: root at DEBUG, its handlers filter
    if legacy:
        handlers = [Quiet(logging.INFO), QuietLegacy(None)]
    monkeypatch.setattr(logging.root, "handlers", handlers)
    old = logging.root.level
    logging.root.setLevel(logging.DEBUG)
    lines = []
    monkeypatch.setattr(meter_addon.log, "debug", lambda msg, *a, **k: lines.append(msg))
    try:
        async def settle():
            fut = asyncio.get_running_loop().create_future()
            fut.set_result({"id": call.reservation.id})
            metering._settled(call, SimpleNamespace(status="ok", cost=D("0.01")), time.perf_counter(), fut)
        asyncio.run(settle())
    finally:
        logging.root.setLevel(old)
    assert len(lines) == logged
