"""A ledger writer run as a separate process by the ledger tests (concurrency, SIGKILL loops).

Usage: python ledger_worker.py HOME ITERATIONS SEED [--report FILE] [--wallet NAME]
Each iteration reserves a random amount and, if granted, settles it at a random cost no larger
than the reservation (sometimes checkpointing first). It appends what it settled to the report
file so the test can compare the workers' own account with the ledger's.
"""

import json
import random
import sys
from decimal import Decimal

from pouch_addon.budget import Ledger, Refusal


def main() -> None:
    home, iterations, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    opts = dict(zip(sys.argv[4::2], sys.argv[5::2]))
    report, wallet = opts.get("--report"), opts.get("--wallet")
    rng = random.Random(seed)
    ledger = Ledger(home)
    settled, refused = [], 0
    for _ in range(iterations):
        amount = Decimal(rng.randint(1, 50)) / Decimal(1000)
        res = ledger.reserve(amount, {"model": "gpt-4o", "worker": seed}, wallet=wallet)
        if isinstance(res, Refusal):
            refused += 1
            continue
        if rng.random() < 0.3:
            ledger.checkpoint({res.id: {"output_tokens": 10}})
        cost = amount * Decimal(rng.randint(0, 100)) / Decimal(100)
        ledger.settle(res.id, cost, details={"model": "gpt-4o"})
        settled.append(str(cost))
    if report:
        with open(report, "w") as fh:
            json.dump({"settled": settled, "refused": refused}, fh)


if __name__ == "__main__":
    main()
