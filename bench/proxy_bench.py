"""Proxy overhead of pouch: the same mitmdump with the pouch addon vs bare, measured in one run.

Everything runs on loopback with the e2e harness (``tests/e2e/harness.py``): a fake
api.openai.com over TLS and mitmdump with (``pouch``) or without (``bare``: redirect addon +
``stream_large_bodies=1``) the pouch addon. A raw asyncio load generator speaks HTTP/1.1 over
TLS through ``CONNECT`` with keep-alive, trusting the proxy's CA (as ``loadgen.py`` of the
mitmproxy mechanics report, §7). On a machine with 2+ CPUs mitmdump is pinned to cpu0 and the
fake + load generator to cpu1, so the proxy is what saturates.

1. **throughput**: N keep-alive connections in a closed loop for ``--duration`` seconds,
   non-streaming chat completions (``max_tokens``) and 50-chunk SSE streams (no delay):
   req/s, p50/p95 latency, mitmdump CPU per request (``/proc/<pid>/stat``, split into the
   event-loop thread and the other threads). Configurations alternate A/B/A/B for
   ``--rounds`` rounds; medians are reported. With pouch, each workload also prints the floor
   of ``bench/floor.py`` (pouch's own mandatory work per request, measured in this process)
   next to the CPU per request the 0.9x target leaves pouch.
2. **probe latency under streaming load**: while 20 SSE streams (200 chunks, 10 ms apart) are
   metered, sequential ``GET /v1/models`` probes on their own connection: p50/p95.
3. **memory**: peak RSS (``VmHWM``, plus ``VmRSS`` sampled every 50 ms) of a fresh mitmdump
   carrying 100 concurrent streams, at a short and a long response length.

Throughput and probe also print how often mitmdump's event-loop thread was preempted
(involuntary context switches, per request / per second): a count the machine's noise moves less.
Each result ends as a line ``RATIO <name> = <x> (target ...)``. Nothing is asserted: figures
are printed. pouch runs use a fresh ledger with a $1,000,000 budget and ``gpt-4o-mini``.

    .venv/bin/python bench/proxy_bench.py [--quick] [--duration S] [--rounds N]
        [--conns N] [--only throughput,probe,memory] [--bare-vs-bare] [--no-pin]
        [--pouch-set OPTION=VALUE ...]

``--bare-vs-bare`` runs the bare configuration on both sides (an A/A run: the noise floor,
and usable while the pouch addon does not import). ``--against-pouch`` compares pouch with
``--pouch-set`` options (``pouch+``) against plain pouch in the same run (target 0.97), e.g.
metrics and tracing on vs off; ``--otlp-sink`` then runs a local OTLP/HTTP receiver in this
process (it discards what it gets) and points ``OTEL_EXPORTER_OTLP_ENDPOINT`` at it::

    .venv/bin/python bench/proxy_bench.py --only throughput --against-pouch --otlp-sink \
        --pouch-set pouch_metrics=127.0.0.1:0 --pouch-set pouch_otel=true

``--tree DIR`` compares another source tree's pouch (``tree``, e.g. main unpacked with ``git
archive``) with this tree's (``pouch``) in the same run: the ratios then read tree/pouch.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parent.parent
E2E = REPO / "tests" / "e2e"
for p in (str(E2E), str(REPO)):
    if p not in sys.path:
        sys.path.insert(0, p)

import harness as H  # noqa: E402  (tests/e2e/harness.py)
from ledger_loop import kworker_ns  # noqa: E402  (bench/ledger_loop.py)

HOST = "api.openai.com"
MODEL = "gpt-4o-mini"
CLK_TCK = os.sysconf("SC_CLK_TCK")
HARD_CAP_REQUESTS = 2_000_000  # per load phase, on top of the time bound
#: issue 16's capacity targets (bare/pouch mitmdump CPU per request), by workload
CAPACITY_TARGETS = {"nonstream": 0.9, "sse50": 0.85}


# --------------------------------------------------------------------------- CPU pinning

class Pinning:
    """mitmdump on cpu0, everything else (this process, the fake) on cpu1.

    Children inherit the affinity of the process that starts them, so the proxy is started
    while this process is pinned to the proxy CPU; this process then moves back."""

    def __init__(self, enabled: bool):
        cpus = sorted(os.sched_getaffinity(0))
        self.enabled = enabled and len(cpus) >= 2
        self.all = set(cpus)
        self.proxy_cpu = {cpus[0]}
        self.other_cpus = set(cpus[1:])
        if self.enabled:
            os.sched_setaffinity(0, self.other_cpus)

    def describe(self) -> str:
        if not self.enabled:
            return "no CPU pinning"
        return f"mitmdump pinned to cpu{sorted(self.proxy_cpu)}, fake + load generator to cpu{sorted(self.other_cpus)}"

    def start_proxy(self, h: H.Harness, **kw: Any) -> H.Proxy:
        if not self.enabled:
            return h.start_proxy(**kw)
        os.sched_setaffinity(0, self.proxy_cpu)
        try:
            return h.start_proxy(**kw)
        finally:
            os.sched_setaffinity(0, self.other_cpus)


def start_quiet_fake(h: H.Harness, timeout: float = 10.0) -> H.Fake:
    """Like ``Harness.start_fake`` but without the per-chunk JSONL log (it would cost the fake
    more CPU than the proxy spends per chunk). Registered with the harness, so ``stop()`` ends it."""
    name = h._name("fake")
    d = h.workdir / name
    d.mkdir(parents=True, exist_ok=True)
    ready = d / "port"
    proc = H.Proc(name, [sys.executable, H.FAKE_SCRIPT, "--port", "0", "--cert", h.certs.leaf_cert,
                         "--key", h.certs.leaf_key, "--ready-file", ready], d, env=H._proxy_env())
    h.procs.append(proc)
    H.wait_until(lambda: ready.exists() and ready.read_text().strip(), timeout, f"{name} ready file",
                 alive=proc.alive, on_fail=proc.describe)
    port = int(ready.read_text().strip())
    H.wait_until(lambda: H.port_open(port), timeout, f"{name} port", alive=proc.alive, on_fail=proc.describe)
    fake = H.Fake(proc, port, d / "fake.jsonl")
    h.fakes.append(fake)
    return fake


# --------------------------------------------------------------------------- /proc readers

def proc_cpu(pid: int) -> dict[str, float]:
    """CPU seconds (user+system) of a process: total, its main thread, the other threads."""
    def ticks(path: str) -> float:
        with open(path) as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime (fields 14, 15)

    total = ticks(f"/proc/{pid}/stat")
    try:
        main = ticks(f"/proc/{pid}/task/{pid}/stat")
    except OSError:
        main = total
    return {"total": total, "main": main, "threads": total - main, "loop_invol": loop_preempted(pid)}


def loop_preempted(pid: int) -> float:
    """Involuntary context switches of the process's main thread (mitmdump's event loop): each is
    the loop put off behind another runnable thread, of mitmdump (a wake-up preempts) or not."""
    try:
        with open(f"/proc/{pid}/task/{pid}/status") as fh:
            for line in fh:
                if line.startswith("nonvoluntary_ctxt_switches"):
                    return float(line.split()[1])
    except OSError:
        pass
    return 0.0


def thread_wakes(pid: int) -> dict[int, tuple[str, int]]:
    """{tid: (thread name, voluntary context switches)} of a process's threads other than its main
    one (mitmdump's event loop): each voluntary switch is a wait, so the count is the thread's
    wake-ups, and a wake-up is where the loop may be preempted."""
    out: dict[int, tuple[str, int]] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for t in tids:
        if int(t) == pid:
            continue
        try:
            with open(f"/proc/{pid}/task/{t}/comm") as fh:
                name = fh.read().strip()
            with open(f"/proc/{pid}/task/{t}/status") as fh:
                vol = next(int(line.split()[1]) for line in fh if line.startswith("voluntary_ctxt_switches"))
        except (OSError, StopIteration, ValueError):
            continue
        out[int(t)] = (name, vol)
    return out


def wakes_between(before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]]) -> dict[str, int]:
    """Wake-ups per thread name between two :func:`thread_wakes` samples (a thread started meanwhile
    counts from zero; one that ended meanwhile is not counted)."""
    out: dict[str, int] = {}
    for tid, (name, vol) in after.items():
        prev = before.get(tid)
        n = vol - prev[1] if prev is not None and prev[0] == name else vol
        out[name] = out.get(name, 0) + n
    return out


def format_wakes(wakes: dict[str, float], per: str) -> str:
    shown = sorted(((n, v) for n, v in wakes.items() if v >= 0.005), key=lambda x: -x[1])
    return ", ".join(f"{n} {v:.2f}" for n, v in shown[:6]) + f" per {per}" if shown else f"none per {per}"


def median_wakes(runs: list[Any], per_second: bool = False) -> dict[str, float]:
    """Median wake-ups per thread name over rounds, per request (a ``LoadResult``) or per second
    (a probe round's dict)."""
    cpus = [(x["cpu"], x["cpu"]["wall"]) if per_second else (x.cpu, max(1, x.completed_all or x.requests))
            for x in runs]
    names = {k for cpu, _ in cpus for k in cpu if k.startswith("wake:")}
    return {k[5:]: statistics.median(cpu.get(k, 0) / d for cpu, d in cpus) for k in names}


def system_busy() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, steal seconds) from /proc/stat."""
    with open("/proc/stat") as fh:
        v = [int(x) for x in fh.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal ...
    return (v[0] + v[1] + v[2] + v[5] + v[6]) / CLK_TCK, (v[7] if len(v) > 7 else 0) / CLK_TCK


def kworker_cpu() -> float:
    """CPU seconds of the kernel's worker threads (``kworker/*``): where a flush submitted to the
    kernel would run, which mitmdump's own CPU does not show (other jobs' kernel work too)."""
    return kworker_ns() / 1e9


def threads_cpu(pid: int) -> float:
    """CPU seconds of a process's live threads, from ``schedstat`` (nanoseconds, not clock ticks)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                total += int(fh.read().split()[0])
        except (OSError, ValueError, IndexError):
            continue
    return total / 1e9


