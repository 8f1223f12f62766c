"""``Chain``: pouch's concern addons as ONE addon of mitmproxy's chain.

mitmproxy looks every event up on every addon it can reach (its chain, and each addon's
``addons`` recursively): a generator step, a ``hasattr`` and a ``getattr`` per addon for each of
the ~8 events of a request (requestheaders, request, responseheaders, response, an ``update``
after each), whether the addon handles the event or not. pouch's eight concern addons made that
eight lookups more per event, on the event loop, for every request.

``Chain`` finds the concern hooks once, when it is built: for each mitmproxy event that at least
one concern handles it has an attribute that calls those hooks in chain order (or is the hook
itself when only one concern handles the event); events no concern handles are not defined on
it. The concerns stay what they are (one class per concern, in ``addons/__init__.py``'s order);
only the lookup is done once instead of per event.

What happens on an exception is what mitmproxy does with nested addons (pouch's always were:
a script's addons are nested in mitmproxy's script loader): mitmproxy's ``safecall`` around the
whole nesting logs it (``Addon error: ...``) and the hooks after the failing one are not called
for that event; ``AddonHalt`` and ``OptionsError`` propagate as before.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from types import CoroutineType
from typing import Any

import mitmproxy.addonmanager  # noqa: F401  (registers the load hook)
import mitmproxy.log  # noqa: F401  (and the others: every hook is known once its module is imported)
import mitmproxy.proxy.layers  # noqa: F401
import mitmproxy.proxy.server_hooks  # noqa: F401
from mitmproxy import hooks


def _one(fns: list[Callable[..., Any]]) -> Callable[..., Any]:
    """One callable for the hooks ``fns`` of an event, in order (async when any of them is)."""
    if len(fns) == 1:
        return fns[0]
    if any(inspect.iscoroutinefunction(f) for f in fns):
        async def hook(*args: Any) -> None:
            for f in fns:
                res = f(*args)
                # a coroutine is tested by its type first: ``inspect.isawaitable`` is a Python
                # function of several isinstance checks, asked per async hook of every event
                if res is not None and (type(res) is CoroutineType or inspect.isawaitable(res)):
                    await res
        return hook

    def sync_hook(*args: Any) -> None:
        for f in fns:
            f(*args)
    return sync_hook


class Chain:
    """The concern addons ``members``, in order, as one mitmproxy addon (see the module docstring).

    The list is ``members``, never ``addons``: mitmproxy would walk an ``addons`` attribute and
    call every concern's hooks a second time."""

    def __init__(self, members: Iterable[object]) -> None:
        self.members = list(members)
        self.hook_names: list[str] = []
        for name in hooks.all_hooks:
            fns = [f for f in (getattr(a, name, None) for a in self.members) if callable(f)]
            if fns:
                setattr(self, name, _one(fns))
                self.hook_names.append(name)

    def __repr__(self) -> str:
        return f"Chain({', '.join(type(a).__name__ for a in self.members)})"
