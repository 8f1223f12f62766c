"""What one agent feels: sequential calls on one connection, each proxy's added latency over a direct call.

Issue 20: the commonest use of pouch is one agent making one call after another. This bench
measures exactly that, against the same local fake api.openai.com (TLS, ``tests/e2e``):

- ``direct``: the client talks TLS to the fake itself (no proxy): the baseline;
- ``bare``: bare mitmdump (the redirect addon, ``stream_large_bodies=1``);
- ``pouch``: mitmdump with pouch, default options;
- ``pouch-strict``: pouch with ``pouch_durability=strict`` (flush before forwarding);
- any ``--config NAME:OPTION=VALUE,...`` added (e.g. ``--config d0:pouch_commit_delay_ms=0``);
- any ``--tree NAME=DIR`` added: pouch from another checkout (``git archive`` of an older
  commit), measured in the same run, so a before/after shares the machine's noise.

One keep-alive connection per configuration, sequential requests; the configurations take turns
round by round (``--rounds``), so drift of the shared machine hits them alike. Two workloads:

- non-stream chat completion: the whole-call latency;
- 50-chunk SSE stream: the time to the first body byte (TTFB) and to the end (``--stream-delay-ms``:
  the fake pauses before each content chunk, as a provider streaming tokens as it makes them).

Printed per configuration: p50/p95 and the *added* p50/p95 over ``direct`` (pooled over every
round), the median of the per-round added p50s, and, for pouch, the ledger's operations per
group commit (log records written, ``lsn``). Then ``--load`` (default 20) connections in a closed
loop for ``--load-seconds`` per pouch configuration: req/s, mitmdump CPU per request and
operations per group commit, so that the gathering under load stays visible next to the lone
caller's latency. Nothing is asserted; each target ends as a ``RATIO`` line:
pouch's added p50 <= bare's + 1 ms (non-stream) and TTFB <= bare's + 1 ms (stream).

    .venv/bin/python bench/latency_bench.py [--n 60] [--rounds 5] [--no-load] [--config NAME:OPT=V,...]
        [--tree NAME=DIR[:OPT=V,...]] [--gap-ms MS]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import ssl
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import proxy_bench as PB  # noqa: E402  (also puts tests/e2e and the repo on sys.path)

H = PB.H


@dataclass
class Cfg:
    name: str
    kind: str  # "direct" | "bare" | "pouch"
    sets: list[str] = field(default_factory=list)
    tree: str | None = None  # another checkout of pouch to run (``--tree``), e.g. the code before a change
    proxy: Any = None
    home: Path | None = None
    client: Any = None
    skipped: str = ""
    lat: dict[str, list[float]] = field(default_factory=lambda: {"ns": [], "ttfb": []})
    rounds: dict[str, list[float]] = field(default_factory=lambda: {"ns": [], "ttfb": []})
    ops: int = 0
    commits: int = 0
    #: per workload, the sequential phase's CPU and switches summed (``Acct``)
    acct: dict[str, dict[str, float]] = field(default_factory=dict)


class StreamClient(PB.Client):
    """The bench client, also reading a chunked body piece by piece to time its first byte."""

    @classmethod
    async def direct(cls, port: int, cafile: str) -> "StreamClient":
        ctx = ssl.create_default_context(cafile=cafile)
        r, w = await asyncio.open_connection(H.LOOPBACK, port, ssl=ctx, server_hostname=PB.HOST, limit=1 << 20)
        return cls(r, w)

    async def timed(self, raw: bytes) -> tuple[int, bytes, float]:
        """Send ``raw``; (status, body, seconds to the first body byte)."""
        t0 = time.perf_counter()
        self.w.write(raw)
        await self.w.drain()
        head = await self.r.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        hdrs = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
        first = None
        if "chunked" in hdrs.get("transfer-encoding", "").lower():
            def first_byte() -> None:
                nonlocal first
                if first is None:
                    first = time.perf_counter() - t0
            body = await PB.read_chunked(self.r, first_byte)
        else:
            body = await self.r.readexactly(int(hdrs.get("content-length", "0")))
            first = time.perf_counter() - t0
        if hdrs.get("connection", "").lower() == "close":
            self.closed = True
        return status, body, first if first is not None else time.perf_counter() - t0


def switches(pid: int) -> float:
    """Context switches (voluntary + involuntary) of all a process's threads."""
    n = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as fh:
                n += sum(int(ln.split()[1]) for ln in fh if "ctxt_switches:" in ln)
        except OSError:
            continue
    return n


