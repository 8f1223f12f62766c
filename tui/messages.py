"""Messages the ledger watcher thread posts to the app. Widgets only render what these carry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from textual.message import Message

from pouch_addon.budget import Reservation, Status

from .aggregate import Aggregates


@dataclass(frozen=True)
class LedgerSnapshot:
    """One lock-free read of the state file."""

    status: Status
    open: list[Reservation]
    dead_owners: frozenset[str] = field(default_factory=frozenset)  # reservation ids whose process is gone
    modified: float | None = None  # mtime of the state file (None: no state file yet, an empty ledger)
    exists: bool = True


class LedgerUpdated(Message):
    """The state file changed (budget, spent, reservations, checkpoints, paused)."""

    def __init__(self, snapshot: LedgerSnapshot) -> None:
        super().__init__()
        self.snapshot = snapshot


class HistoryUpdated(Message):
    """The newest history entries (settles and blocks), newest first."""

    def __init__(self, entries: list[dict[str, Any]], *, more: bool) -> None:
        super().__init__()
        self.entries = entries
        self.more = more  # older entries exist beyond these


class AggregatesUpdated(Message):
    """Spend per period, per hour/day, by model/client and the month's blocks."""

    def __init__(self, aggregates: Aggregates) -> None:
        super().__init__()
        self.aggregates = aggregates


class LedgerProblem(Message):
    """The ledger cannot be shown: ``missing`` (no ledger directory), ``corrupt`` or ``error``."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__()
        self.kind = kind
        self.message = message


class AlertsUpdated(Message):
    """The proxy's latest alert (``alerts-state.json``), for the banner; None: none yet."""

    def __init__(self, latest: dict[str, Any] | None) -> None:
        super().__init__()
        self.latest = latest
