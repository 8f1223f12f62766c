"""Presence: tell the CLI that this proxy serves the ledger, where it listens, and how many
calls it has in flight (``proxy.json`` in the pouch home, see ``pouch_addon/presence.py``).

Written once the listeners are up (then the log says where the proxy listens) and every
second after that, always from a worker thread so the event loop never waits on the disk;
removed at a clean exit.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

from mitmproxy import ctx

from ..presence import HEARTBEAT_S, Presence, remove_presence, write_presence
from .core import Core

log = logging.getLogger(__name__)


def listen_address(addrs: list[tuple]) -> str | None:
    """The first listen address as ``HOST:PORT`` (an IPv6 host in brackets)."""
    for addr in addrs:
        host, port = str(addr[0]), int(addr[1])
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return None


class PresenceAddon:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.home: Path | None = None
        self.listen: str | None = None
        self._task: asyncio.Task | None = None

    def _presence(self) -> Presence:
        return Presence(os.getpid(), "running", self.listen or "?", time.time(), len(self.core.active))

    async def running(self) -> None:
        ec = ctx.master.addons.get("errorcheck")
        if ec is not None and getattr(getattr(ec, "logger", None), "has_errored", None):
            return  # mitmdump is about to exit: do not announce it
        ps = ctx.master.addons.get("proxyserver")
        addrs = ps.listen_addrs() if ps is not None else []
        self.listen = listen_address(addrs) or f"{ctx.options.listen_host or '0.0.0.0'}:{ctx.options.listen_port}"
        if self.core.ledger is None:
            return
        self.home = self.core.ledger.home
        await asyncio.to_thread(write_presence, self.home, self._presence())
        log.info(f"pouch: proxy listening on http://{self.listen}, ledger {self.home}")
        self._task = asyncio.get_running_loop().create_task(self._beat())

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_S)
            if self.core.ledger is not None and self.core.ledger.home != self.home:
                old, self.home = self.home, self.core.ledger.home  # pouch_home changed while running
                await asyncio.to_thread(remove_presence, old, os.getpid())
            try:
                await asyncio.to_thread(write_presence, self.home, self._presence())
            except OSError as exc:
                log.warning(f"pouch: cannot write the presence file in {self.home}: {exc}")

    def done(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self.home is not None:
            remove_presence(self.home, os.getpid())
