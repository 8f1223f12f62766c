"""What the budget gate and the meter share: the ledger, the price table, the calls in flight."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from decimal import Decimal
from functools import partial
from typing import TYPE_CHECKING, Any

from ..alerts import SpendView, global_view, wallet_view
from ..budget import Ledger, Refusal, Reservation
from ..keystore import KeyStore
from ..limits import RateBook
from ..money import ZERO
from ..plan import CallPlan, PlanSettings
from ..pricing import PriceTable

if TYPE_CHECKING:
    from ..metering import StreamMeter
    from ..vault import Vault

log = logging.getLogger(__name__)

CALL = "pouch_call"  # flow.metadata key holding the FlowCall


@dataclass(eq=False)
class FlowCall:
    """One budgeted call: its plan, its reservation and how far its response got."""

    plan: CallPlan
    reservation: Reservation
    client: str
    ledger: Ledger  # the ledger holding the reservation (pouch_home may change while it runs)
    wallet: str = "default"
    started: float = field(default_factory=time.time)
    meter: StreamMeter | None = None
    next_meter: StreamMeter | None = None  # made while the request is in flight (``Metering.request``)
    response_started: bool = False
    settled: bool = False
    last_checkpoint_events: int = -1

    @property
    def reserved(self) -> Decimal:
        return self.reservation.amount


class Core:
    """Configured by the gate's options; used by the gate and the meter."""

    def __init__(self) -> None:
        self.ledger: Ledger | None = None
        self.table: PriceTable | None = None
        self.settings = PlanSettings()
        self.active: set[FlowCall] = set()
        self.keys: KeyStore | None = None  # virtual keys (set with the ledger)
        self.vault: Vault | None = None  # real provider keys, opened at start (addons/keys.py)
        self.vault_problem: str | None = None  # why the vault is not open, for clear 503s
        self.limits = RateBook()  # per-wallet rpm/tpm, in memory per proxy process
        # addons told of every settle (alerts, metrics, traces): ``on_settle(call, entry, views, commit_s)``
        # on the event loop, so each must only hand the facts on (microseconds)
        self.observers: list[Any] = []

    def require(self) -> tuple[Ledger, PriceTable]:
        if self.ledger is None or self.table is None:
            raise RuntimeError("pouch is not configured yet")
        return self.ledger, self.table


async def reserve(ledger: Ledger, op: Callable[..., Reservation | Refusal]) -> Reservation | Refusal:
    """Run a ``Ledger.reserve_op`` on the committer thread and await it. If the waiting hook is
    cancelled meanwhile (its flow killed, the proxy stopping), the operation still runs, being
    queued: the reservation it makes is given back as soon as it exists (the request was never
    sent), instead of holding budget until the orphan rule finds it at the next start.

    The future is awaited as it is (the store hands a cancelled one's result to ``_give_back``)
    rather than through ``asyncio.shield``, whose extra future costs every admission one more
    loop turn between the committer's answer and the gate going on."""
    fut = ledger.submit_async(op, abandoned=partial(_give_back, ledger))
    try:
        return await fut
    except asyncio.CancelledError:
        if fut.done() and not fut.cancelled() and fut.exception() is None:
            _give_back(ledger, fut.result())  # answered just before the cancellation reached the hook
        raise


def _give_back(ledger: Ledger, res: Reservation | Refusal) -> None:
    """A reservation nobody waits for any more: release it in full."""
    if isinstance(res, Reservation):
        done = ledger.submit(ledger.settle_op(res.id, ZERO, status="abandoned",
                                              details={"why": "the request was cancelled before it was sent"}))
        done.add_done_callback(partial(_log_failed_give_back, res.id))


def _log_failed_give_back(res_id: str, done: Future) -> None:
    if done.exception() is not None:  # left open: the orphan rule settles it at the next start
        log.error(f"pouch: could not give back abandoned reservation {res_id}: {done.exception()!r}")


@dataclass(frozen=True)
class SettleViews:
    """What one settle left: the global budget's and the call's wallet's spend."""

    global_: SpendView
    wallet: SpendView | None


def with_views(op: Callable[[Any], dict], wallet: str | None) -> Callable[[Any], tuple[dict, SettleViews]]:
    """A settle operation that also returns :class:`SettleViews` as the same transaction left the
    state (so observers see the spend the settle made, with no read of the ledger file)."""
    def run(txn: Any) -> tuple[dict, SettleViews]:
        entry = op(txn)
        st = txn.state
        return entry, SettleViews(global_view(st), wallet_view(st, wallet, entry["ts"]) if wallet else None)
    run.settle_op = op  # type: ignore[attr-defined]  # the settle itself, for a store that spools it (ledger_postgres)
    return run


def set_header(headers: Any, name: bytes, value: bytes) -> None:
    """``headers[name] = value`` as mitmproxy's ``Headers.set_all`` does it (the first field of that
    name, in any case, takes the value and keeps its spelling, the others go; none: appended), with
    ``name`` lower-case bytes: mitmproxy decodes and lower-cases every field's name (~10-40 us on the
    VM for a client's dozen headers, on the call's path after its reservation)."""
    n = len(name)
    new = []
    done = False
    for field in headers.fields:
        k = field[0]
        if len(k) == n and k.lower() == name:
            if not done:
                new.append((k, value))
                done = True
        else:
            new.append(field)
    if not done:
        new.append((name, value))
    headers.fields = tuple(new)


def set_content(message: Any, data: bytes) -> None:
    """``message.content = data`` (mitmproxy's ``set_content``): the bytes as they are when the message
    has no ``content-encoding`` (else mitmproxy's setter encodes them), ``content-length`` set unless
    a ``transfer-encoding`` is there; one pass over the raw header fields instead of three lookups."""
    te = False
    for k, _ in message.headers.fields:
        n = len(k)
        if n == 16 and k.lower() == b"content-encoding":
            message.content = data
            return
        if n == 17 and k.lower() == b"transfer-encoding":
            te = True
    message.raw_content = data
    if not te:
        set_header(message.headers, b"content-length", b"%d" % len(data))
