"""The audit log: who changed what (keys, wallets, budgets), hash-chained and append-only.

``audit.jsonl`` holds one JSON entry per line::

    {"seq": 1, "ts": 1795392000.0, "time": "2026-11-23T00:00:00.000Z", "actor": "alice",
     "action": "key.add", "details": {...}, "prev": "000…0", "hash": "3f9c…"}

``hash`` is the SHA-256 of the canonical JSON (sorted keys, no spaces) of the entry without
``hash``; ``prev`` is the previous entry's hash (64 zeros for the first). Editing, removing or
reordering an entry in the middle therefore breaks the chain. Removing entries from the *end*
leaves a valid chain, so after every append the head (entry count and last hash) is written
atomically to the sidecar ``audit.head``; :meth:`AuditLog.verify` compares the two.

What this does not do: the chain is not keyed, so someone who can write the files can rewrite
the whole log and its head consistently. It makes accidental damage and casual edits evident.

Appends hold an ``flock`` on the log, fsync the line, then write the head. A writer killed
between the two leaves one entry beyond the head that chains to it; that is accepted. A
writer killed mid-line leaves a torn last line: ``verify`` reports it and the next append cuts
it off (it was never recorded in the head). An append refuses (:class:`AuditError`) when the
log's end does not match its head, so truncation is not papered over (to start afresh, move
both files away).

Details must never hold secrets: :meth:`AuditLog.append` passes them through :func:`redact`.

API: ``AuditLog(path)`` with ``append(action, details=None, *, actor=None, now=None) -> dict``,
``verify() -> list[str]``, ``entries()``, ``head()``; :func:`redact`, :func:`entry_hash`,
:class:`AuditError`, ``GENESIS``.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import hashlib
import json
import os
import re
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

from .money import usd_str
from .vault import KNOWN_PREFIXES, write_private, fingerprint

__all__ = ["AUDIT_FILE", "GENESIS", "AuditError", "AuditLog", "entry_hash", "redact"]

AUDIT_FILE = "audit.jsonl"  # in the pouch home, beside the ledger
GENESIS = "0" * 64
_SECRET_WORDS = {"key", "apikey", "secret", "token", "passphrase", "password", "authorization"}
_FINGERPRINT = re.compile(r"^\S*…\S* \(sha256:[0-9a-f]{8}\)$")
_FIELDS = ("seq", "ts", "time", "actor", "action", "details", "prev", "hash")


class AuditError(RuntimeError):
    """The audit log cannot be appended to safely; the message says why."""


def _last_word(name: str) -> str:
    words = re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", name).lower())
    return words[-1] if words else ""


def _looks_secret(value: str) -> bool:
    return len(value) >= 20 and value.startswith(KNOWN_PREFIXES) and " " not in value


def redact(details: Any) -> Any:
    """A copy of ``details`` safe to log: secret-named string values become fingerprints.

    A key is secret-named when its last word is key, apikey, secret, token, passphrase,
    password or authorization (``api_key``, ``accessToken``; not ``key_name``, ``max_tokens``).
    Any string that looks like a provider or virtual key is fingerprinted wherever it is.
    Numbers, booleans and values already fingerprinted are kept.
    """
    if isinstance(details, dict):
        out = {}
        for k, v in details.items():
            if isinstance(v, str) and _last_word(str(k)) in _SECRET_WORDS and not _FINGERPRINT.match(v):
                out[k] = fingerprint(v)
            else:
                out[k] = redact(v)
        return out
    if isinstance(details, (list, tuple)):
        return [redact(v) for v in details]
    if isinstance(details, str) and _looks_secret(details):
        return fingerprint(details)
    return details


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return usd_str(value)
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"audit details must be JSON values, not {type(value).__name__}")


def _canonical(entry: dict[str, Any]) -> bytes:
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), default=_json_default).encode()


def entry_hash(entry: dict[str, Any]) -> str:
    """SHA-256 hex of the canonical JSON of ``entry`` without its ``hash`` field."""
    return hashlib.sha256(_canonical({k: v for k, v in entry.items() if k != "hash"})).hexdigest()


def _default_actor() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid:{os.getuid()}"


def _split(data: bytes) -> tuple[list[bytes], bytes]:
    """Complete lines (with their newline) and the torn remainder after the last newline."""
    cut = data.rfind(b"\n") + 1
    return data[:cut].splitlines(keepends=True), data[cut:]


class AuditLog:
    """``audit.jsonl`` and its ``audit.head`` sidecar (same directory, same stem)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.head_path = self.path.with_suffix(".head")

    # -- reading -----------------------------------------------------------------------------
    def entries(self) -> list[dict[str, Any]]:
        """Every complete, parseable entry, oldest first (no checks: see :meth:`verify`)."""
        try:
            lines, _ = _split(self.path.read_bytes())
        except FileNotFoundError:
            return []
        out = []
        for raw in lines:
            with contextlib.suppress(ValueError):
                out.append(json.loads(raw))
        return out

    def head(self) -> dict[str, Any] | None:
        """The recorded ``{"count", "hash"}``, ``None`` if there is no head file."""
        try:
            doc = json.loads(self.head_path.read_bytes())
            return {"count": int(doc["count"]), "hash": str(doc["hash"])}
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            return {"count": -1, "hash": "damaged"}

    def verify(self) -> list[str]:
        """Problems found in the chain and against the head; an empty list means intact."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return self._head_problems(0, None, self.head())
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)  # no append is half done while we read both files
            data = os.pread(fd, os.fstat(fd).st_size, 0)
            head = self.head()
        finally:
            os.close(fd)
        lines, torn = _split(data)
        problems: list[str] = []
        prev, last_seq, last = GENESIS, 0, None
        for lineno, raw in enumerate(lines, start=1):
            try:
                entry = json.loads(raw)
                seq = entry["seq"]
                if set(entry) != set(_FIELDS) or not isinstance(seq, int):
                    raise ValueError
            except (ValueError, TypeError, KeyError):
                problems.append(f"line {lineno}: not a valid audit entry (edited or damaged)")
                prev, last_seq, last = None, last_seq + 1, None
                continue
            if entry_hash(entry) != entry["hash"]:
                problems.append(f"line {lineno} (seq {seq}): content does not match its hash (entry edited)")
            if seq != last_seq + 1:
                problems.append(f"line {lineno}: seq {seq} follows seq {last_seq} (entries missing or out of order)")
            elif prev is not None and entry["prev"] != prev:
                problems.append(
                    f"line {lineno} (seq {seq}): does not chain to the entry before it "
                    "(one of them was edited or replaced)"
                )
            prev, last_seq, last = entry["hash"], seq, entry
        if torn:
            problems.append(
                f"line {len(lines) + 1}: torn entry at the end of the file ({len(torn)} bytes without a "
                "newline; a write was interrupted)"
            )
        problems.extend(self._head_problems(last_seq, last, head))
        return problems

    def _head_problems(self, last_seq: int, last: dict[str, Any] | None, head: dict[str, Any] | None) -> list[str]:
        if head is None:
            missing = f"{self.head_path.name} is missing: removal of the last entries cannot be detected"
            return [missing] if last_seq else []
        if head["count"] < 0:
            return [f"{self.head_path.name} is damaged"]
        if last_seq < head["count"]:
            return [
                f"the log ends at seq {last_seq} but {self.head_path.name} records {head['count']} entries "
                "(entries were removed from the end)"
            ]
        if last_seq == head["count"] and (last["hash"] if last else GENESIS) == head["hash"]:
            return []
        if last is not None and last_seq == head["count"] + 1 and last["prev"] == head["hash"]:
            return []  # killed between appending the line and writing the head
        return [f"the log's last entry (seq {last_seq}) does not match {self.head_path.name} (the log was rewritten)"]

    # -- appending ---------------------------------------------------------------------------
    def append(
        self, action: str, details: dict[str, Any] | None = None, *, actor: str | None = None, now: float | None = None
    ) -> dict[str, Any]:
        """Append one entry (details redacted), fsync it, update the head; returns the entry."""
        ts = time.time() if now is None else now
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            last, end = self._tail(fd)
            entry: dict[str, Any] = {
                "seq": (last["seq"] if last else 0) + 1,
                "ts": ts,
                "time": datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                "actor": actor or _default_actor(),
                "action": str(action),
                "details": redact(details or {}),
                "prev": last["hash"] if last else GENESIS,
            }
            entry = json.loads(_canonical(entry))  # exactly what will be read back
            entry["hash"] = entry_hash(entry)
            if end != os.fstat(fd).st_size:
                os.ftruncate(fd, end)  # a torn line from a killed writer, never recorded in the head
            os.write(fd, _canonical(entry) + b"\n")
            os.fsync(fd)
            head = json.dumps({"count": entry["seq"], "hash": entry["hash"]}, sort_keys=True) + "\n"
            write_private(self.head_path, head.encode())
            return entry
        finally:
            os.close(fd)  # releases the flock

    def _tail(self, fd: int) -> tuple[dict[str, Any] | None, int]:
        """The last complete entry and the offset where complete lines end; checks the head."""
        size = os.fstat(fd).st_size
        span = 4096
        while True:
            start = max(0, size - span)
            data = os.pread(fd, size - start, start)
            lines, torn = _split(data)
            if len(lines) >= 2 or start == 0:
                break
            span *= 4
        end = size - len(torn)
        last = None
        if lines:  # whole: the loop read from the start or at least one line before it
            try:
                last = json.loads(lines[-1])
                _ = last["seq"], last["hash"]
            except (ValueError, KeyError, TypeError):
                raise AuditError(f"the last entry of {self.path} is damaged; run `pouch audit verify`") from None
        problems = self._head_problems(last["seq"] if last else 0, last, self.head())
        if problems:
            raise AuditError(f"refusing to append to {self.path}: {problems[0]}; run `pouch audit verify`")
        return last, end
