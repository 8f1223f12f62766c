"""The floor under pouch's proxy overhead: the work pouch must do per request, measured in-process.

``proxy_bench`` compares mitmdump with pouch against bare mitmdump. Whatever mitmproxy adds for
pouch's hooks, pouch itself must, for every billed request,

- **plan** it: parse the JSON body, estimate the input tokens, fit the output cap, rewrite the
  body (the gate's own ``decode_body`` + ``plan.parse_body`` + ``plan.draft_plan`` +
  ``DraftPlan.finish`` + ``set_body``, on a mitmproxy request);
- **price** the answer: the usage of a non-streamed body (``settlement.from_response_body``),
  or every event of a stream through the meter (``StreamMeter.feed`` / ``finish``);
- **reserve durably and settle** in the ledger before the request leaves and after it ends (the
  promise survives a crash only if the reservation is on disk first): the CPU of the calling
  thread and the committer thread together, per request, when k admissions share a group commit
  and each group's settles ride along with the next group's commit, with 20 other reservations
  open, as under the bench's load.

Measured here with the bench's own request bodies and a 50-chunk stream, no mitmproxy, no
sockets. ``proxy_bench`` prints this floor next to the CPU that its target leaves pouch per
request (``bare CPU x (1 / 0.9 - 1)``): when the floor alone is larger, no tuning of the hooks
can reach the target on this machine.

    .venv/bin/python bench/floor.py

``--ledger-only`` measures the ledger alone, at one admission per commit (``--group``), in a
fresh process per run; ``--tree NAME=DIR`` adds another checkout (e.g. ``git archive`` of an
older commit) to the same session, the trees taking turns for ``--runs`` runs (the shared
machine's load moves every figure, so compare within a session). ``--instructions`` counts the
user-space instructions per admission of every thread under callgrind instead (``valgrind``
needed; the count starts and ends at the loop's ``getrusage`` calls, so start-up is not in it);
``--syscalls`` counts the system calls per admission of every thread under ``strace`` (between
the same two calls), by name. ``--wallets N`` configures N wallets and charges the admissions to
the first (a log record names the wallets its commit changed: the charged one).
The CPU figures come with the context switches per admission (``getrusage``, all threads);
``--syncs`` also times every ``fdatasync`` (wall, and the calling thread's CPU); ``--threads``
adds each thread's user+system CPU per admission (``/proc/self/task``, in clock ticks: use
``--rounds 3000`` or more):

    .venv/bin/python bench/floor.py --ledger-only --tree main=/tmp/main --runs 3 [--instructions | --syncs | --syscalls]
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path

BENCH = Path(__file__).resolve().parent
for p in (str(BENCH), str(BENCH.parent)):
    if p not in sys.path:
        sys.path.insert(0, p)

from meter_bench import MODEL, chat_stream  # noqa: E402
from ledger_loop import ledger_cpu  # noqa: E402

from mitmproxy import http  # noqa: E402

from pouch_addon.providers import openai  # noqa: E402
from pouch_addon import settlement  # noqa: E402
from pouch_addon.addons.gate import decode_body, set_body  # noqa: E402
from pouch_addon.budget import Ledger  # noqa: E402
from pouch_addon.metering import StreamMeter  # noqa: E402
from pouch_addon.plan import CallPlan, PlanSettings, draft_plan, parse_body  # noqa: E402
from pouch_addon.pricing import PriceTable  # noqa: E402

GROUPS = (1, 2, 4, 8)  # admissions per group commit
OPEN = 20  # reservations in flight meanwhile (the bench's 20 connections)


@dataclass
class Floor:
    plan_us: float  # plan one request (parse, estimate, fit, rewrite)
    price_us: float  # price its answer (usage body, or the whole metered stream)
    ledger_us: dict[int, float]  # ledger CPU per request by admissions per group commit

    def total_ms(self, group: int) -> float:
        return (self.plan_us + self.price_us + self.ledger_us[group]) / 1e3

    def describe(self) -> str:
        ledger = "/".join(f"{self.ledger_us[g]:.0f}" for g in GROUPS)
        per = "/".join(str(g) for g in GROUPS)
        return (f"plan {self.plan_us:.0f} us + price {self.price_us:.0f} us + ledger {ledger} us CPU at "
                f"{per} admissions per group commit = {'/'.join(f'{self.total_ms(g):.3f}' for g in GROUPS)} ms")


def median_us(fn: Callable[[], object], n: int) -> float:
    fn()  # warm (encodings, caches)
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


MAX_BODY = 32 * 1048576  # pouch_max_body_mb's default


def bench_request(body_bytes: bytes) -> http.Request:
    return http.Request.make("POST", "https://api.openai.com/v1/chat/completions", body_bytes,
                             {"content-type": "application/json"})


def plan_request(request: http.Request, table: PriceTable) -> CallPlan:
    """What the gate does to a small request on the event loop (``BudgetGate._gate``, inline);
    ``request`` is rewritten."""
    body = parse_body(decode_body(request, MAX_BODY))
    plan = draft_plan("POST", request.path, body, table=table, settings=PlanSettings()).finish(Decimal("1000000"))
    if plan.rewrites:
        body.update(plan.rewrites)
        set_body(request, body)
    return plan


def completion_body(completion_tokens: int) -> bytes:
    """A non-streamed chat completion as OpenAI (and the bench's fake) answers it."""
    return json.dumps({
        "id": "chatcmpl-floor", "object": "chat.completion", "created": 1, "model": "gpt-4o-mini-2024-07-18",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(
            f"tok{i}" for i in range(completion_tokens)), "refusal": None}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 30, "completion_tokens": completion_tokens,
                  "total_tokens": 30 + completion_tokens,
                  "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                  "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0}},
        "service_tier": "default", "system_fingerprint": "fp_floor",
    }).encode()


