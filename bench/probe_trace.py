"""Where an unrelated request's time goes while streams are metered: a per-probe timeline.

Issue 16 §3: ``bench/proxy_bench.py --only probe`` finds a ``GET /v1/models`` probe slower through
pouch than through bare mitmdump while 20 SSE streams run, and nothing in the probe's own work
explains it. This bench runs the same load (``proxy_bench``'s fake, client and stream request;
mitmdump pinned to cpu0) through bare mitmdump and mitmdump+pouch started with
``bench/probe_entry.py``, the rounds alternating, and for each probe puts on one monotonic clock:
the client's send, the proxy's read of it, each hook phase (requestheaders / request /
responseheaders / response, before and after pouch's chain), the first and last write upstream,
the provider's answer read, the first and last write to the client, the client's last byte. It
also records every turn of the event loop (``select`` called / returned) and every executor job
in the same window, and around each probe each mitmdump thread's CPU time and time slices
(``/proc/<pid>/task/*/schedstat``, read by this process on the other CPU).

Printed per configuration: the median offset of each event from the client's send, the median
of each interval, the loop's turns inside a probe (how many, how long the longest), which other
threads ran during probes (and during the slowest tenth), and the executor jobs per second.

    .venv/bin/python bench/probe_trace.py [--rounds 4] [--duration 6] [--tree NAME=DIR] [--set OPTION=VALUE]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import ssl
import statistics
import sys
import tempfile
import time
from collections import Counter
from decimal import Decimal
from pathlib import Path

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import proxy_bench as PB  # noqa: E402

H = PB.H
ENTRY = BENCH / "probe_entry.py"

#: events of one probe, in the order a bare mitmdump usually sees them
EVENTS = ["c_send", "io_cl_r0", "rqh0", "rqh1", "rq0", "rq1", "io_up_w0", "io_up_wl", "io_up_r0", "rsh0", "rsh1",
          "io_cl_w0", "rs0", "rs1", "io_cl_wl", "io_up_rl", "c_done"]
INTERVALS = [
    ("client send -> proxy reads", "c_send", "io_cl_r0"),
    ("proxy reads -> requestheaders hook", "io_cl_r0", "rqh0"),
    ("requestheaders hooks", "rqh0", "rqh1"),
    ("requestheaders end -> request hook", "rqh1", "rq0"),
    ("request hooks", "rq0", "rq1"),
    ("request hooks end -> first write upstream", "rq1", "io_up_w0"),
    ("first write upstream -> provider's data read", "io_up_w0", "io_up_r0"),
    ("provider's data read -> responseheaders hook", "io_up_r0", "rsh0"),
    ("responseheaders hooks", "rsh0", "rsh1"),
    ("responseheaders end -> response hook", "rsh1", "rs0"),
    ("response hooks", "rs0", "rs1"),
    ("responseheaders end -> first write to client", "rsh1", "io_cl_w0"),
    ("response hooks end -> first write to client", "rs1", "io_cl_w0"),
    ("first -> last write to client", "io_cl_w0", "io_cl_wl"),
    ("last write to client -> client has it", "io_cl_wl", "c_done"),
    ("provider's data read -> first write to client", "io_up_r0", "io_cl_w0"),
    ("TOTAL client send -> client has it", "c_send", "c_done"),
]


def task_stats(pid: int) -> dict[int, tuple[str, int, int, int]]:
    """Each thread of ``pid``: (name, ns on CPU, time slices run, ns runnable but waiting for the
    CPU), from schedstat."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            run, wait, slices = (int(x) for x in (task / "schedstat").read_text().split())
            name = (task / "comm").read_text().strip()
        except (OSError, ValueError):
            continue
        out[int(task.name)] = (name, run, slices, wait)
    return out


def task_delta(a: dict, b: dict, loop_tid: int) -> dict[str, tuple[int, int, int]]:
    """(ns, slices, ns waiting for the CPU) per thread name between two ``task_stats`` ("loop" for
    the event loop)."""
    out: dict[str, tuple[int, int, int]] = {}
    for tid, (name, run, sl, wait) in b.items():
        r0, s0, w0 = a.get(tid, (name, 0, 0, 0))[1:]
        if run - r0 or sl - s0:
            key = "loop" if tid == loop_tid else name
            ns, n, w = out.get(key, (0, 0, 0))
            out[key] = (ns + run - r0, n + sl - s0, w + wait - w0)
    return out


