"""``Chain``: pouch's concern addons as one mitmproxy addon, each event's hooks called in order."""

from __future__ import annotations

import asyncio
import inspect

import pytest
from mitmproxy import hooks
from mitmproxy.addonmanager import traverse

from pouch_addon.addons import make_addons
from pouch_addon.addons.chain import Chain


def test_mitmproxy_reaches_one_pouch_addon_for_every_event():
    """mitmproxy looks each event up on every addon it reaches: one for pouch, not eight."""
    import pouch_addon.mitm_entry as entry

    reached = list(traverse(entry.addons))
    assert len(reached) == 1 and isinstance(reached[0], Chain)
    assert not hasattr(reached[0], "addons")  # mitmproxy would walk it and call every hook twice


def test_every_concern_hook_is_on_the_chain_and_nothing_else():
    concerns = make_addons()
    chain = Chain(concerns)
    handled = {name for name in hooks.all_hooks if any(callable(getattr(a, name, None)) for a in concerns)}
    assert set(chain.hook_names) == handled
    assert {"load", "configure", "running", "done", "requestheaders", "request", "responseheaders", "response",
            "error"} <= handled
    for name in set(hooks.all_hooks) - handled:
        assert getattr(chain, name, None) is None, name  # mitmproxy skips it: no call at all


class Rec:
    def __init__(self, log: list, tag: str, asynchronous: bool, fail: bool = False) -> None:
        self.log, self.tag, self.fail = log, tag, fail
        if asynchronous:
            async def request(flow):
                await asyncio.sleep(0)
                self._hit("request", flow)
        else:
            def request(flow):
                self._hit("request", flow)
        self.request = request

    def _hit(self, name, arg):
        self.log.append((self.tag, name, arg))
        if self.fail:
            raise RuntimeError(self.tag)

    def configure(self, updated):
        self._hit("configure", updated)


def run_hook(chain: Chain, name: str, *args):
    res = getattr(chain, name)(*args)
    if inspect.isawaitable(res):
        asyncio.run(res)


@pytest.mark.parametrize("kinds", [(False, False, False), (True, False, True), (True, True, True)])
def test_hooks_run_in_chain_order_sync_and_async(kinds):
    log: list = []
    chain = Chain([Rec(log, str(i), k) for i, k in enumerate(kinds)])
    run_hook(chain, "request", "flow")
    run_hook(chain, "configure", {"x"})
    assert log == [(str(i), "request", "flow") for i in range(3)] + [(str(i), "configure", {"x"}) for i in range(3)]
    assert inspect.iscoroutinefunction(chain.request) == any(kinds)
    assert not inspect.iscoroutinefunction(chain.configure)  # mitmproxy calls configure synchronously


def test_a_single_handler_is_the_hook_itself():
    log: list = []
    a = Rec(log, "a", False)
    chain = Chain([a, object()])
    assert chain.request is a.request


def test_an_exception_stops_the_later_hooks_of_that_event_like_nested_addons():
    log: list = []
    chain = Chain([Rec(log, "a", False), Rec(log, "b", True, fail=True), Rec(log, "c", True)])
    with pytest.raises(RuntimeError):
        run_hook(chain, "request", "f")
    assert [t for t, _, _ in log] == ["a", "b"]
