"""The money: reservations against a budget, settled exactly once.

``LedgerState`` holds the rules and is pure (no I/O; unit-tested directly). ``Ledger`` is the
thin shell every process uses (proxy, CLI, TUI): each write is one transaction under the
cross-process lock (see ``ledger_store``), so check-and-reserve is a single atomic step and no
path reads the balance and writes it in two steps.

The invariant, checked by :meth:`LedgerState.problems`:
``budget == remaining + reserved + spent``, where ``reserved`` is the sum of the open
reservations (derived, so it cannot drift) and ``spent`` the sum of settled costs in history.
A settle above its reservation is recorded as it happened and flagged ``over_reservation``;
``remaining`` may then go negative, which blocks every later request.

Wallets (per-app budget scopes): a request may be charged to a wallet *and* to the global
budget; :meth:`LedgerState.reserve` checks both in the same atomic step, so neither can be
overspent. A wallet's ``spent`` is the settled spend of its current period window (see
``periods``): it is always a function of history, the wallet's period and the time:

- rollover is lazy: the first reserve or settle whose timestamp falls in a newer window starts
  the wallet's spend from zero (history keeps the old window's entries); a cost counts in the
  window of its *settle* time, so a call straddling midnight counts in the new day;
- adding a wallet, or changing its period, recomputes its spend from history with
  :func:`periods.spend_in_new_period` (settled costs of that wallet in the new window holding
  now), so spend is never carried over, prorated, created or lost;
- a wallet name nobody configured is only a label: such requests are charged to the global
  budget alone (and shown under their name everywhere).

:meth:`Ledger.verify` checks every wallet's ``spent`` against history.

Orphans: a reservation whose owning process died (SIGKILL, power loss) is found at the next
start and settled conservatively at its full reserved amount, flagged ``orphaned`` for review,
unless its last checkpoint recorded a final cost (the response had ended and only the settle
write was lost), in which case that cost is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import threading
import time
from concurrent.futures import Future
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

from .home import resolve_home
from .ledger_store import (
    HISTORY_DIR,
    LOCK_FILE,
    STATE_FILE,
    WAL_FILE,
    AtomicJSONStorage,
    FileLock,
    HistoryLog,
    LedgerCorrupt,
    canonical_json,
    corrupt_message,
)
from .ledger_wal import RecordLog
from .money import ZERO, format_usd, usd_str
from .periods import Period, parse_period, period_key, period_start, spend_in_new_period

__all__ = [
    "Ledger",
    "LedgerCorrupt",
    "LedgerState",
    "NotOpen",
    "Owner",
    "Refusal",
    "Reservation",
    "Status",
    "Wallet",
    "WalletStatus",
]

DEFAULT_WALLET = "default"
#: a ledger that committed less than this long ago (s) is busy: its committer waits ``commit_delay``
BUSY_WINDOW = 0.02
#: a lazy ledger operation (see ``Ledger.submit``) is committed at the latest this long after it came (s)
LAZY_DELAY = 0.025
#: a committer thread with nothing to do for this long ends; the next submission starts a new one (s)
IDLE_EXIT = 30.0
#: the committer writes a snapshot of the state (dropping the write-ahead log) after this many
#: log records, or this long (s) after the oldest record the snapshot does not hold yet
SNAPSHOT_RECORDS = 500
SNAPSHOT_SECONDS = 1.0
_WALLET_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-+@")


def check_wallet_name(name: str) -> str:
    """A wallet (app) name: 1-64 of letters, digits and ``._-+@`` (safe in logs, URLs and files)."""
    if not isinstance(name, str) or not 1 <= len(name) <= 64 or not set(name) <= _WALLET_NAME_CHARS:
        raise ValueError(f"invalid wallet name {name!r}: use 1-64 letters, digits or ._-+@")
    return name


class NotOpen(LookupError):
    """Settling a reservation that is not open: it was already settled (exactly-once) or never made."""


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


@dataclass
class Reservation:
    id: str
    amount: Decimal
    created: float
    owner: Owner
    meta: dict[str, Any] = field(default_factory=dict)
    checkpoint: dict[str, Any] | None = None
    # (the checkpoint it was made with, canonical JSON): a reservation is written with every
    # state write while it is open, and only its checkpoint ever changes (replaced, not mutated)
    _json: tuple[Any, bytes] | None = field(default=None, init=False, repr=False, compare=False)

    def canonical_json(self) -> bytes:
        """``to_dict()`` as canonical JSON (sorted keys, no spaces), cached until the checkpoint changes."""
        cached = self._json
        if cached is None or cached[0] is not self.checkpoint:
            cached = self._json = (self.checkpoint, canonical_json(self.to_dict()))
        return cached[1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "amount": usd_str(self.amount),
            "created": self.created,
            "owner": self.owner.to_dict(),
            "meta": self.meta,
            "checkpoint": self.checkpoint,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Reservation:
        return cls(
            id=str(d["id"]),
            amount=Decimal(d["amount"]),
            created=float(d["created"]),
            owner=Owner.from_dict(d["owner"]),
            meta=dict(d.get("meta") or {}),
            checkpoint=d.get("checkpoint"),
        )


@dataclass(frozen=True)
class Refusal:
    """Why a reservation was not made; ``message`` is what the user reads in the 402."""

    reason: str  # "insufficient" | "paused" | "invalid" | "expired" | "rate_limited"
    needed: Decimal
    remaining: Decimal
    wallet: str | None = None  # set when the wallet (not the global budget) refused
    budget_unset: bool = False  # the global budget is $0: a fresh ledger nobody gave money yet

    @property
    def message(self) -> str:
        if self.reason == "paused":
            return "pouch: LLM traffic is paused (resume with `pouch resume` or from the TUI)"
        if self.reason == "invalid":
            return f"pouch: cannot reserve {format_usd(self.needed)}"
        if self.reason == "expired":
            return f"pouch: wallet {self.wallet!r} has expired (extend it with `pouch wallet set {self.wallet} --expires ...`)"
        if self.reason == "rate_limited":
            return f"pouch: wallet {self.wallet!r} is over its rate limit"
        if self.wallet is not None:
            return (
                f"pouch: wallet {self.wallet!r} budget exceeded: this request may cost up to "
                f"{format_usd(self.needed)} but only {format_usd(self.remaining)} remains in it "
                f"(raise it with `pouch wallet set {self.wallet} --add AMOUNT`)"
            )
        if self.budget_unset:
            return (f"pouch: no budget set: `pouch budget set AMOUNT` (this request may cost up to "
                    f"{format_usd(self.needed)}; every call is refused until there is a budget)")
        return (
            f"pouch: budget exceeded: this request may cost up to {format_usd(self.needed)} "
            f"but only {format_usd(self.remaining)} remains "
            "(raise it with `pouch budget add AMOUNT`)"
        )


@dataclass(frozen=True)
class Status:
    budget: Decimal
    spent: Decimal
    reserved: Decimal
    in_flight: int
    requests: int
    blocked: int
    flagged: int
    paused: bool

    @property
    def remaining(self) -> Decimal:
        return self.budget - self.spent - self.reserved

    def to_json(self) -> dict[str, Any]:
        return {
            "budget_usd": usd_str(self.budget),
            "spent_usd": usd_str(self.spent),
            "reserved_usd": usd_str(self.reserved),
            "remaining_usd": usd_str(self.remaining),
            "in_flight": self.in_flight,
            "requests": self.requests,
            "blocked": self.blocked,
            "flagged": self.flagged,
            "paused": self.paused,
        }


@dataclass
class Wallet:
    """A budget scope for one app. ``spent`` is the settled spend of window ``window``."""

    name: str
    budget: Decimal
    period: Period = "total"
    rpm: int | None = None
    tpm: int | None = None
    expires: float | None = None  # epoch seconds; reservations at or after it are refused
    secret_hash: str | None = None  # sha256 of the proxy-auth secret, if the wallet has one
    spent: Decimal = ZERO
    window: str = "total"  # periods.period_key of the window ``spent`` belongs to
    created: float = 0.0

    def spent_at(self, now: float) -> Decimal:
        """Spend counting at ``now`` without changing anything (a newer window has spent nothing)."""
        return self.spent if period_key(self.period, now) <= self.window else ZERO

    def roll(self, ts: float) -> bool:
        """Move to the window holding ``ts`` if it is newer; whether a cost at ``ts`` counts now."""
        key = period_key(self.period, ts)
        if key > self.window:
            self.window, self.spent = key, ZERO
        return key == self.window

    def expired(self, now: float) -> bool:
        return self.expires is not None and now >= self.expires

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "budget": usd_str(self.budget), "period": self.period, "rpm": self.rpm,
            "tpm": self.tpm, "expires": self.expires, "secret_hash": self.secret_hash,
            "spent": usd_str(self.spent), "window": self.window, "created": self.created,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Wallet:
        return cls(
            name=str(d["name"]), budget=Decimal(d["budget"]), period=parse_period(d.get("period", "total")),
            rpm=None if d.get("rpm") is None else int(d["rpm"]),
            tpm=None if d.get("tpm") is None else int(d["tpm"]),
            expires=None if d.get("expires") is None else float(d["expires"]),
            secret_hash=d.get("secret_hash"), spent=Decimal(d.get("spent", "0")),
            window=str(d.get("window", "total")), created=float(d.get("created", 0.0)),
        )


@dataclass(frozen=True)
class WalletStatus:
    name: str
    budget: Decimal
    period: Period
    window: str
    spent: Decimal
    reserved: Decimal
    in_flight: int
    rpm: int | None
    tpm: int | None
    expires: float | None
    has_secret: bool
    expired: bool

    @property
    def remaining(self) -> Decimal:
        return self.budget - self.spent - self.reserved

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "budget_usd": usd_str(self.budget), "period": self.period, "window": self.window,
            "spent_usd": usd_str(self.spent), "reserved_usd": usd_str(self.reserved),
            "remaining_usd": usd_str(self.remaining), "in_flight": self.in_flight, "rpm": self.rpm,
            "tpm": self.tpm, "expires": None if self.expires is None else _iso(self.expires),
            "has_secret": self.has_secret, "expired": self.expired,
        }


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def partition_for(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d") + ".jsonl"


@dataclass
class LedgerState:
    """The hot state and every rule that changes it. Pure: callers pass ids, owners and time."""

    budget: Decimal = ZERO
    spent: Decimal = ZERO
    requests: int = 0
    blocked: int = 0
    flagged: int = 0
    paused: bool = False
    seq: int = 0
    history_file: str | None = None
    history_size: int = 0
    open: dict[str, Reservation] = field(default_factory=dict)
    wallets: dict[str, Wallet] = field(default_factory=dict)
    lsn: int = 0  # the last write-ahead log record this state includes (see ``Ledger``)
    # history partitions appended without fsync by log records since the last snapshot
    unsynced: set[str] = field(default_factory=set, compare=False, repr=False)

    # -- derived ---------------------------------------------------------------------------
    @property
    def reserved(self) -> Decimal:
        return sum((r.amount for r in self.open.values()), ZERO)

    @property
    def remaining(self) -> Decimal:
        return self.budget - self.spent - self.reserved

    def status(self) -> Status:
        return Status(
            self.budget, self.spent, self.reserved, len(self.open),
            self.requests, self.blocked, self.flagged, self.paused,
        )

    def wallet_reserved(self, name: str) -> tuple[Decimal, int]:
        """Sum and count of the open reservations charged to wallet ``name``."""
        amounts = [r.amount for r in self.open.values() if r.meta.get("wallet") == name]
        return sum(amounts, ZERO), len(amounts)

    def wallet_status(self, name: str, now: float) -> WalletStatus:
        w = self.wallets[name]
        reserved, n = self.wallet_reserved(name)
        return WalletStatus(
            w.name, w.budget, w.period, max(w.window, period_key(w.period, now)), w.spent_at(now), reserved, n,
            w.rpm, w.tpm, w.expires, w.secret_hash is not None, w.expired(now),
        )

    def remaining_for(self, wallet: str | None, now: float) -> tuple[Decimal, Decimal | None]:
        """Global remaining and, if ``wallet`` is configured, the wallet's remaining at ``now``."""
        if wallet is None or wallet not in self.wallets:
            return self.remaining, None
        return self.remaining, self.wallet_status(wallet, now).remaining

    # -- rules -------------------------------------------------------------------------------
    def reserve(
        self, amount: Decimal, *, res_id: str, owner: Owner, now: float, meta: dict[str, Any] | None = None,
        wallet: str | None = None,
    ) -> Reservation | Refusal:
        """Reserve ``amount`` if the remaining budget covers it (``<=``: exactly enough is enough).

        With ``wallet``, the reservation is charged to it as well: a configured wallet must be
        unexpired and cover ``amount`` in its current period window, and so must the global
        budget. An unconfigured wallet name is only recorded (``meta["wallet"]``).
        """
        meta = dict(meta or {})
        if wallet is not None:
            meta["wallet"] = wallet
        # a local model's call (``meta["local"]``) is reserved at an explicit $0: never refused
        # for money, but still for a pause or an expired wallet
        free = amount == 0 and meta.get("local") is True
        if not amount.is_finite() or amount < 0 or (amount == 0 and not free):
            return Refusal("invalid", amount, self.remaining)
        if self.paused:
            return Refusal("paused", amount, self.remaining)
        w = self.wallets.get(wallet) if wallet is not None else None
        if w is not None:
            if w.expired(now):
                return Refusal("expired", amount, ZERO, wallet=w.name)
            w.roll(now)
            w_remaining = w.budget - w.spent - self.wallet_reserved(w.name)[0]
            if amount > w_remaining and not free:
                return Refusal("insufficient", amount, w_remaining, wallet=w.name)
        if amount > self.remaining and not free:
            return Refusal("insufficient", amount, self.remaining, budget_unset=self.budget == 0)
        res = Reservation(res_id, amount, now, owner, meta)
        self.open[res_id] = res
        return res

    def settle_entry(
        self, res_id: str, cost: Decimal, *, now: float, status: str = "ok", details: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """The history entry that settles ``res_id`` at ``cost`` (apply it with :meth:`apply`)."""
        res = self.open.get(res_id)
        if res is None:
            raise NotOpen(f"reservation {res_id} is not open (already settled, or never made)")
        if not cost.is_finite() or cost < 0:
            raise ValueError(f"settle cost must be a finite amount >= 0, not {cost}")
        flags = list((details or {}).pop("flags", []) if details else [])
        if cost > res.amount:
            flags.append("over_reservation")
        entry: dict[str, Any] = {
            **res.meta,
            **(details or {}),
            "kind": "settle",
            "id": res_id,
            "seq": self.seq + 1,
            "ts": now,
            "time": _iso(now),
            "started": _iso(res.created),
            "duration_s": round(max(0.0, now - res.created), 3),
            "reserved": usd_str(res.amount),
            "cost": usd_str(cost),
            "status": status,
            "flags": flags,
        }
        return entry

    def block_entry(self, refusal: Refusal, *, now: float, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        return {
            **(meta or {}),
            "kind": "block",
            "seq": self.seq + 1,
            "ts": now,
            "time": _iso(now),
            "reason": refusal.reason,
            **({"refused_by": "wallet"} if refusal.wallet is not None else {}),
            "needed": usd_str(refusal.needed),
            "remaining": usd_str(refusal.remaining),
            "message": refusal.message,
            "cost": "0",
            "status": "blocked",
        }

    def apply(self, entry: dict[str, Any]) -> None:
        """Apply one history entry; the same code runs live and when replaying after a crash."""
        if entry["seq"] != self.seq + 1:
            raise LedgerCorrupt(f"history entry seq {entry['seq']} does not follow ledger seq {self.seq}")
        if entry["kind"] == "settle":
            if self.open.pop(entry["id"], None) is None:
                raise NotOpen(f"reservation {entry['id']} is not open")
            cost = Decimal(entry["cost"])
            self.spent += cost
            self.requests += 1
            if entry.get("flags"):
                self.flagged += 1
            w = self.wallets.get(entry.get("wallet"))  # type: ignore[arg-type]
            if w is not None and w.roll(entry["ts"]):
                w.spent += cost
        elif entry["kind"] == "block":
            self.blocked += 1
        else:
            raise LedgerCorrupt(f"unknown history entry kind {entry['kind']!r}")
        self.seq = entry["seq"]

    def orphan_entries(self, is_alive: Callable[[Owner], bool], *, now: float) -> list[dict[str, Any]]:
        """Settle entries for reservations whose owner process is gone (conservative rule)."""
        entries = []
        for res in list(self.open.values()):
            if is_alive(res.owner):
                continue
            final = (res.checkpoint or {}).get("final_cost")
            cost = Decimal(final) if final is not None else res.amount
            entry = self.settle_entry(
                res.id, min(cost, res.amount) if final is not None else cost, now=now,
                status="orphaned", details={"flags": ["orphaned"], "checkpoint": res.checkpoint},
            )
            self.apply(entry)
            entries.append(entry)
        return entries

    def problems(self) -> list[str]:
        """Invariant violations in the state alone (history is checked by :meth:`Ledger.verify`)."""
        out = []
        if self.budget != self.remaining + self.reserved + self.spent:
            out.append("budget != remaining + reserved + spent")
        if self.reserved < 0 or any(r.amount < 0 or (r.amount == 0 and r.meta.get("local") is not True)
                                    for r in self.open.values()):
            out.append("a reservation is not positive")
        if self.spent < 0:
            out.append("spent is negative")
        for w in self.wallets.values():
            if w.spent < 0 or w.budget < 0:
                out.append(f"wallet {w.name}: budget or spent is negative")
            if any(v is not None and v <= 0 for v in (w.rpm, w.tpm)):
                out.append(f"wallet {w.name}: a rate limit is not positive")
        return out

    # -- wallet rules (the shell passes the wallet's settled ``(ts, cost)`` pairs from history) --
    def add_wallet(self, wallet: Wallet, costs: Iterable[tuple[float, Decimal]], *, now: float) -> WalletStatus:
        """Create ``wallet``; its spend is what history holds for it in the window holding ``now``."""
        check_wallet_name(wallet.name)
        if wallet.name in self.wallets:
            raise ValueError(f"wallet {wallet.name!r} already exists (change it with `pouch wallet set`)")
        _check_wallet_numbers(wallet.budget, wallet.rpm, wallet.tpm)
        wallet.window = period_key(wallet.period, now)
        wallet.spent = spend_in_new_period(wallet.period, wallet.period, costs, now)
        wallet.created = now
        self.wallets[wallet.name] = wallet
        return self.wallet_status(wallet.name, now)

    def set_wallet_period(self, name: str, period: Period, costs: Iterable[tuple[float, Decimal]], *, now: float) -> None:
        """Change a wallet's period; its spend becomes :func:`periods.spend_in_new_period` of history."""
        w = self._wallet(name)
        w.spent = spend_in_new_period(w.period, period, costs, now)
        w.period, w.window = period, period_key(period, now)

    def _wallet(self, name: str) -> Wallet:
        try:
            return self.wallets[name]
        except KeyError:
            raise KeyError(f"no wallet named {name!r} (see `pouch wallet list`)") from None

    # -- (de)serialisation as TinyDB tables --------------------------------------------------
    def to_tables(self) -> dict[str, dict[str, Any]]:
        return {**self.to_tables_without_open(),
                "open": {str(i): r.to_dict() for i, r in enumerate(self.open.values(), start=1)}}

    def to_tables_without_open(self) -> dict[str, dict[str, Any]]:
        ledger = {
            "budget": usd_str(self.budget),
            "spent": usd_str(self.spent),
            "requests": self.requests,
            "blocked": self.blocked,
            "flagged": self.flagged,
            "paused": self.paused,
            "seq": self.seq,
            "history_file": self.history_file,
            "history_size": self.history_size,
            "lsn": self.lsn,
        }
        return {"ledger": {"1": ledger}, "wallets": {w.name: w.to_dict() for w in self.wallets.values()}}

    def canonical_tables(self) -> bytes:
        """Exactly ``canonical_json(self.to_tables())``, built from each open reservation's cached
        JSON: a busy proxy writes the state per group commit with every reservation in flight."""
        tables = self.to_tables_without_open()
        opens = {str(i): r for i, r in enumerate(self.open.values(), start=1)}
        open_json = b",".join(b'"%s":%s' % (k.encode(), opens[k].canonical_json()) for k in sorted(opens))
        return b'{"ledger":%s,"open":{%s},"wallets":%s}' % (
            canonical_json(tables["ledger"]), open_json, canonical_json(tables["wallets"]))

    def apply_record(self, record: dict[str, Any]) -> None:
        """Apply one write-ahead log record (see ``Ledger.log_record``): the same change the group
        commit that wrote it made, without running the rules again."""
        if record["lsn"] != self.lsn + 1:
            raise LedgerCorrupt(f"log record {record['lsn']} does not follow ledger record {self.lsn}")
        top = LedgerState.from_tables(record["top"])
        self.budget, self.spent, self.requests, self.blocked = top.budget, top.spent, top.requests, top.blocked
        self.flagged, self.paused, self.seq, self.wallets = top.flagged, top.paused, top.seq, top.wallets
        self.history_file, self.history_size = top.history_file, top.history_size
        for res_id in record["drop"]:
            self.open.pop(res_id, None)
        for d in record["add"]:
            res = Reservation.from_dict(d)
            self.open[res.id] = res
        for res_id, checkpoint in record["ckpt"].items():
            res = self.open.get(res_id)
            if res is not None:
                res.checkpoint = checkpoint
        self.unsynced.update(name for name, _start, _lines in record["hist"])
        self.lsn = record["lsn"]

    @classmethod
    def from_tables(cls, tables: dict[str, dict[str, Any]]) -> LedgerState:
        doc = tables["ledger"]["1"]
        opens = (Reservation.from_dict(d) for d in tables.get("open", {}).values())
        return cls(
            budget=Decimal(doc["budget"]),
            spent=Decimal(doc["spent"]),
            requests=int(doc["requests"]),
            blocked=int(doc["blocked"]),
            flagged=int(doc.get("flagged", 0)),
            paused=bool(doc.get("paused", False)),
            seq=int(doc["seq"]),
            history_file=doc.get("history_file"),
            history_size=int(doc.get("history_size", 0)),
            lsn=int(doc.get("lsn", 0)),
            open={r.id: r for r in opens},
            wallets={w.name: w for w in (Wallet.from_dict(d) for d in tables.get("wallets", {}).values())},
        )


def _check_wallet_numbers(budget: Decimal | None, rpm: int | None, tpm: int | None) -> None:
    if budget is not None and (not budget.is_finite() or budget < 0):
        raise ValueError("a wallet budget must not be negative")
    for label, v in (("rpm", rpm), ("tpm", tpm)):
        if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v <= 0):
            raise ValueError(f"{label} must be a positive whole number")


#: where reservation ids come from: seeded from os.urandom at import and again in a forked child
#: (``uuid.uuid4`` asks the kernel for 16 random bytes per id: a system call inside every commit)
_ids = random.Random()
os.register_at_fork(after_in_child=_ids.seed)


def new_reservation_id() -> str:
    """16 random hex digits: unique across the processes sharing a ledger."""
    return f"{_ids.getrandbits(64):016x}"


class _Txn:
    """One open transaction: the state plus history entries to write ahead of it."""

    def __init__(self, state: LedgerState, key: Any = None) -> None:
        self.state = state
        self.key = key  # (state file identity, log size) when the transaction began
        self.before = frozenset(state.open)  # open reservation ids when it began (for the log record)
        self.checkpointed: set[str] = set()
        self.log = False  # commit as one log record (the committer) instead of a snapshot
        self.entries: list[dict[str, Any]] = []
        self.dirty = False
        self.durable = False  # checkpoints alone are advisory and skip fsync

    def record(self, entry: dict[str, Any]) -> dict[str, Any]:
        self.state.apply(entry)
        self.entries.append(entry)
        self.changed()
        return entry

    def changed(self, *, durable: bool = True) -> None:
        self.dirty = True
        self.durable = self.durable or durable


class _Slot:
    """An operation waiting for a group commit, and its outcome (also set on ``future``, if any:
    a ``concurrent.futures.Future``, or an asyncio future completed on its own loop)."""

    __slots__ = ("op", "done", "result", "error", "future")

    def __init__(self, op: Callable[[_Txn], Any], future: Future | asyncio.Future | None = None) -> None:
        self.op = op
        self.done = False
        self.result: Any = None
        self.error: BaseException | None = None
        self.future = future

    def outcome(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result

    def deliver(self) -> None:
        """Complete the future (an asyncio one on its loop's thread); a waiter that gave up is skipped."""
        fut = self.future
        if fut is None or fut.done():
            return
        if self.error is not None:
            fut.set_exception(self.error)
        else:
            fut.set_result(self.result)


def _deliver_all(slots: list[_Slot]) -> None:
    for s in slots:
        s.deliver()


#: Amount to reserve, or a callable deciding it inside the transaction from the current state and
#: time (it may return a :class:`Refusal` instead; see :meth:`Ledger.reserve`)
Amount = Decimal | Callable[["LedgerState", float], "Decimal | Refusal"]


class Ledger:
    """The ledger every pouch process shares. Methods block on disk I/O: call them off the event loop."""

    def __init__(
        self, home: str | os.PathLike[str] | None = None, *, durable: bool = True,
        clock: Callable[[], float] = time.time, commit_delay: float = 0.0,
    ) -> None:
        self.home = resolve_home(home)
        self.clock = clock  # wall clock (tests inject one to cross period boundaries)
        self.state_path = self.home / STATE_FILE
        self._storage = AtomicJSONStorage(self.state_path, durable=durable)
        self._history = HistoryLog(self.home / HISTORY_DIR, durable=durable)
        self._lock = FileLock(self.home / LOCK_FILE)
        self._wal = RecordLog(self.home / WAL_FILE, durable=durable)
        self.snapshot_records = SNAPSHOT_RECORDS
        self.snapshot_seconds = SNAPSHOT_SECONDS
        self._unsnapped = 0  # log records this object wrote since its last snapshot
        self._unsnapped_since = 0.0
        self._wal_ino = -1  # the log's inode when the current transaction began
        self._committed: tuple[Any, LedgerState] | None = None  # (file identity, state) after our last commit
        self._pending: list[_Slot] = []
        self._pending_lock = threading.Lock()
        self._wake = threading.Condition(self._pending_lock)
        self._committer: threading.Thread | None = None
        self._last_commit = 0.0  # time.monotonic() at the end of the last group commit
        self._urgent = 0  # pending operations someone waits on
        self._lazy_since: float | None = None  # when the oldest pending lazy operation came
        self.commit_delay = commit_delay
        self.lazy_delay = LAZY_DELAY
        self.idle_exit = IDLE_EXIT
        self.commits = 0  # group commits written by this object, and the operations they carried
        self.operations = 0
        self.owner = Owner.current()

    # -- transactions ------------------------------------------------------------------------
    def _key(self) -> tuple[Any, int]:
        """(state file identity, log size): changes whenever any process commits (a log record only
        ever grows the log; a snapshot replaces the state file)."""
        ino, size = self._wal.stat()
        self._wal_ino = ino
        return (self._storage.identity(), size)

    def _load(self, *, repair: bool = False) -> LedgerState:
        """The snapshot plus the log records after it. A writer (``repair``, under the lock) also
        cuts a torn final record and re-appends history lines a power loss took from the page cache."""
        tables = self._storage.read()
        if tables is None:
            if self._history.partitions() or self._wal.read()[2]:
                raise LedgerCorrupt(corrupt_message(self.state_path, "the file is missing but history exists"))
            return LedgerState()
        try:
            state = LedgerState.from_tables(tables)
        except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
            raise LedgerCorrupt(corrupt_message(self.state_path, f"unexpected content ({exc!r})")) from None
        records, end, size = self._wal.read()
        for raw in records:
            try:
                record = json.loads(raw)
                if record["lsn"] <= state.lsn:
                    continue  # already in the snapshot (its writer died before emptying the log)
                state.apply_record(record)
            except (KeyError, TypeError, ValueError, ArithmeticError) as exc:
                raise LedgerCorrupt(corrupt_message(self.state_path, f"its log {self._wal.path} does not follow it "
                                                                     f"({exc})")) from None
            if repair:
                self._repair_history(record)
        if repair and end < size:
            self._wal.truncate(end)  # a torn final record: that group commit never happened
        problems = state.problems()
        if problems:
            raise LedgerCorrupt(corrupt_message(self.state_path, "; ".join(problems)))
        return state

    def _repair_history(self, record: dict[str, Any]) -> None:
        for name, start, lines in record["hist"]:
            data = b"".join(canonical_json(line) + b"\n" for line in lines)
            have = self._history.size(name)
            if have >= start + len(data):
                continue
            if have < start:
                raise LedgerCorrupt(corrupt_message(self.state_path, f"history {name} is shorter than its log says"))
            self._history.truncate(name, start)
            self._history.append_bytes(name, data, durable=False)

    def _replay(self, txn: _Txn) -> None:
        """Apply history written ahead of a state write that never happened (a crashed writer)."""
        st = txn.state
        names = [n for n in self._history.partitions() if st.history_file is None or n >= st.history_file]
        for name in names:
            offset = st.history_size if name == st.history_file else 0
            if self._history.size(name) <= offset:
                continue
            entries, end = self._history.tail_from(name, offset)
            for entry in entries:
                st.apply(entry)
            if end < self._history.size(name):
                self._history.truncate(name, end)  # a torn line: that settle never happened
            st.history_file, st.history_size = name, end
            txn.changed()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[_Txn]:
        """One transaction under the cross-process lock (tests, tools); operations use :meth:`_run`."""
        with self._lock.hold():
            txn = self._begin()
            yield txn
            self._commit(txn)

    def _begin(self) -> _Txn:
        """Open a transaction (the caller holds the lock). The state this process committed last
        is reused as it is when the file is still the one it wrote (same inode, size and
        mtime: every write replaces the file), so a busy proxy does not re-parse every open
        reservation per transaction; any other writer's change shows as a new file and is read."""
        cached = self._committed
        key = self._key()
        state = cached[1] if cached is not None and cached[0] == key else self._load(repair=True)
        self._committed = None  # the transaction mutates it: valid again only once committed
        txn = _Txn(state, key)
        self._replay(txn)
        return txn

    def _commit(self, txn: _Txn) -> None:
        """Write the transaction: one log record (``txn.log``: the committer's group commits, once a
        snapshot exists) or a snapshot of the whole state, which then empties the log."""
        if not txn.dirty:
            self._committed = (self._key(), txn.state)
            return
        if txn.log and txn.key[0] is not None:
            self._commit_log(txn)
            return
        st = txn.state
        by_partition: dict[str, list[dict[str, Any]]] = {}
        for entry in txn.entries:
            name = max(partition_for(entry["ts"]), st.history_file or "")
            by_partition.setdefault(name, []).append(entry)
        for name in sorted(by_partition):
            st.history_size = self._history.append(name, by_partition[name])
            st.history_file = name
        # a checkpoint-only transaction skips fsync; any other follows the ledger's own setting
        logged = txn.key[1] > 0 if txn.key is not None else False
        durable = None if txn.durable or logged else False
        for name in sorted(st.unsynced):  # appended by log records this snapshot replaces
            self._history.sync(name)
        identity = self._storage.write_canonical(st.canonical_tables(), durable=durable)
        if logged:
            self._wal.truncate(0)
        st.unsynced.clear()
        self._unsnapped = 0
        self._committed = ((identity, 0), st)

    def _commit_log(self, txn: _Txn) -> None:
        """The durable step of a group commit: one record appended to the log, one fdatasync.

        The history lines are appended first without fsync (readers see them at once; the record
        carries them, so a writer re-appends what a power loss dropped, see :meth:`_load`)."""
        st = txn.state
        by_partition: dict[str, list[dict[str, Any]]] = {}
        for entry in txn.entries:
            name = max(partition_for(entry["ts"]), st.history_file or "")
            by_partition.setdefault(name, []).append(entry)
        hist = []
        for name in sorted(by_partition):
            lines = by_partition[name]
            data = b"".join(canonical_json(line) + b"\n" for line in lines)
            end = self._history.append_bytes(name, data, durable=False)
            hist.append([name, end - len(data), lines])
            st.history_file, st.history_size = name, end
            st.unsynced.add(name)
        st.lsn += 1
        before, now_open = txn.before, st.open
        added = [r.canonical_json() for i, r in now_open.items() if i not in before]
        dropped = [i for i in before if i not in now_open]
        ckpt = {i: now_open[i].checkpoint for i in txn.checkpointed if i in now_open and i in before}
        record = b'{"add":[%s],"ckpt":%s,"drop":%s,"hist":%s,"lsn":%d,"top":%s}' % (
            b",".join(added), canonical_json(ckpt), canonical_json(dropped), canonical_json(hist), st.lsn,
            canonical_json(st.to_tables_without_open()))
        size = self._wal.append([record], durable=None if txn.durable else False, ino=self._wal_ino)
        self._committed = ((txn.key[0], size), st)
        if not self._unsnapped:
            self._unsnapped_since = time.monotonic()
        self._unsnapped += 1

    def compact(self) -> None:
        """Write a snapshot of the state and empty the log (off the hot path: the committer calls it
        every ``snapshot_records`` records or ``snapshot_seconds``; any process may)."""
        try:
            with self._lock.hold():
                txn = self._begin()
                if txn.key[1] > 0 or txn.dirty:
                    txn.changed()
                self._commit(txn)
        finally:
            self._unsnapped = 0  # written, or written by another process; a failure retries with the next record

    def _snapshot_due(self) -> bool:
        return bool(self._unsnapped) and (self._unsnapped >= self.snapshot_records
                                          or time.monotonic() - self._unsnapped_since >= self.snapshot_seconds)

    def _run(self, op: Callable[[_Txn], Any]) -> Any:
        """Run ``op`` in a transaction, sharing it with the operations other threads submit meanwhile.

        Group commit: whichever thread gets the lock runs every pending operation in one
        transaction (one read, one history append, one fsync'd state write), so concurrent calls
        cost about one disk round trip instead of one each. Each operation still sees and
        changes the state atomically, in submission order.
        """
        slot = _Slot(op)
        with self._pending_lock:
            self._pending.append(slot)
        with self._lock.thread_lock:
            if not slot.done:
                self._drain()
        return slot.outcome()

    def submit(self, op: Callable[[_Txn], Any], *, lazy: bool = False) -> Future:
        """Queue ``op`` for this ledger's committer thread; its outcome arrives on the future.

        For callers that must not block (an event loop uses :meth:`submit_async`). No
        worker thread waits per operation; the committer runs whatever is queued in one group
        commit. When the last commit ended less than ``BUSY_WINDOW`` ago (the proxy is under
        load), it first waits ``commit_delay`` seconds for more operations to join, so one disk
        round trip serves many calls (as PostgreSQL's ``commit_delay``); an idle ledger commits
        at once.

        A ``lazy`` operation (a settle nobody waits for, a checkpoint) does not start a commit
        by itself: it rides along with the next one, or is committed ``lazy_delay`` seconds
        after it came. Under load this roughly halves the commits (each admission's commit
        carries the settles finished meanwhile); a crash inside that window leaves the
        reservation open, and the orphan rule settles it conservatively.
        """
        slot = _Slot(op, Future())
        self._enqueue(slot, lazy)
        return slot.future  # type: ignore[return-value]

    def submit_async(self, op: Callable[[_Txn], Any], *, lazy: bool = False) -> asyncio.Future:
        """:meth:`submit` for a coroutine on the running event loop; await the returned future.

        The committer wakes the loop once per group commit for all of that commit's operations
        (``call_soon_threadsafe``), instead of once per operation: every wake-up is a write to
        the loop's self-pipe, and on a busy proxy a thread switch."""
        loop = asyncio.get_running_loop()
        slot = _Slot(op, loop.create_future())
        self._enqueue(slot, lazy)
        return slot.future  # type: ignore[return-value]

    def _enqueue(self, slot: _Slot, lazy: bool) -> None:
        with self._wake:
            self._pending.append(slot)
            if not lazy:
                self._urgent += 1
            elif self._lazy_since is None:
                self._lazy_since = time.monotonic()
            else:
                return  # the committer already waits for the first lazy one: no need to wake it
            if self._committer is None:
                self._committer = threading.Thread(target=self._commit_loop, name="pouch-ledger", daemon=True)
                self._committer.start()
            self._wake.notify()

    def _commit_loop(self) -> None:
        while True:
            with self._wake:
                while not self._urgent:
                    if self._lazy_since is None:
                        if self._unsnapped and not self._urgent:
                            left = self._unsnapped_since + self.snapshot_seconds - time.monotonic()
                            if left > 0:
                                self._wake.wait(min(left, self.idle_exit))
                                continue
                            break  # nothing to commit: write the snapshot that is due
                        if not self._wake.wait(self.idle_exit) and not self._urgent and self._lazy_since is None:
                            # idle: end the thread (the next submission starts another), so a
                            # ledger dropped by its owner (pouch_home changed) leaves none behind
                            self._committer = None
                            return
                        continue
                    left = self._lazy_since + self.lazy_delay - time.monotonic()
                    if left <= 0:
                        break
                    self._wake.wait(left)
            if self.commit_delay > 0 and time.monotonic() - self._last_commit < BUSY_WINDOW:
                time.sleep(self.commit_delay)
            with self._lock.thread_lock:
                self._drain(log=True)
            if self._snapshot_due():
                with contextlib.suppress(Exception):  # the log stays durable; the next commit retries
                    self.compact()

    def _drain(self, *, log: bool = False) -> None:
        """Run every pending operation in one transaction; the caller holds the thread lock."""
        with self._pending_lock:
            batch, self._pending = self._pending, []
            self._urgent, self._lazy_since = 0, None
        if not batch:
            return
        try:
            with self._lock.hold_file():
                txn = self._begin()
                txn.log = log
                for s in batch:
                    try:
                        s.result = s.op(txn)
                    except Exception as exc:  # one bad operation does not fail the others
                        s.error = exc
                self._commit(txn)
            self.commits += 1
            self.operations += len(batch)
        except Exception as exc:  # the load or the commit failed: nothing of the batch happened
            for s in batch:
                s.error = exc
        finally:
            self._last_commit = time.monotonic()
            by_loop: dict[asyncio.AbstractEventLoop, list[_Slot]] = {}
            for s in batch:
                s.done = True
                if isinstance(s.future, asyncio.Future):
                    by_loop.setdefault(s.future.get_loop(), []).append(s)
                else:
                    s.deliver()
            for loop, slots in by_loop.items():
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting
                    loop.call_soon_threadsafe(_deliver_all, slots)

    # -- operations (each one atomic; concurrent ones share a group commit) --------------------
    def reserve(self, amount: Amount, meta: dict[str, Any] | None = None, *,
                wallet: str | None = None) -> Reservation | Refusal:
        """Check (wallet and global) and reserve in one atomic step; a refusal is counted as a block.

        ``amount`` may be a callable ``(state, now) -> Decimal | Refusal``: it runs inside the
        transaction (so what it decides from the balance cannot go stale) and may refuse by
        itself; it may add to ``meta`` (recorded with the reservation or the block)."""
        return self._run(self.reserve_op(amount, meta, wallet=wallet))

    def reserve_op(self, amount: Amount, meta: dict[str, Any] | None = None, *,
                   wallet: str | None = None) -> Callable[[_Txn], Reservation | Refusal]:
        """:meth:`reserve` as an operation for :meth:`submit`."""
        meta = meta if meta is not None else {}

        def op(txn: _Txn) -> Reservation | Refusal:
            now = self.clock()
            decided = amount(txn.state, now) if callable(amount) else amount
            if isinstance(decided, Refusal):
                result: Reservation | Refusal = decided
            else:
                result = txn.state.reserve(decided, res_id=new_reservation_id(), owner=self.owner, now=now,
                                           meta=meta, wallet=wallet)
            if isinstance(result, Refusal):
                block_meta = {**meta, **({"wallet": wallet} if wallet is not None else {})}
                txn.record(txn.state.block_entry(result, now=now, meta=block_meta))
            else:
                txn.changed()
            return result
        return op

    def settle(
        self, res_id: str, cost: Decimal, *, status: str = "ok", details: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Settle a reservation at its exact cost and refund the rest. Raises NotOpen if already settled."""
        return self._run(self.settle_op(res_id, cost, status=status, details=details))

    def settle_op(self, res_id: str, cost: Decimal, *, status: str = "ok",
                  details: dict[str, Any] | None = None) -> Callable[[_Txn], dict[str, Any]]:
        """:meth:`settle` as an operation for :meth:`submit`."""
        return lambda txn: txn.record(
            txn.state.settle_entry(res_id, cost, now=self.clock(), status=status, details=dict(details or {})))

    def release(self, res_id: str, *, status: str = "released", details: dict[str, Any] | None = None) -> dict[str, Any]:
        """Give a reservation back in full (the provider did not bill: 4xx/5xx, never sent)."""
        return self.settle(res_id, ZERO, status=status, details=details)

    def record_block(self, refusal: Refusal, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """Count a request pouch refused before reserving (bad input, unknown model, …)."""
        return self._run(self.block_op(refusal, meta))

    def block_op(self, refusal: Refusal, meta: dict[str, Any] | None = None) -> Callable[[_Txn], dict[str, Any]]:
        """:meth:`record_block` as an operation for :meth:`submit`."""
        return lambda txn: txn.record(txn.state.block_entry(refusal, now=self.clock(), meta=meta))

    def checkpoint(self, updates: dict[str, dict[str, Any]]) -> None:
        """Store in-flight progress of several reservations in one write (for the TUI and crashes)."""
        self._run(self.checkpoint_op(updates))

    def checkpoint_op(self, updates: dict[str, dict[str, Any]]) -> Callable[[_Txn], None]:
        """:meth:`checkpoint` as an operation for :meth:`submit`."""
        def op(txn: _Txn) -> None:
            for res_id, data in updates.items():
                res = txn.state.open.get(res_id)
                if res is not None:
                    res.checkpoint = data
                    txn.checkpointed.add(res_id)
                    txn.changed(durable=False)
        return op

    def set_budget(self, amount: Decimal) -> Status:
        if amount < 0:
            raise ValueError("budget must not be negative")
        def op(txn: _Txn) -> Status:
            txn.state.budget = amount
            txn.changed()
            return txn.state.status()
        return self._run(op)

    def add_budget(self, amount: Decimal) -> Status:
        def op(txn: _Txn) -> Status:
            if txn.state.budget + amount < 0:
                raise ValueError("budget must not become negative")
            txn.state.budget += amount
            txn.changed()
            return txn.state.status()
        return self._run(op)

    def set_paused(self, paused: bool) -> Status:
        def op(txn: _Txn) -> Status:
            txn.state.paused = paused
            txn.changed()
            return txn.state.status()
        return self._run(op)

    # -- wallets ---------------------------------------------------------------------------------
    def _wallet_costs(self, txn: _Txn, name: str, since: float | None) -> list[tuple[float, Decimal]]:
        """``(ts, cost)`` of wallet ``name``'s settles at or after ``since``, as of this transaction."""
        st = txn.state
        first = partition_for(since) if since is not None else ""
        entries: list[dict[str, Any]] = []
        for part in self._history.partitions():
            if part < first or st.history_file is None or part > st.history_file:
                continue
            entries.extend(self._history.read_partition(part, st.history_size if part == st.history_file else None))
        entries.extend(txn.entries)  # applied earlier in this group commit, not on disk yet
        return [(float(e["ts"]), Decimal(e["cost"])) for e in entries
                if e.get("kind") == "settle" and e.get("wallet") == name and (since is None or e["ts"] >= since)]

    def add_wallet(
        self, name: str, budget: Decimal, *, period: str = "total", rpm: int | None = None,
        tpm: int | None = None, expires: float | None = None, secret_hash: str | None = None,
    ) -> WalletStatus:
        """A new wallet; its spend in the current window is taken from history (see the module doc)."""
        wallet = Wallet(check_wallet_name(name), budget, parse_period(period), rpm, tpm, expires, secret_hash)
        def op(txn: _Txn) -> WalletStatus:
            now = self.clock()
            costs = self._wallet_costs(txn, name, period_start(wallet.period, now))
            result = txn.state.add_wallet(wallet, costs, now=now)
            txn.changed()
            return result
        return self._run(op)

    def update_wallet(self, name: str, **changes: Any) -> WalletStatus:
        """Change a wallet: any of ``budget``, ``add`` (top-up), ``period``, ``rpm``, ``tpm``,
        ``expires``, ``secret_hash`` (``None`` clears the optional ones)."""
        unknown = set(changes) - {"budget", "add", "period", "rpm", "tpm", "expires", "secret_hash"}
        if unknown:
            raise TypeError(f"unknown wallet fields {sorted(unknown)}")
        def op(txn: _Txn) -> WalletStatus:
            now = self.clock()
            w = txn.state._wallet(name)
            budget = changes.get("budget", w.budget)
            if "add" in changes:
                budget += changes["add"]
            rpm, tpm = changes.get("rpm", w.rpm), changes.get("tpm", w.tpm)
            _check_wallet_numbers(budget, rpm, tpm)
            if "period" in changes:
                period = parse_period(changes["period"])
                txn.state.set_wallet_period(name, period, self._wallet_costs(txn, name, period_start(period, now)),
                                            now=now)
            w.budget, w.rpm, w.tpm = budget, rpm, tpm
            if "expires" in changes:
                w.expires = changes["expires"]
            if "secret_hash" in changes:
                w.secret_hash = changes["secret_hash"]
            txn.changed()
            return txn.state.wallet_status(name, now)
        return self._run(op)

    def remove_wallet(self, name: str) -> None:
        """Delete a wallet; its history stays (re-adding it recomputes its spend from history)."""
        def op(txn: _Txn) -> None:
            txn.state._wallet(name)
            del txn.state.wallets[name]
            txn.changed()
        self._run(op)

    def wallets(self) -> list[WalletStatus]:
        st, now = self.snapshot(), self.clock()
        return [st.wallet_status(n, now) for n in sorted(st.wallets)]

    def recover_orphans(self, is_alive: Callable[[Owner], bool] = owner_alive) -> list[dict[str, Any]]:
        """Settle reservations left open by dead processes (run at proxy start and by the CLI)."""
        def op(txn: _Txn) -> list[dict[str, Any]]:
            entries = txn.state.orphan_entries(is_alive, now=self.clock())
            txn.entries.extend(entries)
            if entries:
                txn.changed()
            return entries
        return self._run(op)

    # -- reads (lock-free: the state file is replaced atomically) -------------------------------
    def snapshot(self) -> LedgerState:
        return self._load()

    def status(self) -> Status:
        return self.snapshot().status()

    def open_reservations(self) -> list[Reservation]:
        return sorted(self.snapshot().open.values(), key=lambda r: r.created)

    def history(
        self, *, since: float | None = None, limit: int | None = None, kinds: Iterable[str] | None = None,
        wallet: str | None = None,
    ) -> list[dict[str, Any]]:
        """Applied history entries, newest first, reading only the partitions needed
        (``wallet``: only entries of calls charged to, or blocked for, that wallet)."""
        st = self.snapshot()
        wanted = set(kinds) if kinds else None
        first = partition_for(since) if since is not None else ""
        out: list[dict[str, Any]] = []
        for name in reversed(self._history.partitions()):
            if st.history_file is None or name > st.history_file:
                continue  # not applied yet
            if name < first:
                break
            limit_size = st.history_size if name == st.history_file else None
            for entry in reversed(self._history.read_partition(name, limit_size)):
                if since is not None and entry["ts"] < since:
                    continue
                if (wanted is None or entry["kind"] in wanted) and (wallet is None or entry.get("wallet") == wallet):
                    out.append(entry)
                    if limit is not None and len(out) >= limit:
                        return out
        return out

    def verify(self) -> list[str]:
        """Full check: the state's invariant and ``spent`` == the sum of settled costs in history."""
        st = self.snapshot()
        problems = st.problems()
        settled = [e for e in self.history(kinds=("settle",))]
        total = sum((Decimal(e["cost"]) for e in settled), ZERO)
        if total != st.spent:
            problems.append(f"spent {st.spent} != sum of settled history {total}")
        if len(settled) != st.requests:
            problems.append(f"requests {st.requests} != settled history entries {len(settled)}")
        for w in st.wallets.values():
            in_window = sum((Decimal(e["cost"]) for e in settled
                             if e.get("wallet") == w.name and period_key(w.period, e["ts"]) == w.window), ZERO)
            if in_window != w.spent:
                problems.append(f"wallet {w.name}: spent {w.spent} != settled history in {w.window} {in_window}")
        return problems

    def restore_backup(self) -> Path:
        """Put the last good copy of the state back (the corrupt file is kept beside it)."""
        backup = self.state_path.with_name(self.state_path.name + ".bak")
        with self._lock.hold():
            tables = AtomicJSONStorage(backup).read()  # must itself be valid
            if self.state_path.exists():
                kept = self.state_path.with_name(f"{self.state_path.name}.corrupt-{int(time.time())}")
                os.replace(self.state_path, kept)
            os.link(backup, self.state_path)
            # log records that do not follow the older snapshot are set aside (their settles are
            # in history beyond its pointer and are replayed from there)
            lsn = int(((tables or {}).get("ledger", {}).get("1", {})).get("lsn", 0))
            after = [r for r in (json.loads(raw) for raw in self._wal.read()[0]) if r["lsn"] > lsn]
            if after and after[0]["lsn"] != lsn + 1:
                os.replace(self._wal.path, self._wal.path.with_name(f"{WAL_FILE}.set-aside-{int(time.time())}"))
            self._committed = None
        return self.state_path
