"""Who holds a reservation: a process identity that survives pid reuse, and whether it still runs.

Kept apart from the rules (``ledger_rules``) because it reads ``/proc``: the rules only ever ask
"is this owner alive?" through a callable, so they stay pure.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Owner:
    """The process holding a reservation, so a dead one can be told from a live one."""

    pid: int
    started: str | None  # process start time (from /proc), guards against pid reuse
    host: str

    @classmethod
    def current(cls) -> Owner:
        return cls(os.getpid(), _process_start(os.getpid()), socket.gethostname())

    def to_dict(self) -> dict[str, Any]:
        return {"pid": self.pid, "started": self.started, "host": self.host}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Owner:
        return cls(int(d["pid"]), d.get("started"), str(d["host"]))


def _proc_stat(pid: int) -> list[bytes] | None:
    """Fields after the command name of /proc/PID/stat (Linux), or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
    except OSError:
        return None
    # the command name (field 2) may contain spaces and parentheses; fields after the last ')' are fixed
    return stat.rsplit(b")", 1)[1].split()


def _process_start(pid: int) -> str | None:
    fields = _proc_stat(pid)
    return fields[19].decode() if fields else None


def owner_alive(owner: Owner) -> bool:
    """Whether the owning process still runs. Another host's processes are assumed alive."""
    if owner.host != socket.gethostname():
        return True
    try:
        os.kill(owner.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    fields = _proc_stat(owner.pid)
    if fields is None:
        return owner.started is None  # no /proc (macOS): the pid exists, so trust it
    if fields[0] in (b"Z", b"X"):
        return False  # killed, not yet reaped by its parent
    return owner.started is None or fields[19].decode() == owner.started