def ledger_cpu_us(group: int, rounds: int) -> float:
    """User + system CPU of this process (caller and committer thread) per admitted request."""
    return sum(ledger_cpu(Ledger, group, rounds, OPEN, MODEL))


def measure_ledger(rounds: int = 150) -> dict[int, float]:
    return {g: ledger_cpu_us(g, rounds) for g in GROUPS}


def measure(request_body: bytes, stream: bool, ledger: dict[int, float], reps: int = 400) -> Floor:
    table = PriceTable.load()
    price = table.resolve(MODEL)
    request = bench_request(request_body)
    plan = plan_request(request, table)
    if stream:
        chunks = chat_stream(50)

        def price_answer() -> None:
            m = StreamMeter("chat", price, MODEL, plan.input_tokens, plan.worst_case, hide_usage_chunk=True)
            for c in chunks:
                m.feed(c)
            m.finish()
            settlement.completed(table, plan, m.final_usage(), 0, model_reported=m.model_reported,
                                 tier_reported=m.service_tier, status="ok")
    else:
        body = completion_body(50)

        def price_answer() -> None:
            settlement.from_response_body(table, plan, body, openai)

    def plan_again() -> None:
        request.raw_content = request_body  # as mitmproxy read it; set_body replaced it
        plan_request(request, table)

    return Floor(plan_us=median_us(plan_again, reps),
                 price_us=median_us(price_answer, reps), ledger_us=ledger)


#: the ledger loop (``ledger_loop.py``) in a fresh process of any checkout (argv: tree, bench
#: folder, group, rounds); it prints CPU us per admission (user, system)
_WORKER = r"""
import sys
sys.path[:0] = [sys.argv[1], sys.argv[2]]
from pouch_addon.budget import Ledger
import ledger_loop
from ledger_loop import ledger_loop_usage, ledger_usage, timed_fdatasync
calls = timed_fdatasync() if sys.argv[5:] == ["syncs"] else None
if sys.argv[5:6] and sys.argv[5].startswith("loop:"):
    print(*ledger_loop_usage(Ledger, int(sys.argv[4]), %d, %r, float(sys.argv[5][5:])))
else:
    print(*ledger_usage(Ledger, int(sys.argv[3]), int(sys.argv[4]), %d, %r))
if calls is not None:
    n = int(sys.argv[3]) * int(sys.argv[4])
    print(len(calls) / n, sum(w for w, _ in calls) / max(len(calls), 1) * 1e6,
          sum(c for _, c in calls) / max(len(calls), 1) * 1e6)
if getattr(ledger_loop, "LAST_THREADS", None):
    print("threads", *(f"{name.replace(' ', '_')}={u:.0f}+{s:.0f}" for name, (u, s) in ledger_loop.LAST_THREADS.items()))
""" % (OPEN, MODEL, OPEN, MODEL)


def syscall_counts(trace: str) -> Counter[str]:
    """System calls by name in an ``strace -f -o`` trace, between the loop's two ``getrusage``
    calls (the measured loop; start-up and the final flush are not in it). An interrupted call
    (``<unfinished ...>`` then ``<... name resumed>``) counts once."""
    counts: Counter[str] = Counter()
    inside = False
    for line in trace.splitlines():
        rest = line.split(None, 1)[1] if " " in line else ""
        if rest.startswith("getrusage(RUSAGE_SELF"):
            if inside:
                break
            inside = True
            continue
        if not inside or rest.startswith("<...") or rest.startswith("+++") or rest.startswith("---"):
            continue
        name = rest.split("(", 1)[0]
        if name.isidentifier():
            counts[name] += 1
    return counts


