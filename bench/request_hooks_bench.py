"""The event loop's CPU for pouch's ``request`` hooks of one call, in process (issue 20).

Wall-clock latency on a shared 2-core machine is noisy; the loop thread's CPU time
(``time.thread_time``) for the request hooks is not, or much less: it counts only what the loop
itself runs. This bench builds pouch's addon chain (``make_addons``, wrapped in ``Chain``) in
mitmproxy's test context with a real local ledger (its committer and flusher threads), and
runs the ``request`` hook of one call after another, as one sequential agent does: the body of
``bench/proxy_bench.py``'s chat request (non-stream, and ``stream: true``, which pouch
rewrites to ask for usage), a response given back and the call settled in between. Printed per
workload: the median and mean of the loop thread's CPU per call (µs) and of the wall time of
the hook, and the share of the hook's wall time spent off the loop (the reservation's commit).
``--tree NAME=DIR`` runs the same in another checkout (a ``git archive`` of main) as a
subprocess, so a before/after shares the run.

    .venv/bin/python bench/request_hooks_bench.py [--n 2000] [--tree main=/tmp/main-c13da6d]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path


def body(stream: bool) -> bytes:
    b: dict = {"model": "gpt-4o-mini", "max_tokens": 266,
               "messages": [{"role": "system", "content": "You are a terse benchmark assistant."},
                            {"role": "user", "content": "Count upwards, one short token at a time, please."}]}
    if stream:
        b["stream"] = True
    return json.dumps(b).encode()


#: set by ``--callgrind`` in the process valgrind runs: where its dumps go
CALLGRIND = os.environ.get("RQH_CALLGRIND")


_CG_C = r"""
#include <valgrind/callgrind.h>
void cg_toggle(void) { CALLGRIND_TOGGLE_COLLECT; }
void cg_zero(void) { CALLGRIND_ZERO_STATS; }
void cg_dump(void) { CALLGRIND_DUMP_STATS; }
"""


def callgrind_lib():
    """Callgrind's client requests (toggle collection in the calling thread, zero, dump) for ctypes."""
    import ctypes
    d = Path(tempfile.mkdtemp(prefix="pouch-rqh-cglib-"))
    (d / "cg.c").write_text(_CG_C)
    subprocess.run(["cc", "-shared", "-fPIC", "-O1", "-o", str(d / "cg.so"), str(d / "cg.c")], check=True)
    return ctypes.CDLL(str(d / "cg.so"))


def callgrind_total(cg) -> int:
    """Dump what was collected since the last zero and return its instruction count."""
    out = Path(CALLGRIND)
    before = set(out.parent.glob("cg.*"))
    cg.cg_dump()
    # --separate-threads=yes: one file per thread; the event loop is the main thread (-01)
    [f] = [f for f in set(out.parent.glob("cg.*")) - before if f.name.endswith("-01")]
    for line in f.read_text(errors="replace").splitlines():
        if line.startswith("totals:"):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {f}")


