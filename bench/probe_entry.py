"""A ``mitmdump -s`` entry for ``bench/probe_trace.py``: pouch (or nothing: ``PHASE_MODE=bare``)
between two probe addons that timestamp each hook of the probe flows (``GET /v1/models``
carrying ``x-probe-seq``), plus the socket events of the probe's connection (the client's data
read, the writes upstream, the provider's data read, the writes to the client), every turn of
the event loop (``select`` called / returned, events ready) and every executor job (which
function, when). Bench-only: pouch itself carries no instrumentation.

Timestamps are ``time.perf_counter()`` (CLOCK_MONOTONIC, the bench's clock too). A probe's
record is written to ``$PROBE_OUT`` (one JSON line) when the next request on its connection
starts (its socket events after the ``response`` hook are then in). A request carrying
``x-probe-dump: PATH`` makes the entry write the loop's turns and the executor jobs recorded
since the last dump to PATH (JSON) and start afresh.
"""

from __future__ import annotations

import asyncio
import json
import os
import selectors
import time
from array import array

from mitmproxy import http
from mitmproxy.proxy import events as E
from mitmproxy.proxy import server as S

MODE = os.environ.get("PHASE_MODE", "pouch")
OUT = os.environ.get("PROBE_OUT", "/dev/null")
KEY = "probe_trace"
now = time.perf_counter
_out = open(OUT, "a", buffering=1)

PROBE_CLIENTS: set[str] = set()  # client connection ids that carried a probe
STATE: dict[str, dict] = {}  # client id -> {"io": socket events of the call in flight, "flow": hooks of the last}
WRITERS: dict = {}  # StreamWriter -> (state, is the client side)
#: every select(): when called, when returned, how many events
SEL_CALL, SEL_RET, SEL_N = array("d"), array("d"), array("l")
#: the loop thread's CPU time at each select() call / return (a turn's wall minus its CPU: the loop
#: stalled mid-turn, on the GIL or preempted)
CPU_CALL, CPU_RET = array("d"), array("d")
tnow = time.thread_time
EXEC: list = []  # (time, function name) of each run_in_executor


def _finish(st: dict) -> None:
    if st.get("flow") is not None:
        rec = dict(st["flow"])
        rec.update(st["io"])
        _out.write(json.dumps(rec) + "\n")
        st["flow"] = None


def _dump(path: str) -> None:
    if HOOKPROF is not None:
        HOOKPROF.dump_stats(os.environ["PROBE_HOOKPROF"] + "-" + MODE)
    with open(path, "w") as f:
        json.dump({"call": list(SEL_CALL), "ret": list(SEL_RET), "n": list(SEL_N), "exec": EXEC,
                   "cpu_call": list(CPU_CALL), "cpu_ret": list(CPU_RET)}, f)
    for a in (SEL_CALL, SEL_RET, SEL_N, CPU_CALL, CPU_RET):
        del a[:]
    EXEC.clear()


class First:
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        t = now()
        h = flow.request.headers
        if "x-probe-dump" in h:
            _dump(h["x-probe-dump"])
        if "x-probe-seq" in h:
            cid = flow.client_conn.id
            PROBE_CLIENTS.add(cid)
            STATE.setdefault(cid, {"io": {}, "flow": None})
            flow.metadata[KEY] = {"seq": int(h["x-probe-seq"]), "rqh0": t}

    def request(self, flow: http.HTTPFlow) -> None:
        if _stamp(flow, "rq0") is not None and HOOKPROF is not None:
            HOOKPROF.enable()

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        _stamp(flow, "rsh0")

    def response(self, flow: http.HTTPFlow) -> None:
        _stamp(flow, "rs0")


class Last:
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        _stamp(flow, "rqh1")

    def request(self, flow: http.HTTPFlow) -> None:
        if HOOKPROF is not None and KEY in flow.metadata:
            HOOKPROF.disable()
        _stamp(flow, "rq1")

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        d = _stamp(flow, "rsh1")
        if d is not None:
            d["streamed"] = bool(flow.response.stream)

    def response(self, flow: http.HTTPFlow) -> None:
        d = _stamp(flow, "rs1")
        if d is not None:
            if CENSUS is not None:
                CENSUS[0] = None
            st = STATE.get(flow.client_conn.id)
            if st is not None:
                _finish(st)  # (a record not completed by a next request: keep the newest only)
                st["flow"] = d


