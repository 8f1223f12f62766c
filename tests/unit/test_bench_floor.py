"""bench/floor.py, the floor the proxy bench prints next to its throughput ratios, still runs and
measures what it says (a broken floor would end a long proxy bench half-way)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))

import floor  # noqa: E402
import proxy_bench  # noqa: E402


@pytest.fixture(scope="module")
def ledger_floor() -> dict[int, float]:
    return floor.measure_ledger(rounds=4)


def test_ledger_floor_has_every_group_size(ledger_floor):
    assert set(ledger_floor) == set(floor.GROUPS)
    assert all(v > 0 for v in ledger_floor.values())


@pytest.mark.parametrize("stream", [False, True])
def test_floor_prices_the_bench_request(ledger_floor, stream):
    body = proxy_bench.request_body(proxy_bench.chat_request(stream=stream, chunks=50))
    assert body.startswith(b"{") and b'"model"' in body
    f = floor.measure(body, stream, ledger_floor, reps=3)
    assert f.plan_us > 0 and f.price_us > 0
    assert f.total_ms(2) == pytest.approx((f.plan_us + f.price_us + ledger_floor[2]) / 1e3)
    text = f.describe()
    assert "1/2/4/8 admissions per group commit" in text


def test_floor_completion_body_is_priced_from_its_usage():
    from decimal import Decimal

    from pouch_addon import settlement
    from pouch_addon.providers import openai
    from pouch_addon.pricing import PriceTable

    table = PriceTable.load()
    request = floor.bench_request(proxy_bench.request_body(proxy_bench.chat_request(stream=False, chunks=50)))
    plan = floor.plan_request(request, table)
    result = settlement.from_response_body(table, plan, floor.completion_body(50), openai)
    assert result.status == "ok"
    assert Decimal(0) < result.cost <= plan.worst_case


def test_floor_compares_the_ledger_of_two_trees(capsys):
    this = BENCH.parent
    floor.compare_trees([("a", this), ("b", this)], group=1, rounds=3, runs=1, instructions=False)
    out = capsys.readouterr().out
    assert ("a: ledger CPU us (user+system), context switches (voluntary+involuntary) per admission at 1 per "
            "commit, 3 rounds: ") in out
    assert "b: ledger CPU us" in out
    floor.compare_trees([("a", this)], group=1, rounds=3, runs=1, instructions=False, syncs=True)
    out = capsys.readouterr().out
    assert "/adm " in out and " us wall " in out and "fdatasync calls and their mean wall/CPU us" in out


def test_syscall_counts_only_counts_the_measured_loop_and_resumed_calls_once():
    trace = "\n".join([
        "10 openat(AT_FDCWD, \"x\", O_RDONLY) = 3",  # start-up: not counted
        "10 getrusage(RUSAGE_SELF, {ru_utime={tv_sec=0, tv_usec=1}, ...}) = 0",
        "11 flock(3, LOCK_EX <unfinished ...>",
        "10 futex(0x1, FUTEX_WAIT_PRIVATE, 2, NULL) = 0",
        "11 <... flock resumed>) = 0",
        "12 fdatasync(5) = 0",
        "12 +++ exited with 0 +++",
        "10 getrusage(RUSAGE_SELF, {ru_utime={tv_sec=0, tv_usec=2}, ...}) = 0",
        "12 fdatasync(5) = 0",  # the final flush: not counted
    ])
    assert floor.syscall_counts(trace) == {"flock": 1, "futex": 1, "fdatasync": 1}
