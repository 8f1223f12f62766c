"""Whether mitmproxy's own code is the code pouch's lean copies were written against.

``walk.LeanWalk`` and ``typecheck.LeanTypecheck`` replace mitmproxy functions with copies that do
the same with less work; each installs only over the source it replicates, identified by a hash,
so another mitmproxy keeps its own code (no gain, no breakage).
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from typing import Any

log = logging.getLogger(__name__)


def fingerprint(*fns: Any) -> str:
    """The first 16 hex digits of the sha256 of the functions' sources, joined by newlines."""
    return hashlib.sha256("\n".join(inspect.getsource(f) for f in fns).encode()).hexdigest()[:16]


def known(what: str, known_prints: set[str], *fns: Any) -> bool:
    """True when ``fns``' source is one of ``known_prints``; no source (a frozen build) or another
    source is False, logged at debug level."""
    try:
        fp = fingerprint(*fns)
    except (OSError, TypeError):
        return False
    if fp not in known_prints:
        log.debug(f"pouch: mitmproxy's {what} is not the one known ({fp}); left as it is")
        return False
    return True
