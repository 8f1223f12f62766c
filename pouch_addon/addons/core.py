"""What the budget gate and the meter share: the ledger, the price table, the calls in flight."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ..budget import Ledger, Reservation
from ..keystore import KeyStore
from ..limits import RateBook
from ..plan import CallPlan, PlanSettings
from ..pricing import PriceTable

if TYPE_CHECKING:
    from ..metering import StreamMeter
    from ..vault import Vault

CALL = "pouch_call"  # flow.metadata key holding the FlowCall


@dataclass(eq=False)
class FlowCall:
    """One budgeted call: its plan, its reservation and how far its response got."""

    plan: CallPlan
    reservation: Reservation
    client: str
    wallet: str = "default"
    started: float = field(default_factory=time.time)
    meter: StreamMeter | None = None
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

    async def commit(self, op: Callable[..., Any], *, lazy: bool = False) -> Any:
        """Run a ledger operation (``Ledger.*_op``) on the ledger's committer thread and await
        its outcome without blocking the event loop (``lazy``: see ``Ledger.submit``)."""
        ledger, _ = self.require()
        return await ledger.submit_async(op, lazy=lazy)

    def require(self) -> tuple[Ledger, PriceTable]:
        if self.ledger is None or self.table is None:
            raise RuntimeError("pouch is not configured yet")
        return self.ledger, self.table