class CpuWatch:
    """CPU used between start and ``result()``: the proxy (event-loop thread / other threads),
    the fake, this process (the load generator) and everything else on the machine (``other``:
    another job sharing the CPUs makes a run noisy; shown so that it can be seen)."""

    def __init__(self, proxy: H.Proxy):
        self.proxy_pid, self.fake_pid = proxy.proc.pid, proxy.fake.proc.pid
        self.t0 = time.perf_counter()
        self.p0 = proc_cpu(self.proxy_pid)
        self.f0 = proc_cpu(self.fake_pid)["total"]
        self.me0 = sum(os.times()[:2])
        self.s0, self.st0 = system_busy()
        self.k0 = kworker_cpu()
        self.w0 = thread_wakes(self.proxy_pid)

    def result(self) -> dict[str, float]:
        self.wakes = wakes_between(self.w0, thread_wakes(self.proxy_pid))  # thread name -> wake-ups
        p1 = proc_cpu(self.proxy_pid)
        f1 = proc_cpu(self.fake_pid)["total"]
        me1 = sum(os.times()[:2])
        s1, st1 = system_busy()
        out = {k: p1[k] - self.p0[k] for k in self.p0}
        out["fake"] = f1 - self.f0
        out["me"] = me1 - self.me0
        out["other"] = max(0.0, (s1 - self.s0) - out["total"] - out["fake"] - out["me"])
        out["steal"] = st1 - self.st0
        out["kworker"] = kworker_cpu() - self.k0  # inside "other"
        out["wall"] = time.perf_counter() - self.t0
        for name, n in self.wakes.items():
            out["wake:" + name] = n
        return out


def pct_core(cpu: dict[str, float], key: str) -> float:
    return 100 * cpu[key] / cpu["wall"] if cpu.get("wall") else float("nan")


