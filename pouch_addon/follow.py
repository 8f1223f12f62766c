"""``pouch history --jsonl --follow``: every new settle and block as one JSON line as it is committed.

Polls like the TUI's watcher: a ``stat`` of the state file and the write-ahead log every
``interval`` seconds, and only when one moved a lock-free snapshot (which says how far history
is applied) and a read of the bytes appended since (``pouch_tui.reader.PartitionFollower``).
Lines beyond the applied point are never printed: their commit has not happened (or never will).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any, TextIO

from .budget import Ledger
from .ledger_store import HISTORY_DIR, STATE_FILE, WAL_FILE
from .ledger_wal import mark


def _signature(ledger: Ledger) -> tuple:
    out: list[Any] = []
    try:
        st = os.stat(ledger.home / STATE_FILE)
        out += [st.st_ino, st.st_mtime_ns, st.st_size]
    except FileNotFoundError:
        out.append(None)
    out.append(mark(ledger.home / WAL_FILE))  # a preallocated log does not grow per record
    return tuple(out)


def follow(ledger: Ledger, out: TextIO, *, since: float | None = None, wallet: str | None = None,
           interval: float = 0.2, stop: Callable[[], bool] = lambda: False) -> None:
    """Print applied entries (settles and blocks, of ``wallet`` if given) from ``since`` (default:
    from now on) and then each new one, until ``stop()``. One reader for both, so none is missed
    or printed twice between the past and the new."""
    from pouch_tui.reader import PartitionFollower

    st = ledger.snapshot()
    follower = PartitionFollower(ledger.home / HISTORY_DIR, since if since is not None else ledger.clock())
    if since is None and st.history_file is not None:
        follower.first = min(follower.first, st.history_file)
        follower.offsets[st.history_file] = st.history_size  # the past is not asked for: skip it
    seen: tuple | None = None
    while True:
        sig = _signature(ledger)
        if sig != seen:
            seen = sig
            st = ledger.snapshot()
            done = False
            while not done:
                entries, done = follower.read_some(st.history_file, st.history_size)
                for e in entries:
                    if (e.get("kind") in ("settle", "block") and (wallet is None or e.get("wallet") == wallet)
                            and (since is None or float(e.get("ts", 0)) >= since)):
                        out.write(json.dumps(e, separators=(",", ":")) + "\n")
                out.flush()
        if stop():
            return
        time.sleep(interval)