def run(n: int, warmup: int, profile: str | None = None) -> dict[str, dict[str, float]]:
    from mitmproxy import http
    from mitmproxy.test import taddons, tflow

    from pouch_addon.addons import make_addons
    from pouch_addon.addons.chain import Chain
    from pouch_addon.addons.core import CALL
    from pouch_addon.budget import Ledger

    home = tempfile.mkdtemp(prefix="pouch-rqh-bench-")
    Ledger(home).set_budget(Decimal("1000000"))
    members = make_addons()
    chain = Chain(members)
    out: dict[str, dict[str, float]] = {}
    cg = callgrind_lib() if CALLGRIND else None
    prof = None
    if profile:
        import cProfile
        prof = cProfile.Profile()

    client = tflow.tclient_conn()  # one keep-alive connection, its CONNECT tunnel to api.openai.com
    client.peername = ("10.0.0.1", 5555)  # not loopback: no process lookup
    connect = tflow.tflow(client_conn=client)
    connect.request = http.Request.make("CONNECT", "http://api.openai.com:443/")
    connect.request.host, connect.request.port = "api.openai.com", 443

    def flow(stream: bool) -> http.HTTPFlow:
        f = tflow.tflow(client_conn=client)
        f.request = http.Request.make(
            "POST", "https://api.openai.com/v1/chat/completions", body(stream),
            {"Host": "api.openai.com", "Authorization": "Bearer sk-bench", "Content-Type": "application/json",
             "Accept": "application/json"})
        return f

    async def main() -> None:
        with taddons.context(*members) as tctx:
            tctx.options.update(pouch_home=home, pouch_checkpoint_ms=0)
            for a in members:  # every concern configured as at start-up (all options "updated")
                if hasattr(a, "configure"):
                    a.configure(set(tctx.options.keys()))
            # as the proxy at start (``Metering.running``): what start-up made is frozen, so a full
            # collection does not walk it; without this one collection more or less in a 200-call
            # callgrind window moved the count by ~100k instructions per call
            gc.collect()
            gc.freeze()
            client.sni = "api.openai.com"
            chain.http_connect(connect)
            for stream in (False, True):
                cpu, wall = [], []
                for i in range(n + warmup):
                    if i == warmup and cg is not None:
                        cg.cg_zero()
                    f = flow(stream)
                    r = chain.requestheaders(f) if hasattr(chain, "requestheaders") else None
                    if asyncio.iscoroutine(r):
                        await r
                    if prof is not None and i >= warmup:
                        prof.enable()
                    if cg is not None and i >= warmup:
                        cg.cg_toggle()  # collect in this thread (the loop's) for the hooks only
                    c0, t0 = time.thread_time(), time.perf_counter()
                    await chain.request(f)
                    c1, t1 = time.thread_time(), time.perf_counter()
                    if cg is not None and i >= warmup:
                        cg.cg_toggle()
                    if prof is not None:
                        prof.disable()
                    if CALL not in f.metadata or f.response is not None:
                        raise SystemExit(f"not admitted: {f.response and f.response.text} {f.metadata}")
                    if i >= warmup:
                        cpu.append(c1 - c0)
                        wall.append(t1 - t0)
                    # the answer: a small non-stream response, settled as the meter does
                    f.response = http.Response.make(200, json.dumps({
                        "id": "x", "object": "chat.completion", "model": "gpt-4o-mini", "choices": [],
                        "usage": {"prompt_tokens": 30, "completion_tokens": 20, "total_tokens": 50}}).encode(),
                        {"content-type": "application/json"})
                    for hook in ("responseheaders", "response"):
                        fn = getattr(chain, hook, None)
                        if fn is not None:
                            r = fn(f)
                            if asyncio.iscoroutine(r):
                                await r
                    await asyncio.sleep(0.001)  # the client's think time; the settle commits meanwhile
                key = "stream" if stream else "non-stream"
                instr = None
                if cg is not None:
                    instr = callgrind_total(cg) / n
                out[key] = {"instructions": instr, "cpu_median": statistics.median(cpu) * 1e6, "cpu_mean": statistics.mean(cpu) * 1e6,
                            "wall_median": statistics.median(wall) * 1e6}
    asyncio.run(main())
    if prof is not None:
        prof.dump_stats(profile)
    return out