def proc_mem(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM in KiB."""
    out = {}
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:")):
                k, v = line.split(":", 1)
                out[k] = int(v.split()[0])
    return out


class MemSampler(threading.Thread):
    def __init__(self, pid: int, interval: float = 0.05):
        super().__init__(daemon=True)
        self.pid, self.interval = pid, interval
        self.max_rss = 0
        self.hwm = 0
        self.samples = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def sample(self) -> None:
        try:
            m = proc_mem(self.pid)
        except OSError:
            return
        self.samples += 1
        self.max_rss = max(self.max_rss, m.get("VmRSS", 0))
        self.hwm = max(self.hwm, m.get("VmHWM", 0))

    def stop(self) -> None:
        self._halt.set()
        self.join(2)
        self.sample()


# --------------------------------------------------------------------------- load generator

class BadResponse(Exception):
    pass


def chat_request(*, stream: bool, chunks: int, delay_ms: int = 0, max_tokens: int | None = None) -> bytes:
    # The fake bills "tok<k> " as 1 token, but tiktoken (pouch's running count) sees 2-4 tokens in
    # it: a cap of 2x the chunks would get the stream cut off by pouch. Leave ample headroom.
    body = {"model": MODEL, "max_tokens": max_tokens or chunks * 5 + 16,
            "messages": [{"role": "system", "content": "You are a terse benchmark assistant."},
                         {"role": "user", "content": "Count upwards, one short token at a time, please."}]}
    if stream:
        body["stream"] = True
    data = json.dumps(body).encode()
    headers = ["POST /v1/chat/completions HTTP/1.1", f"Host: {HOST}", "Authorization: Bearer sk-bench",
               "Content-Type: application/json", "Accept: application/json", f"Content-Length: {len(data)}",
               f"x-fake-chunks: {chunks}"]
    if delay_ms:
        headers.append(f"x-fake-delay-ms: {delay_ms}")
    return ("\r\n".join(headers) + "\r\n\r\n").encode() + data


def request_body(raw: bytes) -> bytes:
    """The body of a raw request built by :func:`chat_request`."""
    return raw.split(b"\r\n\r\n", 1)[1]


MODELS_REQUEST = (f"GET /v1/models HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer sk-bench\r\n"
                  "Accept: application/json\r\n\r\n").encode()



async def read_chunked(r: asyncio.StreamReader, on_chunk: Callable[[], None] | None = None) -> bytes:
    """A chunked HTTP/1.1 body from ``r`` (its trailers skipped); ``on_chunk`` after each chunk."""
    parts = []
    while True:
        size = int((await r.readuntil(b"\r\n")).split(b";", 1)[0], 16)
        if size == 0:
            while (await r.readuntil(b"\r\n")) != b"\r\n":
                pass
            return b"".join(p[:-2] for p in parts)
        parts.append(await r.readexactly(size + 2))
        if on_chunk is not None:
            on_chunk()

class Client:
    """One keep-alive HTTP/1.1-over-TLS connection through the proxy's CONNECT tunnel."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.r, self.w = reader, writer
        self.closed = False

    @classmethod
    async def open(cls, proxy_port: int, ctx: ssl.SSLContext, timeout: float = 15.0) -> "Client":
        async def _open() -> Client:
            r, w = await asyncio.open_connection(H.LOOPBACK, proxy_port, limit=1 << 20)
            w.write(f"CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n\r\n".encode())
            await w.drain()
            head = await r.readuntil(b"\r\n\r\n")
            if not head.split(b"\r\n", 1)[0].split(b" ")[1:2] == [b"200"]:
                w.close()
                raise BadResponse(f"CONNECT refused: {head[:200]!r}")
            await w.start_tls(ctx, server_hostname=HOST)
            return cls(r, w)
        return await asyncio.wait_for(_open(), timeout)

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        """Send one request, read the whole response; (status, body)."""
        self.w.write(raw)
        await self.w.drain()
        head = await self.r.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        try:
            status = int(lines[0].split(" ", 2)[1])
        except (IndexError, ValueError):
            self.closed = True
            raise BadResponse(f"not an HTTP response head (framing lost): {head[:300]!r}") from None
        hdrs: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                hdrs[k.strip().lower()] = v.strip()
        if "chunked" in hdrs.get("transfer-encoding", "").lower():
            body = await read_chunked(self.r)
        elif "content-length" in hdrs:
            body = await self.r.readexactly(int(hdrs["content-length"]))
        else:  # read to EOF
            body = await self.r.read()
            self.closed = True
        if hdrs.get("connection", "").lower() == "close":
            self.closed = True
        return status, body

    def close(self) -> None:
        try:
            self.w.close()
        except Exception:
            pass


def check(status: int, body: bytes, stream: bool) -> bool:
    if status != 200:
        return False
    if stream:
        return body.rstrip().endswith(b"data: [DONE]") and b'"budget_exceeded"' not in body
    return body.startswith(b"{")


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, int(round(q / 100 * (len(xs) - 1)))))
    return xs[k]


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float
    latencies: list[float]
    cpu: dict[str, float]
    first_error: str = ""
    completed_all: int = 0  # including those that ended after the window (the CPU figure covers them)

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def cpu_ms_per_req(self, part: str = "total") -> float:
        n = self.completed_all or self.requests
        return self.cpu[part] / n * 1e3 if n else float("nan")


async def closed_loop(proxy: H.Proxy, raw: bytes, stream: bool, conns: int, duration: float) -> LoadResult:
    """``conns`` connections, each sending ``raw`` back to back for ``duration`` seconds."""
    ctx = ssl.create_default_context(cafile=str(proxy.ca))
    clients = await asyncio.gather(*(Client.open(proxy.port, ctx) for _ in range(conns)))
    lat: list[float] = []
    state = {"errors": 0, "n": 0, "all": 0, "first_error": ""}
    watch = CpuWatch(proxy)
    t_start = time.perf_counter()
    t_end = t_start + duration

    async def worker(i: int) -> None:
        c = clients[i]
        while state["n"] < HARD_CAP_REQUESTS:
            t0 = time.perf_counter()
            if t0 >= t_end:
                return
            try:
                if c.closed:
                    c = clients[i] = await Client.open(proxy.port, ctx)
                status, body = await c.request(raw)
                ok = check(status, body, stream)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError,
                    BadResponse, ssl.SSLError) as e:
                ok, status, body = False, 0, repr(e).encode()
                c.close()
                c.closed = True
            t1 = time.perf_counter()
            state["all"] += 1
            if t1 > t_end:  # finished after the window: its CPU is in the CPU figure, not in req/s
                return
            state["n"] += 1
            if ok:
                lat.append(t1 - t0)
            else:
                state["errors"] += 1
                if not state["first_error"]:
                    state["first_error"] = f"status {status}: {body[:300]!r}"

    await asyncio.wait_for(asyncio.gather(*(worker(i) for i in range(conns))), duration + 60)
    elapsed = time.perf_counter() - t_start
    cpu = watch.result()
    for c in clients:
        c.close()
    return LoadResult(len(lat), state["errors"], min(elapsed, duration), lat, cpu, state["first_error"],
                      state["all"])


