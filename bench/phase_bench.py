"""Where one sequential call's time in the proxy goes: pouch's phases next to bare mitmdump's.

Issue 20: after the group-commit wait and the flush left a lone caller's path, what remains of
pouch's added latency is event-loop work and thread hops of about a millisecond. This bench
runs the same fake and client as ``bench/latency_bench.py`` (one keep-alive connection,
sequential calls), with mitmdump started through ``bench/phase_entry.py``: two probe addons
around pouch's chain (around nothing for ``bare``) timestamp each hook, and wrappers timestamp
the gate's plan, the ledger's enqueue / committer wake-up / commit / delivery back on the loop,
and the first stream chunk. Printed: the median of each phase (µs) per configuration, for a
non-streamed call and a 50-chunk stream. The probes themselves cost a few µs per timestamp.

    .venv/bin/python bench/phase_bench.py [--n 300] [--tree NAME=DIR] [--set OPTION=VALUE ...]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

BENCH = Path(__file__).resolve().parent
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))

import latency_bench as LB  # noqa: E402
import proxy_bench as PB  # noqa: E402

H = PB.H
ENTRY = BENCH / "phase_entry.py"

#: (label, from, to): intervals between timestamps of ``phase_entry``; indented = part of the one above
PHASES = [
    ("request head read -> requestheaders", "m_req_start", "rqh0"),
    ("requestheaders hooks", "rqh0", "rqh1"),
    ("body read -> request hook", "rqh1", "rq0"),
    ("request hooks (all)", "rq0", "rq1"),
    ("  before the gate's plan", "rq0", "g_draft0"),
    ("  plan (parse, estimate)", "g_draft0", "g_draft1"),
    ("  plan -> reserve", "g_draft1", "g_reserve0"),
    ("  reserve (await)", "g_reserve0", "g_reserve1"),
    ("    enqueue (loop)", "l_enqueue0", "l_enqueue1"),
    ("    committer wakes", "l_enqueue1", "c_drain0"),
    ("    await flush (thread)", "c_await0", "c_await1"),
    ("    begin (thread)", "c_begin0", "c_begin1"),
    ("    ops + commit (thread)", "c_begin1", "c_commit1"),
    ("    commit -> deliver", "c_commit1", "c_deliver0"),
    ("    deliver -> loop runs it", "c_deliver0", "l_deliverall0"),
    ("    loop callback -> gate resumes", "l_deliverall1", "g_reserve1"),
    ("    deliver -> gate resumes", "c_deliver0", "g_reserve1"),
    ("    the previous call's settle callback", "l_settled0", "l_settled1"),
    ("  after reserve (rewrite, keys...)", "g_reserve1", "rq1"),
    ("request hooks -> response head", "rq1", "rsh0"),
    ("responseheaders hooks", "rsh0", "rsh1"),
    ("responseheaders -> first chunk", "rsh1", "chunk0"),
    ("first chunk callable", "chunk0", "chunk0_end"),
    ("response hooks", "rs0", "rs1"),
    ("TOTAL head read -> first chunk out", "m_req_start", "chunk0_end"),
    ("IO: client sends -> proxy reads", "c_t0", "io_cl_r0"),
    ("IO: proxy reads -> first write upstream", "io_cl_r0", "io_up_w0"),
    ("IO: first -> last write upstream", "io_up_w0", "io_up_w1"),
    ("IO: last write upstream -> provider's data read", "io_up_w1", "io_up_r0"),
    ("IO: provider's data read -> 1st write to client", "io_up_r0", "io_cl_w0"),
    ("IO: 1st -> 2nd write to client", "io_cl_w0", "io_cl_w1"),
    ("IO: 2nd -> 3rd write to client", "io_cl_w1", "io_cl_w2"),
    ("IO: client sends -> its first body byte", "c_t0", "c_first"),
    ("IO: client sends -> proxy's 2nd write to it (1st body bytes)", "c_t0", "io_cl_w1"),
    ("IO: proxy reads -> request head read", "io_cl_r0", "m_req_start"),
    ("IO: request hooks end -> first write upstream", "rq1", "io_up_w0"),
    ("IO: provider's data read -> response head hook", "io_up_r0", "rsh0"),
    ("IO: responseheaders end -> 1st write to client", "rsh1", "io_cl_w0"),
    ("IO: 1st write to client -> first chunk callable", "io_cl_w0", "chunk0"),
    ("IO: first chunk callable end -> 2nd write", "chunk0_end", "io_cl_w1"),
    ("IO: last write to client -> client's first byte", "io_cl_w1", "c_first"),
    ("IO: provider's 1st -> 2nd data read", "io_up_r0", "io_up_r1"),
    ("IO: 1st write to client -> 1st sync trigger (add_log)", "io_cl_w0", "io_trig0"),
    ("IO: 1st sync trigger (add_log)", "io_trig0", "io_trig0_end"),
    ("IO: 2nd sync trigger (add_log)", "io_trig1", "io_trig1_end"),
    ("IO: provider's 2nd -> 3rd data read", "io_up_r1", "io_up_r2"),
    ("IO: last write upstream -> loop hands the flush", "io_up_w1", "io_hand0"),
    ("IO: hand-off (loop)", "io_hand0", "io_hand1"),
    ("IO: last write upstream -> fdatasync starts", "io_up_w1", "io_sync0"),
    ("IO: fdatasync", "io_sync0", "io_sync1"),
    ("IO: fdatasync end -> provider's data read", "io_sync1", "io_up_r0"),
    ("IO: fdatasync end -> 1st write to client", "io_sync1", "io_cl_w0"),
    ("IO: fdatasync end -> 2nd write to client", "io_sync1", "io_cl_w1"),
    ("TOTAL head read -> response hooks end", "m_req_start", "rs1"),
]
WALL = {"m_req_start", "m_req_end", "m_resp_start", "m_resp_end"}
SIZES = ("io_cl_s0", "io_cl_s1", "io_cl_s2")  # bytes of the first writes to the client
UPSIZES = ("io_up_rs0", "io_up_rs1", "io_up_rs2")  # bytes of the provider's first reads


def switches(pid: int) -> dict[str, int]:
    """Context switches (voluntary + involuntary) of a process's threads, by thread name."""
    out: dict[str, int] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)
        name = fields.get("Name", "?").strip()
        n = int(fields.get("voluntary_ctxt_switches", 0)) + int(fields.get("nonvoluntary_ctxt_switches", 0))
        out[name] = out.get(name, 0) + n
    return out


