"""A ``mitmdump -s`` entry for ``bench/phase_bench.py``: pouch (or nothing: ``PHASE_MODE=bare``)
between two probe addons that timestamp every hook of a flow, plus wrappers around the gate's
plan, the ledger's submit/commit/delivery and the stream callable, so one call's time in the
proxy splits into phases. Bench-only: pouch itself carries no instrumentation.

Timestamps are ``time.perf_counter()`` of the proxy process; each flow's are written as one
JSON line to ``$PHASE_OUT`` when the flow ends (sequential calls: one call in flight at a time,
so the ledger's timestamps, which know no flow, belong to the call in flight).

Experiments (environment of mitmdump, e.g. ``phase_bench.py --config NAME:env:PHASE_PATCH=nosync``):
``PHASE_PATCH=nosync`` (no ``fdatasync`` of the log), ``PHASE_PATCH=defer_flush`` (the record handed
to the flusher at the response head), ``PHASE_WINDOW=1`` (each loop callback and ``select`` between
the request hooks' end and the response head, in the flow's ``window``), ``PHASE_PROFILE=FILE`` /
``PHASE_HOOKPROF=FILE`` (cProfile of the loop in that window / in the request hooks),
``PHASE_STRACE=FILE`` (strace of every thread).
"""

from __future__ import annotations

import json
import os
import time

from mitmproxy import http

MODE = os.environ.get("PHASE_MODE", "pouch")
OUT = os.environ.get("PHASE_OUT", "/dev/null")
KEY = "phase_probe"
now = time.perf_counter

LAST: dict[str, float] = {}  # the ledger's and the gate's latest timestamps (one call at a time)
_out = open(OUT, "a", buffering=1)


def mark(name: str) -> None:
    LAST[name] = now()


class First:
    def responseheaders(self, flow: http.HTTPFlow) -> None:
        if PROF is not None:
            PROF.disable()
        flow.metadata[KEY]["rsh0"] = now()
        while DEFERRED:
            DEFERRED.pop()()
        if WINDOW:
            t0 = WINDOW[0][1]
            flow.metadata[KEY]["window"] = [(n, round((t - t0) * 1e6), d) for n, t, d in WINDOW]
            WINDOW.clear()

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        LAST.clear()
        flow.metadata[KEY] = {"rqh0": now()}

    def request(self, flow: http.HTTPFlow) -> None:
        flow.metadata[KEY]["rq0"] = now()
        if HOOKPROF is not None:
            HOOKPROF.enable()

    def response(self, flow: http.HTTPFlow) -> None:
        flow.metadata[KEY]["rs0"] = now()


class Last:
    def requestheaders(self, flow: http.HTTPFlow) -> None:
        flow.metadata[KEY]["rqh1"] = now()

    def request(self, flow: http.HTTPFlow) -> None:
        if HOOKPROF is not None:
            HOOKPROF.disable()
        d = flow.metadata[KEY]
        d["rq1"] = now()
        d.update(LAST)
        LAST.clear()
        if TRACE:
            d["trace"] = list(TRACE)
            TRACE.clear()
        if WINDOW is not None:
            WINDOW[:] = [("start", now(), 0)]
        if PROF is not None:
            PROF.enable()

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        d = flow.metadata[KEY]
        d["rsh1"] = now()
        inner = flow.response.stream
        if callable(inner):
            def timed(chunk: bytes):
                t = now()
                out = inner(chunk)
                if "chunk0" not in d:
                    d["chunk0"], d["chunk0_end"] = t, now()
                return out
            flow.response.stream = timed
        elif inner:
            def first(chunk: bytes):
                if "chunk0" not in d:
                    d["chunk0"] = d["chunk0_end"] = now()
                return chunk
            flow.response.stream = first

    def response(self, flow: http.HTTPFlow) -> None:
        KEEP.clear()
        d = flow.metadata[KEY]
        d["rs1"] = now()
        r, s = flow.request, flow.response
        d["m_req_start"], d["m_req_end"] = r.timestamp_start, r.timestamp_end
        d["m_resp_start"], d["m_resp_end"] = s.timestamp_start, s.timestamp_end
        # mitmproxy's timestamps are time.time(): keep the offset to convert
        d["wall_minus_perf"] = time.time() - now()
        d["stream"] = b"text/event-stream" in s.headers.get("content-type", "").encode()
        d["path"] = r.path
        # loop-side events after the response hooks (the settle's submit) are caught on the next flow;
        # the socket events (``_trace_io``) after it too: the record is written when the next call starts
        global PENDING
        if PENDING is not None:
            _out.write(json.dumps(PENDING) + "\n")
        PENDING = d