async def probe_under_streams(proxy: H.Proxy, streams: int, chunks: int, delay_ms: int, duration: float,
                              gap: float) -> dict[str, Any]:
    """``streams`` connections loop over long SSE streams; meanwhile one connection sends
    sequential ``GET /v1/models`` probes for ``duration`` seconds."""
    ctx = ssl.create_default_context(cafile=str(proxy.ca))
    raw = chat_request(stream=True, chunks=chunks, delay_ms=delay_ms)
    stop = asyncio.Event()
    done = {"streams": 0, "errors": 0, "first_error": ""}

    async def streamer() -> None:
        c = await Client.open(proxy.port, ctx)
        try:
            while not stop.is_set():
                status, body = await c.request(raw)
                if check(status, body, True):
                    done["streams"] += 1
                else:
                    done["errors"] += 1
                    done["first_error"] = done["first_error"] or f"status {status}: {body[:300]!r}"
                if c.closed:
                    c = await Client.open(proxy.port, ctx)
        finally:
            c.close()

    tasks = [asyncio.create_task(streamer()) for _ in range(streams)]
    probe = await Client.open(proxy.port, ctx)
    # let every stream get going before probing
    await asyncio.sleep(min(1.0, chunks * delay_ms / 1000 / 4))
    lat: list[float] = []
    perrors = 0
    watch = CpuWatch(proxy)
    t_end = time.perf_counter() + duration
    n = 0
    try:
        while time.perf_counter() < t_end and n < 100_000:
            n += 1
            t0 = time.perf_counter()
            status, body = await asyncio.wait_for(probe.request(MODELS_REQUEST), 30)
            t1 = time.perf_counter()
            if status == 200 and b'"data"' in body:
                lat.append(t1 - t0)
            else:
                perrors += 1
            if probe.closed:
                probe = await Client.open(proxy.port, ctx)
            await asyncio.sleep(gap)
    finally:
        cpu = watch.result()
        stop.set()
        probe.close()
        # streams finish their current response (bounded) and end
        pending = (await asyncio.wait(tasks, timeout=chunks * delay_ms / 1000 * 3 + 30))[1] if tasks else ()
        for t in pending:
            t.cancel()
        for t in tasks:
            if t.done() and not t.cancelled() and t.exception() is not None:
                done["errors"] += 1
                done["first_error"] = done["first_error"] or repr(t.exception())
    return {"lat": lat, "probe_errors": perrors, "streams_done": done["streams"], "stream_errors": done["errors"],
            "first_error": done["first_error"], "cpu": cpu}


async def concurrent_streams(proxy: H.Proxy, streams: int, chunks: int, delay_ms: int,
                             timeout: float, max_tokens: int | None = None) -> dict[str, Any]:
    """``streams`` connections, each one SSE response of ``chunks`` chunks, all at once."""
    ctx = ssl.create_default_context(cafile=str(proxy.ca))
    raw = chat_request(stream=True, chunks=chunks, delay_ms=delay_ms, max_tokens=max_tokens)
    clients = await asyncio.gather(*(Client.open(proxy.port, ctx) for _ in range(streams)))
    t0 = time.perf_counter()

    async def one(c: Client) -> bool:
        try:
            status, body = await c.request(raw)
            return check(status, body, True) and body.count(b"data: {") > chunks  # role, content chunks, end
        finally:
            c.close()

    res = await asyncio.wait_for(asyncio.gather(*(one(c) for c in clients), return_exceptions=True), timeout)
    ok = sum(1 for r in res if r is True)
    errs = [r for r in res if r is not True]
    return {"ok": ok, "errors": len(errs), "first_error": repr(errs[0]) if errs else "",
            "seconds": time.perf_counter() - t0}


# --------------------------------------------------------------------------- configurations

@dataclass
class Config:
    name: str
    pouch: bool
    proxy: H.Proxy | None = None
    home: Path | None = None
    sets: list[str] | None = None  # --pouch-set options of this side (None: all of them)
    tree: Path | None = None  # run pouch_addon from this source tree (``--tree``), not this one


class Bench:
    def __init__(self, args: argparse.Namespace, workdir: Path):
        self.args = args
        self.workdir = workdir
        self.h = H.Harness(workdir)  # no client_python: the SDK venv is only built when asked for
        self.pin = Pinning(not args.no_pin)
        self.fake = start_quiet_fake(self.h)
        self._homes = 0
        b_pouch = not args.bare_vs_bare
        self.configs = [Config("bare", False), Config("pouch" if b_pouch else "bare2", b_pouch)]
        if args.against_pouch:  # what the --pouch-set options cost, against plain pouch
            self.configs = [Config("pouch", True, sets=[]), Config("pouch+", True)]
        if args.tree:  # another tree's pouch (e.g. main, ``git archive``d) against this one, same run
            self.configs = [Config("tree", True, sets=[], tree=Path(args.tree).resolve()), Config("pouch", True)]

    def new_home(self) -> Path:
        from pouch_addon.budget import Ledger
        self._homes += 1
        home = self.workdir / f"pouch_home{self._homes}"
        home.mkdir(parents=True, exist_ok=True)
        Ledger(home).set_budget(Decimal("1000000"))
        return home

    def start(self, cfg: Config) -> H.Proxy:
        if cfg.pouch:
            cfg.home = self.new_home()
            repo = H.REPO
            if cfg.tree is not None:  # the harness puts H.REPO on the proxy's PYTHONPATH
                H.REPO = cfg.tree
            try:
                proxy = self.pin.start_proxy(self.h, home=cfg.home, pouch=True, fake=self.fake,
                                             sets=self.args.pouch_set if cfg.sets is None else cfg.sets)
            finally:
                H.REPO = repo
        else:
            proxy = self.pin.start_proxy(self.h, pouch=False, fake=self.fake)
        cfg.proxy = proxy
        return proxy

    def stop(self, cfg: Config) -> None:
        if cfg.proxy is not None:
            cfg.proxy.stop()
            cfg.proxy = None

    def close(self) -> None:
        self.h.stop()

    def ledger_status(self, cfg: Config) -> str:
        if not cfg.pouch or cfg.home is None:
            return ""
        from pouch_addon.budget import Ledger
        st = Ledger(cfg.home).status()
        js = st.to_json()
        keep = {k: js[k] for k in ("spent", "reserved", "requests", "blocks", "in_flight") if k in js}
        return json.dumps(keep)


# --------------------------------------------------------------------------- the three benchmarks

def find_pyspy() -> str | None:
    return os.environ.get("POUCH_PYSPY") or shutil.which("py-spy")


