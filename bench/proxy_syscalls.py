"""Where mitmdump's kernel time and thread switches go, per request: bare vs pouch, same run.

The instruction ratio (``bench/proxy_instructions.py``) and the CPU capacity ratio
(``bench/proxy_bench.py``) differ by what is not Python instructions: system calls, wake-ups,
thread switches. This bench runs the same closed-loop load as ``proxy_bench`` (20 keep-alive
connections, SSE 50 chunks or non-streamed) through bare mitmdump and through pouch, and per
request prints, for each thread of mitmdump (named from ``py-spy dump`` when available):
user/system CPU and voluntary/involuntary context switches (``/proc/<pid>/task/*``); then a
window in the middle of a second load under ``strace -f`` (it slows the proxy; the counts per
request stand): system calls per request by thread and name. ``--threads-to CPU`` (an
experiment) moves mitmdump's other threads off the event loop's CPU. ``--perf`` replaces the strace
window with ``perf record -e cpu-clock`` of the event loop's thread (a software clock, so it works in
a VM without hardware counters; kernel symbols included): the loop's CPU per request by symbol,
and the kernel's own top symbols; ``--perf-callers SYMBOL`` adds call graphs and prints who called
SYMBOL (e.g. ``_raw_spin_unlock_irqrestore``, where a VM's sampling lands for work done with
interrupts off).

    .venv/bin/python bench/proxy_syscalls.py [--workload sse50|nonstream] [--duration S]
        [--no-strace] [--tree DIR] [--threads-to CPU] [--perf [--perf-callers SYMBOL]]

``--tree DIR`` adds a third configuration, pouch from another source tree (e.g. main).
Nothing is asserted: figures are printed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import proxy_bench as PB  # noqa: E402

CLK = os.sysconf("SC_CLK_TCK")


def threads(pid: int) -> dict[int, dict[str, float]]:
    out: dict[int, dict[str, float]] = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as fh:
                f = fh.read().rsplit(")", 1)[1].split()
            st = {"utime": int(f[11]) / CLK, "stime": int(f[12]) / CLK}
            with open(f"/proc/{pid}/task/{tid}/status") as fh:
                for line in fh:
                    if line.startswith("voluntary_ctxt_switches"):
                        st["vol"] = int(line.split()[1])
                    elif line.startswith("nonvoluntary_ctxt_switches"):
                        st["invol"] = int(line.split()[1])
        except OSError:
            continue
        out[int(tid)] = st
    return out


def names(pid: int) -> dict[int, str]:
    spy = PB.find_pyspy() or str(Path(sys.executable).parent / "py-spy")
    if not os.path.exists(spy) and not shutil.which(spy):
        return {}
    r = subprocess.run([spy, "dump", "--pid", str(pid), "--nonblocking"], capture_output=True, text=True)
    out = {}
    for line in r.stdout.splitlines():
        m = re.match(r"Thread (\S+) \(\w+(?: and has GIL)?\): \"([^\"]+)\"", line)
        if m:
            ident = m.group(1)
            tid = int(ident, 16) if ident.startswith("0x") else int(ident)
            out[tid] = m.group(2)
    return out


def run_load(proxy, raw: bytes, stream: bool, conns: int, secs: float) -> PB.LoadResult:
    return asyncio.run(PB.closed_loop(proxy, raw, stream, conns, secs))


def measure(cfg: PB.Config, raw: bytes, stream: bool, a: argparse.Namespace) -> None:
    pid = cfg.proxy.proc.pid
    run_load(cfg.proxy, raw, stream, 4, 1.0)  # warm-up
    nm = names(pid)
    if a.threads_to is not None:  # experiment: pouch's threads off the event loop's CPU
        for tid in threads(pid):
            if tid != pid:
                os.sched_setaffinity(tid, {a.threads_to})
    t0 = threads(pid)
    res = run_load(cfg.proxy, raw, stream, a.conns, a.duration)
    t1 = threads(pid)
    nm = {**names(pid), **nm}  # threads started during the load (a committer that idled out and restarted)
    n = res.completed_all or res.requests
    print(f"\n[{cfg.name}] {n} requests ({res.errors} errors) in {a.duration:g} s, "
          f"CPU {res.cpu_ms_per_req():.3f} ms/req (loop {res.cpu_ms_per_req('main'):.3f})")
    print(f"   {'tid':>8} {'name':<28} {'user us/req':>11} {'sys us/req':>10} {'vol/req':>8} {'invol/req':>9}")
    tot = {"utime": 0.0, "stime": 0.0, "vol": 0, "invol": 0}
    for tid in sorted(t1):
        b = t0.get(tid, {"utime": 0.0, "stime": 0.0, "vol": 0, "invol": 0})
        d = {k: t1[tid][k] - b.get(k, 0) for k in tot}
        for k in tot:
            tot[k] += d[k]
        if not any(d.values()):
            continue
        name = "MainThread (event loop)" if tid == pid else nm.get(tid, "?")
        print(f"   {tid:>8} {name[:28]:<28} {d['utime'] / n * 1e6:11.1f} {d['stime'] / n * 1e6:10.1f} "
              f"{d['vol'] / n:8.3f} {d['invol'] / n:9.3f}")
    print(f"   {'all':>8} {'':<28} {tot['utime'] / n * 1e6:11.1f} {tot['stime'] / n * 1e6:10.1f} "
          f"{tot['vol'] / n:8.3f} {tot['invol'] / n:9.3f}")
    if a.perf:
        perf_window(cfg, raw, stream, a)
        return
    if a.no_strace or not shutil.which("strace"):
        return
    out = Path(tempfile.mkstemp(prefix=f"strace-{cfg.name}-")[1])
    n = tool_window(cfg, raw, stream, a, ["strace", "-f", "-qq", "-o", str(out), "-p", str(pid)])
    nm = {**names(pid), **nm}
    per: dict[tuple[str, str], int] = {}
    for line in out.read_text(errors="replace").splitlines():
        m = re.match(r"(\d+)\s+(?:<\.\.\. )?(\w+)", line)
        if not m or "resumed>" in line:
            continue
        tid = int(m.group(1))
        who = "MainThread" if tid == pid else nm.get(tid, f"tid {tid}")
        per[(who, m.group(2))] = per.get((who, m.group(2)), 0) + 1
    out.unlink()
    total = sum(per.values())
    print(f"   strace -f, {a.strace_duration:g} s window of the running load: {n} requests completed; "
          f"{total / n:.1f} system calls per request; by thread and call (>= 0.05 per request):")
    for (who, call), c in sorted(per.items(), key=lambda kv: -kv[1]):
        if c / n >= 0.05:
            print(f"      {who[:24]:<24} {call:<18} {c / n:8.2f}")


def tool_window(cfg: PB.Config, raw: bytes, stream: bool, a: argparse.Namespace, tool: list[str],
                attach: float = 0.3) -> int:
    """Run ``tool`` (strace, perf: attached to the proxy) for ``a.strace_duration`` seconds in the
    middle of a second load (connections open and warm); the requests completed in that window,
    counted by wrapping proxy_bench's check(). ``attach``: seconds the tool needs before it sees
    every thread (strace), not counted."""
    done: list[float] = []
    check = PB.check

    def counting(status: int, body: bytes, stream: bool) -> bool:
        done.append(time.perf_counter())
        return check(status, body, stream)

    PB.check = counting
    th = threading.Thread(target=run_load, args=(cfg.proxy, raw, stream, a.conns, a.strace_duration + 3.0))
    try:
        th.start()
        time.sleep(1.0)
        sp = subprocess.Popen(tool, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(attach)
        t_a = time.perf_counter()
        time.sleep(a.strace_duration)
        t_b = time.perf_counter()
        sp.send_signal(signal.SIGINT)
        sp.wait(30)
        th.join()
    finally:
        PB.check = check
    return sum(1 for t in done if t_a <= t < t_b) or 1


def perf_window(cfg: PB.Config, raw: bytes, stream: bool, a: argparse.Namespace) -> None:
    """Where the event loop's CPU goes, kernel included: ``perf record -e cpu-clock`` on the loop's
    thread for a window in the middle of a second load (a software clock: it works in a VM
    without hardware counters), its symbols ranked in microseconds per request."""
    data = Path(tempfile.mkstemp(prefix=f"perf-{cfg.name}-")[1])
    freq = 4000
    n = tool_window(cfg, raw, stream, a, ["perf", "record", "-q", "-e", "cpu-clock", "-F", str(freq),
                                          "-t", str(cfg.proxy.proc.pid), *(["-g"] if a.perf_callers else []),
                                          "-o", str(data)], attach=0.0)
    rep = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--sort", "dso,sym",
                          "--stdio", "-F", "sample,dso,sym"], capture_output=True, text=True).stdout
    callers = ""
    if a.perf_callers:
        callers = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--stdio", "-S", a.perf_callers,
                                  "-G", "--percent-limit", "2"], capture_output=True, text=True).stdout
    data.unlink()
    rows = []
    for line in rep.splitlines():
        m = re.match(r"\s*(\d+)\s+(\S+)\s+\[([k.])\]\s+(.+)", line)
        if m:
            rows.append((int(m.group(1)), m.group(2), m.group(3), m.group(4).strip()))
    us = 1e6 / freq / n
    kern = sum(c for c, _, k, _ in rows if k == "k")
    total = sum(c for c, *_ in rows)
    print(f"   perf cpu-clock on the event loop, {a.strace_duration:g} s window: {n} requests; "
          f"{total * us:.1f} us/req, kernel {kern * us:.1f}; top symbols (us/req):")
    for c, dso, k, sym in sorted(rows, reverse=True)[:a.perf_top]:
        print(f"      {c * us:8.1f}  [{k}] {dso[:22]:<22} {sym[:70]}")
    if callers:
        print(f"   callers of {a.perf_callers}:")
        print("\n".join("      " + line for line in callers.splitlines() if line.strip() and not line.startswith("#")))
    print("   the kernel's top symbols (us/req):")
    for c, dso, k, sym in sorted((r for r in rows if r[2] == "k"), reverse=True)[:a.perf_top // 2]:
        print(f"      {c * us:8.1f}  [{k}] {sym[:70]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workload", default="sse50", choices=["sse50", "nonstream"])
    ap.add_argument("--duration", type=float, default=5.0)
    ap.add_argument("--strace-duration", type=float, default=3.0)
    ap.add_argument("--conns", type=int, default=20)
    ap.add_argument("--no-strace", action="store_true")
    ap.add_argument("--tree", metavar="DIR")
    ap.add_argument("--threads-to", type=int, metavar="CPU",
                    help="experiment: move mitmdump's other threads to this CPU (the event loop stays pinned)")
    ap.add_argument("--perf", action="store_true",
                    help="instead of strace: perf record the event loop (cpu-clock, kernel included), symbols per request")
    ap.add_argument("--perf-callers", metavar="SYMBOL", help="with --perf: record call graphs and print SYMBOL's callers")
    ap.add_argument("--perf-top", type=int, default=40, help="symbols to print with --perf")
    ap.add_argument("--only", default="bare,pouch", help="configurations to run: bare,pouch (and tree)")
    a = ap.parse_args()
    stream = a.workload == "sse50"
    raw = PB.chat_request(stream=stream, chunks=50)
    args = PB.parse_args(["--quick"])
    workdir = Path(tempfile.mkdtemp(prefix="pouch-proxy-syscalls-"))
    b = PB.Bench(args, workdir)
    cfgs = [c for c in b.configs if c.name in a.only.split(",")]
    if a.tree:
        cfgs.append(PB.Config("tree", True, sets=[], tree=Path(a.tree).resolve()))
    print(f"proxy_syscalls: {a.workload}, {a.conns} connections, {b.pin.describe()}")
    try:
        for cfg in cfgs:
            b.start(cfg)
            try:
                measure(cfg, raw, stream, a)
            finally:
                b.stop(cfg)
    finally:
        b.close()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
