"""The TUI's team watcher: it reads the ledger when PostgreSQL notifies a write, and not otherwise."""

from __future__ import annotations

import threading
import time
from decimal import Decimal as D

from pouch_addon.ledger_postgres import PostgresLedger, init
from pouch_tui.messages import AggregatesUpdated, HistoryUpdated, LedgerUpdated
from pouch_tui.team_watcher import TeamWatcher


def wait_for(pred, timeout=20.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.05)
    return False


def test_team_watcher_is_driven_by_notify_not_polling(pg_url, tmp_path):
    init(pg_url)
    got: list = []
    lock = threading.Lock()

    def post(msg):
        with lock:
            got.append(msg)

    w = TeamWatcher(pg_url, tmp_path, post)
    w.first_paint_done()
    w.start()
    writer = PostgresLedger(pg_url, tmp_path)
    try:
        assert wait_for(lambda: w.reads >= 1)
        time.sleep(0.5)
        settled_reads = w.reads
        time.sleep(2.0)  # nobody writes: nothing is read
        assert w.reads == settled_reads
        writer.set_budget(D("7"))
        assert wait_for(lambda: any(isinstance(m, LedgerUpdated) and m.snapshot.status.budget == D("7")
                                    for m in list(got)))
        assert w.notified >= 1
        r = writer.reserve(D("1"), wallet="w")
        writer.settle(r.id, D("0.25"))
        assert wait_for(lambda: any(isinstance(m, HistoryUpdated) and m.entries and m.entries[0]["cost"] == "0.25"
                                    for m in list(got)))
        assert wait_for(lambda: any(isinstance(m, AggregatesUpdated) for m in list(got)))
    finally:
        w.close()
        w.join(timeout=5)
        writer.close()
