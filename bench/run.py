"""Run every benchmark in bench/ and print their RATIO lines as a summary at the end.

    .venv/bin/python bench/run.py [--quick]

- ``ledger_bench.py``: ledger reserve+settle at 1,000,000 vs 1,000 history entries
  (``--quick``: 200,000 vs 1,000);
- ``proxy_bench.py``: pouch vs bare mitmdump, same run: throughput and latency (with the floor of
  ``floor.py``, pouch's own mandatory work per request), latency of a
  small request under streaming load, peak memory of long streams (``--quick``: ~1-2 min);
- ``latency_bench.py``: one agent's sequential calls on one connection, the latency each proxy
  adds over a direct call (bare mitmdump, pouch, pouch strict), and ledger operations per commit;
- ``meter_bench.py``: the per-chunk cost of metering an SSE stream vs splitting + ``json.loads``;
- ``checkpoint_bench.py``: the longest event-loop stall of the checkpoint pass over 20 and 100
  streams, sliced vs one unbroken pass;
- ``identity_bench.py``: attributing a connection to its local process, pouch's lookup vs psutil;
- ``tui_bench.py``: if present.

Each benchmark runs as a subprocess with this interpreter, its output shown as it comes.
Nothing is asserted: the figures and their targets are printed. The exit status is non-zero
only when a benchmark could not run (crash, timeout, pouch not importable).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent


def supports(script: Path, flag: str) -> bool:
    try:
        r = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True,
                           timeout=60, cwd=REPO, env=env())
    except subprocess.TimeoutExpired:
        return False
    return flag in r.stdout


def env() -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(REPO) + (os.pathsep + e["PYTHONPATH"] if e.get("PYTHONPATH") else "")
    e["PYTHONUNBUFFERED"] = "1"
    return e


def run(name: str, cmd: list[str], timeout: float) -> tuple[int | str, list[str], float]:
    """Run ``cmd``, echoing its output; (return code, RATIO lines, seconds)."""
    print(f"\n{'=' * 20} {name}: {' '.join(cmd[1:])}", flush=True)
    t0 = time.monotonic()
    ratios: list[str] = []
    p = subprocess.Popen(cmd, cwd=REPO, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, bufsize=1, start_new_session=True)
    timed_out = threading.Event()

    def kill() -> None:  # the benchmark's own cleanup (SIGTERM) stops its proxies; then SIGKILL
        timed_out.set()
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 5)):
            try:
                os.killpg(p.pid, sig)
                p.wait(wait)
                return
            except (ProcessLookupError, subprocess.TimeoutExpired):
                continue

    watchdog = threading.Timer(timeout, kill)
    watchdog.daemon = True
    watchdog.start()
    rc: int | str
    try:
        assert p.stdout is not None
        for line in p.stdout:
            print(line, end="", flush=True)
            if line.startswith("RATIO "):
                ratios.append(line.rstrip())
        rc = p.wait()
    except KeyboardInterrupt:
        kill()
        raise
    finally:
        watchdog.cancel()
    if timed_out.is_set():
        rc = f"timeout after {timeout:.0f} s"
    # a benchmark prints its RATIO lines again as its own summary: keep each once
    seen: list[str] = []
    for r in ratios:
        if r not in seen:
            seen.append(r)
    return rc, seen, time.monotonic() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a shorter run (about 2-3 minutes in all)")
    args = ap.parse_args()
    py = sys.executable
    plan: list[tuple[str, list[str], float]] = [
        ("ledger_bench", [py, str(BENCH / "ledger_bench.py")] + (["--big", "200000"] if args.quick else []), 1200),
        ("proxy_bench", [py, str(BENCH / "proxy_bench.py")] + (["--quick"] if args.quick else []), 1200),
        ("latency_bench", [py, str(BENCH / "latency_bench.py")] + (["--n", "30", "--rounds", "3"] if args.quick else []),
         900),
    ]
    for name in ("meter_bench", "checkpoint_bench", "identity_bench"):
        script = BENCH / f"{name}.py"
        if script.exists():
            plan.append((name, [py, str(script)] + (["--quick"] if args.quick and supports(script, "--quick") else []),
                         600))
    tui = BENCH / "tui_bench.py"
    if tui.exists():
        plan.append(("tui_bench", [py, str(tui)] + (["--quick"] if args.quick and supports(tui, "--quick") else []),
                     900))
    t0 = time.monotonic()
    summary: list[str] = []
    failed = []
    for name, cmd, timeout in plan:
        rc, ratios, secs = run(name, cmd, timeout)
        summary.append(f"-- {name} ({secs:.0f} s{'' if rc == 0 else f', exit {rc}'})")
        summary += ratios or ["   (no RATIO line)"]
        if rc != 0:
            failed.append(name)
    print(f"\n{'=' * 20} summary ({time.monotonic() - t0:.0f} s)")
    for line in summary:
        print(line)
    if failed:
        print(f"could not complete: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