def profile_load(b: Bench, cfg: Config, raw: bytes, stream: bool, label: str) -> None:
    """Run the load once more under ``py-spy record`` (sampling, non-blocking) and print where
    mitmdump's time goes: the share of samples by the innermost pouch / tiktoken / tinydb /
    mitmproxy function, inclusive shares of pouch functions, and the hottest leaf functions."""
    pyspy = find_pyspy()
    a = b.args
    if not pyspy or cfg.proxy is None:
        print("   (py-spy not found: install it or set POUCH_PYSPY for a profile; CPU split above)")
        return
    out = b.workdir / f"pyspy-{label}.txt"
    secs = max(2, int(round(a.duration)))
    cmd = [pyspy, "record", "-p", str(cfg.proxy.proc.pid), "-d", str(secs), "-r", os.environ.get("POUCH_PYSPY_RATE", "250"), "--nonblocking",
           "--threads", "-f", "raw", "-o", str(out)]
    sp = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        time.sleep(0.5)  # py-spy attaches
        res = asyncio.run(closed_loop(cfg.proxy, raw, stream, a.conns, secs))
        sp_out, _ = sp.communicate(timeout=secs + 30)
    except BaseException:
        sp.kill()
        sp.wait()
        raise
    if sp.returncode != 0 or not out.exists():
        print(f"   py-spy failed (rc {sp.returncode}): {(sp_out or '')[-500:]}")
        return
    stacks: list[tuple[list[str], int]] = []
    for line in out.read_text("utf-8", "replace").splitlines():
        frames, _, n = line.rpartition(" ")
        if frames and n.isdigit():
            stacks.append((frames.split(";"), int(n)))
    total = sum(n for _, n in stacks) or 1

    def short(fr: str) -> str:
        name, _, loc = fr.partition(" (")
        loc = loc.rstrip(")")
        path, _, lineno = loc.rpartition(":")
        for marker in ("pouch_addon/", "site-packages/", "lib/python3"):
            if marker in path:
                path = path.split(marker, 1)[1]
                break
        return f"{name} ({path})"

    by_thread: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    leaf: dict[str, int] = {}
    owner: dict[str, int] = {}
    for frames, n in stacks:
        thread = frames[0] if frames and frames[0].startswith(("thread", "process")) else "?"
        by_thread[thread] = by_thread.get(thread, 0) + n
        seen = set()
        for fr in frames:
            if "pouch_addon/" in fr:
                k = short(fr)
                if k not in seen:
                    seen.add(k)
                    inclusive[k] = inclusive.get(k, 0) + n
        leaf_k = short(frames[-1])
        leaf[leaf_k] = leaf.get(leaf_k, 0) + n
        # who is responsible: the innermost frame from pouch / tiktoken / tinydb, else mitmproxy/other
        own = "mitmproxy, asyncio, ssl and the rest"
        for fr in reversed(frames):
            if "pouch_addon/" in fr:
                own = "pouch_addon"
                break
            if "tiktoken" in fr:
                own = "tiktoken"
                break
            if "tinydb" in fr:
                own = "tinydb"
                break
        owner[own] = owner.get(own, 0) + n
    print(f"   py-spy profile of {cfg.name} ({label}, {secs} s, {res.rps:.0f} req/s while profiled, "
          f"{total} samples of busy threads):")
    print("     by thread: " + ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in
                                          sorted(by_thread.items(), key=lambda kv: -kv[1])[:5]))
    print("     by owner (innermost frame): " + ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in
                                                        sorted(owner.items(), key=lambda kv: -kv[1])))
    print("     pouch functions, inclusive:")
    for k, v in sorted(inclusive.items(), key=lambda kv: -kv[1])[:12]:
        print(f"       {100 * v / total:5.1f}%  {k}")
    print("     hottest leaf functions:")
    for k, v in sorted(leaf.items(), key=lambda kv: -kv[1])[:10]:
        print(f"       {100 * v / total:5.1f}%  {k}")


def noisy(other_pcts: list[float]) -> str:
    """A warning when other processes used a noticeable share of the CPUs during the runs."""
    worst = max(other_pcts, default=0.0)
    if worst > 15:
        return f"  [NOISY: other processes used up to {worst:.0f}% of a core during these runs]"
    return ""


def per_round(pairs: list[tuple[float, float]], target: float, at_least: bool) -> str:
    """The ratio of each round's pair (the two configurations measured back to back, so the
    machine's drift between rounds cancels within a pair), sorted, and how many rounds meet the
    target: the spread a single run's ratio of medians hides."""
    rs = sorted(a / b for a, b in pairs if b)
    if not rs:
        return "no rounds"
    met = sum(1 for r in rs if (r >= target if at_least else r <= target))
    return (f"per round {' '.join(f'{r:.3f}' for r in rs)} (median {statistics.median(rs):.3f}; "
            f"{met} of {len(rs)} rounds meet the target)")


def fmt_ms(x: float) -> str:
    return f"{x * 1e3:8.2f}"


