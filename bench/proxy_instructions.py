"""Instructions per request of mitmdump, bare vs with pouch, under callgrind: a figure the
machine's load does not move (``proxy_bench.py``'s CPU times do, on a shared 2-CPU VM).

Each configuration runs a fresh mitmdump under ``valgrind --tool=callgrind`` with
instrumentation off; after a warm-up of 30 requests (certificates, the tokenizer, lazy imports)
it is switched on (``callgrind_control -i on``) for ``--requests`` requests over 10 keep-alive
connections, then dumped. The count covers every thread of mitmdump (pouch's ledger committer
too) in user space; what the kernel does (syscalls, thread switches) is not in it, so the
capacity ratio of ``proxy_bench.py`` is lower than this one.

    .venv/bin/python bench/proxy_instructions.py [--workload sse50|nonstream|models] [--requests N]
        [--chunks N] [--only bare|pouch] [--against-pouch --pouch-set OPTION=VALUE ...] [--tree DIR]

``--workload models`` counts ``GET /v1/models`` (the probe of ``proxy_bench.py``: a free request
pouch forwards without metering). ``--chunks N`` streams N chunks per SSE request instead of 50;
two runs at different N give the instructions per chunk (the difference over the extra chunks).

``--tree DIR`` counts pouch from the source tree DIR (e.g. main: ``git archive MAIN | tar -x -C
DIR``) and this tree's pouch, one after the other.

``--against-pouch`` compares plain pouch with pouch plus the ``--pouch-set`` options (e.g.
``pouch_metrics=127.0.0.1:0`` and ``pouch_otel=true``; traces then go to a local OTLP/HTTP sink in
this process, which is not counted). Both sides wait ``--settle-s`` seconds after the last request
before the count stops, so spans batched by the exporter's thread are exported inside the count.
Under callgrind mitmdump runs some 50 times slower, so what a thread does per second (a batch
posted every ``OTEL_BSP_SCHEDULE_DELAY``, ~1.3 ms of CPU each) weighs some 50 times more per
request here than at full speed, where a batch carries up to 512 spans.

Needs ``valgrind`` (``callgrind_control``). About 2-3 minutes per configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import ssl
import subprocess
import sys
import tempfile
import time
from decimal import Decimal
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))
import proxy_bench as PB  # noqa: E402

H = PB.H


def wrapper(out_dir: Path) -> Path:
    """A mitmdump that runs under callgrind, instrumentation off until switched on."""
    script = out_dir / "mitmdump-callgrind"
    mitmdump = H.mitmdump_path()
    script.write_text("#!/bin/sh\n"
                      f'exec valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="{out_dir}/cg.%p" '
                      f'"{sys.executable}" "{mitmdump}" "$@" 2>>"{out_dir}/valgrind.log"\n')
    script.chmod(0o755)
    return script


async def requests(proxy: H.Proxy, raw: bytes, stream: bool, n: int, conns: int = 10) -> None:
    ctx = ssl.create_default_context(cafile=str(proxy.ca))
    clients = await asyncio.gather(*(PB.Client.open(proxy.port, ctx, timeout=120) for _ in range(conns)))
    left = [n]

    async def worker(c: PB.Client) -> None:
        while left[0] > 0:
            left[0] -= 1
            status, body = await c.request(raw)
            if not PB.check(status, body, stream):
                raise RuntimeError(f"bad response {status}: {body[:300]!r}")

    try:
        await asyncio.gather(*(worker(c) for c in clients))
    finally:
        for c in clients:
            c.close()


def measure(pouch: bool, raw: bytes, stream: bool, n: int, sets: list[str] | None = None,
            settle_s: float = 0.0, tree: Path | None = None) -> float:
    """Instructions (millions) per request of one fresh mitmdump (pouch from ``tree`` if given)."""
    work = Path(tempfile.mkdtemp(prefix="pouch-instructions-"))
    out = work / "callgrind"
    out.mkdir()
    os.environ["POUCH_MITMDUMP"] = str(wrapper(out))
    h = H.Harness(work)
    try:
        fake = PB.start_quiet_fake(h)
        if pouch:
            from pouch_addon.budget import Ledger
            home = work / "home"
            home.mkdir()
            Ledger(home).set_budget(Decimal("1000000"))
            repo = H.REPO
            H.REPO = tree or repo  # the harness puts H.REPO on the proxy's PYTHONPATH
            try:
                proxy = h.start_proxy(home=home, sets=sets or None, pouch=True, fake=fake, timeout=600)
            finally:
                H.REPO = repo
        else:
            proxy = h.start_proxy(pouch=False, fake=fake, timeout=600)
        pid = str(proxy.proc.pid)
        asyncio.run(requests(proxy, raw, stream, 30))  # warm-up, not counted
        subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
        t0 = time.monotonic()
        asyncio.run(requests(proxy, raw, stream, n))
        print(f"   {n} requests in {time.monotonic() - t0:.1f} s under callgrind (+{settle_s:.0f} s after)", flush=True)
        time.sleep(settle_s)  # the exporter's batches of the measured calls (its schedule delay)
        subprocess.run(["callgrind_control", "-i", "off", pid], check=True, capture_output=True)
        subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
        time.sleep(1)
        total = 0
        for f in glob.glob(str(out / "cg.*")):
            with open(f, errors="replace") as fh:
                for line in fh:
                    if line.startswith("totals:"):
                        total += int(line.split()[1])
        return total / n / 1e6
    finally:
        h.stop()
        os.environ.pop("POUCH_MITMDUMP", None)


def request_for(a: argparse.Namespace) -> bytes:
    """The raw request of the workload."""
    if a.workload == "models":
        return PB.MODELS_REQUEST
    return PB.chat_request(stream=a.workload == "sse50", chunks=a.chunks)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", choices=["sse50", "nonstream", "models"], default="sse50")
    ap.add_argument("--chunks", type=int, default=50, help="chunks per SSE request (sse50)")
    ap.add_argument("--requests", type=int, help="measured requests (default: 100 sse50, 200 nonstream)")
    ap.add_argument("--only", choices=["bare", "pouch"])
    ap.add_argument("--against-pouch", action="store_true", help="plain pouch vs pouch with --pouch-set options")
    ap.add_argument("--pouch-set", action="append", default=[], metavar="OPTION=VALUE")
    ap.add_argument("--tree", metavar="DIR", help="pouch from the source tree DIR (e.g. main, git archive'd) "
                    "against this tree's, same run")
    ap.add_argument("--settle-s", type=float, default=8.0, help="wait after the last request (--against-pouch, --tree)")
    a = ap.parse_args(argv)
    if a.against_pouch:
        os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = PB.otlp_sink()  # the proxies inherit it (harness)
        got = {}
        for name, sets in (("pouch", []), ("pouch+", a.pouch_set)):
            got[name] = measure(True, request_for(a),
                                a.workload == "sse50", a.requests or (100 if a.workload == "sse50" else 200),
                                sets, a.settle_s)
            print(f"{a.workload} {name}: {got[name]:.3f} M instructions per request", flush=True)
        print(f"RATIO proxy {a.workload} instructions pouch/pouch+ = {got['pouch'] / got['pouch+']:.3f} "
              f"(target 0.97; pouch+ = {' '.join(a.pouch_set)})")
        return 0
    stream = a.workload == "sse50"
    if a.tree:
        n = a.requests or (100 if stream else 200)
        raw = request_for(a)
        got = {}
        for name, tree in (("tree", Path(a.tree).resolve()), ("pouch", None)):
            got[name] = measure(True, raw, stream, n, settle_s=a.settle_s, tree=tree)
            print(f"{a.workload} {name}: {got[name]:.3f} M instructions per request ({n} requests)", flush=True)
        print(f"RATIO proxy {a.workload} instructions pouch/tree = {got['pouch'] / got['tree']:.3f}")
        return 0
    n = a.requests or (100 if stream else 200)
    raw = request_for(a)
    got = {}
    for name in ("bare", "pouch"):
        if a.only in (None, name):
            got[name] = measure(name == "pouch", raw, stream, n)
            print(f"{a.workload} {name}: {got[name]:.3f} M instructions per request ({n} requests)", flush=True)
    if len(got) == 2:
        print(f"RATIO proxy {a.workload} instructions bare/pouch = {got['bare'] / got['pouch']:.3f} "
              f"(capacity if instructions were the limit; CPU-time target {PB.CAPACITY_TARGETS.get(a.workload, 'none')})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
