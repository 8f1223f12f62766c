"""SIGKILL a ledger writer at random instants, many times: every acknowledged reservation is on
disk, every reservation settles exactly once, the invariant holds after every kill."""

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from decimal import Decimal as D
from pathlib import Path

import pytest

from pouch_addon.budget import Ledger

WORKER = Path(__file__).with_name("ledger_kill_worker.py")


def _settle_ids(ledger: Ledger) -> Counter:
    return Counter(e["id"] for e in ledger.history(kinds=("settle",)))


@pytest.mark.parametrize("durability,wallets", [("overlap", False), ("strict", False), ("overlap", True)])
def test_random_sigkills_keep_acknowledged_work_and_settle_exactly_once(tmp_path, durability, wallets):
    """In both durability modes: "overlap" answers once the record is written (the page cache
    outlives a killed process) and flushes meanwhile; "strict" answers once it is flushed. With
    wallets, the log records name the wallets each commit changed (``verify`` checks each
    wallet's spend against history)."""
    home, journal = tmp_path / "home", tmp_path / "journal"
    ledger = Ledger(home)
    ledger.set_budget(D("100000"))
    for name in ("a", "b", "c") if wallets else ():
        ledger.add_wallet(name, D("100000"), period="daily")
    rng = random.Random(16)
    for i in range(30):
        p = subprocess.Popen([sys.executable, str(WORKER), str(home), str(i), str(journal), durability]
                             + (["wallets"] if wallets else []), stdout=subprocess.PIPE, text=True)
        assert p.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.08))  # a random point of its commits
        os.kill(p.pid, signal.SIGKILL)
        p.wait()
        p.stdout.close()
        assert ledger.snapshot().problems() == []  # readable at once, never torn
        with ledger.transaction():
            pass  # the next writer finishes or cuts whatever the dead one left half-done
        st = ledger.snapshot()
        lines = [ln.split() for ln in journal.read_text().splitlines()]
        reserved = {x for op, x in lines if op == "R"}
        settled = {x for op, x in lines if op == "S"}
        counts = _settle_ids(ledger)
        assert max(counts.values(), default=1) == 1  # never settled twice
        assert settled <= set(counts)  # an acknowledged settle is on disk
        # an acknowledged reservation is on disk: open, or settled (by its owner before the kill)
        assert reserved <= set(st.open) | set(counts)
        # the dead writer's open reservations are settled once, by the orphan rule
        recovered = ledger.recover_orphans()
        assert {e["id"] for e in recovered} == set(st.open) - set(counts)
        counts = _settle_ids(ledger)
        assert max(counts.values(), default=1) == 1 and reserved <= set(counts)
        st = ledger.snapshot()
        assert st.open == {} and st.budget == st.remaining + st.reserved + st.spent
        assert ledger.verify() == []
    assert len(_settle_ids(ledger)) > 30  # the writers really did work before dying (fewer on a loaded machine)