def compare_trees(trees: list[tuple[str, Path]], group: int, rounds: int, runs: int, instructions: bool,
                  syncs: bool = False, syscalls: bool = False, loop_gap: float | None = None) -> None:
    """Ledger CPU (or instructions) per admission of each tree, the trees taking turns."""
    import subprocess
    results: dict[str, list[str]] = {name: [] for name, _ in trees}
    for _ in range(runs):
        for name, tree in trees:
            cmd = [sys.executable, "-c", _WORKER, str(tree), str(BENCH), str(group), str(rounds)]
            if syncs:
                cmd.append("syncs")
            elif loop_gap is not None:
                cmd.append(f"loop:{loop_gap}")
            if syscalls:
                with tempfile.TemporaryDirectory(prefix="pouch-floor-st-") as out:
                    subprocess.run(["strace", "-f", "-o", f"{out}/trace", *cmd], check=True, capture_output=True)
                    counts = syscall_counts(Path(f"{out}/trace").read_text(errors="replace"))
                n = rounds * group
                results[name].append(f"{sum(counts.values()) / n:.1f} (" + ", ".join(
                    f"{call} {c / n:.2f}" for call, c in counts.most_common() if c / n >= 0.05) + ")")
            elif instructions:
                with tempfile.TemporaryDirectory(prefix="pouch-floor-cg-") as out:
                    subprocess.run(["valgrind", "--tool=callgrind", "--dump-before=resource_getrusage",
                                    f"--callgrind-out-file={out}/cg.%p", *cmd], check=True, capture_output=True)
                    # part 2: from the first getrusage (loop start) to the second (loop end), all threads
                    part = next(Path(out).glob("cg.*.2"))
                    total = next(int(line.split()[1]) for line in part.read_text(errors="replace").splitlines()
                                 if line.startswith("totals:"))
                results[name].append(f"{total / (rounds * group) / 1e3:.0f}k")
            else:
                lines = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.splitlines()
                user, system, vcs, ivcs, *kworker = (float(v) for v in lines[0].split())
                figure = f"{user + system:.0f} ({user:.0f}+{system:.0f}) cs {vcs:.1f}+{ivcs:.1f}"
                if kworker:
                    figure += f" kworker {kworker[0]:.0f} (sum {user + system + kworker[0]:.0f})"
                if syncs:
                    per, wall, cpu = (float(v) for v in lines[1].split())
                    figure += f" fdatasync {per:.2f}/adm {wall:.0f} us wall {cpu:.0f} us CPU"
                figure += "".join(f" [{line.split(None, 1)[1]}]" for line in lines[1:] if line.startswith("threads "))
                results[name].append(figure)
            print(f"   {name}: {results[name][-1]}", flush=True)
    if loop_gap is not None:
        print(f"(--loop-gap: one admission at a time from an event loop, {loop_gap * 1e3:g} ms in flight each; "
              "kworker: CPU us of the kernel's workers, where an AIO flush runs, other jobs' kernel work included)")
    what = ("system calls (all threads; strace slows them, so waits and wake-ups differ a little)" if syscalls else
            "user-space instructions" if instructions else
            "CPU us (user+system), context switches (voluntary+involuntary)"
            + (", fdatasync calls and their mean wall/CPU us (timed: adds CPU)" if syncs else ""))
    for name, figures in results.items():
        print(f"{name}: ledger {what} per admission at {group} per commit, {rounds} rounds: {', '.join(figures)}")


def main(argv: list[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ledger-only", action="store_true", help="the ledger alone, in a fresh process per run")
    ap.add_argument("--tree", action="append", default=[], metavar="NAME=DIR", help="another checkout to compare")
    ap.add_argument("--group", type=int, default=1, help="admissions per group commit (--ledger-only)")
    ap.add_argument("--rounds", type=int, default=500, help="group commits per run (--ledger-only)")
    ap.add_argument("--runs", type=int, default=3, help="runs per tree, taking turns (--ledger-only)")
    ap.add_argument("--instructions", action="store_true", help="callgrind instructions instead of CPU time")
    ap.add_argument("--syncs", action="store_true", help="also time each fdatasync (--ledger-only)")
    ap.add_argument("--loop-gap", type=float, default=None, metavar="MS",
                    help="a lone caller on an event loop instead of thread callers, each call MS in flight "
                         "(--ledger-only; one admission per commit; adds the kernel workers' CPU)")
    ap.add_argument("--wallets", type=int, default=0,
                    help="configure this many wallets, the admissions charged to the first (--ledger-only)")
    ap.add_argument("--threads", action="store_true",
                    help="also each thread's user+system CPU us per admission, by name (/proc clock ticks: "
                         "use --rounds 3000 or more; --ledger-only)")
    ap.add_argument("--syscalls", action="store_true",
                    help="system calls per admission under strace, by name, instead of CPU time (--ledger-only)")
    args = ap.parse_args(argv)
    if args.wallets:
        import os
        os.environ["POUCH_FLOOR_WALLETS"] = str(args.wallets)  # read by ledger_loop in each run's process
    if args.threads:
        import os
        os.environ["POUCH_FLOOR_THREADS"] = "1"  # read by ledger_loop in each run's process
    if args.ledger_only or args.tree or args.instructions or args.syscalls:
        trees = [("this", BENCH.parent)] + [(t.split("=", 1)[0], Path(t.split("=", 1)[1]).resolve()) for t in args.tree]
        compare_trees(trees, args.group, args.rounds, args.runs, args.instructions, args.syncs, args.syscalls,
                      None if args.loop_gap is None else args.loop_gap / 1e3)
        return 0
    import proxy_bench as PB

    ledger = measure_ledger()
    for stream in (False, True):
        f = measure(PB.request_body(PB.chat_request(stream=stream, chunks=50)), stream, ledger)
        print(f"{'sse50' if stream else 'nonstream'}: {f.describe()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
