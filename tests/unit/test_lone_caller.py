"""Issue 20, one call at a time: work that used to sit on a lone caller's path between its calls.

Each test counts what a call does (log records, loop callbacks, thread wake-ups), never time."""

import asyncio
import threading
import sys
from decimal import Decimal as D
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import checkpoint_bench  # noqa: E402

from pouch_addon.addons import meter as meter_addon  # noqa: E402
from pouch_addon.addons.core import Core  # noqa: E402
from pouch_addon.budget import Ledger, Reservation  # noqa: E402
from pouch_addon.pricing import PriceTable  # noqa: E402

TABLE = PriceTable.load()


@pytest.fixture
def setup(tmp_path):
    core = Core()
    core.ledger = Ledger(tmp_path, durable=False)
    core.ledger.set_budget(D("100"))
    return core, meter_addon.Metering(core)


# (the per-call settle line made only when a handler shows DEBUG: tests/unit/test_meter_debug_log.py)


# -- a finished call is priced after its response was handed on -------------------------------
MODEL = checkpoint_bench.MODEL
ANSWER = (b'{"id":"x","object":"chat.completion","model":"%s","choices":[{"index":0,"message":'
          b'{"role":"assistant","content":"hi"},"finish_reason":"stop"}],'
          b'"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}' % MODEL.encode())


def reserved_flow(core, *, stream: bool):
    from mitmproxy.test import tflow

    from pouch_addon.addons.core import CALL, FlowCall
    from pouch_addon.plan import draft_plan

    body = {"model": MODEL, "max_tokens": 50, "messages": [{"role": "user", "content": "count"}]}
    if stream:
        body["stream"] = True
    plan = draft_plan("POST", "/v1/chat/completions", body, table=TABLE).finish(D("100"))
    call = FlowCall(plan=plan, reservation=core.ledger.reserve(plan.worst_case), client="127.0.0.1:1",
                    ledger=core.ledger)
    core.active.add(call)
    flow = tflow.tflow(resp=True)
    flow.response.status_code = 200
    flow.response.headers["content-type"] = "text/event-stream" if stream else "application/json"
    flow.response.content = ANSWER
    flow.metadata[CALL] = call
    return flow, call


@pytest.fixture
def priced(monkeypatch):
    """Counts the pricing of non-streamed bodies."""
    seen = []
    real = meter_addon.settlement.from_response_body
    monkeypatch.setattr(meter_addon.settlement, "from_response_body", lambda *a: (seen.append(a), real(*a))[1])
    return seen


def test_a_finished_call_is_priced_after_the_response_hook(setup, priced):
    """The response hook only claims the call: the body is priced (and the settle queued) on the
    next loop turn, after mitmproxy handed the response to the client's connection."""
    core, metering = setup
    core.table = TABLE
    flow, call = reserved_flow(core, stream=False)

    async def main():
        await metering.response(flow)
        assert call.settled and call not in core.active
        assert priced == [] and not metering._settles  # nothing priced nor queued inside the hook
        await asyncio.sleep(0)
        assert len(priced) == 1 and len(metering._settles) == 1
        await metering.done()

    asyncio.run(main())
    assert not core.ledger.open_reservations()
    settle = core.ledger.history(kinds=["settle"])
    assert len(settle) == 1 and settle[0]["status"] == "ok" and D(settle[0]["cost"]) > 0


def test_shutdown_right_after_the_response_hook_settles_the_call_once(setup, priced):
    core, metering = setup
    core.table = TABLE
    flow, call = reserved_flow(core, stream=False)

    async def main():
        await metering.response(flow)
        await metering.done()  # before the loop turned: done prices it itself
        await asyncio.sleep(0)  # the cancelled turn does not price it again

    asyncio.run(main())
    assert len(priced) == 1
    assert not core.ledger.open_reservations()
    assert [e["status"] for e in core.ledger.history(kinds=["settle"])] == ["ok"]


def test_a_streamed_calls_meter_is_made_while_its_request_is_in_flight(setup, monkeypatch):
    """``responseheaders`` (between the provider's first bytes and the client's) takes the meter
    made after the request left instead of making one."""
    from pouch_addon.providers import openai

    core, metering = setup
    core.table = TABLE
    flow, call = reserved_flow(core, stream=True)
    made = []
    real = openai.new_meter
    monkeypatch.setattr(openai, "new_meter", lambda *a, **k: (made.append(k), real(*a, **k))[1])

    async def main():
        answer, flow.response = flow.response, None
        metering.request(flow)
        await asyncio.sleep(0)  # the request is on its way
        assert len(made) == 1
        flow.response = answer
        metering.responseheaders(flow)
        assert len(made) == 1 and call.meter is not None and call.next_meter is None
        assert callable(flow.response.stream)
        await metering.done()

    asyncio.run(main())


def test_a_compressed_stream_gets_a_meter_that_decodes(setup, monkeypatch):
    core, metering = setup
    core.table = TABLE
    flow, call = reserved_flow(core, stream=True)
    flow.response.headers["content-encoding"] = "gzip"

    async def main():
        answer, flow.response = flow.response, None
        metering.request(flow)
        await asyncio.sleep(0)
        prepared, flow.response = call.next_meter, answer
        assert prepared is not None
        metering.responseheaders(flow)
        assert call.meter is not prepared and call.meter is not None and call.next_meter is None
        await metering.done()

    asyncio.run(main())