def interval(d: dict, a: str, b: str) -> float | None:
    if a not in d or b not in d or d[a] is None or d[b] is None:
        return None
    va = d[a] - d["wall_minus_perf"] if a in WALL else d[a]
    vb = d[b] - d["wall_minus_perf"] if b in WALL else d[b]
    return vb - va


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300, help="sequential calls per workload and configuration")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--tree", action="append", default=[], metavar="NAME=DIR", help="pouch from another checkout")
    ap.add_argument("--set", action="append", default=[], metavar="OPTION=VALUE", help="for every pouch configuration")
    ap.add_argument("--config", action="append", default=[], metavar="NAME:OPTION=VALUE,...",
                    help="another pouch configuration of this checkout")
    ap.add_argument("--no-pin", action="store_true")
    ap.add_argument("--stream-delay-ms", type=int, default=0, help="as latency_bench's: the fake's pause per content chunk")
    ap.add_argument("--gap-ms", type=float, default=0.0, help="pause after each call (as latency_bench's)")
    ap.add_argument("--keep", metavar="DIR", help="copy each configuration's per-flow timestamps (JSON lines) there")
    ap.add_argument("--trace", action="store_true",
                    help="also print the loop callbacks run between the reservation's delivery and the gate resuming")
    args = ap.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="pouch-phase-bench-"))
    h = H.Harness(workdir)
    pin = PB.Pinning(not args.no_pin)
    cfgs: list[tuple[str, str | None, list[str]]] = [("bare", None, []), ("pouch", str(H.REPO), [])]
    for spec in args.config:
        name, _, opts = spec.partition(":")
        cfgs.append((name, str(H.REPO), [o for o in opts.split(",") if o]))  # env:VAR=VALUE: an environment variable
    for spec in args.tree:
        name, _, tree = spec.partition("=")
        cfgs.append((name, str(Path(tree).resolve()), []))
    proxies = {}
    try:
        fake = PB.start_quiet_fake(h)
        env0, entry0 = H._proxy_env, H.pouch_entry_script
        for name, tree, sets in cfgs:
            out = workdir / f"phases-{name}.jsonl"
            mode = "bare" if tree is None else "pouch"
            extra = dict(o[4:].split("=", 1) for o in sets if o.startswith("env:"))
            sets = [o for o in sets if not o.startswith("env:")]
            H._proxy_env = lambda tree=tree, out=out, mode=mode, extra=extra: {**extra,
                **env0(), "PYTHONPATH": f"{tree or H.REPO}", "PHASE_OUT": str(out), "PHASE_MODE": mode,
                **({"PHASE_HANDLES": "1"} if args.trace else {})}
            try:
                if tree is None:
                    proxy = pin.start_proxy(h, pouch=False, fake=fake, extra_args=["-s", str(ENTRY)])
                else:
                    from pouch_addon.budget import Ledger
                    home = workdir / f"home-{name}"
                    home.mkdir()
                    Ledger(home).set_budget(Decimal("1000000"))
                    H.pouch_entry_script = lambda python=None: str(ENTRY)
                    proxy = pin.start_proxy(h, home=home, pouch=True, fake=fake, sets=args.set + sets, timeout=20)
            finally:
                H._proxy_env, H.pouch_entry_script = env0, entry0
            proxies[name] = (proxy, out)
        time.sleep(1.0)

        async def drive() -> dict[str, dict[str, list[float]]]:
            ns = PB.chat_request(stream=False, chunks=20)
            st = PB.chat_request(stream=True, chunks=50, delay_ms=args.stream_delay_ms)
            clients = {}
            client_t: dict[str, dict[str, list[float]]] = {n: {"ns": [], "st": []} for n in proxies}
            for n in proxies:
                client_abs[n] = {"ns": [], "st": []}
            for name, (proxy, _) in proxies.items():
                ctx = LB.ssl.create_default_context(cafile=str(proxy.ca))
                clients[name] = await LB.StreamClient.open(proxy.port, ctx)
                for _ in range(args.warmup):
                    await clients[name].timed(ns)
                    await clients[name].timed(st)
            for i in range(args.n):
                for name, c in clients.items():
                    for key, raw, stream in (("ns", ns, False), ("st", st, True)):
                        t0 = time.perf_counter()  # CLOCK_MONOTONIC, the proxy's perf_counter too
                        status, body, first = await c.timed(raw)
                        client_abs[name][key].append((t0, t0 + first))
                        if args.gap_ms:  # an agent reads the answer before its next call
                            await asyncio.sleep(args.gap_ms / 1000)
                        if not PB.check(status, body, stream):
                            raise SystemExit(f"{name}: bad response {status}: {body[:200]!r}")
                        client_t[name][key].append(first)
            for c in clients.values():
                c.close()
            return client_t

        client_abs: dict[str, dict[str, list[tuple[float, float]]]] = {}
        sw0 = {n: switches(p.proc.pid) for n, (p, _) in proxies.items()}
        client_t = asyncio.run(drive())
        sw1 = {n: switches(p.proc.pid) for n, (p, _) in proxies.items()}
        for proxy, _ in proxies.values():
            proxy.stop()
        rows: dict[str, dict[str, list[dict]]] = {}
        for name, (_, out) in proxies.items():
            if args.keep:
                Path(args.keep).mkdir(parents=True, exist_ok=True)
                shutil.copy(out, Path(args.keep) / out.name)
            flows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
            flows = [f for f in flows if "/chat/completions" in f.get("path", "")][2 * args.warmup:]
            rows[name] = {"ns": [f for f in flows if not f["stream"]], "st": [f for f in flows if f["stream"]]}
            for key in ("ns", "st"):  # the client's send and first body byte, same clock (sequential: same order)
                for f, (t0, first) in zip(rows[name][key], client_abs[name][key]):
                    f["c_t0"], f["c_first"] = t0, first
        names = list(proxies)
        print("\n== context switches per call (both workloads), by thread")
        for n in names:
            per = {t: (sw1[n].get(t, 0) - sw0[n].get(t, 0)) / (2 * (args.n + args.warmup)) for t in sw1[n]}
            print(f"   {n:<10} total {sum(per.values()):6.2f}: " + ", ".join(f"{t} {v:.2f}" for t, v in per.items() if v))
        for key, title in (("ns", "non-stream chat completion"), ("st", "50-chunk SSE stream")):
            print(f"\n== {title}: median µs per phase ({args.n} sequential calls each)")
            print(f"   {'phase':<40}" + "".join(f"{n:>12}" for n in names))
            cl = "client: to first body byte" if key == "st" else "client: whole call"
            print(f"   {cl:<40}" + "".join(f"{statistics.median(client_t[n][key]) * 1e6:12.0f}" for n in names))
            for label, a, b in PHASES:
                cells = []
                for n in names:
                    xs = [x for x in (interval(f, a, b) for f in rows[n][key]) if x is not None]
                    cells.append(f"{statistics.median(xs) * 1e6:12.0f}" if len(xs) >= len(rows[n][key]) // 2 and xs
                                 else f"{'':>12}")
                if any(c.strip() for c in cells):
                    print(f"   {label:<40}" + "".join(cells))
            print(f"   {'bytes of the 1st/2nd/3rd write to client':<40}" + "".join(
                f"{'/'.join(str(int(statistics.median([f.get(k, -1) for f in rows[n][key]]))) for k in SIZES):>12}"
                for n in names))
            print(f"   {'cyclic GC per call: runs, older gens, µs':<40}" + "".join(
                f"{'/'.join(f'{statistics.mean([f.get(k, 0) for f in rows[n][key]]):.2f}' for k in ('gc_n', 'gc_old', 'gc_us')):>12}"
                if rows[n][key] else f"{'':>12}" for n in names))
            print(f"   {'bytes of the provider reads 1st/2nd/3rd':<40}" + "".join(
                f"{'/'.join(str(int(statistics.median([f.get(k, -1) for f in rows[n][key]]))) for k in UPSIZES):>12}"
                for n in names))
            if args.trace:
                for n in names:
                    for f in rows[n][key][:: max(1, len(rows[n][key]) // 4)]:
                        print(f"   {n} trace: {f.get('trace')}")
    finally:
        for proxy, _ in proxies.values():
            proxy.stop()
        h.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
