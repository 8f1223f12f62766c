"""The ledger loop ``floor.py`` measures: admissions in groups, each group's settles riding along
with the next group's commit, with ``open_`` other reservations open. No pouch import of its own,
so ``floor.py --tree`` runs it in a fresh process against another checkout's ``Ledger``."""

from __future__ import annotations

import resource
import tempfile
from decimal import Decimal
from typing import Any


def ledger_cpu(ledger_class: Any, group: int, rounds: int, open_: int, model: str) -> tuple[float, float]:
    """(user, system) CPU us of this process (caller and ledger threads) per admission."""
    # the ledger's threads may still write (a flush, a snapshot) while the folder is removed
    with tempfile.TemporaryDirectory(prefix="pouch-floor-", ignore_cleanup_errors=True) as home:
        ledger = ledger_class(home)
        ledger.set_budget(Decimal("1000000"))
        ledger.commit_delay = 0  # the groups are formed here
        for _ in range(open_):
            ledger.reserve(Decimal("0.01"), {"model": model})
        meta = {"model": model, "endpoint": "/v1/chat/completions", "client": "127.0.0.1:50000", "wallet": "default"}
        details = {"input_tokens": 30, "output_tokens": 50, "cached_tokens": 0, "reasoning_tokens": 0}
        prev: list[str] = []
        r0 = resource.getrusage(resource.RUSAGE_SELF)  # callgrind's --dump-before marks start here
        for _ in range(rounds):
            for rid in prev:
                ledger.submit(ledger.settle_op(rid, Decimal("0.0001"), details=dict(details)), lazy=True)
            futures = [ledger.submit(ledger.reserve_op(Decimal("0.01"), dict(meta))) for _ in range(group)]
            prev = [f.result().id for f in futures]
        r1 = resource.getrusage(resource.RUSAGE_SELF)  # ... and end here
        ledger._await_flush(0)
    n = rounds * group
    return (r1.ru_utime - r0.ru_utime) / n * 1e6, (r1.ru_stime - r0.ru_stime) / n * 1e6
