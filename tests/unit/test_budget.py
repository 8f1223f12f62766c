"""The pure ledger rules: reserve / settle / block / orphans and the invariant."""

from decimal import Decimal as D

import pytest

from pouch_addon.budget import LedgerState, NotOpen, Owner, Refusal, Reservation

OWNER = Owner(pid=1, started="1", host="h")


def state(budget: str = "1") -> LedgerState:
    return LedgerState(budget=D(budget))


def reserve(st: LedgerState, amount: str, rid: str = "r1") -> Reservation | Refusal:
    return st.reserve(D(amount), res_id=rid, owner=OWNER, now=100.0, meta={"model": "gpt-4o"})


def test_reserve_up_to_exactly_the_remaining_budget():
    st = state("1")
    assert isinstance(reserve(st, "0.6", "a"), Reservation)
    assert isinstance(reserve(st, "0.4", "b"), Reservation)  # exactly enough is enough
    refused = reserve(st, "0.000000001", "c")
    assert isinstance(refused, Refusal) and refused.reason == "insufficient"
    assert refused.remaining == D(0) and refused.needed == D("0.000000001")
    assert st.reserved == D("1.0") and st.remaining == 0 and st.problems() == []


def test_zero_budget_and_non_positive_amounts_are_refused():
    st = state("0")
    assert reserve(st, "0.01").reason == "insufficient"
    st = state("5")
    assert reserve(st, "0").reason == "invalid"
    assert reserve(st, "-1").reason == "invalid"
    assert st.open == {}


def test_paused_refuses_even_with_budget():
    st = state("5")
    st.paused = True
    refusal = reserve(st, "0.01")
    assert refusal.reason == "paused" and "paused" in refusal.message


def test_refusal_message_says_needed_and_remaining():
    st = state("0.25")
    msg = reserve(st, "1.5").message
    assert "$1.50" in msg and "$0.25 " in msg


def test_settle_refunds_the_difference_exactly():
    st = state("1")
    reserve(st, "0.5")
    st.apply(st.settle_entry("r1", D("0.000123456789"), now=101.0))
    assert st.spent == D("0.000123456789")
    assert st.reserved == 0
    assert st.remaining == D("0.999876543211")
    assert st.requests == 1 and st.problems() == []


def test_settle_is_exactly_once():
    st = state("1")
    reserve(st, "0.5")
    st.apply(st.settle_entry("r1", D("0.1"), now=101.0))
    with pytest.raises(NotOpen):
        st.settle_entry("r1", D("0.1"), now=102.0)
    assert st.spent == D("0.1")


def test_settle_above_reservation_is_recorded_truthfully_and_flagged():
    st = state("1")
    reserve(st, "0.5")
    entry = st.settle_entry("r1", D("0.75"), now=101.0)
    st.apply(entry)
    assert entry["cost"] == "0.75" and "over_reservation" in entry["flags"]
    assert st.spent == D("0.75") and st.flagged == 1
    assert st.problems() == []


def test_settle_rejects_negative_cost():
    st = state("1")
    reserve(st, "0.5")
    with pytest.raises(ValueError):
        st.settle_entry("r1", D("-0.1"), now=101.0)


def test_history_entries_must_follow_in_sequence():
    st = state("1")
    reserve(st, "0.5")
    entry = st.settle_entry("r1", D("0.1"), now=101.0)
    entry["seq"] += 1
    with pytest.raises(Exception, match="seq"):
        st.apply(entry)


def test_block_entries_count_blocks_and_spend_nothing():
    st = state("1")
    refusal = reserve(st, "2")
    st.apply(st.block_entry(refusal, now=100.0, meta={"model": "gpt-4o"}))
    assert st.blocked == 1 and st.spent == 0 and st.requests == 0


def test_orphans_settle_at_reserved_amount_unless_a_final_checkpoint_says_less():
    st = state("1")
    reserve(st, "0.3", "dead")
    reserve(st, "0.2", "dead-final")
    reserve(st, "0.1", "alive")
    st.open["dead-final"].checkpoint = {"final_cost": "0.05"}
    alive = {"alive"}
    for rid in ("dead", "dead-final"):
        st.open[rid].owner = Owner(pid=99, started="x", host="h")
    entries = st.orphan_entries(lambda o: o.pid != 99, now=200.0)
    by_id = {e["id"]: e for e in entries}
    assert set(by_id) == {"dead", "dead-final"}
    assert by_id["dead"]["cost"] == "0.3" and by_id["dead"]["flags"] == ["orphaned"]
    assert by_id["dead-final"]["cost"] == "0.05"
    assert set(st.open) == alive
    assert st.spent == D("0.35") and st.problems() == []


def test_tables_round_trip():
    st = state("3.5")
    reserve(st, "0.25")
    st.apply(st.block_entry(Refusal("insufficient", D(9), D(3)), now=1.0))
    again = LedgerState.from_tables(st.to_tables())
    assert again.to_tables() == st.to_tables()
    assert again.open["r1"].amount == D("0.25")
