"""The ledger's rules: reservations against a budget, settled exactly once (pure: no I/O).

``LedgerState`` holds the rules and is unit-tested directly. The stores (``ledger_local``: the
local TinyDB snapshot + write-ahead log) apply them inside their transactions, and the operations
every process uses are written once over any store in ``budget``.

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

import os
import random
from collections.abc import Iterable
from math import isfinite
from operator import attrgetter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Callable

from .ledger_owner import Owner
from .ledger_store import LedgerCorrupt, canonical_json
from .money import ZERO, format_usd, usd_str
from .periods import Period, parse_period, period_key, spend_in_new_period

DEFAULT_WALLET = "default"
_WALLET_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-+@")


def check_wallet_name(name: str) -> str:
    """A wallet (app) name: 1-64 of letters, digits and ``._-+@`` (safe in logs, URLs and files)."""
    if not isinstance(name, str) or not 1 <= len(name) <= 64 or not set(name) <= _WALLET_NAME_CHARS:
        raise ValueError(f"invalid wallet name {name!r}: use 1-64 letters, digits or ._-+@")
    return name


class NotOpen(LookupError):
    """Settling a reservation that is not open: it was already settled (exactly-once) or never made."""


_amount = attrgetter("amount")


def json_str(text: Any) -> bytes:
    """``canonical_json(text)``; without the encoder for a string JSON writes as itself between
    quotes (letters, digits, ``-._``: reservation ids, partition names), formatted per commit."""
    if type(text) is str and text.isascii() and text.replace("-", "").replace(".", "").replace("_", "").isalnum():
        return b'"%s"' % text.encode()
    return canonical_json(text)


#: canonical JSON of the owners seen (a process writes its own with every reservation)
_owners: dict[Owner, bytes] = {}


def _owner_json(owner: Owner) -> bytes:
    data = _owners.get(owner)
    if data is None:
        if len(_owners) >= 64:
            _owners.clear()
        data = _owners[owner] = canonical_json(owner.to_dict())
    return data


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
    # (the amount, ``usd_str`` of it) as the JSON above wrote it: its settle line writes it again
    _amount_text: tuple[Decimal, str] | None = field(default=None, init=False, repr=False, compare=False)

    def canonical_json(self) -> bytes:
        """``to_dict()`` as canonical JSON (sorted keys, no spaces), cached until the checkpoint changes;
        formatted around the owner's cached JSON (a reservation is written once per admission)."""
        cached = self._json
        if cached is None or cached[0] is not self.checkpoint:
            checkpoint, created, amount = self.checkpoint, self.created, self.amount
            text = usd_str(amount)
            self._amount_text = (amount, text)
            data = b'{"amount":"%s","checkpoint":%s,"created":%s,"id":%s,"meta":%s,"owner":%s}' % (
                text.encode(), b"null" if checkpoint is None else canonical_json(checkpoint),
                # a finite float is written as its repr, a plain id as itself: what the encoder writes
                b"%r" % created if type(created) is float and isfinite(created) else canonical_json(created),
                json_str(self.id),
                canonical_json(self.meta), _owner_json(self.owner))
            cached = self._json = (self.checkpoint, data)
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
    # (canonical JSON of ``to_dict()``, its member in the wallets table ``"name":{...}``), dropped
    # by any assignment to a field (``__setattr__``; every field holds an immutable value): a log
    # record writes each wallet whose member is not the object the last record wrote
    # (``LedgerState.wallet_delta``), and between two records only a settled wallet's spend changes
    _json: tuple[bytes, bytes] | None = field(default=None, init=False, repr=False, compare=False)
    # (the JSON before the spend's digits, the JSON after them, the name's JSON), dropped by any
    # assignment but ``spent``'s: a settle changes only the spend, so its wallet is formatted
    # around one number
    _frame: tuple[bytes, bytes, bytes] | None = field(default=None, init=False, repr=False, compare=False)

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)
        if name == "spent":
            object.__setattr__(self, "_json", None)
        elif name != "_json" and name != "_frame":
            object.__setattr__(self, "_json", None)
            object.__setattr__(self, "_frame", None)

    def canonical_json(self) -> bytes:
        """``canonical_json(self.to_dict())``, kept until a field is assigned."""
        return self._cached()[0]

    def table_member(self) -> bytes:
        """``"name":`` and :meth:`canonical_json`: this wallet in the wallets table's canonical JSON."""
        return self._cached()[1]

    def _cached(self) -> tuple[bytes, bytes]:
        cached = self._json
        if cached is None:
            data = self._format()
            frame = self._frame
            cached = self._json = (data, b"%s:%s" % (json_str(self.name) if frame is None else frame[2], data))
        return cached

    def _format(self) -> bytes:
        """``canonical_json(self.to_dict())`` formatted directly when every field has the type pouch
        gives it (a settle changes the wallet it is charged to: its JSON is made once per commit,
        around the spend's new digits when only the spend changed)."""
        frame = self._frame
        if frame is not None:
            return b'%s%s%s' % (frame[0], usd_str(self.spent).encode(), frame[1])
        created, expires, rpm, tpm = self.created, self.expires, self.rpm, self.tpm
        if (type(created) is not float or not isfinite(created) or type(self.secret_hash) not in (str, type(None))
                or (expires is not None and (type(expires) is not float or not isfinite(expires)))
                or (rpm is not None and type(rpm) is not int) or (tpm is not None and type(tpm) is not int)
                or type(self.period) is not str or type(self.window) is not str):
            return canonical_json(self.to_dict())
        secret, name = self.secret_hash, json_str(self.name)
        frame = self._frame = (
            b'{"budget":"%s","created":%r,"expires":%s,"name":%s,"period":%s,"rpm":%s,"secret_hash":%s,'
            b'"spent":"' % (
                usd_str(self.budget).encode(), created, b"null" if expires is None else b"%r" % expires,
                name, json_str(self.period), b"null" if rpm is None else b"%d" % rpm,
                b"null" if secret is None else json_str(secret)),
            b'","tpm":%s,"window":%s}' % (b"null" if tpm is None else b"%d" % tpm, json_str(self.window)), name)
        return b'%s%s%s' % (frame[0], usd_str(self.spent).encode(), frame[1])

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