class Acct:
    """The sequential calls' cost to the machine, per configuration and workload: mitmdump's CPU
    (event loop, other threads), its context switches and the loop's preemptions, the kernel
    workers' CPU and the whole machine's busy CPU (client, fake and other jobs included)."""

    def __init__(self, cfg: Cfg) -> None:
        self.cfg = cfg
        self.watch = PB.CpuWatch(cfg.proxy)
        self.k0, self.sw0 = PB.kworker_cpu(), switches(cfg.proxy.proc.pid)
        self.ns0 = PB.threads_cpu(cfg.proxy.proc.pid)

    def add(self, label: str, calls: int) -> None:
        cpu = self.watch.result()
        row = self.cfg.acct.setdefault(label, {})
        for key, value in (("calls", calls), ("total", cpu["total"]), ("main", cpu["main"]),
                           ("threads", cpu["threads"]), ("invol", cpu["loop_invol"]),
                           ("switches", switches(self.cfg.proxy.proc.pid) - self.sw0),
                           ("kworker", PB.kworker_cpu() - self.k0),
                           ("sched", PB.threads_cpu(self.cfg.proxy.proc.pid) - self.ns0),
                           ("busy", cpu["total"] + cpu["fake"] + cpu["me"] + cpu["other"])):
            row[key] = row.get(key, 0.0) + value


def ledger_lsn_requests(home: Path) -> tuple[int, int, int]:
    """(log records written, settled requests, blocks) of a ledger (``lsn`` counts group commits)."""
    from pouch_addon.budget import Ledger
    st = Ledger(home).snapshot()
    return st.lsn, st.requests, st.blocked


