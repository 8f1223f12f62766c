"""pouch's mitmproxy addons, one per concern, composed in order (mitmproxy's chain is the pipeline).

1. ``Route``: optional address override for provider hosts (``server_connect``).
2. ``Scope``: which hosts and endpoints are pouch's; fail closed on unknown POSTs.
3. ``BudgetGate``: plan, reserve or answer 402, rewrite the body (``request``).
4. ``Metering``: stream metering, cut-off, settlement, checkpoints (``responseheaders`` on).
"""

from __future__ import annotations

from .core import Core
from .gate import BudgetGate
from .meter import Metering
from .route import Route
from .scope import Scope


def make_addons() -> list[object]:
    core = Core()
    return [Route(), Scope(), BudgetGate(core), Metering(core)]