def probe_request(seq: int, dump: str | None = None) -> bytes:
    extra = f"x-probe-dump: {dump}\r\n" if dump else ""
    return PB.MODELS_REQUEST.replace(b"\r\n\r\n", f"\r\nx-probe-seq: {seq}\r\n{extra}\r\n".encode(), 1)


async def probe_round(proxy: H.Proxy, a: argparse.Namespace, seq0: int, dump: str) -> dict:
    """``proxy_bench.probe_under_streams`` with each probe's client times and thread stats."""
    ctx = ssl.create_default_context(cafile=str(proxy.ca))
    raw = PB.chat_request(stream=True, chunks=a.chunks, delay_ms=a.delay)
    stop = asyncio.Event()
    pid = proxy.proc.pid

    async def streamer() -> None:
        c = await ProbeClient.open(proxy.port, ctx)
        try:
            while not stop.is_set():
                status, body = await c.request(raw)
                if not PB.check(status, body, True):
                    raise SystemExit(f"bad stream {status}: {body[:200]!r}")
                if c.closed:
                    c = await ProbeClient.open(proxy.port, ctx)
        finally:
            c.close()

    tasks = [asyncio.create_task(streamer()) for _ in range(a.streams)]
    probe = await ProbeClient.open(proxy.port, ctx)
    await asyncio.sleep(min(1.0, a.chunks * a.delay / 1000 / 4))
    # the window starts: the loop's record so far is dropped
    await probe.request(probe_request(0, dump + ".pre"))
    probes = []
    seq = seq0
    watch = PB.CpuWatch(proxy)
    t_end = time.perf_counter() + a.duration
    try:
        while time.perf_counter() < t_end:
            seq += 1
            req = probe_request(seq)
            s0 = task_stats(pid)
            t0 = time.perf_counter()
            probe.w.write(req)
            await probe.w.drain()
            status, body = await probe.request_rest()
            t1 = time.perf_counter()
            s1 = task_stats(pid)
            if status != 200:
                raise SystemExit(f"bad probe {status}: {body[:200]!r}")
            probes.append({"seq": seq, "c_send": t0, "c_done": t1, "threads": task_delta(s0, s1, pid)})
            await asyncio.sleep(a.gap)
        await probe.request(probe_request(seq + 1, dump))  # completes the last probe's record; dumps the loop
    finally:
        cpu = watch.result()
        stop.set()
        probe.close()
        await asyncio.wait(tasks, timeout=a.chunks * a.delay / 1000 * 3 + 30)
    return {"probes": probes, "cpu": cpu, "seq": seq + 1}


class ProbeClient(PB.Client):
    async def request_rest(self) -> tuple[int, bytes]:
        """The response to a request already written (``Client.request`` without its write)."""
        w, self.w = self.w, _NoWrite(self.w)
        try:
            return await self.request(b"")
        finally:
            self.w = w


class _NoWrite:
    def __init__(self, w):
        self._w = w

    def write(self, data: bytes) -> None:
        pass

    async def drain(self) -> None:
        pass




