"""Reconcile the ledger with the audit log: the settings a person changes must agree.

The ledger's checksum is unkeyed, so someone who edits ``state.json`` and recomputes its
sha256 is not caught by the ledger alone. Every change a person makes to the budget, the pause
switch and the wallets goes through ``pouch`` (CLI or TUI), which appends it to the
hash-chained audit log after it succeeded. Replaying those entries gives what the budget, the
pause switch and each wallet's budget must be now; :func:`reconcile` names every difference.
An attacker then has to rewrite both files consistently (the audit chain is not keyed either:
this makes edits evident, it does not make them impossible).

Budget top-ups are replayed as amounts, not as the ``budget`` each entry recorded, so two
``budget add`` run at once (whose audit appends may land in either order) still agree.

:func:`has_history` says whether a ledger has ever been used: such a ledger must have an audit
log (``pouch audit verify`` reports a ledger with history whose audit log and head are gone).

Pure: callers pass the ledger's state and the audit entries.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Iterable

from .money import ZERO, format_usd

__all__ = ["AuditedSettings", "has_history", "reconcile", "replay", "restore_details"]

_UNSET = None


@dataclass
class AuditedSettings:
    """What the audit log says the settings are; ``None`` where it never recorded one."""

    budget: Decimal | None = _UNSET
    paused: bool | None = _UNSET
    wallets: dict[str, Decimal] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


def _usd(entry: dict[str, Any], key: str, settings: AuditedSettings) -> Decimal | None:
    try:
        return Decimal(str(entry["details"][key]))
    except (KeyError, TypeError, InvalidOperation):
        settings.problems.append(f"audit entry seq {entry.get('seq')} ({entry.get('action')}) has no valid {key!r}")
        return None


def replay(entries: Iterable[dict[str, Any]]) -> AuditedSettings:
    """The settings after applying every audited change in order."""
    s = AuditedSettings()
    for e in entries:
        action, details = e.get("action"), e.get("details") or {}
        if action == "budget.set":
            s.budget = _usd(e, "amount", s)
        elif action == "budget.add":
            amount = _usd(e, "amount", s)
            if amount is not None:
                s.budget = (s.budget or ZERO) + amount
        elif action in ("pause", "resume"):
            s.paused = action == "pause"
        elif action in ("wallet.add", "wallet.set"):  # records the wallet's budget after the change
            budget = _usd(e, "budget", s)
            if budget is not None:
                s.wallets[str(details.get("wallet"))] = budget
        elif action == "wallet.rm":
            s.wallets.pop(str(details.get("wallet")), None)
        elif action == "ledger.restore":
            s.budget = _usd(e, "budget", s)
            s.paused = bool(details.get("paused"))
            try:
                s.wallets = {str(k): Decimal(str(v)) for k, v in dict(details.get("wallets") or {}).items()}
            except (TypeError, ValueError, InvalidOperation):
                s.problems.append(f"audit entry seq {e.get('seq')} (ledger.restore) has no valid 'wallets'")
    return s


def restore_details(state: Any) -> dict[str, Any]:
    """What a ``ledger.restore`` audit entry records: the settings the restored copy holds."""
    return {
        "budget": state.budget,
        "paused": bool(state.paused),
        "wallets": {name: w.budget for name, w in sorted(state.wallets.items())},
    }


def has_history(state: Any) -> bool:
    """Whether the ledger has ever been set or used (a new, untouched ledger has not)."""
    return bool(state.budget or state.spent or state.requests or state.blocked or state.paused
                or state.wallets or state.open or state.seq)


_HINT = ("changed outside pouch (a hand edit with a recomputed checksum?), or the change's audit "
         "append was interrupted")


def reconcile(state: Any, entries: Iterable[dict[str, Any]]) -> list[str]:
    """Every difference between the ledger's settings and the audited changes."""
    s = replay(entries)
    problems = list(s.problems)
    if s.budget is None:
        if state.budget != ZERO:
            problems.append(f"the budget is {format_usd(state.budget)} but the audit log records no "
                            f"`budget set`: it was {_HINT}")
    elif s.budget != state.budget:
        problems.append(f"the budget is {format_usd(state.budget)} but the audited changes add up to "
                        f"{format_usd(s.budget)}: it was {_HINT}")
    if bool(state.paused) != bool(s.paused):
        problems.append(f"the ledger is {'paused' if state.paused else 'not paused'} but the audit log's last "
                        f"pause/resume says {'paused' if s.paused else 'resumed'}: it was {_HINT}")
    for name in sorted(set(state.wallets) | set(s.wallets)):
        if name not in s.wallets:
            problems.append(f"wallet {name!r} is in the ledger but the audit log never added it: it was {_HINT}")
        elif name not in state.wallets:
            problems.append(f"wallet {name!r} was added in the audit log but is not in the ledger and was never "
                            f"removed (`wallet rm`): it was {_HINT}")
        elif state.wallets[name].budget != s.wallets[name]:
            problems.append(f"wallet {name!r} has budget {format_usd(state.wallets[name].budget)} but the audited "
                            f"changes say {format_usd(s.wallets[name])}: it was {_HINT}")
    return problems