def run_throughput(b: Bench, ratios: list[str]) -> None:
    a = b.args
    print(f"\n== 1. throughput: {a.conns} keep-alive connections, closed loop, {a.duration:g} s x {a.rounds} "
          f"rounds per configuration, alternating {'/'.join(c.name for c in b.configs)}")
    for cfg in b.configs:
        b.start(cfg)
    floor_mod, ledger_floor = None, None
    if b.configs[1].pouch:  # imported here: an A/A run must work while pouch does not import
        import floor as floor_mod  # bench/floor.py: pouch's own work per request, in this process
        ledger_floor = floor_mod.measure_ledger()
    workloads = [
        ("nonstream", "non-streaming chat completion (max_tokens, 50 tokens)",
         chat_request(stream=False, chunks=50), False),
        ("sse50", "SSE chat stream, 50 chunks, no delay", chat_request(stream=True, chunks=50), True),
    ]
    try:
        for key, label, raw, stream in workloads:
            print(f"\n-- {label}")
            for cfg in b.configs:  # warm-up: leaf certificate, lazy imports, tokenizer load
                w = asyncio.run(closed_loop(cfg.proxy, raw, stream, min(4, a.conns), a.warmup))
                if w.errors:
                    print(f"   warm-up {cfg.name}: {w.errors} errors, first: {w.first_error}")
            results: dict[str, list[LoadResult]] = {c.name: [] for c in b.configs}
            busy_other: list[float] = []
            print(f"   {'round':>5} {'config':<6} {'req/s':>9} {'p50 ms':>8} {'p95 ms':>8} {'errors':>6} "
                  f"{'CPU ms/req':>10} {'loop':>6} {'thrds':>6} | {'proxy%':>6} {'fake%':>6} {'gen%':>6} "
                  f"{'other%':>6}")
            for r in range(a.rounds):
                for cfg in b.configs:
                    res = asyncio.run(closed_loop(cfg.proxy, raw, stream, a.conns, a.duration))
                    results[cfg.name].append(res)
                    print(f"   {r + 1:>5} {cfg.name:<6} {res.rps:9.1f} {fmt_ms(pct(res.latencies, 50))} "
                          f"{fmt_ms(pct(res.latencies, 95))} {res.errors:>6} {res.cpu_ms_per_req():10.3f} "
                          f"{res.cpu_ms_per_req('main'):6.3f} {res.cpu_ms_per_req('threads'):6.3f} | "
                          f"{pct_core(res.cpu, 'total'):6.1f} {pct_core(res.cpu, 'fake'):6.1f} "
                          f"{pct_core(res.cpu, 'me'):6.1f} {pct_core(res.cpu, 'other'):6.1f}")
                    busy_other.append(pct_core(res.cpu, "other"))
                    if res.errors:
                        print(f"         first error: {res.first_error}")
            med = {}
            for cfg in b.configs:
                rs = results[cfg.name]
                med[cfg.name] = {
                    "rps": statistics.median(x.rps for x in rs),
                    "p50": statistics.median(pct(x.latencies, 50) for x in rs),
                    "p95": statistics.median(pct(x.latencies, 95) for x in rs),
                    "cpu": statistics.median(x.cpu_ms_per_req() for x in rs),
                    "main": statistics.median(x.cpu_ms_per_req("main") for x in rs),
                    "threads": statistics.median(x.cpu_ms_per_req("threads") for x in rs),
                    "kworker": statistics.median(x.cpu_ms_per_req("kworker") for x in rs),
                    "errors": sum(x.errors for x in rs),
                    "invol": statistics.median(x.cpu.get("loop_invol", 0) / max(1, x.completed_all or x.requests)
                                               for x in rs),
                }
                m = med[cfg.name]
                print(f"   median {cfg.name:<6} {m['rps']:9.1f} {fmt_ms(m['p50'])} {fmt_ms(m['p95'])} "
                      f"{m['errors']:>6} {m['cpu']:10.3f} {m['main']:6.3f} {m['threads']:6.3f}"
                      f"   (event loop preempted {m['invol']:.2f} times per request; kernel workers "
                      f"{m['kworker']:.3f} ms/request)")
                print(f"          threads other than the loop woke: {format_wakes(median_wakes(rs), 'request')}")
            base, test = b.configs[0].name, b.configs[1].name
            ratio = med[test]["rps"] / med[base]["rps"]
            print(f"   latency {test}/{base}: p50 x{med[test]['p50'] / med[base]['p50']:.2f}, "
                  f"p95 x{med[test]['p95'] / med[base]['p95']:.2f}; mitmdump CPU per request "
                  f"{med[test]['cpu']:.3f} vs {med[base]['cpu']:.3f} ms (+{med[test]['cpu'] - med[base]['cpu']:.3f} ms: "
                  f"event loop +{med[test]['main'] - med[base]['main']:.3f}, "
                  f"other threads +{med[test]['threads'] - med[base]['threads']:.3f})")
            print(f"   capacity from CPU per request (robust to other load on the machine): {base}/{test} CPU = "
                  f"{med[base]['cpu'] / med[test]['cpu']:.3f} (what the req/s ratio is when mitmdump's CPU is the limit)")
            cap_pairs = [(x.cpu_ms_per_req(), y.cpu_ms_per_req()) for x, y in zip(results[base], results[test])]
            print(f"   capacity {base}/{test}, "
                  f"{per_round(cap_pairs, CAPACITY_TARGETS.get(key, 0.9), at_least=True)}")
            for cfg in b.configs:
                s = b.ledger_status(cfg)
                if s:
                    print(f"   ledger after runs ({cfg.name}): {s}")
            if floor_mod is not None and ledger_floor is not None:
                f = floor_mod.measure(request_body(raw), stream, ledger_floor)
                room = med[base]["cpu"] * (1 / 0.9 - 1)
                print(f"   floor (bench/floor.py, in this process, no mitmproxy): pouch's own work per request is "
                      f"{f.describe()}; the 0.9x target leaves pouch {room:.3f} ms of CPU per request "
                      f"(bare {med[base]['cpu']:.3f} ms x (1/0.9 - 1))")
            goal = 0.97 if a.against_pouch else 0.9
            flag = "" if ratio >= goal else "  BELOW TARGET"
            flag += noisy(busy_other)
            errs = sum(med[c.name]["errors"] for c in b.configs)
            if errs:
                flag += f"  ({errs} failed requests: see above)"
            line = f"RATIO proxy {key} req/s {test}/{base} = {ratio:.3f} (target >= {goal}){flag}"
            if a.against_pouch:
                line += f"; CPU per request {base}/{test} = {med[base]['cpu'] / med[test]['cpu']:.3f}"
            print(line)
            ratios.append(line)
            # the figure of record (issue 16): capacity from mitmdump's CPU per request
            cap = med[base]["cpu"] / med[test]["cpu"]
            cap_target = CAPACITY_TARGETS.get(key, 0.9)
            line = (f"RATIO proxy {key} capacity (CPU per request) {base}/{test} = {cap:.3f} (target >= {cap_target})"
                    f"{'' if cap >= cap_target else '  BELOW TARGET'}{noisy(busy_other)}")
            print(line)
            ratios.append(line)
            if (b.configs[1].pouch and ratio < goal) or a.profile:
                print(f"   where pouch's time goes ({key}):")
                profile_load(b, b.configs[1], raw, stream, key)
    finally:
        for cfg in b.configs:
            b.stop(cfg)


