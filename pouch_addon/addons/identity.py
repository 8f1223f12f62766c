"""Who is calling: the wallet (app) a request on an LLM host is charged to.

First match wins:

1. **proxy authentication**: ``HTTPS_PROXY=http://APP:SECRET@127.0.0.1:8080``. The client
   sends ``Proxy-Authorization: Basic ...`` on its CONNECT (``http_connect`` hook); pouch
   remembers it for that client connection. If wallet ``APP`` has a secret (``pouch wallet add
   APP --secret``), the password must match, else the request is answered 401
   (``pouch_proxy_auth_failed``). Without a secret the name is a label the app chooses.
2. **a pouch virtual key** (``pk-pouch-...`` wherever the provider takes its key:
   ``Authorization: Bearer``, Anthropic's ``x-api-key``, Gemini's ``x-goog-api-key`` or
   ``?key=``, see :func:`find_api_key`; ``KeySwap`` replaces it wherever it appears): unknown, revoked or expired keys, and keys issued for
   another provider, are answered 401 in the provider's shape; a valid key names its wallet and
   the provider whose real key ``KeySwap`` (``addons/keys.py``) puts in its place.
3. **the local process** that opened the connection (``pouch_identify_process``): the
   client's port is mapped to its pid and executable name, off the event loop, once per
   client connection (cached on the connection). On Linux this reads ``/proc`` directly
   (``pouch_addon/localproc.py``); elsewhere, or if that fails, psutil does it.
4. otherwise ``default``.

The result is ``flow.metadata["pouch_identity"]`` (:class:`Identity`); the gate charges
``identity.wallet`` and the ledger records ``wallet`` and ``via`` on every entry.
Secrets (proxy passwords, keys) are never logged; messages show at most a fingerprint.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import logging
import os
import re
import time
import weakref
from dataclasses import dataclass
from collections.abc import Awaitable
from typing import Any

from mitmproxy import connection, ctx, http

from .. import localproc
from ..endpoints import folded, header_index
from ..budget import DEFAULT_WALLET, check_wallet_name
from ..keystore import check_key
from ..vault import VIRTUAL_KEY_PREFIX, fingerprint, hash_virtual_key
from .core import Core
from .replies import PROVIDER, reply
from .scope import SCOPE

log = logging.getLogger(__name__)

IDENTITY = "pouch_identity"  # flow.metadata key


@dataclass(frozen=True)
class Identity:
    wallet: str
    via: str  # "proxy_auth" | "key" | "process" | "default"
    key_id: str | None = None  # the virtual key's public id
    provider: str | None = None  # vault entry whose real key replaces the virtual one
    pid: int | None = None

    def meta(self) -> dict[str, Any]:
        out: dict[str, Any] = {"wallet": self.wallet, "via": self.via}
        if self.key_id:
            out["key_id"] = self.key_id
        if self.pid is not None:
            out["pid"] = self.pid
        return out


#: a request with no credentials, no virtual key and no local process: one (frozen) object for all
_DEFAULT = Identity(DEFAULT_WALLET, "default")

#: where each provider's clients put their API key, besides ``Authorization: Bearer``
KEY_HEADERS = {"anthropic": ("x-api-key",), "gemini": ("x-goog-api-key",), "azure": ("api-key",)}


def find_api_key(request: http.Request, provider: str) -> str:
    """The API key a request carries (``Authorization: Bearer`` first, then the provider's own
    header; Scope moved Gemini's ``?key=`` into ``x-goog-api-key``), or ``""``."""
    return _api_key(header_index(request.headers.fields).values, provider)


def _api_key(found: dict[bytes, bytes], provider: str) -> str:
    """:func:`find_api_key` on a request's ``header_index`` values."""
    auth = folded(found.get(b"authorization")) or ""
    if auth[:7].lower() == "bearer " and auth[7:].strip():
        return auth[7:].strip()
    for name in KEY_HEADERS.get(provider, ()):
        value = (folded(found.get(name.encode())) or "").strip()
        if value:
            return value
    return ""


def parse_basic(value: str) -> tuple[str, str] | None:
    """``(user, password)`` from a ``Basic`` header value, or None."""
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "basic" or not token:
        return None
    try:
        user, sep, password = base64.b64decode(token.strip(), validate=True).decode("utf-8").partition(":")
    except (binascii.Error, ValueError):
        return None
    return (user, password) if sep else None


def app_label(name: str) -> str:
    """An executable name as a wallet name (``python3.11``; odd characters become ``_``)."""
    return re.sub(r"[^A-Za-z0-9._\-+@]", "_", name)[:64] or DEFAULT_WALLET


_fast_path_warned = False


def local_process(client_port: int, proxy_port: int) -> tuple[int, str] | None:
    """The pid and executable name of the local process whose socket ``:client_port`` talks to
    ``:proxy_port`` (blocking: call it off the event loop).

    On Linux a targeted kernel lookup (:mod:`pouch_addon.localproc`): ~0.1 ms when the
    process was seen recently, ~1 ms otherwise. psutil's scan of every socket and fd (10-40
    ms) only where ``/proc`` is missing or the fast path fails unexpectedly."""
    if localproc.available():
        try:
            found = localproc.find(client_port, proxy_port)
        except Exception:  # a bug or an odd /proc must not cost the attribution: say so once
            global _fast_path_warned
            if not _fast_path_warned:
                _fast_path_warned = True
                log.warning("pouch: /proc lookup of a client process failed, using psutil", exc_info=True)
        else:
            return None if found is None else (found[0], app_label(found[1]))
    return _local_process_psutil(client_port, proxy_port)


def _local_process_psutil(client_port: int, proxy_port: int) -> tuple[int, str] | None:
    """:func:`local_process` the portable, slow way: every connection of every process."""
    import psutil

    me = os.getpid()
    try:
        conns = psutil.net_connections(kind="tcp")
    except (psutil.Error, OSError):
        return None
    for c in conns:
        if (c.pid and c.pid != me and c.laddr and c.raddr and c.laddr.port == client_port
                and c.raddr.port == proxy_port):
            try:
                proc = psutil.Process(c.pid)
                try:
                    name = os.path.basename(proc.exe()) or proc.name()
                except (psutil.Error, OSError):
                    name = proc.name()
            except (psutil.Error, OSError):
                return None
            return c.pid, app_label(name)
    return None


def _is_loopback(addr: Any) -> bool:
    host = str(addr[0]) if addr else ""
    return host.startswith("127.") or host in ("::1", "localhost") or host.startswith("::ffff:127.")


class Identify:
    def __init__(self, core: Core) -> None:
        self.core = core
        self._auth: weakref.WeakKeyDictionary[connection.Client, tuple[str, str]] = weakref.WeakKeyDictionary()
        self._checked: weakref.WeakKeyDictionary[connection.Client, str | None] = weakref.WeakKeyDictionary()
        self._procs: weakref.WeakKeyDictionary[connection.Client, asyncio.Future] = weakref.WeakKeyDictionary()
        self._by_process = True  # pouch_identify_process, kept by ``configure`` (read per request)

    def load(self, loader) -> None:
        loader.add_option(
            name="pouch_identify_process", typespec=bool, default=True,
            help="Charge requests that carry neither proxy credentials nor a pouch virtual key to the "
                 "local program that opened the connection (its executable name, found from the client's port).",
        )

    def configure(self, updated: set[str]) -> None:
        # kept rather than read per request: ``ctx.options.X`` deep-copies the default of an option left at it
        self._by_process = ctx.options.pouch_identify_process

    # -- proxy authentication ------------------------------------------------------------------
    def http_connect(self, flow: http.HTTPFlow) -> None:
        creds = flow.metadata.get("proxyauth")  # mitmproxy's own proxyauth option, if set
        if creds is None:
            creds = parse_basic(flow.request.headers.get("proxy-authorization", ""))
        if creds is not None:
            self._auth[flow.client_conn] = (str(creds[0]), str(creds[1]))

    def _credentials(self, flow: http.HTTPFlow, found: dict[bytes, bytes]) -> tuple[str, str] | None:
        """``found``: the request's ``header_index`` values."""
        creds = self._auth.get(flow.client_conn)
        if b"proxy-authorization" in found:  # plain-HTTP proxying: never forward it
            header = parse_basic(flow.request.headers.pop("proxy-authorization"))
            creds = creds or header
        return creds

    async def _check_secret(self, flow: http.HTTPFlow, user: str, password: str) -> str | None:
        """Why these credentials are refused (cached per connection), or None."""
        if flow.client_conn in self._checked:
            return self._checked[flow.client_conn]
        try:
            check_wallet_name(user)
        except ValueError as exc:
            problem: str | None = f"pouch: proxy user name: {exc}"
        else:
            ledger = self.core.ledger
            wallet = (await asyncio.to_thread(ledger.snapshot)).wallets.get(user) if ledger else None
            problem = None
            if wallet is not None and wallet.secret_hash is not None:
                if not hmac.compare_digest(hash_virtual_key(password), wallet.secret_hash):
                    problem = f"pouch: wrong or missing proxy secret for wallet {user!r}"
        self._checked[flow.client_conn] = problem
        return problem

    # -- process attribution -------------------------------------------------------------------
    async def _process(self, client: connection.Client) -> tuple[int, str] | None:
        if not self._by_process or not _is_loopback(client.peername) or not client.sockname:
            return None
        fut = self._procs.get(client)
        if fut is None:
            fut = asyncio.ensure_future(asyncio.to_thread(local_process, client.peername[1], client.sockname[1]))
            self._procs[client] = fut
        elif fut.done() and not fut.cancelled() and fut.exception() is None:
            return fut.result()  # every later request on the connection: no timer, no task
        try:
            return await asyncio.wait_for(asyncio.shield(fut), timeout=5.0)
        except Exception:
            log.warning("pouch: could not find the local process of a client connection")
            return None

    # -- the hook --------------------------------------------------------------------------------
    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """Not a coroutine: mitmproxy (and ``Chain``) await what a hook returns, so a request
        identified without waiting (no proxy secret to check, no virtual key, no process lookup
        pending: most) makes no coroutine and costs no await."""
        if flow.response is not None or flow.metadata.get(SCOPE) is None:
            return None
        try:
            return self._identify_now(flow)
        except Exception as exc:  # fail closed: never charge an unidentified call to the wrong wallet
            self._failed(flow, exc)
            return None

    def _failed(self, flow: http.HTTPFlow, exc: Exception) -> None:
        log.exception("pouch: internal error while identifying a request", exc_info=exc)
        reply(flow, 500, f"pouch: internal error, the request was not sent ({type(exc).__name__})",
              code="pouch_internal_error", type_="server_error")

    async def _identify_later(self, flow: http.HTTPFlow, found: dict[bytes, bytes]) -> None:
        try:
            await self._identify(flow, found)
        except Exception as exc:
            self._failed(flow, exc)

    def _identify_now(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """The common cases identified here; what needs an await goes to ``_identify``."""
        found = header_index(flow.request.headers.fields).values
        if b"proxy-authorization" in found or self._auth.get(flow.client_conn) is not None:
            return self._identify_later(flow, found)
        token = _api_key(found, flow.metadata.get(PROVIDER, "openai"))
        if token.startswith(VIRTUAL_KEY_PREFIX):
            return self._identify_later(flow, found)
        client = flow.client_conn
        if self._by_process and _is_loopback(client.peername) and client.sockname:
            fut = self._procs.get(client)
            if fut is None or not fut.done() or fut.cancelled() or fut.exception() is not None:
                return self._identify_later(flow, found)
            found_proc = fut.result()
        else:
            found_proc = None
        if found_proc is not None:
            flow.metadata[IDENTITY] = Identity(found_proc[1], "process", None, None, found_proc[0])
        else:
            flow.metadata[IDENTITY] = _DEFAULT
        return None

    async def _identify(self, flow: http.HTTPFlow, found: dict[bytes, bytes]) -> None:
        creds = self._credentials(flow, found)
        wallet = via = None
        if creds is not None and creds[0]:
            problem = await self._check_secret(flow, *creds)
            if problem is not None:
                reply(flow, 401, problem, code="pouch_proxy_auth_failed")
                return
            wallet, via = creds[0], "proxy_auth"
        key_id = provider = None
        flow_provider = flow.metadata.get(PROVIDER, "openai")
        token = _api_key(found, flow_provider)
        if token.startswith(VIRTUAL_KEY_PREFIX):
            keys = self.core.keys
            records = await asyncio.to_thread(keys.by_hash) if keys is not None else {}
            rec, state = check_key(records, token, time.time())
            if rec is None or state != "active":
                what = "is not a key pouch issued" if rec is None else f"has been {state}"
                reply(flow, 401, f"pouch: the virtual key {fingerprint(token)} {what}",
                      code="invalid_api_key")
                return
            if rec.provider != flow_provider:
                # its real key would go to another provider's host: never swap it in
                reply(flow, 401, f"pouch: the virtual key {rec.id} was issued for {rec.provider}, not for "
                      f"{flow_provider} ({flow.request.pretty_host})", code="invalid_api_key")
                return
            if self.core.vault is None or rec.provider not in self.core.vault:
                why = self.core.vault_problem or f"the vault holds no {rec.provider!r} key (`pouch key add {rec.provider}`)"
                reply(flow, 503, f"pouch: cannot use virtual key {rec.id}: {why}", code="pouch_vault_unavailable",
                      type_="server_error")
                return
            key_id, provider = rec.id, rec.provider
            if wallet is None:
                wallet, via = rec.wallet, "key"
        pid = None
        if wallet is None:
            found = await self._process(flow.client_conn)
            if found is not None:
                pid, wallet = found
                via = "process"
        if wallet is None:
            wallet, via = DEFAULT_WALLET, "default"
        flow.metadata[IDENTITY] = Identity(wallet, via, key_id, provider, pid)