def _stamp(flow: http.HTTPFlow, key: str) -> dict | None:
    """A probe's record (None for any other flow) with the time ``key`` set to now."""
    d = flow.metadata.get(KEY)
    if d is not None:
        d[key] = now()
    return d


def _trace() -> None:
    write = asyncio.StreamWriter.write

    def traced_write(self, data):
        w = WRITERS.get(self)
        if w is not None:
            t = now()
            st, client = w
            io = st["io"]
            if client:
                n = io.get("io_cl_n", 0)
                io.setdefault("io_cl_w0", t)
                io["io_cl_wl"] = t
                io["io_cl_n"] = n + 1
            else:
                io.setdefault("io_up_w0", t)
                io["io_up_wl"] = t
        return write(self, data)
    asyncio.StreamWriter.write = traced_write
    server_event = S.ConnectionHandler.server_event

    async def traced_event(self, event):
        cid = self.client.id
        if cid in PROBE_CLIENTS:
            st = STATE[cid]
            for conn, tio in self.transports.items():
                if tio.writer is not None and tio.writer not in WRITERS:
                    WRITERS[tio.writer] = (st, conn is self.client)
                    st["io"]["new_conn"] = st["io"].get("new_conn", 0) + 1  # a connection first seen in this call
            if isinstance(event, E.DataReceived):
                t = now()
                if event.connection is self.client:
                    if st["io"].get("io_cl_n"):  # a new call: the previous one is complete
                        _finish(st)
                        st["io"] = {}
                    st["io"].setdefault("io_cl_r0", t)
                    if CENSUS is not None and "cbs" not in st["io"]:
                        CENSUS[0] = st["io"]["cbs"] = {}
                else:
                    io = st["io"]
                    io.setdefault("io_up_r0", t)
                    io["io_up_rl"] = t
        return await server_event(self, event)
    S.ConnectionHandler.server_event = traced_event

    sel = selectors.EpollSelector.select

    def select(self, timeout=None):
        SEL_CALL.append(now())
        CPU_CALL.append(tnow())
        r = sel(self, timeout)
        CPU_RET.append(tnow())
        SEL_RET.append(now())
        SEL_N.append(len(r))
        return r
    selectors.EpollSelector.select = select

    import asyncio.base_events as BE
    run_in_executor = BE.BaseEventLoop.run_in_executor

    def traced_rie(self, executor, func, *args):
        inner = func
        if hasattr(func, "func") and getattr(func, "args", None):  # to_thread's partial(ctx.run, fn, ...)
            inner = func.args[0]
        name = getattr(inner, "__qualname__", None) or repr(inner)[:80]
        mod = getattr(inner, "__module__", "") or ""
        EXEC.append((now(), f"{mod}.{name}"))
        return run_in_executor(self, executor, func, *args)
    BE.BaseEventLoop.run_in_executor = traced_rie


_trace()
#: PROBE_CENSUS=1: the loop callbacks run while a probe is in the proxy (from the client's data read
#: to the response hooks' end), by name: count and µs, in the probe's record (``cbs``)
CENSUS: list | None = [None] if os.environ.get("PROBE_CENSUS") else None


def _census() -> None:
    import asyncio.events
    run = asyncio.events.Handle._run

    def traced(self):
        cbs = CENSUS[0]
        if cbs is None:
            return run(self)
        t = now()
        run(self)
        dt = now() - t
        cb = self._callback
        task = getattr(cb, "__self__", None)
        if hasattr(task, "get_coro"):
            name = task.get_coro().__qualname__
        else:
            name = getattr(cb, "__qualname__", None) or repr(cb)[:60]
        c = cbs.get(name)
        if c is None:
            cbs[name] = [1, dt]
        else:
            c[0] += 1
            c[1] += dt
    asyncio.events.Handle._run = traced


if CENSUS is not None:
    _census()
#: PROBE_HOOKPROF=FILE: cProfile of the probes' request hooks (experiment), written at a dump
HOOKPROF = None
if os.environ.get("PROBE_HOOKPROF"):
    import cProfile
    HOOKPROF = cProfile.Profile()

if MODE == "bare":
    addons = [First(), Last()]
else:
    from pouch_addon.addons import make_addons
    from pouch_addon.addons.chain import Chain
    addons = [First(), Chain(make_addons()), Last()]
