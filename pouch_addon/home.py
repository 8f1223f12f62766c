"""Where pouch keeps its data: ``--home``/``pouch_home``, else ``$POUCH_HOME``, else ``~/.pouch``."""

from __future__ import annotations

import os
from pathlib import Path


def resolve_home(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The data directory, created 0700 if missing."""
    if explicit:
        home = Path(explicit).expanduser()
    elif os.environ.get("POUCH_HOME"):
        home = Path(os.environ["POUCH_HOME"]).expanduser()
    else:
        home = Path.home() / ".pouch"
    home.mkdir(mode=0o700, parents=True, exist_ok=True)
    return home