def run_probe(b: Bench, ratios: list[str]) -> None:
    a = b.args
    print(f"\n== 2. latency of GET /v1/models (sequential probes, {a.probe_gap * 1e3:g} ms apart, own connection) "
          f"while {a.probe_streams} SSE streams ({a.probe_chunks} chunks, {a.probe_delay} ms apart) are metered; "
          f"{a.duration:g} s x {a.rounds} rounds")
    for cfg in b.configs:
        b.start(cfg)
    try:
        for cfg in b.configs:  # warm-up: steady state (certificates, and pouch's one-off tokenizer load,
            # which holds the GIL ~0.1 s in tiktoken's constructor, happen before the first round)
            asyncio.run(closed_loop(cfg.proxy, MODELS_REQUEST, False, 1, min(1.0, a.warmup)))
            asyncio.run(closed_loop(cfg.proxy, chat_request(stream=True, chunks=5), True, 1, 0.3))
        res: dict[str, list[dict]] = {c.name: [] for c in b.configs}
        print(f"   {'round':>5} {'config':<6} {'probes':>6} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} "
              f"{'streams':>7} {'errors':>6} | {'proxy%':>6} {'fake%':>6} {'gen%':>6} {'other%':>6}")
        busy_other: list[float] = []
        for r in range(a.rounds):
            for cfg in b.configs:
                x = asyncio.run(probe_under_streams(cfg.proxy, a.probe_streams, a.probe_chunks, a.probe_delay,
                                                    a.duration, a.probe_gap))
                res[cfg.name].append(x)
                lat = x["lat"]
                print(f"   {r + 1:>5} {cfg.name:<6} {len(lat):>6} {fmt_ms(pct(lat, 50))} {fmt_ms(pct(lat, 95))} "
                      f"{fmt_ms(max(lat) if lat else float('nan'))} {x['streams_done']:>7} "
                      f"{x['probe_errors'] + x['stream_errors']:>6} | {pct_core(x['cpu'], 'total'):6.1f} "
                      f"{pct_core(x['cpu'], 'fake'):6.1f} {pct_core(x['cpu'], 'me'):6.1f} "
                      f"{pct_core(x['cpu'], 'other'):6.1f}")
                busy_other.append(pct_core(x["cpu"], "other"))
                if x["first_error"]:
                    print(f"         first error: {x['first_error']}")
        med = {}
        for cfg in b.configs:
            xs = res[cfg.name]
            med[cfg.name] = {"p50": statistics.median(pct(x["lat"], 50) for x in xs),
                             "p95": statistics.median(pct(x["lat"], 95) for x in xs)}
            pooled = [v for x in xs for v in x["lat"]]
            invol = statistics.median(x["cpu"].get("loop_invol", 0) / x["cpu"]["wall"] for x in xs)
            print(f"   median {cfg.name:<6} {'':>6} {fmt_ms(med[cfg.name]['p50'])} {fmt_ms(med[cfg.name]['p95'])}"
                  f"   (all {len(pooled)} probes pooled: p50 {pct(pooled, 50) * 1e3:.2f}, p95 {pct(pooled, 95) * 1e3:.2f} ms;"
                  f" event loop preempted {invol:.0f} times/s)")
            print(f"          threads other than the loop woke: {format_wakes(median_wakes(xs, per_second=True), 's')}")
        base, test = b.configs[0].name, b.configs[1].name
        p50 = med[test]["p50"] / med[base]["p50"]
        print(f"   p50 {test}/{base} = x{p50:.2f}")
        for q, goal in ((50, 1.1), (95, 1.2)):
            pairs = [(pct(y["lat"], q), pct(x["lat"], q)) for x, y in zip(res[base], res[test])]
            print(f"   p{q} {test}/{base}, {per_round(pairs, goal, at_least=False)}")
        line = (f"RATIO proxy probe p50 under {a.probe_streams} streams {test}/{base} = {p50:.3f} (target <= 1.1)"
                f"{'' if p50 <= 1.1 else '  OVER TARGET'}{noisy(busy_other)}")
        print(line)
        ratios.append(line)
        ratio = med[test]["p95"] / med[base]["p95"]
        flag = ("" if ratio <= 1.2 else "  OVER TARGET") + noisy(busy_other)
        line = f"RATIO proxy probe p95 under {a.probe_streams} streams {test}/{base} = {ratio:.3f} (target <= 1.2){flag}"
        print(line)
        ratios.append(line)
    finally:
        for cfg in b.configs:
            b.stop(cfg)


def run_memory(b: Bench, ratios: list[str]) -> None:
    a = b.args
    lengths = [("short", a.mem_short, a.mem_short_delay), ("long", a.mem_long, a.mem_long_delay)]
    print(f"\n== 3. peak RSS of a fresh mitmdump with {a.mem_streams} concurrent streams "
          f"(short: {a.mem_short} chunks {a.mem_short_delay} ms apart; long: {a.mem_long} chunks "
          f"{a.mem_long_delay} ms apart), {a.mem_rounds} round(s)")
    print(f"   {'round':>5} {'config':<6} {'length':<6} {'idle MiB':>8} {'VmHWM':>8} {'max RSS':>8} {'+MiB':>6} "
          f"{'seconds':>7} {'ok':>4} {'errors':>6} {'proxy%':>6} {'other%':>6}")
    saturated: set[str] = set()
    idles: dict[str, list[float]] = {}
    peaks: dict[tuple[str, str], list[float]] = {}
    growth: dict[tuple[str, str], list[float]] = {}
    for r in range(a.mem_rounds):
        for lname, chunks, delay in lengths:
            for cfg in b.configs:
                proxy = b.start(cfg)
                try:
                    # one request first so lazy state (leaf cert, tokenizer) is in the idle figure
                    asyncio.run(closed_loop(proxy, chat_request(stream=True, chunks=5, max_tokens=a.mem_max_tokens),
                                            True, 1, 0.3))
                    idle = proc_mem(proxy.proc.pid)["VmRSS"]
                    sampler = MemSampler(proxy.proc.pid)
                    sampler.start()
                    watch = CpuWatch(proxy)
                    try:
                        x = asyncio.run(concurrent_streams(proxy, a.mem_streams, chunks, delay,
                                                           timeout=a.mem_timeout, max_tokens=a.mem_max_tokens))
                    finally:
                        sampler.stop()
                    cpu = watch.result()
                    busy = cpu["total"] / cpu["wall"]
                finally:
                    b.stop(cfg)
                peak = max(sampler.hwm, sampler.max_rss) / 1024
                idles.setdefault(cfg.name, []).append(idle / 1024)
                peaks.setdefault((cfg.name, lname), []).append(peak)
                growth.setdefault((cfg.name, lname), []).append(peak - idle / 1024)
                print(f"   {r + 1:>5} {cfg.name:<6} {lname:<6} {idle / 1024:8.1f} {sampler.hwm / 1024:8.1f} "
                      f"{sampler.max_rss / 1024:8.1f} {peak - idle / 1024:6.1f} {x['seconds']:7.1f} {x['ok']:>4} "
                      f"{x['errors']:>6} {100 * busy:6.1f} {pct_core(cpu, 'other'):6.1f}")
                if busy > 0.85:
                    saturated.add(cfg.name)
                if x["errors"]:
                    print(f"         first error: {x['first_error']}")
    for cfg in b.configs:
        s = statistics.median(peaks[(cfg.name, "short")])
        l_ = statistics.median(peaks[(cfg.name, "long")])
        gs = statistics.median(growth[(cfg.name, "short")])
        gl = statistics.median(growth[(cfg.name, "long")])
        print(f"   {cfg.name}: peak {s:.1f} MiB at {a.mem_short} chunks, {l_:.1f} MiB at {a.mem_long} chunks; "
              f"above idle +{gs:.1f} vs +{gl:.1f} MiB")
        target = "(target ~1.0)" if cfg.pouch or b.args.bare_vs_bare else "(reference: bare mitmdump)"
        line = (f"RATIO proxy memory peak {a.mem_long}/{a.mem_short} chunks x{a.mem_streams} streams "
                f"{cfg.name} = {l_ / s:.3f} {target}")
        print(line)
        ratios.append(line)
    if saturated:
        print(f"   NOTE: mitmdump ({', '.join(sorted(saturated))}) was CPU-saturated during a memory run: data then "
              f"queues inside the proxy and the peak grows with the volume streamed, not only with per-stream "
              f"state; raise --mem-short-delay/--mem-long-delay to separate the two")
    base, test = b.configs[0].name, b.configs[1].name
    print(f"   peak {test}/{base}: short x{statistics.median(peaks[(test, 'short')]) / statistics.median(peaks[(base, 'short')]):.2f}, "
          f"long x{statistics.median(peaks[(test, 'long')]) / statistics.median(peaks[(base, 'long')]):.2f}")
    # issue 16's memory targets: idle (after one request) and the peak at mem_streams streams
    idle_r = statistics.median(idles[test]) / statistics.median(idles[base])
    peak_r = max(statistics.median(peaks[(test, n)]) / statistics.median(peaks[(base, n)]) for n in ("short", "long"))
    for what, r in (("idle RSS", idle_r), (f"peak RSS at {a.mem_streams} streams", peak_r)):
        line = f"RATIO proxy memory {what} {test}/{base} = {r:.3f} (target <= 1.3){'' if r <= 1.3 else '  OVER TARGET'}"
        print(line)
        ratios.append(line)


