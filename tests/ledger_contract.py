"""Rules every ledger store keeps (the local files, the team's PostgreSQL), written once and run by
each store's own tests (``tests/unit`` for the local store, ``tests/pg`` for PostgreSQL)."""

from __future__ import annotations

import threading
import time
from contextlib import AbstractContextManager
from decimal import Decimal as D
from typing import Any

from pouch_addon.budget import Reservation


def record_delays(monkeypatch) -> list[float]:  # noqa: ANN001
    """Record every commit delay the committer thread sleeps (it sleeps nothing else)."""
    slept: list[float] = []
    real = time.sleep

    def sleep(s: float) -> None:
        if threading.current_thread().name == "pouch-ledger":
            slept.append(s)
        real(s)

    monkeypatch.setattr(time, "sleep", sleep)
    return slept


def lone_caller_never_waits(ledger: Any, monkeypatch, calls: int = 12) -> None:  # noqa: ANN001
    """Issue 20: one agent making one call after another has nobody to share a commit with, so its
    reservations are committed at once (no ``commit_delay``), however close together they come."""
    ledger.set_budget(D("100"))
    slept = record_delays(monkeypatch)
    before = ledger.operations
    prev = None
    for _ in range(calls):
        if prev is not None:  # the previous call's settle: lazy, as the meter sends it
            ledger.submit(ledger.settle_op(prev.id, D("0.01")), lazy=True)
        prev = ledger.submit(ledger.reserve_op(D("0.1"))).result(timeout=30)
        assert isinstance(prev, Reservation)
    assert slept == [], f"a lone caller's commits waited: {slept}"
    assert ledger.operations - before >= calls


def arrivals_together_wait(ledger: Any, monkeypatch, hold: AbstractContextManager) -> None:  # noqa: ANN001
    """Two admissions waiting at once (``hold`` keeps the committer from answering the first before
    the second comes): from then on a commit waits ``commit_delay`` for others."""
    from pouch_addon import ledger_local
    monkeypatch.setattr(ledger_local, "BUSY_WINDOW", 600.0)  # however slow this machine is today
    ledger.set_budget(D("100"))
    slept = record_delays(monkeypatch)
    with hold:
        first = ledger.submit(ledger.reserve_op(D("0.1")))
        second = ledger.submit(ledger.reserve_op(D("0.1")))
    assert isinstance(first.result(timeout=30), Reservation) and isinstance(second.result(timeout=30), Reservation)
    third = ledger.submit(ledger.reserve_op(D("0.1")))
    assert isinstance(third.result(timeout=30), Reservation)
    assert slept and set(slept) == {ledger.commit_delay}, f"commit delays slept: {slept}"