def _instrument() -> None:
    """Wrap the gate's and the ledger's steps with timestamps."""
    from pouch_addon import ledger_local as LL
    from pouch_addon.addons import gate as G

    def wrap(obj, name, before=None, after=None):
        fn = getattr(obj, name)

        def w(*a, **k):
            if before:
                mark(before)
            try:
                return fn(*a, **k)
            finally:
                if after:
                    mark(after)
        setattr(obj, name, w)

    wrap(G.BudgetGate, "_draft_inline", "g_draft0", "g_draft1")
    wrap(G.BudgetGate, "_draft", "g_draftany0", "g_draftany1")
    wrap(LL.LocalStore, "_enqueue", "l_enqueue0", "l_enqueue1")
    wrap(LL.LocalStore, "_drain", "c_drain0", "c_drain1")
    wrap(LL.LocalStore, "_begin", "c_begin0", "c_begin1")
    wrap(LL.LocalStore, "_commit", "c_commit0", "c_commit1")
    wrap(LL, "_deliver", "c_deliver0", "c_deliver1")
    wrap(LL, "_deliver_all", "l_deliverall0", "l_deliverall1")
    if hasattr(LL.LocalStore, "_await_flush"):
        wrap(LL.LocalStore, "_await_flush", "c_await0", "c_await1")
    reserve = G.reserve

    async def timed_reserve(*a, **k):
        mark("g_reserve0")
        try:
            return await reserve(*a, **k)
        finally:
            mark("g_reserve1")
    G.reserve = timed_reserve
    wrap(G, "apply_rewrites", "g_rewrite0", None)
    import ctypes
    libc = ctypes.CDLL(None)

    def named(fn, name):
        def run(*a, **k):
            libc.prctl(15, name.encode(), 0, 0, 0)  # PR_SET_NAME: the OS thread name, for /proc
            return fn(*a, **k)
        return run
    LL.LocalStore._commit_loop = named(LL.LocalStore._commit_loop, "committer")
    if hasattr(LL.LocalStore, "_flush_loop"):
        LL.LocalStore._flush_loop = named(LL.LocalStore._flush_loop, "flusher")
    patch = os.environ.get("PHASE_PATCH", "")
    from pouch_addon.addons import meter as M
    if patch == "eager_settle":  # experiment: a settle is committed at once, not with the next admission
        sub = LL.GroupCommitQueue.submit_async

        def eager(self, op, *, lazy=False, **k):
            return sub(self, op, lazy=False, **k)
        LL.GroupCommitQueue.submit_async = eager
    if patch == "defer_flush":  # experiment: hand the record to the flusher at the response head, not at once
        deliver_all = LL._deliver_all

        def deferred(slots, loop=None, after=None):
            if after is not None:
                DEFERRED.append(after)
            deliver_all(slots, loop, None)
        LL._deliver_all = deferred
    if patch == "nosync":  # experiment: no fdatasync of the ledger's log (what the flush costs this window)
        from pouch_addon import ledger_wal as LW
        LW.RecordLog.sync = lambda self: None
    wrap(M.Metering, "_settled", "l_settled0", "l_settled1")
    if os.environ.get("PHASE_KEEP"):  # experiment: keep each settle's objects alive until the next response
        settled = M.Metering._settled

        def keep(self, *a):
            KEEP.append(a)
            return settled(self, *a)
        M.Metering._settled = keep
    if os.environ.get("PHASE_HANDLES"):
        _trace_handles()
    wrap(G, "set_body", None, "g_setbody1")