def pieces(n: int, warmup: int) -> dict[str, dict[str, float]]:
    """The request hooks' parts one by one, on the loop and without the ledger: scope, identity,
    the gate's draft (decode, parse, estimate, price) and the body rewrite; min and median µs."""
    from mitmproxy import http
    from mitmproxy.test import taddons, tflow

    import pouch_addon.addons.gate as G
    from pouch_addon.addons import make_addons
    from pouch_addon.budget import Ledger
    from pouch_addon.plan import apply_rewrites

    home = tempfile.mkdtemp(prefix="pouch-rqh-bench-")
    Ledger(home).set_budget(Decimal("1000000"))
    members = make_addons()
    by = {type(a).__name__: a for a in members}
    rewrite = getattr(G, "rewrite_body", None)
    out: dict[str, dict[str, float]] = {}

    async def main() -> None:
        with taddons.context(*members) as tctx:
            tctx.options.update(pouch_home=home, pouch_checkpoint_ms=0, pouch_identify_process=False)
            for a in members:
                if hasattr(a, "configure"):
                    a.configure(set(tctx.options.keys()))
            gate, scope, ident = by["BudgetGate"], by["Scope"], by["Identify"]
            table = gate.core.table
            for stream in (False, True):
                res: dict[str, list[float]] = {"scope": [], "identify": [], "draft": [], "rewrite": []}
                for i in range(n + warmup):
                    f = tflow.tflow()
                    f.client_conn.sni = "api.openai.com"
                    f.request = http.Request.make(
                        "POST", "https://api.openai.com/v1/chat/completions", body(stream),
                        {"Host": "api.openai.com", "Authorization": "Bearer sk-bench",
                         "Content-Type": "application/json", "Accept": "application/json"})
                    t0 = time.perf_counter()
                    scope.request(f)
                    t1 = time.perf_counter()
                    r = ident.request(f)  # a coroutine, or (since issue 20's hooks work) None when nothing waits
                    if r is not None:
                        await r
                    t2 = time.perf_counter()
                    draft, parsed = gate._draft_inline(f, table)
                    t3 = time.perf_counter()
                    if draft.rewrites:
                        if rewrite is not None:
                            rewrite(f.request, parsed, draft.rewrites)
                        else:  # before rewrite_body
                            apply_rewrites(parsed, draft.rewrites)
                            G.set_body(f.request, parsed)
                    t4 = time.perf_counter()
                    if i >= warmup:
                        for k, a, z in (("scope", t0, t1), ("identify", t1, t2), ("draft", t2, t3), ("rewrite", t3, t4)):
                            res[k].append(z - a)
                key = "stream" if stream else "non-stream"
                out[key] = {f"{k} {m}": fn(v) * 1e6 for k, v in res.items()
                            for m, fn in (("min", min), ("p50", statistics.median))}
    asyncio.run(main())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--tree", action="append", default=[], metavar="NAME=DIR")
    ap.add_argument("--profile", metavar="FILE", help="cProfile of the hooks (this checkout), for pstats")
    ap.add_argument("--callgrind", action="store_true",
                    help="count the loop thread's instructions in the request hooks under valgrind instead "
                         "(deterministic; ~50x slower: use --n 200)")
    ap.add_argument("--pieces", action="store_true",
                    help="time the hooks' parts one by one instead (scope, identity, draft, rewrite; no ledger)")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # the --tree worker's output
    args = ap.parse_args(argv)
    if args.json:
        print(json.dumps(pieces(args.n, args.warmup) if args.pieces else run(args.n, args.warmup, args.profile)))
        return 0
    results: dict[str, dict] = {}
    for name, tree in [("this", None)] + [tuple(s.split("=", 1)) for s in args.tree]:
        env = {**os.environ}
        if tree is not None:  # this file's code, that checkout's pouch (PYTHONPATH comes before the venv's install)
            env["PYTHONPATH"] = str(Path(tree).resolve())
        cmd = [sys.executable, __file__, "--json", "--n", str(args.n), "--warmup", str(args.warmup)]
        if args.pieces:
            cmd.append("--pieces")
        if args.profile and tree is None:
            cmd += ["--profile", args.profile]
        if args.callgrind:
            out_dir = Path(tempfile.mkdtemp(prefix="pouch-rqh-cg-"))
            env["RQH_CALLGRIND"] = str(out_dir / "dump")
            cmd = ["valgrind", "--tool=callgrind", "--collect-atstart=no", "--separate-threads=yes",
                   f"--callgrind-out-file={out_dir}/cg.%p", "-q"] + cmd
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"{name}: {proc.stderr[-3000:]}")
        results[name] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"request hooks of one sequential call, in process ({args.n} calls per workload): µs per call")
    if args.pieces:
        print("   the parts of the request hooks one by one (µs, min / median)")
        for key in ("non-stream", "stream"):
            for name, res in results.items():
                r = res[key]
                print(f"   {key:<12}{name:<10}" + "  ".join(
                    f"{part} {r[part + ' min']:.1f}/{r[part + ' p50']:.1f}" for part in ("scope", "identify", "draft", "rewrite")))
        return 0
    if args.callgrind:
        print("   instructions of the event loop's thread in the request hooks, per call (callgrind)")
        for key in ("non-stream", "stream"):
            for name, res in results.items():
                print(f"   {key:<12}{name:<10}{res[key]['instructions']:14,.0f}")
        print_ratios(results, "instructions per call", "instructions")
        return 0
    print(f"   {'workload':<12}{'config':<10}{'loop CPU p50':>14}{'loop CPU mean':>15}{'hook wall p50':>15}")
    for key in ("non-stream", "stream"):
        for name, res in results.items():
            r = res[key]
            print(f"   {key:<12}{name:<10}{r['cpu_median']:14.1f}{r['cpu_mean']:15.1f}{r['wall_median']:15.1f}")
    print_ratios(results, "request hooks loop CPU p50", "cpu_median")
    return 0


def print_ratios(results: dict, label: str, field: str) -> None:
    """One RATIO line per other tree and workload: this tree's ``field`` over that tree's."""
    for name in list(results)[1:]:
        for key in ("non-stream", "stream"):
            print(f"RATIO {label} {key} this/{name} = {results['this'][key][field] / results[name][key][field]:.3f}")


if __name__ == "__main__":
    raise SystemExit(main())
