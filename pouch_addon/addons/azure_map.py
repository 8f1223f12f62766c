"""Keeps the Azure deployment -> model map (``azure.json``, ``pouch azure map``) current in the proxy.

Read at start, then again when the file changed, checked (a ``stat`` off the event loop) only
for requests to an Azure OpenAI host, before the budget gate prices them
(``providers.azure.set_deployments``). A map that cannot be read leaves every deployment
unmapped (refused with the command that maps it), never priced at a guess.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

from mitmproxy import http

from .. import azure_map
from ..providers import azure
from .core import Core
from .replies import PROVIDER

log = logging.getLogger(__name__)


class AzureDeployments:
    def __init__(self, core: Core) -> None:
        self.core = core
        self._stamp: tuple[int, int] | None = None

    async def running(self) -> None:
        await self._refresh()

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """The map's refresh for an Azure call, awaited by mitmproxy (pouch's chain); None for the others."""
        if flow.response is None and flow.metadata.get(PROVIDER) == azure.NAME:
            return self._refresh()
        return None

    async def _refresh(self) -> None:
        ledger = self.core.ledger
        if ledger is None:
            return
        path = ledger.home / azure_map.FILE
        try:
            st = await asyncio.to_thread(path.stat)
            stamp: tuple[int, int] | None = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp == self._stamp and (stamp is not None or not azure.deployments()):
            return
        self._stamp = stamp
        try:
            mapping = await asyncio.to_thread(azure_map.load, ledger.home)
        except azure_map.AzureMapError as exc:
            log.error(f"pouch: {exc}; every Azure deployment is unmapped until it is fixed")
            mapping = {}
        azure.set_deployments(mapping)
        if mapping:
            log.info(f"pouch: {len(mapping)} Azure deployment(s) mapped")