# -- the committer's answer reaches the gate in one loop turn ---------------------------------
def test_an_admission_resumes_on_the_loop_turn_its_answer_wakes(tmp_path, monkeypatch):
    """The committer completes the future itself and wakes the loop once: the gate goes on in the
    loop iteration that wake-up ends, not one later (when the loop first ran a ``_deliver_all``
    callback that set the result, whose task wake-up then waited for the next iteration)."""
    import time

    from pouch_addon import ledger_local
    from pouch_addon.addons.core import reserve

    class Turns(asyncio.SelectorEventLoop):
        n = 0

        def _run_once(self):
            Turns.n += 1
            return super()._run_once()

    ledger = Ledger(tmp_path, durable=False)
    ledger.set_budget(D("1"))
    answered = []
    real = ledger_local._deliver
    monkeypatch.setattr(ledger_local, "_deliver", lambda *a, **k: (answered.append(Turns.n), real(*a, **k)))

    def slow(amount):
        def op(txn):
            time.sleep(0.05)  # the loop is surely waiting in select() when the answer comes
            return ledger.reserve_op(amount)(txn)
        return op

    async def main():
        out = []
        for _ in range(3):
            res = await reserve(ledger, slow(D("0.1")))
            out.append((res, Turns.n))
        return out

    loop = Turns()
    try:
        out = loop.run_until_complete(main())
    finally:
        loop.close()
    assert all(isinstance(res, Reservation) for res, _ in out)
    assert [turn for _, turn in out] == answered  # resumed in the iteration the answer woke


# -- a lone caller's flush starts once its loop had its turn ----------------------------------
def test_a_lone_callers_flush_is_handed_on_by_its_loop_after_the_waiter_ran(tmp_path):
    """Overlap durability, one caller: the committer answers and goes back to sleep; the event
    loop hands the record to the flusher thread after the waiting hook had its turn (so the
    request is on its socket). When the committer handed it on itself, right after answering, a
    third thread woke and wanted the GIL just when the loop needed it."""
    ledger = Ledger(tmp_path)  # durable, overlap (the default)
    ledger.set_budget(D("1"))
    handed: list[tuple[str, bool]] = []
    resumed = {"yes": False}
    queue = ledger._flush_queue

    class Spy:
        def put(self, item):
            handed.append((threading.current_thread().name, resumed["yes"]))
            queue.put(item)

        def __getattr__(self, name):
            return getattr(queue, name)

    ledger._flush_queue = Spy()

    async def main():
        res = await ledger.submit_async(ledger.reserve_op(D("0.1")))
        resumed["yes"] = True  # the hook goes on here (the rest of the request hooks, the send)
        await asyncio.sleep(0)
        return res

    res = asyncio.run(main())
    ledger._await_flush(0)  # flushed, by the flusher thread
    assert handed == [("MainThread", True)]
    assert res.id in Ledger(tmp_path).snapshot().open


def test_a_record_whose_loop_never_turns_is_still_flushed(tmp_path):
    """The committer does not wait for a hand-off that may never come (a loop closed meanwhile):
    waiting for a flush hands the record on itself."""
    ledger = Ledger(tmp_path)
    ledger.set_budget(D("1"))

    async def submit_only():
        return ledger.submit_async(ledger.reserve_op(D("0.1")))

    loop = asyncio.new_event_loop()
    loop.run_until_complete(submit_only())
    loop.close()  # the answer's callback (and the hand-off after it) never runs
    ledger.submit(ledger.reserve_op(D("0.1"))).result(timeout=20)  # the next commit may run one ahead
    ledger._await_flush(0)  # returns: the committer (or this waiter) handed the records on
    assert len(Ledger(tmp_path).snapshot().open) == 2


def test_mitmproxys_streaming_response_line_reaches_no_handler(setup):
    """pouch streams every billed answer, so mitmproxy's per-response "Streaming response from
    HOST." record is dropped before any handler (mitmdump's re-sends each record to every addon);
    its other records still reach them."""
    import logging

    from mitmproxy.test import taddons

    _, metering = setup
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record.getMessage())

    logger = logging.getLogger("mitmproxy.proxy.server")
    handler = Keep(level=logging.DEBUG)
    logger.addHandler(handler)
    level, logger.level = logger.level, logging.DEBUG  # as mitmdump's root logger
    try:
        with taddons.context(metering):
            logger.info("Streaming response from api.openai.com.")
            logger.info("client connect")
            logger.warning("Streaming response from somewhere, as a warning")
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.removeFilter(getattr(meter_addon, "QUIET_STREAMING", None))
    assert seen == ["client connect", "Streaming response from somewhere, as a warning"]


def test_an_unbilled_answer_in_scope_is_streamed_and_one_outside_pouchs_scope_is_left_alone(setup):
    """A free call's answer (``GET /v1/models``) goes on as it arrives, as bare mitmdump's; a host
    the user decrypts for other addons (no pouch scope) keeps mitmproxy's buffering."""
    from mitmproxy.test import tflow

    from pouch_addon.addons.scope import SCOPE

    _core, metering = setup
    free, other = tflow.tflow(resp=True), tflow.tflow(resp=True)
    free.metadata[SCOPE] = "free"
    for f in (free, other):
        f.response.stream = False
        metering.responseheaders(f)
    assert free.response.stream is True
    assert other.response.stream is False
