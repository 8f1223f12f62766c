"""A ledger writer that reports every acknowledged operation, for the random SIGKILL test.

Usage: python ledger_kill_worker.py HOME SEED JOURNAL
It prints ``ready`` once the ledger is open, then reserves and settles forever (several threads
share group commits, some settles are lazy submissions). After an operation *returns* it appends
``R id`` or ``S id`` to JOURNAL (flushed; the test kills the process, not the machine, so the
page cache keeps what was written): the test holds the ledger to what was acknowledged.
"""

import random
import sys
import threading
from decimal import Decimal

from pouch_addon.budget import Ledger, Refusal


def main() -> None:
    home, seed, journal = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    ledger = Ledger(home)
    out = open(journal, "a", buffering=1)
    out_lock = threading.Lock()

    def note(line: str) -> None:
        with out_lock:
            out.write(line + "\n")
            out.flush()

    def run(k: int) -> None:
        rng = random.Random(seed * 100 + k)
        while True:
            amount = Decimal(rng.randint(1, 50)) / Decimal(1000)
            res = ledger.reserve(amount, {"model": "gpt-4o"})
            if isinstance(res, Refusal):
                continue
            note(f"R {res.id}")
            if rng.random() < 0.3:
                ledger.checkpoint({res.id: {"output_tokens": 10}})
            cost = amount * Decimal(rng.randint(0, 100)) / Decimal(100)
            if rng.random() < 0.5:
                ledger.submit(ledger.settle_op(res.id, cost), lazy=True).result()
            else:
                ledger.settle(res.id, cost)
            note(f"S {res.id}")

    for k in range(3):
        threading.Thread(target=run, args=(k,), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
