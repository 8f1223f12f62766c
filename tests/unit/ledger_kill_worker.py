"""A ledger writer that reports every acknowledged operation, for the random SIGKILL test.

Usage: python ledger_kill_worker.py HOME SEED JOURNAL [DURABILITY [wallets]]
It prints ``ready`` once the ledger is open, then reserves and settles forever: two threads
submit to the committer (one write-ahead log record per group commit, a snapshot every few
records, so kills land between log appends and snapshots), one calls the ledger directly (a
snapshot per call); some settles are lazy. After an operation *returns* it appends ``R id`` or
``S id`` to JOURNAL (flushed; the test kills the process, not the machine, so the page cache
keeps what was written): the test holds the ledger to what was acknowledged. With ``wallets``,
each reservation is charged to one of the wallets ``a``, ``b``, ``c`` or to none (the log records
then name the wallets a commit changed).
"""

import random
import sys
import threading
from decimal import Decimal

from pouch_addon.budget import Ledger, Refusal


def main() -> None:
    home, seed, journal = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    ledger = Ledger(home)
    if len(sys.argv) > 4:
        ledger.durability = sys.argv[4]  # "overlap": answered once written, flushed meanwhile
    wallets = ["a", "b", "c", None] if sys.argv[5:6] == ["wallets"] else [None]
    ledger.snapshot_records = 1 + seed % 7  # compact often: many kills fall around a snapshot
    out = open(journal, "a", buffering=1)
    out_lock = threading.Lock()

    def note(line: str) -> None:
        with out_lock:
            out.write(line + "\n")
            out.flush()

    def run(k: int) -> None:
        rng = random.Random(seed * 100 + k)
        committer = k < 2
        while True:
            amount = Decimal(rng.randint(1, 50)) / Decimal(1000)
            op = ledger.reserve_op(amount, {"model": "gpt-4o"}, wallet=rng.choice(wallets))
            res = ledger.submit(op).result() if committer else ledger._run(op)
            if isinstance(res, Refusal):
                continue
            note(f"R {res.id}")
            if rng.random() < 0.3:
                ledger.submit(ledger.checkpoint_op({res.id: {"output_tokens": 10}}), lazy=True)
            cost = amount * Decimal(rng.randint(0, 100)) / Decimal(100)
            settle = ledger.settle_op(res.id, cost)
            if committer:
                ledger.submit(settle, lazy=rng.random() < 0.5).result()
            else:
                ledger._run(settle)
            note(f"S {res.id}")

    for k in range(3):
        threading.Thread(target=run, args=(k,), daemon=True).start()
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main()
