"""Key swap: a valid pouch virtual key is replaced by the real provider key on the way out.

The vault (``vault.json`` in the pouch home) is opened once when the proxy starts, in a worker
thread, with the passphrase from the environment variable named by
``pouch_vault_passphrase_env`` (default ``POUCH_VAULT_PASSPHRASE``) or, for a vault created
with ``--no-passphrase``, the keyfile ``vault.key`` beside it. The real keys are decrypted
only in memory, per request, and only for requests that are actually forwarded: this addon
runs *after* the budget gate, so a blocked request never carries the real key. If the vault
file changes while the proxy runs (``pouch key add``), it is re-opened.

``Identify`` (before the gate) has already refused unknown/revoked/expired virtual keys and
requests whose provider key the vault cannot supply. Requests carrying a real key (or any
other token) pass through unchanged, still budgeted.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Awaitable
from pathlib import Path

from mitmproxy import ctx, exceptions, http

from ..vault import VIRTUAL_KEY_PREFIX, Vault, VaultError
from .core import Core
from .identity import IDENTITY, Identity
from .replies import reply

log = logging.getLogger(__name__)

VAULT_FILE = "vault.json"
KEYFILE = "vault.key"


def open_vault(home: Path, passphrase: str | None) -> Vault:
    """The pouch vault in ``home`` (blocking: scrypt takes ~0.1 s)."""
    keyfile = home / KEYFILE
    return Vault.open(home / VAULT_FILE, passphrase or None, keyfile if keyfile.exists() else None)


class KeySwap:
    def __init__(self, core: Core) -> None:
        self.core = core
        self._stamp: tuple[int, int] | None = None

    def load(self, loader) -> None:
        loader.add_option(
            name="pouch_vault_passphrase_env", typespec=str, default="POUCH_VAULT_PASSPHRASE",
            help="Name of the environment variable holding the key vault's passphrase (read once at "
                 "start; the proxy keeps the real keys only in memory). Not needed for a vault created "
                 "with `pouch key add --no-passphrase`.",
        )

    def configure(self, updated: set[str]) -> None:
        if "pouch_vault_passphrase_env" in updated:
            name = ctx.options.pouch_vault_passphrase_env
            if not name or not name.replace("_", "").isalnum():
                raise exceptions.OptionsError(
                    f"pouch_vault_passphrase_env: expected an environment variable name, got {name!r}")

    async def running(self) -> None:
        await self._refresh()

    async def _refresh(self) -> None:
        """(Re)open the vault if its file appeared or changed since last time."""
        ledger = self.core.ledger
        if ledger is None:
            return
        path = ledger.home / VAULT_FILE
        try:
            st = await asyncio.to_thread(path.stat)
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            self.core.vault, self.core.vault_problem, self._stamp = None, "no key vault (`pouch key add openai`)", None
            return
        if stamp == self._stamp:
            return
        self._stamp = stamp
        passphrase = os.environ.get(ctx.options.pouch_vault_passphrase_env)
        try:
            self.core.vault = await asyncio.to_thread(open_vault, ledger.home, passphrase)
            self.core.vault_problem = None
            log.info(f"pouch: key vault open ({len(self.core.vault.names())} provider key(s))")
        except VaultError as exc:  # the message never holds a secret
            self.core.vault = None
            self.core.vault_problem = (f"the key vault is locked ({exc}); start the proxy with "
                                       f"{ctx.options.pouch_vault_passphrase_env} set")
            log.error(f"pouch: {self.core.vault_problem}")

    def requestheaders(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Keep the in-memory vault in step with `pouch key add` (a stat, off the loop) before a
        request carrying a virtual key. Not a coroutine: mitmproxy awaits what a hook returns, so
        the requests without one (most) make no coroutine; their headers are read once, as bytes
        (each ``headers.get`` scans every header)."""
        req = flow.request
        if VIRTUAL_KEY_BYTES in req.data.path or any(
                VIRTUAL_KEY_BYTES in value and name.lower() in KEY_PLACES_BYTES for name, value in req.headers.fields):
            return self._refresh()
        return None

    def request(self, flow: http.HTTPFlow) -> None:
        ident: Identity | None = flow.metadata.get(IDENTITY)
        if flow.response is not None or ident is None or ident.provider is None:
            return
        try:
            if self.core.vault is None:
                raise VaultError(self.core.vault_problem or "the key vault is not open")
            real = self.core.vault.get(ident.provider)
        except (VaultError, KeyError) as exc:
            reply(flow, 503, f"pouch: cannot use virtual key {ident.key_id}: {exc}",
                  code="pouch_vault_unavailable", type_="server_error")
            return
        put_key(flow.request, real)


#: where a virtual key may come: Authorization (OpenAI, the anthropic SDK, Gemini CLI's bearer
#: mode), Anthropic's x-api-key, Gemini's x-goog-api-key (where ?key= was moved by Scope) and
#: Azure OpenAI's api-key
KEY_PLACES = ("authorization", "x-api-key", "x-goog-api-key", "api-key")
KEY_PLACES_BYTES = frozenset(name.encode() for name in KEY_PLACES)
VIRTUAL_KEY_BYTES = VIRTUAL_KEY_PREFIX.encode()


def put_key(request: http.Request, real: str) -> None:
    """Put the real key wherever the request carries a virtual one (Gemini CLI sends its key in
    Authorization and x-goog-api-key at once): a virtual key never reaches the provider."""
    for name in KEY_PLACES:
        value = request.headers.get(name)
        if value is not None and VIRTUAL_KEY_PREFIX in value:
            request.headers[name] = f"Bearer {real}" if name == "authorization" else real
