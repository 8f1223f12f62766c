"""The money: reservations against a budget, settled exactly once.

Three rooms: the rules (``ledger_rules``: ``LedgerState``, pure, unit-tested directly), a store
that makes them durable and atomic (``ledger_local``: files on this machine), and here the
operations every process uses (proxy, CLI, TUI), written once over a store's primitives
(:class:`LedgerOps`). ``Ledger`` is the local ledger: the operations over the local store.
Each operation is one atomic transaction of its store, so check-and-reserve is a single step and
no path reads the balance and writes it in two steps.

The rules themselves (the invariant ``budget == remaining + reserved + spent``, wallets and their
period windows, orphans) are described where they live, in ``ledger_rules``.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any, Callable

from .ledger_local import LocalStore, _Txn as Txn
from .ledger_owner import Owner, owner_alive
from .ledger_rules import (
    DEFAULT_WALLET,
    Amount,
    LedgerState,
    NotOpen,
    Refusal,
    Reservation,
    Status,
    Wallet,
    WalletStatus,
    _check_wallet_numbers,
    check_wallet_name,
    new_reservation_id,
    partition_for,
)
from .ledger_store import LedgerCorrupt
from .money import ZERO
from .periods import parse_period, period_key, period_start

__all__ = [
    "DEFAULT_WALLET",
    "Ledger",
    "LedgerCorrupt",
    "LedgerOps",
    "LedgerState",
    "NotOpen",
    "Owner",
    "Refusal",
    "Reservation",
    "Status",
    "Wallet",
    "WalletStatus",
    "check_wallet_name",
    "owner_alive",
    "partition_for",
]


class LedgerOps:
    """The ledger's operations, written once over a store (see ``ledger_local`` for its side of
    the seam). Each one is atomic; concurrent ones share a group commit where the store has one."""

    def reserve(self, amount: Amount, meta: dict[str, Any] | None = None, *,
                wallet: str | None = None) -> Reservation | Refusal:
        """Check (wallet and global) and reserve in one atomic step; a refusal is counted as a block.

        ``amount`` may be a callable ``(state, now) -> Decimal | Refusal``: it runs inside the
        transaction (so what it decides from the balance cannot go stale) and may refuse by
        itself; it may add to ``meta`` (recorded with the reservation or the block)."""
        return self._run(self.reserve_op(amount, meta, wallet=wallet))

    def reserve_op(self, amount: Amount, meta: dict[str, Any] | None = None, *,
                   wallet: str | None = None) -> Callable[[Txn], Reservation | Refusal]:
        """:meth:`reserve` as an operation for :meth:`submit`."""
        meta = meta if meta is not None else {}

        def op(txn: Txn) -> Reservation | Refusal:
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
                  details: dict[str, Any] | None = None) -> Callable[[Txn], dict[str, Any]]:
        """:meth:`settle` as an operation for :meth:`submit`."""
        return lambda txn: txn.record(
            txn.state.settle_entry(res_id, cost, now=self.clock(), status=status, details=dict(details or {})))

    def release(self, res_id: str, *, status: str = "released", details: dict[str, Any] | None = None) -> dict[str, Any]:
        """Give a reservation back in full (the provider did not bill: 4xx/5xx, never sent)."""
        return self.settle(res_id, ZERO, status=status, details=details)

    def record_block(self, refusal: Refusal, meta: dict[str, Any] | None = None) -> dict[str, Any]:
        """Count a request pouch refused before reserving (bad input, unknown model, …)."""
        return self._run(self.block_op(refusal, meta))

    def block_op(self, refusal: Refusal, meta: dict[str, Any] | None = None) -> Callable[[Txn], dict[str, Any]]:
        """:meth:`record_block` as an operation for :meth:`submit`."""
        return lambda txn: txn.record(txn.state.block_entry(refusal, now=self.clock(), meta=meta))

    def checkpoint(self, updates: dict[str, dict[str, Any]]) -> None:
        """Store in-flight progress of several reservations in one write (for the TUI and crashes)."""
        self._run(self.checkpoint_op(updates))

    def checkpoint_op(self, updates: dict[str, dict[str, Any]]) -> Callable[[Txn], None]:
        """:meth:`checkpoint` as an operation for :meth:`submit`."""
        def op(txn: Txn) -> None:
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
        def op(txn: Txn) -> Status:
            txn.state.budget = amount
            txn.changed()
            return txn.state.status()
        return self._run(op)

    def add_budget(self, amount: Decimal) -> Status:
        def op(txn: Txn) -> Status:
            if txn.state.budget + amount < 0:
                raise ValueError("budget must not become negative")
            txn.state.budget += amount
            txn.changed()
            return txn.state.status()
        return self._run(op)

    def set_paused(self, paused: bool) -> Status:
        def op(txn: Txn) -> Status:
            txn.state.paused = paused
            txn.changed()
            return txn.state.status()
        return self._run(op)

    # -- wallets ---------------------------------------------------------------------------------

    def add_wallet(
        self, name: str, budget: Decimal, *, period: str = "total", rpm: int | None = None,
        tpm: int | None = None, expires: float | None = None, secret_hash: str | None = None,
    ) -> WalletStatus:
        """A new wallet; its spend in the current window is taken from history (see the module doc)."""
        wallet = Wallet(check_wallet_name(name), budget, parse_period(period), rpm, tpm, expires, secret_hash)
        def op(txn: Txn) -> WalletStatus:
            now = self.clock()
            costs = self.wallet_costs(txn, name, period_start(wallet.period, now))
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
        def op(txn: Txn) -> WalletStatus:
            now = self.clock()
            w = txn.state._wallet(name)
            budget = changes.get("budget", w.budget)
            if "add" in changes:
                budget += changes["add"]
            rpm, tpm = changes.get("rpm", w.rpm), changes.get("tpm", w.tpm)
            _check_wallet_numbers(budget, rpm, tpm)
            if "period" in changes:
                period = parse_period(changes["period"])
                txn.state.set_wallet_period(name, period, self.wallet_costs(txn, name, period_start(period, now)),
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
        def op(txn: Txn) -> None:
            txn.state._wallet(name)
            del txn.state.wallets[name]
            txn.changed()
        self._run(op)

    def wallets(self) -> list[WalletStatus]:
        st, now = self.snapshot(), self.clock()
        return [st.wallet_status(n, now) for n in sorted(st.wallets)]

    def recover_orphans(self, is_alive: Callable[[Owner], bool] = owner_alive) -> list[dict[str, Any]]:
        """Settle reservations left open by dead processes (run at proxy start and by the CLI)."""
        def op(txn: Txn) -> list[dict[str, Any]]:
            entries = txn.state.orphan_entries(is_alive, now=self.clock())
            txn.entries.extend(entries)
            if entries:
                txn.changed()
            return entries
        return self._run(op)

    # -- reads ------------------------------------------------------------------------------------
    def status(self) -> Status:
        return self.snapshot().status()

    def open_reservations(self) -> list[Reservation]:
        return sorted(self.snapshot().open.values(), key=lambda r: r.created)

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


class Ledger(LedgerOps, LocalStore):
    """The local ledger every pouch process on this machine shares (the zero-setup default).
    Methods block on disk I/O: call them off the event loop."""
