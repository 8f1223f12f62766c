"""mitmproxy's walk of its addons for a flow's events, without its per-addon machinery (issue 20).

For each event of a flow (``requestheaders``, ``request``, ``responseheaders``, ``response``,
``error`` and the ``update`` after each) mitmproxy's ``AddonManager.trigger_event`` goes through
every addon of its chain (36 in mitmdump) with a ``safecall`` context manager, an
``invoke_addon`` coroutine and two nested generators each, whether the addon handles the event or
not: ~2-5 us per addon on this VM, ~100-200 us per event. On a lone call's path that is the
``request`` and ``update`` walks between pouch's reservation and the first byte upstream (bare
mitmdump, with ``stream_large_bodies``, pays them after its request left), and the
``responseheaders`` and ``update`` walks between the answer's head and the client's.

``install`` gives this master's ``AddonManager`` (an instance attribute: nothing else is changed)
a ``trigger_event`` that does for those events what mitmproxy's does, in the same order, with the
per-addon work only where there is a hook or nested addons (mitmproxy's script loader, where pouch
is): each hook looked up when the walk reaches it, called, what it returns awaited; nested addons
depth first after their parent's hook, as ``traverse``; a module of a hook's name skipped, another
non-callable an ``AddonManagerError``; an exception stops that top-level addon's hooks and goes
through mitmproxy's own ``safecall`` (logged as ``Addon error``; ``AddonHalt`` ends the walk,
``OptionsError`` propagates). Every other event keeps mitmproxy's code. Installed only when
mitmproxy's functions are the ones this was written against (their source hashed): another
mitmproxy keeps its own walk.
"""

from __future__ import annotations

import inspect
import types
from typing import Any

from mitmproxy import addonmanager, exceptions

from . import mitm_source

#: the events walked here: a flow's (HTTP, and the ``update`` mitmproxy sends after each)
EVENTS = frozenset({"requestheaders", "request", "responseheaders", "response", "error", "update"})

#: sha256 of the source of mitmproxy's functions this replicates, as in the versions checked
#: (mitmproxy 11.0.2); another source keeps mitmproxy's own walk
KNOWN = {"c886fe03a654849d"}
_END = object()


def _walk_functions() -> tuple[Any, ...]:
    am = addonmanager.AddonManager
    return (addonmanager.traverse, addonmanager.safecall, am.trigger_event, am.invoke_addon, am._iter_hooks,
            am.handle_lifecycle)


def lean_trigger_event(manager: Any) -> Any:
    """``manager.trigger_event`` for the events of ``EVENTS`` (see the module docstring)."""
    own = manager.trigger_event
    safecall = addonmanager.safecall
    halt = exceptions.AddonHalt
    isawaitable = inspect.isawaitable

    async def nested(addons: Any, name: str, event: Any) -> None:
        """mitmproxy's ``traverse`` of nested addons, depth first, each hook called as it is reached."""
        stack = [iter(addons)]
        while stack:
            a = next(stack[-1], _END)
            if a is _END:
                stack.pop()
                continue
            func = getattr(a, name, None)
            if func:
                if callable(func):
                    res = func(*event.args())
                    if res is not None and isawaitable(res):
                        await res
                elif not isinstance(func, types.ModuleType):  # a module of that name is skipped
                    raise exceptions.AddonManagerError(f"Addon handler {name} ({a}) not callable")
            if hasattr(a, "addons"):
                stack.append(iter(a.addons))

    async def trigger_event(event: Any) -> None:
        name = event.name
        if name not in EVENTS:
            return await own(event)
        for a in manager.chain:
            func = getattr(a, name, None)
            if not func and not hasattr(a, "addons"):  # most addons: nothing to call
                continue
            try:  # what mitmproxy's safecall around its invoke_addon does
                if func:
                    if callable(func):
                        res = func(*event.args())
                        if res is not None and isawaitable(res):
                            await res
                    elif not isinstance(func, types.ModuleType):
                        raise exceptions.AddonManagerError(f"Addon handler {name} ({a}) not callable")
                if hasattr(a, "addons"):
                    await nested(a.addons, name, event)
            except halt:
                return
            except Exception:
                with safecall():  # mitmproxy's: logs "Addon error" (OptionsError propagates)
                    raise
    return trigger_event


def install(master: Any) -> bool:
    """Give ``master.addons`` the lean walk; False (and nothing changed) for an unknown mitmproxy."""
    manager = master.addons
    if getattr(manager, "_pouch_lean_walk", False):
        return True
    if not mitm_source.known("addon walk", KNOWN, *_walk_functions()):
        return False
    manager.trigger_event = lean_trigger_event(manager)
    manager._pouch_lean_walk = True
    return True


class LeanWalk:
    """A member of pouch's ``Chain`` that installs the lean walk when mitmproxy loads pouch."""

    def load(self, loader: Any) -> None:
        from mitmproxy import ctx
        install(ctx.master)
