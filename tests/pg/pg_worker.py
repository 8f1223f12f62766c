"""A proxy stand-in for test_concurrent_proxies_never_overspend: N reservations of 0.01 from
8 threads sharing this process's ledger (so they group-commit), printing "granted refused"."""

import sys
import threading
from decimal import Decimal

from pouch_addon.budget import Reservation
from pouch_addon.ledger_postgres import PostgresLedger

url, n = sys.argv[1], int(sys.argv[2])
lg = PostgresLedger(url, "/tmp/pouch-pg-home-unused", lease_seconds=300)
counts = [0, 0]
lock = threading.Lock()


def work(k: int) -> None:
    for _ in range(k):
        r = lg.submit(lg.reserve_op(Decimal("0.01"))).result()
        with lock:
            counts[0 if isinstance(r, Reservation) else 1] += 1


threads = [threading.Thread(target=work, args=(n // 8 + (1 if i < n % 8 else 0),)) for i in range(8)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(counts[0], counts[1])
lg.close()