class Run:
    def __init__(self, args: argparse.Namespace, workdir: Path):
        self.args, self.workdir = args, workdir
        self.h = H.Harness(workdir)
        self.pin = PB.Pinning(not args.no_pin)
        self.fake = PB.start_quiet_fake(self.h)
        self.cfgs = [Cfg("direct", "direct"), Cfg("bare", "bare"), Cfg("pouch", "pouch"),
                     Cfg("pouch-strict", "pouch", ["pouch_durability=strict"])]
        for spec in args.config:
            name, _, opts = spec.partition(":")
            self.cfgs.append(Cfg(name, "pouch", [o for o in opts.split(",") if o]))
        for spec in args.tree:
            name, _, rest = spec.partition("=")
            tree, _, opts = rest.partition(":")
            self.cfgs.append(Cfg(name, "pouch", [o for o in opts.split(",") if o], tree=str(Path(tree).resolve())))

    def start(self, cfg: Cfg) -> None:
        if cfg.kind == "direct":
            return
        if cfg.kind == "bare":
            cfg.proxy = self.pin.start_proxy(self.h, pouch=False, fake=self.fake)
            return
        from pouch_addon.budget import Ledger
        cfg.home = self.workdir / f"home-{cfg.name}"
        cfg.home.mkdir(parents=True, exist_ok=True)
        Ledger(cfg.home).set_budget(Decimal("1000000"))
        env, entry = H._proxy_env, H.pouch_entry_script
        if cfg.tree:  # mitmdump imports pouch_addon from that checkout (PYTHONPATH comes first)
            H._proxy_env = lambda: {**env(), "PYTHONPATH": cfg.tree}
            H.pouch_entry_script = lambda python=None: str(Path(cfg.tree) / "pouch_addon" / "mitm_entry.py")
        try:
            cfg.proxy = self.pin.start_proxy(self.h, home=cfg.home, pouch=True, fake=self.fake, sets=cfg.sets,
                                             timeout=20)
        except H.HarnessError as exc:  # e.g. an option this version of pouch does not know
            cfg.skipped = str(exc).splitlines()[0][:200]
            return
        finally:
            H._proxy_env, H.pouch_entry_script = env, entry
        time.sleep(1.0)  # an unknown option stops mitmdump just after it opened its port
        if not cfg.proxy.alive():
            err = [ln for ln in cfg.proxy.stderr().splitlines() + cfg.proxy.stdout().splitlines() if ln.strip()]
            cfg.skipped = "mitmdump stopped: " + (err[-1][:200] if err else "(no output)")
            cfg.proxy = None

    async def connect(self, cfg: Cfg) -> StreamClient:
        if cfg.kind == "direct":
            return await StreamClient.direct(self.fake.port, str(self.h.certs.ca_cert))
        ctx = ssl.create_default_context(cafile=str(cfg.proxy.ca))
        c = await StreamClient.open(cfg.proxy.port, ctx)
        return c  # type: ignore[return-value]

    async def sequential(self) -> None:
        a = self.args
        ns = PB.chat_request(stream=False, chunks=a.chunks_ns)
        st = PB.chat_request(stream=True, chunks=50, delay_ms=a.stream_delay_ms)
        live = [c for c in self.cfgs if not c.skipped]
        for cfg in live:
            cfg.client = await self.connect(cfg)
            for _ in range(a.warmup):  # first calls load encodings, leaf certs, connections upstream
                await cfg.client.timed(ns)
                await cfg.client.timed(st)
        before = {c.name: ledger_lsn_requests(c.home) for c in live if c.home}
        for r in range(a.rounds):
            for cfg in live:
                for label, raw, stream in (("ns", ns, False), ("ttfb", st, True)):
                    xs = []
                    acct = Acct(cfg) if cfg.proxy is not None else None
                    for _ in range(a.n):
                        if cfg.client.closed:
                            cfg.client = await self.connect(cfg)
                        status, body, first = await cfg.client.timed(raw)
                        if not PB.check(status, body, stream):
                            raise SystemExit(f"{cfg.name}: bad response {status}: {body[:300]!r}")
                        xs.append(first)  # a non-stream body is read whole before the time is taken
                        if a.gap_ms:  # the agent reads the answer before its next call
                            await asyncio.sleep(a.gap_ms / 1000)
                    if acct is not None:
                        acct.add(label, a.n)
                    cfg.lat[label].extend(xs)
                    cfg.rounds[label].append(statistics.median(xs))
            print(f"   round {r + 1}/{a.rounds}: " + ", ".join(
                f"{c.name} {c.rounds['ns'][-1] * 1e3:.2f}/{c.rounds['ttfb'][-1] * 1e3:.2f}" for c in live)
                + " ms (median non-stream / TTFB)", flush=True)
        for cfg in live:
            cfg.client.close()
            if cfg.home:
                b, e = before[cfg.name], ledger_lsn_requests(cfg.home)
                cfg.commits = e[0] - b[0]
                cfg.ops = 2 * (e[1] - b[1]) + (e[2] - b[2])  # a reserve and a settle per call

    def report(self, ratios: list[str]) -> None:
        direct = self.cfgs[0]
        print(f"\n   {'config':<14} {'non-stream p50':>14} {'p95':>7} {'added p50':>9} {'p95':>7} {'rounds':>7} | "
              f"{'TTFB p50':>8} {'p95':>7} {'added p50':>9} {'p95':>7} {'rounds':>7} | ops/commit")
        added: dict[str, tuple[float, float]] = {}
        for cfg in self.cfgs:
            if cfg.skipped:
                print(f"   {cfg.name:<14} skipped: {cfg.skipped}")
                continue
            row, gaps = [], []
            for key, width in (("ns", 14), ("ttfb", 8)):
                p50, p95 = PB.pct(cfg.lat[key], 50), PB.pct(cfg.lat[key], 95)
                d50, d95 = PB.pct(direct.lat[key], 50), PB.pct(direct.lat[key], 95)
                per_round = statistics.median(x - y for x, y in zip(cfg.rounds[key], direct.rounds[key]))
                row.append(f"{p50 * 1e3:{width}.2f} {p95 * 1e3:7.2f} {(p50 - d50) * 1e3:+9.2f} "
                           f"{(p95 - d95) * 1e3:+7.2f} {per_round * 1e3:+7.2f}")
                gaps.append(p50 - d50)
            added[cfg.name] = (gaps[0], gaps[1])
            opc = f"{cfg.ops / cfg.commits:.2f} ({cfg.ops}/{cfg.commits})" if cfg.commits else ""
            print(f"   {cfg.name:<14} {row[0]} | {row[1]} | {opc}")
        print("   (ms; 'added' = this configuration minus direct, pooled over all rounds; 'rounds' = median of the "
              "per-round added p50s; TTFB = time to the first body byte of a 50-chunk SSE stream)")
        print(f"\n   per sequential call: {'config':<14} {'workload':<8} {'mitmdump ms':>11} {'loop':>6} {'thrds':>6} "
              f"{'switches':>8} {'loop preempted':>14} {'kworker ms':>10} {'machine busy ms':>15} {'mitmdump+kworker ms (ns clock)':>30}")
        for cfg in self.cfgs:
            for label, row in cfg.acct.items():
                n = row["calls"]
                print(f"   {'':<19} {cfg.name:<14} {label:<8} {row['total'] / n * 1e3:11.3f} "
                      f"{row['main'] / n * 1e3:6.3f} {row['threads'] / n * 1e3:6.3f} {row['switches'] / n:8.2f} "
                      f"{row['invol'] / n:14.2f} {row['kworker'] / n * 1e3:10.3f} {row['busy'] / n * 1e3:15.3f} "
                      f"{row['sched'] / n * 1e3:12.3f} + {row['kworker'] / n * 1e3:.3f} = "
                      f"{(row['sched'] + row['kworker']) / n * 1e3:.3f}")
        print("   (CPU from /proc in clock ticks of 10 ms, summed over every round, except kworker and the last column: "
              "schedstat's nanoseconds; kworker: the kernel's workers, where an AIO flush runs (other jobs' too); "
              "machine busy: /proc/stat, client, fake and other jobs included)")
        if "bare" in added:
            for name in [c.name for c in self.cfgs if c.kind == "pouch" and not c.skipped]:
                ns_gap = (added[name][0] - added["bare"][0]) * 1e3
                tt_gap = (added[name][1] - added["bare"][1]) * 1e3
                for label, gap in (("non-stream added p50", ns_gap), ("stream TTFB added p50", tt_gap)):
                    target = " (target <= +1.00 ms)" if name == "pouch" else ""
                    line = f"RATIO latency {label} {name} - bare = {gap:+.2f} ms{target}"
                    print(line)
                    ratios.append(line)
                by_name = {c.name: c for c in self.cfgs}
                for key, label in (("ns", "non-stream"), ("ttfb", "stream TTFB")):
                    # each round's pair was measured back to back: the machine's drift between rounds
                    # cancels within a pair; the spread shows what one run's pooled figure hides
                    gaps = sorted((x - y) * 1e3 for x, y in zip(by_name[name].rounds[key], by_name["bare"].rounds[key]))
                    met = sum(1 for g in gaps if g <= 1.0)
                    print(f"   {label} added p50 {name} - bare per round: {' '.join(f'{g:+.2f}' for g in gaps)} ms "
                          f"(median {statistics.median(gaps):+.2f}; {met} of {len(gaps)} rounds <= +1.00)")

    async def load(self, cfg: Cfg) -> None:
        a = self.args
        raw = PB.chat_request(stream=False, chunks=a.chunks_ns)
        before = ledger_lsn_requests(cfg.home) if cfg.home else None
        res = await PB.closed_loop(cfg.proxy, raw, False, a.load, a.load_seconds)
        opc = ""
        if before is not None:
            await asyncio.sleep(0.2)  # the last lazy settles
            e = ledger_lsn_requests(cfg.home)
            ops, commits = 2 * (e[1] - before[1]) + (e[2] - before[2]), e[0] - before[0]
            opc = f", {ops / commits:.2f} ledger operations per group commit ({ops}/{commits})" if commits else ""
        print(f"   {cfg.name:<14} {res.rps:8.1f} req/s, p50 {PB.pct(res.latencies, 50) * 1e3:.1f} ms, "
              f"mitmdump CPU {res.cpu_ms_per_req():.3f} ms/request "
              f"(event loop {res.cpu_ms_per_req('main'):.3f}, other threads {res.cpu_ms_per_req('threads'):.3f}), "
              f"{res.errors} errors{opc}")

    def close(self) -> None:
        for cfg in self.cfgs:
            if cfg.proxy is not None:
                cfg.proxy.stop()
        self.h.stop()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=60, help="sequential calls per configuration, workload and round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--chunks-ns", type=int, default=20, help="completion tokens of the non-stream answer")
    ap.add_argument("--config", action="append", default=[], metavar="NAME:OPTION=VALUE,...",
                    help="another pouch configuration (repeatable)")
    ap.add_argument("--tree", action="append", default=[], metavar="NAME=DIR[:OPTION=VALUE,...]",
                    help="a pouch configuration running the code of another checkout (e.g. `git archive` of "
                         "the commit before a change, for a before/after in one run; repeatable)")
    ap.add_argument("--gap-ms", type=float, default=0.0,
                    help="pause between sequential calls (an agent reading the answer before its next call): "
                         "the proxy's work after a response (its response event, the settle) then no longer "
                         "overlaps the next request")
    ap.add_argument("--no-load", action="store_true", help="skip the closed-loop phase")
    ap.add_argument("--load", type=int, default=20, help="connections of the closed-loop phase")
    ap.add_argument("--load-seconds", type=float, default=4.0)
    ap.add_argument("--no-pin", action="store_true", help="do not pin mitmdump / load generator to CPUs")
    ap.add_argument("--stream-delay-ms", type=int, default=0,
                    help="the fake's pause before each content chunk of the stream (x-fake-delay-ms): a provider "
                         "sending tokens as it makes them, instead of the 49 chunks after the first in one burst "
                         "(the burst's socket writes run on the client's CPU, and this PREEMPT_NONE kernel lets the "
                         "client wait behind them: see README Benchmarks)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="pouch-latency-bench-"))
    t0 = time.monotonic()
    ratios: list[str] = []
    run = None
    try:
        run = Run(args, workdir)
        for cfg in run.cfgs:
            run.start(cfg)
        print(f"latency_bench: {run.pin.describe()}; one connection per configuration, {args.n} sequential calls "
              + (f"(streams paced: {args.stream_delay_ms} ms before each content chunk) " if args.stream_delay_ms else "")
              + f"x {args.rounds} rounds per workload; configurations "
              + ", ".join(c.name + (f" [{' '.join(c.sets)}]" if c.sets else "") for c in run.cfgs), flush=True)
        asyncio.run(run.sequential())
        run.report(ratios)
        if not args.no_load:
            print(f"\n== under load: {args.load} connections, closed loop, non-stream, {args.load_seconds:g} s each")
            for cfg in run.cfgs:
                if cfg.kind != "direct" and not cfg.skipped:
                    asyncio.run(run.load(cfg))
    finally:
        if run is not None:
            run.close()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nlatency_bench finished in {time.monotonic() - t0:.0f} s")
    for line in ratios:
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
