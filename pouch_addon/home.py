"""Where pouch keeps its data: ``--home``/``pouch_home``, else ``$POUCH_HOME``, else ``~/.pouch``.

A home that cannot be a directory (a file, a path under ``/proc``) is a :class:`HomeError` with
the path and the reason, never a traceback. Commands that only read (``status``, ``history``)
use :func:`home_path` and :func:`ledger_exists`, so a typo in ``--home`` says there is no ledger
there instead of silently creating an empty one.
"""

from __future__ import annotations

import os
from pathlib import Path

STATE_FILE = "state.json"  # the ledger's state file (budget.py uses the same name)


class HomeError(ValueError):
    """The pouch home cannot be used; the message names the path and says why."""


def home_path(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The data directory's path, without creating it."""
    if explicit:
        return Path(explicit).expanduser()
    if os.environ.get("POUCH_HOME"):
        return Path(os.environ["POUCH_HOME"]).expanduser()
    return Path.home() / ".pouch"


def resolve_home(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The data directory, created 0700 if missing."""
    home = home_path(explicit)
    if home.exists() and not home.is_dir():
        raise HomeError(f"pouch home {home} is not a directory (give --home a directory, or set POUCH_HOME)")
    try:
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise HomeError(f"cannot create pouch home {home}: {exc.strerror or exc}") from None
    return home


def ledger_exists(home: Path) -> bool:
    """Whether ``home`` holds a ledger (its state file, or history written ahead of one)."""
    return (home / STATE_FILE).exists() or (home / "history").is_dir()


def ledger_home(explicit: str | os.PathLike[str] | None = None, *, create: bool = False) -> Path:
    """The home of an existing ledger, or (``create``, for commands that set something up) a
    home made ready for a new one. Otherwise a missing ledger is a :class:`HomeError` that says
    how to create one, so a typo in --home never reads as an empty $0 ledger."""
    path = home_path(explicit)
    if not create and not ledger_exists(path):
        if path.exists() and not path.is_dir():
            raise HomeError(f"pouch home {path} is not a directory (give --home a directory, or set POUCH_HOME)")
        raise HomeError(f"no ledger at {path}: run `pouch budget set AMOUNT` to create one")
    return resolve_home(path)
