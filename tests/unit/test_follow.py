"""``pouch history --jsonl --follow`` (pouch_addon/follow.py): new settles and blocks, once each."""

from __future__ import annotations

import io
import json
import threading
import time
from decimal import Decimal as D

from pouch_addon.budget import Ledger, Refusal
from pouch_addon.follow import follow


class Lines(io.StringIO):
    def records(self) -> list[dict]:
        return [json.loads(x) for x in self.getvalue().splitlines()]


def run(ledger: Ledger, out: Lines, **kw) -> tuple[threading.Event, threading.Thread]:
    stop = threading.Event()
    t = threading.Thread(target=follow, args=(ledger, out), kwargs={"interval": 0.01, "stop": stop.is_set, **kw},
                         daemon=True)
    t.start()
    return stop, t


def wait_for(pred, what: str, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_prints_each_new_settle_and_block_once_and_not_the_past(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.set_budget(D(1))
    old = ledger.reserve(D("0.1"), {"model": "old"})
    ledger.settle(old.id, D("0.01"))
    out = Lines()
    follower = Ledger(tmp_path)
    started = threading.Event()  # "from now on" is when follow took its first snapshot
    first = follower.snapshot

    def snapshot():
        st = first()
        started.set()
        return st
    follower.snapshot = snapshot
    stop, t = run(follower, out)
    assert started.wait(10)
    try:
        r = ledger.reserve(D("0.1"), {"model": "new"}, wallet="app")
        ledger.settle(r.id, D("0.02"))
        ledger.record_block(Refusal("insufficient", D(5), D("0.98")), {"model": "big"})
        wait_for(lambda: len(out.records()) >= 2, "two lines")
    finally:
        stop.set()
        t.join(5)
    recs = out.records()
    assert [(e["kind"], e.get("model")) for e in recs] == [("settle", "new"), ("block", "big")]
    assert recs[0]["cost"] == "0.02" and recs[0]["wallet"] == "app"


def test_since_and_wallet_filter(tmp_path):
    ledger = Ledger(tmp_path)
    ledger.set_budget(D(1))
    for w in ("a", "b"):
        r = ledger.reserve(D("0.1"), wallet=w)
        ledger.settle(r.id, D("0.01"))
    out = Lines()
    stop, t = run(Ledger(tmp_path), out, since=0.0, wallet="b")
    try:
        wait_for(lambda: len(out.records()) >= 1, "the past entry of b")
        r = ledger.reserve(D("0.1"), wallet="b")
        ledger.settle(r.id, D("0.03"))
        wait_for(lambda: len(out.records()) >= 2, "the new entry of b")
    finally:
        stop.set()
        t.join(5)
    assert [(e["wallet"], e["cost"]) for e in out.records()] == [("b", "0.01"), ("b", "0.03")]