# --------------------------------------------------------------------------- main

def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short run (~1-2 minutes)")
    ap.add_argument("--duration", type=float, help="seconds per measured load phase (default 6; --quick 2.5)")
    ap.add_argument("--rounds", type=int, default=3, help="rounds per configuration (medians; default 3)")
    ap.add_argument("--warmup", type=float, default=1.0, help="warm-up seconds per proxy and workload")
    ap.add_argument("--conns", type=int, default=20, help="concurrent connections for throughput (default 20)")
    ap.add_argument("--only", default="throughput,probe,memory", help="comma list of throughput,probe,memory")
    ap.add_argument("--probe-streams", type=int, default=20)
    ap.add_argument("--probe-chunks", type=int, default=200)
    ap.add_argument("--probe-delay", type=int, default=10, help="ms between chunks of the background streams")
    ap.add_argument("--probe-gap", type=float, default=0.01, help="seconds between probes")
    ap.add_argument("--mem-streams", type=int, default=100)
    ap.add_argument("--mem-short", type=int, help="chunks per short stream (default 200; --quick 50)")
    ap.add_argument("--mem-long", type=int, help="chunks per long stream (default 2000; --quick 500)")
    ap.add_argument("--mem-short-delay", type=int, help="ms between chunks, short streams (default 40)")
    ap.add_argument("--mem-long-delay", type=int, help="ms between chunks, long streams (default 40)")
    ap.add_argument("--mem-rounds", type=int, help="memory rounds (default 1: peaks vary by < 1 MiB)")
    ap.add_argument("--mem-timeout", type=float, default=180.0, help="bound on one memory run (s)")
    ap.add_argument("--mem-max-tokens", type=int, default=None,
                    help="max_tokens of the memory runs' requests (default: 5 per chunk + 16, which the "
                         "fake's 7-9 bytes per chunk pass: pouch then counts exactly, loading the encoding)")
    ap.add_argument("--bare-vs-bare", action="store_true", help="A/A run: bare on both sides")
    ap.add_argument("--no-pin", action="store_true", help="do not pin mitmdump / load generator to CPUs")
    ap.add_argument("--profile", action="store_true",
                    help="profile pouch's throughput runs with py-spy (PATH or $POUCH_PYSPY) even when the "
                         "ratio meets its target (a ratio below target always triggers it)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, ledgers)")
    ap.add_argument("--against-pouch", action="store_true",
                    help="compare pouch with --pouch-set options against plain pouch (same run; target 0.97)")
    ap.add_argument("--tree", metavar="DIR",
                    help="compare pouch from the source tree DIR (e.g. main: git archive MAIN | tar -x -C DIR) "
                         "against this tree's pouch in the same run (configurations tree vs pouch)")
    ap.add_argument("--otlp-sink", action="store_true",
                    help="run a local OTLP/HTTP receiver that discards spans; OTEL_EXPORTER_OTLP_ENDPOINT points at it")
    ap.add_argument("--pouch-set", action="append", default=[], metavar="OPTION=VALUE",
                    help="an extra mitmproxy option for the pouch proxy (repeatable), e.g. "
                         "pouch_identify_process=false, to see what one feature costs")
    args = ap.parse_args(argv)
    q = args.quick
    args.duration = args.duration or (2.5 if q else 6.0)
    args.mem_short = args.mem_short or (50 if q else 200)
    args.mem_long = args.mem_long or (500 if q else 2000)
    # Same pace for both lengths, slow enough that mitmdump is not CPU-saturated (100 streams at
    # 40 ms = 2,500 chunks/s): a saturated proxy queues data and its peak then grows with the
    # volume streamed (bare mitmdump: x1.2 at 2000 vs 200 chunks 5 ms apart, x1.0 at 40 ms).
    args.mem_short_delay = args.mem_short_delay if args.mem_short_delay is not None else 40
    args.mem_long_delay = args.mem_long_delay if args.mem_long_delay is not None else 40
    args.mem_rounds = args.mem_rounds or 1
    if q:
        args.warmup = min(args.warmup, 0.5)
    return args


def otlp_sink() -> str:
    """An OTLP/HTTP endpoint on loopback that answers 200 to every export and keeps nothing."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Sink(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            self.rfile.read(int(self.headers.get("content-length", "0")))
            self.send_response(200)
            self.send_header("content-length", "0")
            self.end_headers()

        def log_message(self, *a: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Sink)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return f"http://127.0.0.1:{server.server_address[1]}"


def _terminate(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)  # run the cleanup below (stop every proxy) on SIGTERM
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    if not args.bare_vs_bare:
        r = subprocess.run([sys.executable, "-c", "import pouch_addon.mitm_entry"], cwd=REPO,
                           capture_output=True, text=True)
        if r.returncode != 0:
            print("proxy_bench: the pouch addon does not import, so pouch cannot be measured "
                  "(use --bare-vs-bare for an A/A run):\n" + r.stderr[-1500:], file=sys.stderr)
            return 2
    if args.otlp_sink:
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = otlp_sink()  # the proxies inherit it (harness)
    workdir = Path(tempfile.mkdtemp(prefix="pouch-proxy-bench-"))
    t0 = time.monotonic()
    b = None
    ratios: list[str] = []
    try:
        b = Bench(args, workdir)
        print(f"proxy_bench: {os.cpu_count()} CPUs, {b.pin.describe()}; mitmdump {H.mitmdump_path()}; "
              f"configurations {' vs '.join(c.name for c in b.configs)}; work dir {workdir}")
        if "throughput" in only:
            run_throughput(b, ratios)
        if "probe" in only:
            run_probe(b, ratios)
        if "memory" in only:
            run_memory(b, ratios)
    finally:
        if b is not None:
            b.close()
        if args.keep:
            print(f"work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nproxy_bench finished in {time.monotonic() - t0:.0f} s")
    for line in ratios:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
