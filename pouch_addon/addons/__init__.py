"""pouch's mitmproxy addons, one per concern, composed in order (mitmproxy's chain is the pipeline).

1. ``Route``: optional address override for provider hosts (``server_connect``).
2. ``LocalModels`` (``pouch_local_hosts``): which host:port pairs are local model servers ($0).
3. ``Scope``: which requests are pouch's, by where they really go (the CONNECT target, not the
   Host header: 421 when they disagree); refuses upgrades, method overrides and odd methods;
   only requests known to be free pass unpriced; fail closed on the rest.
4. ``AzureDeployments``: keeps the Azure deployment -> model map (``pouch azure map``) current.
5. ``Identify``: which wallet (app) a request is charged to: proxy auth, a pouch virtual key
   (refused with 401 when unknown/revoked/expired), the local process, else ``default``.
6. ``BudgetGate``: plan, per-wallet rate limits (429), reserve against the wallet and the
   global budget or answer 402, rewrite the body (``request``).
7. ``KeySwap``: put the real provider key in place of a virtual one (only for requests that
   are forwarded).
8. ``Mock`` (``pouch_mock``): answer admitted calls itself, settled at $0 (status ``mock``).
9. ``Metering``: stream metering, cut-off, settlement, checkpoints (``responseheaders`` on).
10. ``AuditBlocks``: every request pouch answered itself goes to the hash-chained audit log.
11. ``PresenceAddon``: ``proxy.json`` in the pouch home says this proxy serves the ledger, where it
    listens and how many calls it has in flight (``pouch status``, ``pouch run``, ``pouch doctor``).
12. ``Alerting``: thresholds crossed, first 402 of a period, expired wallets/keys, ledger problems,
    to a webhook, a command, the desktop and the TUI, from its own thread (``Core.observers``).
13. ``Metrics``: Prometheus ``/metrics`` (``pouch_metrics=HOST:PORT``; off by default).
14. ``Tracing``: one OpenTelemetry span per LLM call (``pouch_otel=true``, extra ``pouch[otel]``).

``LeanTypecheck`` (first) only installs a cycle-free copy of mitmproxy's debug type check of its
request and response objects when mitmproxy loads pouch (``addons/typecheck.py``).
"""

from __future__ import annotations

from .alerting import Alerting
from .audit_trail import AuditBlocks
from .azure_map import AzureDeployments
from .core import Core
from .gate import BudgetGate
from .identity import Identify
from .keys import KeySwap
from .local import LocalModels
from .mock import Mock
from .meter import Metering
from .metrics import Metrics
from .presence import PresenceAddon
from .route import Route
from .scope import Scope
from .tracing import Tracing
from .typecheck import LeanTypecheck


def make_addons() -> list[object]:
    core = Core()
    local = LocalModels()
    return [LeanTypecheck(), Route(), local, Scope(local), AzureDeployments(core), Identify(core), BudgetGate(core), KeySwap(core), Mock(core),
            Metering(core), AuditBlocks(core),
            PresenceAddon(core), Alerting(core), Metrics(core), Tracing(core)]