def med(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def analyse(name: str, probes: list[dict], loops: list[dict], seconds: float) -> dict:
    """Per-probe intervals, the loop's turns inside each probe, the threads that ran."""
    calls = [x for d in loops for x in d["call"]]
    rets = [x for d in loops for x in d["ret"]]
    import bisect
    for p in probes:
        # turns of the loop within the probe: select returns between send and done
        i0 = bisect.bisect_left(rets, p["c_send"])
        i1 = bisect.bisect_left(rets, p["c_done"])
        busy = []
        for i in range(max(i0 - 1, 0), min(i1, len(rets) - 1)):
            if i + 1 < len(calls):
                busy.append(calls[i + 1] - rets[i] if i + 1 < len(calls) else 0.0)
        p["turns"] = i1 - i0
        p["turn_max"] = max(busy) if busy else 0.0
        p["turn_sum"] = sum(busy)
    return {"name": name, "probes": probes}


def report(results: list[dict], loops: dict[str, list[dict]], seconds: dict[str, float]) -> None:
    names = [r["name"] for r in results]
    rows = {r["name"]: [p for p in r["probes"] if "io_cl_r0" in p and "rs1" in p] for r in results}
    print("\n== probes with a complete record: " + ", ".join(f"{n} {len(rows[n])}" for n in names))
    for n in names:
        fresh = sum(1 for p in rows[n] if p.get("new_conn"))
        print(f"   {n}: probes that opened a connection {fresh}")
    print("\n== median offset of each event from the client's send (µs)")
    print(f"   {'event':<44}" + "".join(f"{n:>12}" for n in names))
    for ev in EVENTS:
        cells = []
        for n in names:
            xs = [(p[ev] - p["c_send"]) * 1e6 for p in rows[n] if ev in p]
            cells.append(f"{med(xs):12.0f}" if len(xs) >= len(rows[n]) // 2 and xs else f"{'':>12}")
        print(f"   {ev:<44}" + "".join(cells))
    print("\n== median of each interval (µs); p90 in brackets")
    print(f"   {'interval':<48}" + "".join(f"{n:>18}" for n in names))
    for label, a, b in INTERVALS:
        cells = []
        for n in names:
            xs = sorted((p[b] - p[a]) * 1e6 for p in rows[n] if a in p and b in p)
            cells.append(f"{med(xs):10.0f} [{PB.pct(xs, 90):5.0f}]" if xs else f"{'':>18}")
        print(f"   {label:<48}" + "".join(cells))
    print("\n== the event loop during a probe (client send -> client has it)")
    for n in names:
        ps = rows[n]
        print(f"   {n:<8} loop turns median {med([p['turns'] for p in ps]):.0f} (p90 {PB.pct([p['turns'] for p in ps], 90):.0f}), "
              f"busy per turn median {med([p['turn_sum'] / max(p['turns'], 1) * 1e6 for p in ps]):.0f} µs, "
              f"longest turn median {med([p['turn_max'] * 1e6 for p in ps]):.0f} µs (p90 "
              f"{PB.pct([p['turn_max'] * 1e6 for p in ps], 90):.0f})")
        turns = []
        for d in loops[n]:
            c, r = d["call"], d["ret"]
            turns += [c[i + 1] - r[i] for i in range(len(r) - 1)]
        if turns:
            print(f"            all turns in the window: {len(turns) / seconds[n]:.0f}/s, median "
                  f"{med(turns) * 1e6:.0f} µs, p90 {PB.pct(turns, 90) * 1e6:.0f}, p99 {PB.pct(turns, 99) * 1e6:.0f}; "
                  f"loop busy {sum(turns) / seconds[n] * 100:.1f}%")
        stall = []
        for d in loops[n]:
            c, r, cc, cr = d["call"], d["ret"], d.get("cpu_call", []), d.get("cpu_ret", [])
            if len(cc) == len(c) and len(cr) == len(r):
                stall += [(c[i + 1] - r[i]) - (cc[i + 1] - cr[i]) for i in range(len(r) - 1)]
        if stall:
            tcpu = sum(t for t in turns) - sum(stall)
            print(f"            turns' CPU {tcpu / seconds[n] * 100:.1f}% of the window; stalled mid-turn (the GIL, "
                  f"preempted) {sum(stall) / seconds[n] * 1e3:.1f} ms/s, in {sum(1 for x in stall if x > 50e-6) / seconds[n]:.0f} "
                  f"turns/s over 50 µs; CPU per turn median {med([t - x for t, x in zip(turns, stall)]) * 1e6:.0f} µs")
        ex = Counter(name for d in loops[n] for _, name in d["exec"])
        if ex:
            print("            executor jobs: " + ", ".join(f"{k} {v / seconds[n]:.2f}/s" for k, v in ex.most_common()))
    if any("cbs" in p for n in names for p in rows[n]):
        print("\n== loop callbacks run while a probe is in the proxy (its client data read -> its response hooks' end):"
              " mean count / µs per probe, by callback")
        tot: dict[str, Counter] = {}
        cnt: dict[str, Counter] = {}
        for n in names:
            tot[n], cnt[n] = Counter(), Counter()
            for p in rows[n]:
                for k, (c, dt) in p.get("cbs", {}).items():
                    tot[n][k] += dt * 1e6
                    cnt[n][k] += c
        keys = sorted({k for n in names for k in tot[n]}, key=lambda k: -max(tot[n][k] for n in names))
        print(f"   {'callback':<52}" + "".join(f"{n:>16}" for n in names))
        print(f"   {'(all)':<52}" + "".join(
            f"{sum(cnt[n].values()) / len(rows[n]):6.1f} {sum(tot[n].values()) / len(rows[n]):8.0f} " for n in names))
        for k in keys[:16]:
            print(f"   {k[:52]:<52}" + "".join(
                f"{cnt[n][k] / len(rows[n]):6.1f} {tot[n][k] / len(rows[n]):8.0f} " for n in names))
    print("\n== the event loop thread during a probe (schedstat, median µs per probe): on the CPU / runnable but"
          " waiting for it (pouch's threads, other processes) / neither (select, the GIL, the fake)")
    for n in names:
        ps = rows[n]
        run = [p["threads"].get("loop", (0, 0, 0))[0] / 1e3 for p in ps]
        wait = [p["threads"].get("loop", (0, 0, 0))[2] / 1e3 for p in ps]
        wall = [(p["c_done"] - p["c_send"]) * 1e6 for p in ps]
        rest = [w - r - q for w, r, q in zip(wall, run, wait)]
        print(f"   {n:<8} wall {med(wall):6.0f}: on CPU {med(run):6.0f} (p90 {PB.pct(run, 90):6.0f}), waiting for the CPU "
              f"{med(wait):5.0f} (p90 {PB.pct(wait, 90):6.0f}, mean {statistics.mean(wait):6.0f}), neither {med(rest):6.0f}")
    print("\n== other threads on the CPU during probes: share of probes in which each ran, its CPU µs per probe"
          " (all / slowest tenth)")
    for n in names:
        ps = rows[n]
        slow = sorted(ps, key=lambda p: p["c_done"] - p["c_send"])[-max(1, len(ps) // 10):]
        names_t = sorted({k for p in ps for k in p["threads"]})
        parts = []
        for t in names_t:
            def share(group):
                ran = [p for p in group if p["threads"].get(t, (0, 0))[1]]
                return len(ran) / len(group), sum(p["threads"].get(t, (0, 0))[0] for p in group) / len(group) / 1e3
            s_all, s_slow = share(ps), share(slow)
            parts.append(f"{t} {s_all[0] * 100:.0f}%/{s_slow[0] * 100:.0f}% {s_all[1]:.0f}/{s_slow[1]:.0f} µs")
        print(f"   {n:<8} " + "; ".join(parts))
        others = [p for p in ps if any(k != "loop" for k in p["threads"])]
        alone = [p for p in ps if not any(k != "loop" for k in p["threads"])]
        if others and alone:
            print(f"            probe median with another mitmdump thread on the CPU {med([(p['c_done'] - p['c_send']) * 1e6 for p in others]):.0f} µs "
                  f"({len(others)}), without {med([(p['c_done'] - p['c_send']) * 1e6 for p in alone]):.0f} µs ({len(alone)})")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--duration", type=float, default=6.0)
    ap.add_argument("--streams", type=int, default=20)
    ap.add_argument("--chunks", type=int, default=200)
    ap.add_argument("--delay", type=int, default=10)
    ap.add_argument("--gap", type=float, default=0.01)
    ap.add_argument("--tree", action="append", default=[], metavar="NAME=DIR", help="pouch from another checkout")
    ap.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE", help="for every pouch configuration")
    ap.add_argument("--no-bare", action="store_true", help="only the pouch configurations")
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--keep", metavar="DIR", help="keep the raw records there")
    ap.add_argument("--census", action="store_true",
                    help="also time every loop callback run while a probe is in the proxy, by name")
    args = ap.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="pouch-probe-trace-"))
    h = H.Harness(workdir)
    pin = PB.Pinning(not args.no_pin)
    cfgs: list[tuple[str, str | None]] = [] if args.no_bare else [("bare", None)]
    cfgs.append(("pouch", str(H.REPO)))
    for spec in args.tree:
        name, _, tree = spec.partition("=")
        cfgs.append((name, str(Path(tree).resolve())))
    proxies = {}
    print(f"probe_trace: {pin.describe()}; {args.streams} streams x {args.chunks} chunks {args.delay} ms apart, "
          f"probes {args.gap * 1e3:g} ms apart, {args.rounds} rounds x {args.duration:g} s, rounds alternating")
    try:
        fake = PB.start_quiet_fake(h)
        env0, entry0 = H._proxy_env, H.pouch_entry_script
        for name, tree in cfgs:
            out = workdir / f"probes-{name}.jsonl"
            mode = "bare" if tree is None else "pouch"
            H._proxy_env = lambda tree=tree, out=out, mode=mode: {
                **env0(), "PYTHONPATH": f"{tree or H.REPO}", "PROBE_OUT": str(out), "PHASE_MODE": mode,
                **({"PROBE_CENSUS": "1"} if args.census else {})}
            try:
                if tree is None:
                    proxy = pin.start_proxy(h, pouch=False, fake=fake, extra_args=["-s", str(ENTRY)])
                else:
                    from pouch_addon.budget import Ledger
                    home = workdir / f"home-{name}"
                    home.mkdir()
                    Ledger(home).set_budget(Decimal("1000000"))
                    H.pouch_entry_script = lambda python=None: str(ENTRY)
                    proxy = pin.start_proxy(h, home=home, pouch=True, fake=fake, sets=args.set, timeout=20)
            finally:
                H._proxy_env, H.pouch_entry_script = env0, entry0
            proxies[name] = (proxy, out)
        for name, (proxy, _) in proxies.items():  # warm-up, as proxy_bench's
            asyncio.run(PB.closed_loop(proxy, PB.MODELS_REQUEST, False, 1, 1.0))
            asyncio.run(PB.closed_loop(proxy, PB.chat_request(stream=True, chunks=5), True, 1, 0.3))
        client: dict[str, list[dict]] = {n: [] for n in proxies}
        loops: dict[str, list[dict]] = {n: [] for n in proxies}
        seconds: dict[str, float] = {n: 0.0 for n in proxies}
        seq = 0
        print(f"   {'round':>5} {'config':<8} {'probes':>6} {'p50 ms':>8} {'p95 ms':>8} {'proxy%':>7}")
        for r in range(args.rounds):
            for name, (proxy, _) in proxies.items():
                dump = str(workdir / f"loop-{name}-{r}.json")
                x = asyncio.run(probe_round(proxy, args, seq, dump))
                seq = x["seq"] + 1
                client[name] += x["probes"]
                d = json.loads(Path(dump).read_text())
                loops[name].append(d)
                seconds[name] += (d["ret"][-1] - d["ret"][0]) if d["ret"] else 0.0
                lat = [p["c_done"] - p["c_send"] for p in x["probes"]]
                print(f"   {r + 1:>5} {name:<8} {len(lat):>6} {PB.pct(lat, 50) * 1e3:8.2f} {PB.pct(lat, 95) * 1e3:8.2f} "
                      f"{PB.pct_core(x['cpu'], 'total'):7.1f}")
        for proxy, _ in proxies.values():
            proxy.stop()
        results = []
        for name, (_, out) in proxies.items():
            recs = {}
            for line in out.read_text().splitlines():
                if line.strip():
                    rec = json.loads(line)
                    recs[rec["seq"]] = rec
            probes = []
            for p in client[name]:
                p.update(recs.get(p["seq"], {}))
                probes.append(p)
            results.append(analyse(name, probes, loops[name], seconds[name]))
            if args.keep:
                Path(args.keep).mkdir(parents=True, exist_ok=True)
                (Path(args.keep) / f"probes-{name}.json").write_text(json.dumps(probes))
                (Path(args.keep) / f"loops-{name}.json").write_text(json.dumps(loops[name]))
        names = list(proxies)
        lat = {n: [p["c_done"] - p["c_send"] for p in client[n]] for n in names}
        print("   " + ", ".join(f"{n}: p50 {PB.pct(lat[n], 50) * 1e3:.2f} p95 {PB.pct(lat[n], 95) * 1e3:.2f} ms"
                              for n in names))
        if len(names) > 1:
            b = names[0]
            for n in names[1:]:
                print(f"   {n}/{b}: p50 x{PB.pct(lat[n], 50) / PB.pct(lat[b], 50):.3f}, "
                      f"p95 x{PB.pct(lat[n], 95) / PB.pct(lat[b], 95):.3f} (all probes pooled)")
        report(results, loops, seconds)
    finally:
        for proxy, _ in proxies.values():
            proxy.stop()
        h.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
