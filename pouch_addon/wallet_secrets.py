"""Wallet proxy secrets kept for ``pouch run --wallet`` / ``pouch env --wallet``.

The proxy checks a wallet's secret against the SHA-256 hash in the ledger. So that an app can be
started under its wallet without the user copying the secret around, the CLI also keeps each
secret it issued in ``wallet-secrets.json`` (0600 in the 0700 pouch home), next to the ledger and
the vault key, which the same user can read anyway. ``--no-secret`` and ``wallet rm`` forget it.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

SECRETS_FILE = "wallet-secrets.json"


class SecretsError(Exception):
    """The secrets file cannot be read (its path and the reason in the message)."""


def load(home: Path) -> dict[str, str]:
    path = home / SECRETS_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as exc:
        raise SecretsError(f"{path} cannot be read: {exc}") from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise SecretsError(f"{path} is not a JSON object of wallet name -> secret")
    return data


def _write(home: Path, data: dict[str, str]) -> None:
    fd, tmp = tempfile.mkstemp(dir=home, prefix=".wallet-secrets.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:  # mkstemp makes it 0600
            json.dump(data, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, home / SECRETS_FILE)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def keep(home: Path, wallet: str, secret: str) -> None:
    _write(home, {**load(home), wallet: secret})


def forget(home: Path, wallet: str) -> None:
    data = load(home)
    if data.pop(wallet, None) is not None:
        _write(home, data)