TRACE: list = []
DEFERRED: list = []
PENDING: dict | None = None  # the last finished flow's record, written once its socket events are in
IO: dict = {}  # the call in flight's socket events (``_trace_io``)


def _trace_io() -> None:
    """Timestamps of the socket events of the call in flight (one connection, sequential calls):
    ``io_cl_r0`` the client's request data read, ``io_up_w0``/``io_up_w1`` the first/last write
    upstream, ``io_up_r0`` the provider's first data read, ``io_cl_w0..2`` the first writes to the
    client (the response head, the first chunk...). A call starts at the client's first read after
    a write to it; the record of the call before is then completed and written."""
    import asyncio
    import sys
    from mitmproxy.proxy import events as E
    from mitmproxy.proxy import server as S
    argv = sys.argv
    listen = int(argv[argv.index("-p") + 1]) if "-p" in argv else 8080
    write = asyncio.StreamWriter.write

    def traced_write(self, data):
        t = now()
        try:
            upstream = self.transport.get_extra_info("sockname")[1] != listen
        except Exception:
            upstream = True
        if upstream:
            IO.setdefault("io_up_w0", t)
            IO["io_up_w1"] = t
        else:
            n = IO.get("io_cl_n", 0)
            if n < 3:
                IO[f"io_cl_w{n}"] = t
                IO[f"io_cl_s{n}"] = len(data)
            IO["io_cl_n"] = n + 1
        return write(self, data)
    asyncio.StreamWriter.write = traced_write
    server_event = S.ConnectionHandler.server_event

    async def traced_event(self, event):
        global PENDING
        if isinstance(event, E.DataReceived):
            t = now()
            if event.connection is self.client:
                if IO.get("io_cl_n"):  # a new call: the previous one is complete
                    if PENDING is not None:
                        PENDING.update(IO)
                        _out.write(json.dumps(PENDING) + "\n")
                        PENDING = None
                    IO.clear()
                IO.setdefault("io_cl_r0", t)
            else:
                n = IO.get("io_up_n", 0)
                if n < 3:
                    IO[f"io_up_r{n}"] = t
                    IO[f"io_up_rs{n}"] = len(event.data)
                IO["io_up_n"] = n + 1
        return await server_event(self, event)
    S.ConnectionHandler.server_event = traced_event
    from mitmproxy import addonmanager as AM
    trigger = AM.AddonManager.trigger

    def traced_trigger(self, event):  # the deprecated add_log event, sent for every log record
        t = now()
        try:
            return trigger(self, event)
        finally:
            n = IO.get("io_trig_n", 0)
            if n < 2:
                IO[f"io_trig{n}"], IO[f"io_trig{n}_end"] = t, now()
            IO["io_trig_n"] = n + 1
    AM.AddonManager.trigger = traced_trigger
    if MODE != "bare":  # the log's flush (the flusher thread) and the loop's hand-off to it
        from pouch_addon import ledger_local as LL
        from pouch_addon import ledger_wal as LW
        sync = LW.RecordLog.sync

        def traced_sync(self):
            IO["io_sync0"] = now()
            try:
                return sync(self)
            finally:
                IO["io_sync1"] = now()
        LW.RecordLog.sync = traced_sync
        if hasattr(LL.LocalStore, "_hand_flush"):
            hand = LL.LocalStore._hand_flush

            def traced_hand(self, *a, **k):
                IO["io_hand0"] = now()
                try:
                    return hand(self, *a, **k)
                finally:
                    IO["io_hand1"] = now()
            LL.LocalStore._hand_flush = traced_hand
#: PHASE_HOOKPROF=FILE: cProfile of the loop thread from the first request hook to the last (experiment)
HOOKPROF = None
if os.environ.get("PHASE_HOOKPROF"):
    import atexit
    import cProfile
    HOOKPROF = cProfile.Profile()
    atexit.register(lambda: HOOKPROF.dump_stats(os.environ["PHASE_HOOKPROF"] + "-" + MODE))
