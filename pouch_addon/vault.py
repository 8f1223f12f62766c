"""The key vault: real provider API keys encrypted at rest, plus pouch's own virtual keys.

Encryption: each secret is sealed with AES-256-GCM under one vault key, with a fresh random
12-byte nonce and the secret's *name* as associated data, so a ciphertext moved under another
name fails to decrypt instead of handing out the wrong key. The vault key is either

- derived from a passphrase with scrypt (n=2**15, r=8, p=1, 16-byte random salt), or
- 32 random bytes kept in a separate keyfile (mode 0600) when the user chooses no passphrase;
  that protects against a leaked vault file or backup, not against someone who can read the
  whole pouch home.

File (JSON, mode 0600, replaced atomically, parent directory tightened to 0700)::

    {"format": "pouch-vault", "version": 1,
     "kdf": {"name": "scrypt", "n": 32768, "r": 8, "p": 1, "salt": "<b64>"} | {"name": "keyfile"},
     "check": {"nonce": "<b64>", "ciphertext": "<b64>"},
     "secrets": {"<name>": {"nonce": "<b64>", "ciphertext": "<b64>"}}}

``check`` seals a constant so a wrong passphrase or keyfile is reported at :meth:`Vault.open`,
even for an empty vault. Every failure is a :class:`VaultError` with a plain message, never a
cryptography traceback. A ``Vault`` is an in-memory snapshot: concurrent writers must be
serialised by the caller (e.g. under the ledger lock); readers reopen to see later changes.

Only :func:`fingerprint` output may ever be shown or logged: a known public prefix, the last 4
characters and 8 hex digits of SHA-256, e.g. ``sk-proj-…a1b2 (sha256:3f9c1e2a)``.

Virtual keys (``pk-pouch-`` + 32 url-safe characters) are what clients send instead of a real
key; pouch stores only :func:`hash_virtual_key` of them.

API: ``Vault.create(path, passphrase, keyfile=None)``, ``Vault.open(path, passphrase, keyfile=None)``,
``put(name, secret) -> fingerprint``, ``get(name)``, ``names()``, ``remove(name)``;
:func:`fingerprint`, :func:`issue_virtual_key`, :func:`hash_virtual_key`, :func:`verify_virtual_key`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import secrets
import stat
import unicodedata
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

__all__ = [
    "VIRTUAL_KEY_PREFIX", "Vault", "VaultError", "fingerprint", "hash_virtual_key", "issue_virtual_key",
    "verify_virtual_key", "write_private",
]

FORMAT = "pouch-vault"
VERSION = 1
SCRYPT_PARAMS = {"n": 2**15, "r": 8, "p": 1}
_CHECK_AAD = b"\x00pouch-vault-check"  # names cannot contain NUL, so no secret shares this AAD
_CHECK_PLAINTEXT = b"pouch-vault-v1"
VIRTUAL_KEY_PREFIX = "pk-pouch-"
# Public, fixed prefixes that identify a provider without revealing anything secret.
KNOWN_PREFIXES = ("pk-pouch-", "sk-proj-", "sk-ant-", "sk-or-", "sk-", "gsk_", "xai-", "AIza")


class VaultError(Exception):
    """The vault cannot be opened or used; the message says why, without any secret."""


def fingerprint(secret: str) -> str:
    """A short, safe identification of a secret: known prefix, last 4 chars, sha256 prefix.

    Secrets shorter than 16 characters show no characters at all, only the hash.
    """
    digest = hashlib.sha256(secret.encode()).hexdigest()[:8]
    if len(secret) < 16:
        return f"… (sha256:{digest})"
    prefix = next((p for p in KNOWN_PREFIXES if secret.startswith(p)), "")
    return f"{prefix}…{secret[-4:]} (sha256:{digest})"


def issue_virtual_key() -> str:
    """A new virtual key: ``pk-pouch-`` + 32 url-safe random characters (192 bits)."""
    return VIRTUAL_KEY_PREFIX + secrets.token_urlsafe(24)


def hash_virtual_key(key: str) -> str:
    """The SHA-256 hex digest stored in place of a virtual key (the key itself is never stored)."""
    return hashlib.sha256(key.encode()).hexdigest()


def verify_virtual_key(key: str, stored_hash: str) -> bool:
    """Whether ``key`` hashes to ``stored_hash`` (constant-time comparison)."""
    return hmac.compare_digest(hash_virtual_key(key), stored_hash)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: str | bytes) -> bytes:
    if not isinstance(text, (str, bytes)):
        raise TypeError(f"expected base64 text, not {type(text).__name__}")
    return base64.b64decode(text, validate=True)


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name or len(name) > 200 or not name.isprintable():
        raise VaultError(f"invalid secret name {name!r}: use 1-200 printable characters")
    return name


def write_private(path: Path, payload: bytes) -> None:
    """Atomically replace ``path`` (temp + fsync + rename, 0600) inside a 0700 directory."""
    parent = path.parent
    parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if stat.S_IMODE(parent.stat().st_mode) & 0o077:
        os.chmod(parent, 0o700)
    tmp = parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)  # in case a stale temp file existed with other bits
        os.write(fd, payload)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(parent, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def _read_keyfile(keyfile: Path) -> bytes:
    try:
        st = keyfile.stat()
        raw = keyfile.read_bytes()
    except FileNotFoundError:
        raise VaultError(f"vault keyfile {keyfile} does not exist") from None
    if stat.S_IMODE(st.st_mode) & 0o077:
        raise VaultError(
            f"vault keyfile {keyfile} is readable by others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"run `chmod 600 {keyfile}`"
        )
    try:
        key = _unb64(raw.strip())
    except (binascii.Error, ValueError):
        key = b""
    if len(key) != 32:
        raise VaultError(f"vault keyfile {keyfile} is damaged (expected a base64 32-byte key)")
    return key


def _derive(passphrase: str, kdf: dict[str, Any]) -> bytes:
    n, r, p = int(kdf["n"]), int(kdf["r"]), int(kdf["p"])
    if not (2 <= n and 1 <= r and 1 <= p <= 16 and n * r <= 2**21):  # <= 256 MiB: a tampered file must not OOM us
        raise ValueError(f"unsupported scrypt parameters n={n} r={r} p={p}")
    # NFC so the same passphrase typed on different systems derives the same key
    material = unicodedata.normalize("NFC", passphrase).encode()
    return Scrypt(salt=_unb64(kdf["salt"]), length=32, n=n, r=r, p=p).derive(material)


class Vault:
    """An open vault. Create with :meth:`create`, open with :meth:`open`."""

    def __init__(self, path: Path, key: bytes, doc: dict[str, Any]) -> None:
        self.path = path
        self._aead = AESGCM(key)
        self._doc = doc

    def __repr__(self) -> str:  # never the key or any secret
        return f"<Vault {self.path} ({len(self._doc['secrets'])} secrets)>"

    # -- lifecycle -------------------------------------------------------------------------
    @classmethod
    def create(cls, path: str | os.PathLike[str], passphrase: str | None, keyfile: Path | None = None) -> Vault:
        """A new, empty vault at ``path`` protected by ``passphrase``, or by ``keyfile`` if it is None.

        Refuses to overwrite an existing vault. An existing keyfile is reused (after the same
        checks as :meth:`open`); a missing one is created with a fresh random key.
        """
        path = Path(path)
        if path.exists():
            raise VaultError(f"a vault already exists at {path}; it was not changed")
        if passphrase is not None:
            if keyfile is not None:
                raise VaultError("choose either a passphrase or a keyfile, not both")
            if not passphrase:
                raise VaultError("the passphrase is empty; choose no passphrase to use a keyfile instead")
            kdf: dict[str, Any] = {"name": "scrypt", **SCRYPT_PARAMS, "salt": _b64(os.urandom(16))}
            key = _derive(passphrase, kdf)
        else:
            if keyfile is None:
                raise VaultError("without a passphrase the vault needs a keyfile path")
            keyfile = Path(keyfile)
            if keyfile.exists():
                key = _read_keyfile(keyfile)
            else:
                key = AESGCM.generate_key(bit_length=256)
                write_private(keyfile, (_b64(key) + "\n").encode())
            kdf = {"name": "keyfile"}
        vault = cls(path, key, {"format": FORMAT, "version": VERSION, "kdf": kdf, "secrets": {}})
        vault._doc["check"] = vault._seal(_CHECK_PLAINTEXT, _CHECK_AAD)
        vault._save({})
        return vault

    @classmethod
    def open(cls, path: str | os.PathLike[str], passphrase: str | None, keyfile: Path | None = None) -> Vault:
        """Open an existing vault; a wrong passphrase or keyfile raises :class:`VaultError`."""
        path = Path(path)
        try:
            doc = json.loads(path.read_bytes())
        except FileNotFoundError:
            raise VaultError(f"no vault at {path}") from None
        except (OSError, ValueError) as exc:
            raise VaultError(f"vault file {path} cannot be read: {exc}") from None
        try:
            if doc["format"] != FORMAT:
                raise VaultError(f"{path} is not a pouch vault")
            if doc["version"] != VERSION:
                raise VaultError(f"vault {path} has version {doc['version']!r}; this pouch reads version {VERSION}")
            kdf = doc["kdf"]
            if kdf["name"] == "scrypt":
                if not passphrase:
                    raise VaultError(f"vault {path} is protected by a passphrase")
                key = _derive(passphrase, kdf)
            elif kdf["name"] == "keyfile":
                if keyfile is None:
                    raise VaultError(f"vault {path} is protected by a keyfile; none was given")
                key = _read_keyfile(Path(keyfile))
            else:
                raise VaultError(f"vault {path} uses an unknown key derivation {kdf['name']!r}")
            vault = cls(path, key, doc)
            if not isinstance(doc["secrets"], dict):
                raise TypeError("secrets is not an object")
            check = vault._unseal(doc["check"], _CHECK_AAD)
        except VaultError:
            raise
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise VaultError(f"vault file {path} is damaged ({exc!r})") from None
        if check != _CHECK_PLAINTEXT:
            raise VaultError(f"vault file {path} is damaged (bad check value)")
        return vault

    # -- secrets -----------------------------------------------------------------------------
    def names(self) -> list[str]:
        return sorted(self._doc["secrets"])

    def __contains__(self, name: object) -> bool:
        return name in self._doc["secrets"]

    def put(self, name: str, secret: str) -> str:
        """Store (or replace) ``secret`` under ``name``; returns its :func:`fingerprint`."""
        _check_name(name)
        if not isinstance(secret, str) or not secret:
            raise VaultError("the secret must be a non-empty string")
        self._save({**self._doc["secrets"], name: self._seal(secret.encode(), name.encode())})
        return fingerprint(secret)

    def get(self, name: str) -> str:
        """The secret stored under ``name``; ``KeyError`` if there is none."""
        try:
            entry = self._doc["secrets"][name]
        except KeyError:
            raise KeyError(f"no secret named {name!r} in the vault") from None
        try:
            return self._unseal(entry, name.encode()).decode()
        except (KeyError, TypeError, ValueError, binascii.Error) as exc:
            raise VaultError(f"secret {name!r} in {self.path} is damaged ({exc!r})") from None

    def remove(self, name: str) -> None:
        """Delete ``name`` (``KeyError`` if absent); the file is rewritten without it."""
        if name not in self._doc["secrets"]:
            raise KeyError(f"no secret named {name!r} in the vault")
        self._save({k: v for k, v in self._doc["secrets"].items() if k != name})

    # -- internals ---------------------------------------------------------------------------
    def _seal(self, plaintext: bytes, aad: bytes) -> dict[str, str]:
        nonce = os.urandom(12)
        return {"nonce": _b64(nonce), "ciphertext": _b64(self._aead.encrypt(nonce, plaintext, aad))}

    def _unseal(self, entry: dict[str, Any], aad: bytes) -> bytes:
        try:
            return self._aead.decrypt(_unb64(entry["nonce"]), _unb64(entry["ciphertext"]), aad)
        except InvalidTag:
            if aad == _CHECK_AAD:
                raise VaultError(f"wrong passphrase or damaged vault file {self.path}") from None
            raise VaultError(
                f"secret {aad.decode()!r} in {self.path} cannot be decrypted: the vault file was "
                "modified or damaged (an entry only decrypts under its own name)"
            ) from None

    def _save(self, secrets: dict[str, Any]) -> None:
        """Write the vault with ``secrets``; memory changes only once the file has been replaced."""
        doc = {**self._doc, "secrets": secrets}
        write_private(self.path, (json.dumps(doc, sort_keys=True, indent=1) + "\n").encode())
        self._doc = doc
