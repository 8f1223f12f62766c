"""The batched checkpoint pass of streams in flight (``Metering.checkpoint_once``), with a real
ledger, real plans and real meters: what it writes, and that it shares the event loop."""

import asyncio
import sys
from decimal import Decimal as D
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import checkpoint_bench  # noqa: E402

from pouch_addon.addons import meter as meter_addon  # noqa: E402
from pouch_addon.addons.core import Core  # noqa: E402
from pouch_addon.budget import Ledger  # noqa: E402
from pouch_addon.pricing import PriceTable  # noqa: E402

TABLE = PriceTable.load()


@pytest.fixture
def setup(tmp_path):
    core = Core()
    core.ledger = Ledger(tmp_path, durable=False)
    core.ledger.set_budget(D("100"))
    return core, meter_addon.Metering(core)


def test_a_pass_writes_each_moved_stream_once_in_one_commit(setup):
    core, metering = setup
    calls = checkpoint_bench.streams_in_flight(core, TABLE, 5, events=20)
    calls[0].settled = True  # settling: its settle carries the outcome
    commits = core.ledger.commits
    asyncio.run(metering.checkpoint_once())
    assert core.ledger.commits == commits + 1
    open_ = {r.id: r.checkpoint for r in core.ledger.open_reservations()}
    assert open_[calls[0].reservation.id] is None
    for call in calls[1:]:
        assert open_[call.reservation.id] == call.meter.checkpoint()
        assert open_[call.reservation.id]["events"] == 20 and open_[call.reservation.id]["output_tokens"] > 0
    asyncio.run(metering.checkpoint_once())  # nothing moved since: nothing written
    assert core.ledger.commits == commits + 1


def test_a_long_pass_lets_other_flows_run_between_streams(setup, monkeypatch):
    """Many streams with text to tokenise are milliseconds of work: the pass must not hold the
    loop for all of it (here every stream is a slice of its own)."""
    core, metering = setup
    calls = checkpoint_bench.streams_in_flight(core, TABLE, 6, events=30)
    monkeypatch.setattr(meter_addon, "CHECKPOINT_SLICE", 0.0)
    order: list[str] = []
    for call in calls:
        real = call.meter.checkpoint
        call.meter.checkpoint = lambda real=real: (order.append("stream"), real())[1]

    async def other_flow():
        for _ in range(len(calls)):
            order.append("other")
            await asyncio.sleep(0)

    async def main():
        await asyncio.gather(metering.checkpoint_once(), other_flow())

    asyncio.run(main())
    assert order.count("stream") == len(calls)
    # the other flow ran between the streams' checkpoints, not only before or after the pass
    first, last = order.index("stream"), len(order) - 1 - order[::-1].index("stream")
    assert "other" in order[first:last]


def test_a_stream_that_settles_during_the_pass_is_not_checkpointed(setup, monkeypatch):
    core, metering = setup
    checkpoint_bench.streams_in_flight(core, TABLE, 3, events=10)
    monkeypatch.setattr(meter_addon, "CHECKPOINT_SLICE", 0.0)
    ordered = list(core.active)  # the order the pass walks them

    async def settle_meanwhile():
        ordered[-1].settled = True  # its response ended while the pass was yielding

    async def main():
        await asyncio.gather(metering.checkpoint_once(), settle_meanwhile())

    asyncio.run(main())
    written = {r.id: r.checkpoint for r in core.ledger.open_reservations()}
    assert written[ordered[-1].reservation.id] is None
    assert all(written[c.reservation.id] is not None for c in ordered[:-1])


def test_the_checkpoint_bench_measures_both_modes():
    r = checkpoint_bench.measure(3, 1, TABLE)
    assert set(r) == {"sliced", "unsliced"}
    assert all(stall > 0 and took >= stall for stall, took in r.values())


def test_a_settle_is_queued_at_once_without_a_task_of_its_own(setup):
    """Settling is on every request's path: it hands the write to the ledger's committer before
    ``_settle_soon`` returns and schedules no task (a task is two more loop callbacks per call);
    ``done`` still waits for the write."""
    core, metering = setup
    call = checkpoint_bench.streams_in_flight(core, TABLE, 1, events=20)[0]
    result = meter_addon.settlement.completed(TABLE, call.plan, call.meter.final_usage(), 0,
                                              model_reported=None, tier_reported=None, status="ok")

    async def main():
        before = asyncio.all_tasks()
        metering._settle_soon(call, result, http_status=200)
        assert asyncio.all_tasks() == before
        assert call.settled and call not in core.active
        await metering.done()

    asyncio.run(main())
    assert not core.ledger.open_reservations()


def test_one_streams_failing_checkpoint_neither_ends_the_pass_nor_loses_the_others(setup, monkeypatch):
    """The pass runs in the checkpoint loop's task: an exception out of it ended every later pass."""
    core, metering = setup
    calls = checkpoint_bench.streams_in_flight(core, TABLE, 3, events=20)

    def broken():
        raise UnicodeEncodeError("utf-8", "\ud83d", 0, 1, "surrogates not allowed")
    monkeypatch.setattr(calls[1].meter, "checkpoint", broken)
    asyncio.run(metering.checkpoint_once())
    open_ = {r.id: r.checkpoint for r in core.ledger.open_reservations()}
    assert open_[calls[1].reservation.id] is None
    assert open_[calls[0].reservation.id]["events"] == 20 and open_[calls[2].reservation.id]["events"] == 20
