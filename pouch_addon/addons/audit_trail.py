"""Every request pouch answered itself (a block: 401/402/403/413/429/503 …) goes to the audit log.

Runs last in the ``request`` hook, so it sees whatever any earlier addon decided
(``replies.reply`` marks the flow with ``pouch_blocked``). The append (an fsync'd line in the
hash-chained ``audit.jsonl``, see ``audit.py``) happens in a worker thread; a failure to audit
is logged and never changes the answer the client gets. Details hold no secrets: the wallet,
how it was identified, the endpoint, the status, pouch's error code and its message (which
shows keys only as fingerprints); ``AuditLog.append`` redacts anything key-like anyway.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable

from mitmproxy import http

from ..audit import AUDIT_FILE, AuditLog
from .core import Core
from .identity import IDENTITY

log = logging.getLogger(__name__)


class AuditBlocks:
    def __init__(self, core: Core) -> None:
        self.core = core

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """The audit write of a blocked request, awaited by mitmproxy (pouch's chain); None for the
        others (no coroutine per forwarded call)."""
        code = flow.metadata.get("pouch_blocked")
        if code is None or flow.response is None or flow.metadata.get("pouch_audited") or self.core.ledger is None:
            return None
        return self._audit(flow, code)

    async def _audit(self, flow: http.HTTPFlow, code: str) -> None:
        flow.metadata["pouch_audited"] = True
        ident = flow.metadata.get(IDENTITY)
        try:
            message = json.loads(flow.response.content or b"{}").get("error", {}).get("message")
        except (ValueError, AttributeError):
            message = None
        details = {
            "status": flow.response.status_code, "code": code, "message": message,
            "host": flow.request.pretty_host, "endpoint": flow.request.path.split("?", 1)[0],
            **(ident.meta() if ident is not None else {}),
        }
        try:
            await asyncio.to_thread(AuditLog(self.core.ledger.home / AUDIT_FILE).append, "block", details,
                                    actor="proxy")
        except Exception as exc:
            log.error(f"pouch: could not append a block to the audit log: {exc}")
