"""``addons/walk.py``: mitmproxy's walk of its addons for a flow's events, leaner, same calls."""

from __future__ import annotations

import asyncio
import logging
import re
import types

import pytest
from mitmproxy import exceptions, hooks
from mitmproxy.addonmanager import AddonManager
from mitmproxy.proxy.layers.http import HttpRequestHook, HttpResponseHeadersHook
from mitmproxy.test import taddons, tflow

from pouch_addon.addons import walk


class Leaf:
    def __init__(self, log: list, tag: str, *, asynchronous: bool = False, fail: Exception | None = None,
                 grows: list | None = None) -> None:
        self.log, self.tag, self.fail, self.grows = log, tag, fail, grows

        def hit(*args):
            self.log.append((self.tag, args))
            if self.grows is not None:  # the hook gives the addon nested addons
                self.addons = self.grows
            if self.fail is not None:
                raise self.fail

        async def ahit(*args):
            await asyncio.sleep(0)
            hit(*args)
        for name in ("request", "responseheaders", "update"):
            setattr(self, name, ahit if asynchronous else hit)


class Nest:
    def __init__(self, *addons) -> None:
        self.addons = list(addons)


class Odd:
    """An addon whose hook-named attributes are not hooks: a module (skipped) and a number (an error)."""
    request = types.ModuleType("request")
    update = 5


def chain(log: list, halt: bool) -> list:
    return [
        Leaf(log, "a"), object(), Leaf(log, "b", asynchronous=True),
        Nest(Leaf(log, "n1"), Nest(Leaf(log, "n2", asynchronous=True), Leaf(log, "n3", fail=RuntimeError("n3")),
                                   Leaf(log, "n4")), Leaf(log, "n5")),
        Nest(Odd(), Leaf(log, "m1")),
        Odd(), Leaf(log, "c", fail=ValueError("c")), Leaf(log, "d", asynchronous=True, fail=KeyError("d")),
        Leaf(log, "g", grows=[Leaf(log, "g1"), Nest(Leaf(log, "g2"))]),
        *([Leaf(log, "h", fail=exceptions.AddonHalt())] if halt else []), Leaf(log, "z", asynchronous=True),
    ]


def walk_with(lean: bool, event_of, halt: bool, caplog) -> tuple[list, list]:
    log: list = []
    with taddons.context() as tctx:
        manager: AddonManager = tctx.master.addons
        manager.chain = chain(log, halt)
        if lean:
            assert walk.install(tctx.master)
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="mitmproxy.addonmanager"):
            asyncio.run(manager.handle_lifecycle(event_of(tflow.tflow(resp=True))))
        errors = [re.sub(" at 0x[0-9a-f]+", "", r.getMessage()) for r in caplog.records
                  if r.name == "mitmproxy.addonmanager"]
    return [(tag, [type(a).__name__ for a in args]) for tag, args in log], errors


@pytest.mark.parametrize("halt", [False, True])
@pytest.mark.parametrize("event_of", [HttpRequestHook, HttpResponseHeadersHook, lambda f: hooks.UpdateHook([f])])
def test_the_lean_walk_calls_what_mitmproxys_calls_in_its_order(event_of, halt, caplog):
    """Same hooks, same order, same errors logged, a halt ends both walks (the update after a flow
    event included: ``handle_lifecycle``)."""
    own = walk_with(False, event_of, halt, caplog)
    lean = walk_with(True, event_of, halt, caplog)
    assert lean == own
    calls, errors = own
    assert [t for t, _ in calls][:2] == ["a", "b"] and "n4" not in [t for t, _ in calls]  # the nest stops at n3
    assert ("g1" in [t for t, _ in calls]) and errors


def test_options_error_propagates_as_in_mitmproxys_walk():
    with taddons.context() as tctx:
        tctx.master.addons.chain = [Leaf([], "o", fail=exceptions.OptionsError("bad"))]
        assert walk.install(tctx.master)
        with pytest.raises(exceptions.OptionsError):
            asyncio.run(tctx.master.addons.trigger_event(HttpRequestHook(tflow.tflow())))


def test_other_events_and_another_mitmproxy_keep_mitmproxys_walk(monkeypatch):
    with taddons.context() as tctx:
        seen = []
        tctx.master.addons.trigger_event = lambda event: _record(seen, event)  # mitmproxy's, as far as install sees
        assert walk.install(tctx.master)
        asyncio.run(tctx.master.addons.trigger_event(hooks.RunningHook()))
        assert [type(e).__name__ for e in seen] == ["RunningHook"]
    with taddons.context() as tctx:
        monkeypatch.setattr(walk, "KNOWN", set())
        assert not walk.install(tctx.master)
        assert "trigger_event" not in vars(tctx.master.addons)


async def _record(seen: list, event) -> None:
    seen.append(event)


def test_mitmdump_gets_the_lean_walk_through_pouchs_chain():
    import pouch_addon.mitm_entry as entry

    (lean,) = [m for m in entry.addons[0].members if isinstance(m, walk.LeanWalk)]
    with taddons.context() as tctx:
        lean.load(None)  # as mitmproxy, through the chain's load, when it loads the script
        assert "trigger_event" in vars(tctx.master.addons)