#: the UTC day of the last timestamp formatted: (its first second, "YYYY-MM-DD"); a ledger
#: formats two or three timestamps per settle, nearly all of them on the same day
_day: tuple[int, str] = (0, "1970-01-01")


def _day_of(second: int) -> str:
    global _day
    start = second - second % 86400
    day = _day
    if day[0] != start:
        day = _day = (start, datetime.fromtimestamp(start, UTC).strftime("%Y-%m-%d"))
    return day[1]


def _split(ts: float) -> tuple[int, int]:
    """``(second, microsecond)`` of ``ts`` rounded half-even to microseconds, as datetime does."""
    second = int(ts)
    us = round((ts - second) * 1e6)
    if us >= 1000000:
        second, us = second + 1, us - 1000000
    return second, us


#: "YYYY-MM-DDTHH:MM:SS" of the seconds formatted lately (a settle formats its start and its end,
#: and the settles of one commit end in the same second), emptied when it holds ``_SECONDS_KEPT``
_seconds: dict[int, str] = {}
_SECONDS_KEPT = 1024
#: ".000Z" .. ".999Z": the milliseconds and the zone, the only part of a timestamp that changes per call
_MILLIS = tuple(".%03dZ" % ms for ms in range(1000))


def _iso(ts: float) -> str:
    """``datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")`` with a ``Z``, from the
    second's cached text (the day's cached date and integer arithmetic the first time) and the
    milliseconds' (a settle formats two timestamps)."""
    if not 0 <= ts < 253402300000:  # outside 1970..9999: let datetime format (or refuse) it
        return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    second = int(ts)  # _split, inlined
    us = round((ts - second) * 1e6)
    if us >= 1000000:
        second, us = second + 1, us - 1000000
    text = _seconds.get(second)
    if text is None:
        if len(_seconds) >= _SECONDS_KEPT:
            _seconds.clear()
        tod = second % 86400
        text = _seconds[second] = "%sT%02d:%02d:%02d" % (_day_of(second), tod // 3600, tod // 60 % 60, tod % 60)
    return text + _MILLIS[us // 1000]


def partition_for(ts: float) -> str:
    if not 0 <= ts < 253402300000:
        return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d") + ".jsonl"
    return _day_of(_split(ts)[0]) + ".jsonl"


#: ``LedgerState.top_json``'s texts of the last budget and history partition it wrote, each kept
#: as one (object, text) pair (compared by identity: a ``Decimal`` and a ``str`` are immutable, and
#: kept here, so an equal identity is the same value). Replaced whole, never edited in place: a
#: reader in another thread (another ledger's committer) sees an old pair or a new one, never a mix
_budget_text: tuple[Any, bytes] = (object(), b"")
_history_text: tuple[Any, bytes] = (object(), b"")


_NO_RESERVATIONS: tuple[Decimal, int] = (ZERO, 0)


class OpenReservations(dict):
    """The open reservations by id, with their sum kept as they come and go (``reserved``: every
    admission asks for it, and re-summing every reservation in flight per commit costs as much as
    the rest of the rule) and, while a transaction watches (``touched``), the ids it changed with
    whether each was open when it began: the commit writes what was opened and closed from that,
    instead of comparing every open id before and after. :meth:`LedgerState.problems` checks the
    sum against a fresh one."""

    __slots__ = ("reserved", "touched", "by_wallet")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.reserved: Decimal = sum(map(_amount, self.values()), ZERO)
        self.touched: dict[str, bool] | None = None
        #: wallet name (``meta["wallet"]``) -> (sum, count) of its open reservations, kept as they
        #: come and go like ``reserved`` once anyone asked (:meth:`wallet_reserved`; a ledger without
        #: wallets never does): a wallet's admission asks for it (twice from the gate), and a scan of
        #: every reservation in flight per ask grew with the calls in flight
        self.by_wallet: dict[str, tuple[Decimal, int]] | None = None

    def wallet_reserved(self, name: str) -> tuple[Decimal, int]:
        """(sum, count) of the open reservations charged to wallet ``name``."""
        by = self.by_wallet
        if by is None:
            by = self.by_wallet = {}
            for res in self.values():
                self._charge(res, 1)
        return by.get(name, _NO_RESERVATIONS)

    def _charge(self, res: Reservation, sign: int) -> None:
        """Count ``res`` in (``sign`` 1) or out of (-1) its wallet's sum (a name that is not a
        string never equals a wallet's name: not counted, as :meth:`LedgerState.wallet_reserved` would not)."""
        by = self.by_wallet
        if by is None:
            return
        name = res.meta.get("wallet")
        if type(name) is not str:
            return
        was = by.get(name)
        if was is None:
            by[name] = (res.amount, 1) if sign > 0 else (-res.amount, -1)
        elif was[1] + sign == 0:
            del by[name]
        else:
            by[name] = (was[0] + res.amount, was[1] + 1) if sign > 0 else (was[0] - res.amount, was[1] - 1)

    def __reduce__(self) -> tuple[Any, ...]:  # copy/pickle rebuild the sum from the items
        return OpenReservations, (dict(self),)

    def _touch(self, key: str) -> None:
        touched = self.touched
        if touched is not None and key not in touched:
            touched[key] = dict.__contains__(self, key)

    def __setitem__(self, key: str, res: Reservation) -> None:
        old = dict.get(self, key)
        if self.touched is not None:
            self._touch(key)
        dict.__setitem__(self, key, res)
        self.reserved = self.reserved + res.amount if old is None else self.reserved + res.amount - old.amount
        if old is not None:
            self._charge(old, -1)
        by = self.by_wallet
        if by is not None:  # self._charge(res, 1), inlined (once per admission)
            name = res.meta.get("wallet")
            if type(name) is str:
                was = by.get(name)
                by[name] = (res.amount, 1) if was is None else (was[0] + res.amount, was[1] + 1)

    def __delitem__(self, key: str) -> None:
        self.pop(key)

    _MISSING: Any = object()

    def pop(self, key: str, default: Any = _MISSING) -> Any:
        if not dict.__contains__(self, key):
            if default is OpenReservations._MISSING:
                raise KeyError(key)
            return default
        if self.touched is not None:
            self._touch(key)
        res = dict.pop(self, key)
        self.reserved -= res.amount
        self._charge(res, -1)
        return res

    def popitem(self) -> tuple[str, Reservation]:
        key = next(reversed(self))
        return key, self.pop(key)

    def clear(self) -> None:
        for key in list(self):
            self.pop(key)

    def update(self, *args: Any, **kwargs: Any) -> None:
        for key, res in dict(*args, **kwargs).items():
            self[key] = res

    def __ior__(self, other: Any) -> OpenReservations:
        self.update(other)
        return self

    def setdefault(self, key: str, default: Any = None) -> Any:
        if key not in self:
            self[key] = default
        return self[key]


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
    # each wallet's table member (``Wallet.table_member``, compared by identity) as the last log
    # record written from this state left it; None when unknown (a state loaded or not logged
    # yet): a record then carries every wallet (``wallet_delta``)
    logged_wallets: dict[str, bytes] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if type(self.open) is not OpenReservations:
            self.open = OpenReservations(self.open)

    # -- derived ---------------------------------------------------------------------------
    @property
    def reserved(self) -> Decimal:
        """The sum of the open reservations: kept by :class:`OpenReservations` as they come and go
        (summed afresh for a plain dict someone put in ``open``)."""
        opens = self.open
        if type(opens) is OpenReservations:
            return opens.reserved
        return sum(map(_amount, opens.values()), ZERO)

    @property
    def remaining(self) -> Decimal:
        return self.budget - self.spent - self.reserved

    def status(self) -> Status:
        return Status(
            self.budget, self.spent, self.reserved, len(self.open),
            self.requests, self.blocked, self.flagged, self.paused,
        )

    def wallet_reserved(self, name: str) -> tuple[Decimal, int]:
        """Sum and count of the open reservations charged to wallet ``name`` (kept by
        :class:`OpenReservations`; summed afresh for a plain dict someone put in ``open``)."""
        opens = self.open
        if type(opens) is OpenReservations:
            return opens.wallet_reserved(name)
        return self.scan_wallet_reserved(name)

    def scan_wallet_reserved(self, name: str) -> tuple[Decimal, int]:
        """:meth:`wallet_reserved` summed afresh from every open reservation."""
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
        """Global remaining and, if ``wallet`` is configured, the wallet's remaining at ``now``
        (``wallet_status(wallet, now).remaining``, without the rest of the status)."""
        w = self.wallets.get(wallet) if wallet is not None else None
        if w is None:
            return self.remaining, None
        return self.remaining, w.budget - w.spent_at(now) - self.wallet_reserved(wallet)[0]

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
        amount = res.amount
        if cost > amount:
            flags.append("over_reservation")
        kept = res._amount_text  # the text its reservation's JSON wrote for the same amount
        created = res.created
        duration = max(0.0, now - created)
        entry: dict[str, Any] = {
            **res.meta,
            **(details or {}),
            "kind": "settle",
            "id": res_id,
            "seq": self.seq + 1,
            "ts": now,
            "time": _iso(now),
            "started": _iso(created),
            # round(duration, 3) (both round the exact binary value correctly to 3 places, then
            # read it back) at half the cost, for a float; anything else the long way
            "duration_s": float("%.3f" % duration) if type(duration) is float else round(duration, 3),
            "reserved": kept[1] if kept is not None and kept[0] is amount else usd_str(amount),
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
        if self.reserved != sum(map(_amount, self.open.values()), ZERO):
            out.append("reserved is not the sum of the open reservations")
        opens = self.open
        if type(opens) is OpenReservations and opens.by_wallet is not None:
            fresh = OpenReservations(opens)
            fresh.wallet_reserved("")
            if opens.by_wallet != fresh.by_wallet:
                out.append("a wallet's reserved is not the sum of its open reservations")
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

    def top_json(self) -> bytes:
        """Exactly ``canonical_json(self.to_tables_without_open())``, formatted directly: a log
        record carries these tables (``Ledger._commit_log``) unless it names only the wallets that
        changed (:meth:`wallet_delta`)."""
        if self.wallets:  # canonical_json({name: to_dict()}) from each wallet's kept JSON
            by_name = {w.name: w for w in self.wallets.values()}
            wallets = b"{%s}" % b",".join([by_name[name].table_member() for name in sorted(by_name)])
        else:
            wallets = b"{}"
        return b'{"ledger":%s,"wallets":%s}' % (self.ledger_json(), wallets)

    def wallet_delta(self) -> tuple[list[str], list[tuple[str, bytes]]] | None:
        """What a log record must say of the wallets since the last record written from this state
        (``logged_wallets``): ``(names gone, (name, table member) of each wallet added or
        changed)``, sorted by name; None when the record carries the whole wallets table (not known
        what the last record left, or no wallets before or now: such a record is as an older pouch
        writes it). A settle changes one wallet: the record names that one. Apply it to
        ``logged_wallets`` once written (:meth:`logged`)."""
        logged = self.logged_wallets
        wallets = self.wallets
        if logged is None or not (wallets or logged):
            return None
        changed = []
        for w in wallets.values():
            kept = w._json  # table_member(), inlined: a wallet unchanged since the last record keeps it
            member = kept[1] if kept is not None else w.table_member()
            name = w.name
            if member is not logged.get(name):
                changed.append((name, member))
        if len(changed) > 1:
            changed.sort()
        if len(logged) == len(wallets) and all(name in logged for name, _m in changed):
            return [], changed
        names = {w.name for w in wallets.values()}
        return sorted(name for name in logged if name not in names), changed

    def logged(self, delta: tuple[list[str], list[tuple[str, bytes]]] | None) -> None:
        """A log record written from this state said ``delta`` of the wallets (None: the whole table)."""
        logged = self.logged_wallets
        if delta is None or logged is None:
            self.logged_wallets = {w.name: w.table_member() for w in self.wallets.values()}
            return
        gone, changed = delta
        for name in gone:
            logged.pop(name, None)
        for name, member in changed:
            logged[name] = member

    def ledger_json(self) -> bytes:
        """Exactly ``canonical_json(self.to_tables_without_open()["ledger"])``, formatted directly."""
        global _budget_text, _history_text
        budget, history_file = self.budget, self.history_file
        # the budget's and the partition's text change seldom: kept for the objects
        budget_text, history_text = _budget_text, _history_text
        if budget_text[0] is not budget:
            budget_text = _budget_text = (budget, usd_str(budget).encode())
        if history_text[0] is not history_file:
            history_text = _history_text = (history_file,
                                             b"null" if history_file is None else json_str(history_file))
        return b'{"1":{"blocked":%d,"budget":"%s","flagged":%d,"history_file":%s,"history_size":%d,"lsn":%d,' \
               b'"paused":%s,"requests":%d,"seq":%d,"spent":"%s"}}' % (
                   self.blocked, budget_text[1], self.flagged, history_text[1],
                   self.history_size,
                   self.lsn, b"true" if self.paused else b"false", self.requests, self.seq,
                   usd_str(self.spent).encode())

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
        tables = record.get("top")
        # a record with the whole wallets table ("top"), or one naming the wallets that changed
        # ("ledger", "wallets" and "gone": see ``wallet_delta``)
        top = LedgerState.from_tables(tables if tables is not None else {"ledger": record["ledger"]})
        self.budget, self.spent, self.requests, self.blocked = top.budget, top.spent, top.requests, top.blocked
        self.flagged, self.paused, self.seq = top.flagged, top.paused, top.seq
        self.history_file, self.history_size = top.history_file, top.history_size
        if tables is not None:
            self.wallets = top.wallets
        else:
            for name in record["gone"]:
                self.wallets.pop(name, None)
            for d in record["wallets"].values():
                w = Wallet.from_dict(d)
                self.wallets[w.name] = w
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


#: Amount to reserve, or a callable deciding it inside the transaction from the current state and
#: time (it may return a :class:`Refusal` instead; see :meth:`budget.LedgerOps.reserve`)
Amount = Decimal | Callable[["LedgerState", float], "Decimal | Refusal"]