#: PHASE_PROFILE=FILE: cProfile of the loop thread between the request hooks' end and the response head
PROF = None
if os.environ.get("PHASE_PROFILE"):
    import atexit
    import cProfile
    PROF = cProfile.Profile()
    atexit.register(lambda: PROF.dump_stats(os.environ["PHASE_PROFILE"] + "-" + MODE))
#: PHASE_WINDOW=1: every loop callback and select() between the request hooks' end and the response head
WINDOW: list | None = [] if os.environ.get("PHASE_WINDOW") else None
KEEP: list = []


def _trace_handles() -> None:
    """Which loop callbacks run between the reservation's delivery and the gate resuming."""
    import asyncio.events
    import selectors
    run = asyncio.events.Handle._run

    def traced(self):
        if "l_deliverall0" in LAST and "g_reserve1" not in LAST:
            t, c = now(), time.thread_time()
            run(self)
            t, c = now() - t, time.thread_time() - c
            cb = self._callback
            task = getattr(cb, "__self__", None)
            name = task.get_coro().__qualname__ if hasattr(task, "get_coro") else repr(cb)[:70]
            TRACE.append((name, round(t * 1e6), round(c * 1e6)))
        else:
            run(self)
    asyncio.events.Handle._run = traced
    sel = selectors.EpollSelector.select

    def select(self, timeout=None):
        if "l_deliverall0" in LAST and "g_reserve1" not in LAST:
            t = now()
            r = sel(self, timeout)
            TRACE.append((f"select({timeout}) -> {len(r)}", round((now() - t) * 1e6)))
            return r
        return sel(self, timeout)
    selectors.EpollSelector.select = select


def _trace_window() -> None:
    import asyncio.events
    import selectors
    run = asyncio.events.Handle._run

    def traced(self):
        if WINDOW:
            t = now()
            run(self)
            if PROF is not None and len(WINDOW) == 1:
                PROF.disable()  # only the rest of the step that ran the request hooks
            cb = self._callback
            task = getattr(cb, "__self__", None)
            name = task.get_coro().__qualname__ if hasattr(task, "get_coro") else repr(cb)[:90]
            WINDOW.append((name, t, round((now() - t) * 1e6)))
        else:
            run(self)
    asyncio.events.Handle._run = traced
    sel = selectors.EpollSelector.select

    def select(self, timeout=None):
        if WINDOW:
            t = now()
            r = sel(self, timeout)
            WINDOW.append((f"select({timeout}) -> {len(r)}", t, round((now() - t) * 1e6)))
            return r
        return sel(self, timeout)
    selectors.EpollSelector.select = select


if WINDOW is not None:
    _trace_window()

if os.environ.get("PHASE_STRACE"):  # PHASE_STRACE=FILE: syscalls of every thread, with times (experiment)
    import subprocess
    subprocess.Popen(["strace", "-f", "-tt", "-T", "-o", os.environ["PHASE_STRACE"] + "-" + MODE,
                      "-e", "trace=!getpid,clock_gettime,gettid", "-p", str(os.getpid())])
    time.sleep(0.5)

if os.environ.get("PHASE_IO", "1") == "1":
    _trace_io()
    import gc

    def _gc_timer(phase, info, _t=[0.0]):  # the cyclic GC's collections during the call in flight
        if phase == "start":
            _t[0] = now()
        else:
            IO["gc_n"] = IO.get("gc_n", 0) + 1
            IO["gc_us"] = IO.get("gc_us", 0.0) + (now() - _t[0]) * 1e6
            if info.get("generation", 0) > 0:
                IO["gc_old"] = IO.get("gc_old", 0) + 1
    gc.callbacks.append(_gc_timer)

if MODE == "bare":
    addons = [First(), Last()]
else:
    from pouch_addon.addons import make_addons
    from pouch_addon.addons.chain import Chain

    _instrument()
    members = make_addons()
    if os.environ.get("PHASE_LEAN", "1") == "1":  # as mitm_entry (a checkout without walk.py: none)
        try:
            from pouch_addon.addons.walk import LeanWalk
            members.append(LeanWalk())
        except ImportError:
            pass
    addons = [First(), Chain(members), Last()]
