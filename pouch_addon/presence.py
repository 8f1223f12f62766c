"""Which proxy serves a ledger: the heartbeat file ``proxy.json`` in the pouch home.

``pouch proxy`` writes it as ``starting`` before it becomes mitmdump (same pid); the presence
addon rewrites it once the listeners are up and then every second with the calls in flight,
and removes it at a clean exit. Readers (``pouch status``, ``pouch run``, ``pouch doctor``)
trust it only while its pid is alive and its heartbeat is recent, so a crashed proxy's file
reads as "no proxy".
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PRESENCE_FILE = "proxy.json"
HEARTBEAT_S = 1.0
STALE_S = 10.0  # a running proxy's heartbeat older than this is a hung or dead proxy


@dataclass(frozen=True)
class Presence:
    pid: int
    state: str  # "starting" | "running"
    listen: str  # "127.0.0.1:8080"
    updated: float
    in_flight: int = 0

    @property
    def url(self) -> str:
        return f"http://{self.listen}"

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "state": self.state, "listen": self.listen, "updated": self.updated,
                "in_flight": self.in_flight}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def is_live(p: Presence, now: float, alive: bool) -> bool:
    """Pure rule: the pid is alive, and a running proxy's heartbeat is recent (a starting one
    has no heartbeat yet: mitmdump is still loading)."""
    return alive and (p.state == "starting" or now - p.updated <= STALE_S)


def read_presence(home: Path) -> Presence | None:
    """The proxy serving ``home``, or None (no file, unreadable, or its process is gone)."""
    try:
        d = json.loads((home / PRESENCE_FILE).read_text())
        p = Presence(int(d["pid"]), str(d["state"]), str(d["listen"]), float(d["updated"]), int(d.get("in_flight", 0)))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return p if is_live(p, time.time(), pid_alive(p.pid)) else None


def write_presence(home: Path, p: Presence) -> None:
    """Replace the file atomically (blocking: call it off the event loop)."""
    tmp = home / f".{PRESENCE_FILE}.{p.pid}.tmp"
    tmp.write_text(json.dumps(p.to_json()))
    os.replace(tmp, home / PRESENCE_FILE)


def remove_presence(home: Path, pid: int) -> None:
    """Remove the file if it is still ``pid``'s (another proxy may have taken over the home)."""
    try:
        if json.loads((home / PRESENCE_FILE).read_text()).get("pid") == pid:
            (home / PRESENCE_FILE).unlink()
    except (OSError, ValueError):
        pass
