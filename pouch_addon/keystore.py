"""Virtual keys pouch issued (``pk-pouch-...``): which wallet each charges, expiry, revocation.

Only the SHA-256 of a virtual key is stored (:func:`vault.hash_virtual_key`), with a short
public ``id`` (8 hex digits) to name it in commands and logs and its :func:`vault.fingerprint`.
The key itself is printed once by ``pouch key issue`` and never written anywhere.

File ``keys.json`` in the pouch home (mode 0600, replaced atomically, changes serialised by an
``flock`` on ``keys.lock``)::

    {"format": "pouch-keys", "version": 1,
     "keys": {"<id>": {"id", "hash", "wallet", "provider", "created", "expires", "revoked",
                       "fingerprint"}}}

:func:`check_key` is the pure rule the proxy applies: a presented key is ``unknown``,
``revoked``, ``expired`` (``now >= expires``) or valid. ``KeyStore.load()`` is cheap to call
again: it re-reads the file only when its size or mtime changed.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from .vault import VIRTUAL_KEY_PREFIX, fingerprint, hash_virtual_key, issue_virtual_key, write_private

__all__ = ["KEYS_FILE", "KeyRecord", "KeyStore", "check_key"]

KEYS_FILE = "keys.json"
FORMAT = "pouch-keys"


@dataclass(frozen=True)
class KeyRecord:
    id: str
    hash: str
    wallet: str
    provider: str
    created: float
    expires: float | None = None
    revoked: float | None = None
    fingerprint: str = ""

    def state(self, now: float) -> str:
        if self.revoked is not None:
            return "revoked"
        if self.expires is not None and now >= self.expires:
            return "expired"
        return "active"


def check_key(records: dict[str, KeyRecord], key: str, now: float) -> tuple[KeyRecord | None, str]:
    """``(record, state)`` for a presented virtual key; state is unknown/revoked/expired/active.

    ``records`` is keyed by hash (see :meth:`KeyStore.by_hash`); hashes are compared as dict
    keys of a SHA-256, which reveals nothing useful about the key to a timing attacker.
    """
    if not key.startswith(VIRTUAL_KEY_PREFIX):
        return None, "unknown"
    rec = records.get(hash_virtual_key(key))
    if rec is None:
        return None, "unknown"
    return rec, rec.state(now)


class KeyStore:
    def __init__(self, home: str | os.PathLike[str]) -> None:
        self.path = Path(home) / KEYS_FILE
        self.lock_path = Path(home) / "keys.lock"
        self._stamp: tuple[int, int] | None = None
        self._by_hash: dict[str, KeyRecord] = {}

    # -- reading ---------------------------------------------------------------------------
    def _read(self) -> dict[str, KeyRecord]:
        try:
            doc = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise ValueError(f"{self.path} is damaged ({exc})") from None
        if doc.get("format") != FORMAT:
            raise ValueError(f"{self.path} is not a pouch key file")
        return {k: KeyRecord(**v) for k, v in doc.get("keys", {}).items()}

    def records(self) -> list[KeyRecord]:
        return sorted(self._read().values(), key=lambda r: r.created)

    def by_hash(self) -> dict[str, KeyRecord]:
        """Records keyed by hash, re-read only when the file changed (blocking: off the event loop)."""
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size)
        except FileNotFoundError:
            stamp = None
        if stamp != self._stamp or stamp is None:
            self._by_hash = {r.hash: r for r in self._read().values()}
            self._stamp = stamp
        return self._by_hash

    # -- changes -----------------------------------------------------------------------------
    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, KeyRecord]]:
        self.lock_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            records = self._read()
            yield records
            doc: dict[str, Any] = {"format": FORMAT, "version": 1,
                                   "keys": {k: asdict(v) for k, v in sorted(records.items())}}
            write_private(self.path, (json.dumps(doc, indent=1, sort_keys=True) + "\n").encode())
        finally:
            os.close(fd)

    def issue(self, wallet: str, *, provider: str = "openai", expires: float | None = None,
              now: float) -> tuple[str, KeyRecord]:
        """A new virtual key for ``wallet``: returns the key (show it once) and its stored record."""
        key = issue_virtual_key()
        with self._locked() as records:
            kid = secrets.token_hex(4)
            while kid in records:
                kid = secrets.token_hex(4)
            rec = KeyRecord(kid, hash_virtual_key(key), wallet, provider, now, expires, None, fingerprint(key))
            records[kid] = rec
        return key, rec

    def revoke(self, kid: str, *, now: float) -> KeyRecord:
        with self._locked() as records:
            rec = records.get(kid)
            if rec is None:
                raise KeyError(f"no virtual key with id {kid!r} (see `pouch key list`)")
            if rec.revoked is None:
                rec = records[kid] = KeyRecord(**{**asdict(rec), "revoked": now})
        return rec
