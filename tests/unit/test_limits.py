"""Sliding-window rate limits, driven by an explicit clock."""

import math

import pytest

from pouch_addon.limits import NEVER, RateWindow


def test_no_limits_admit_everything():
    w = RateWindow()
    for i in range(1000):
        assert w.admit(float(i) / 100, 10_000) is None
    assert w.usage(9.99) == (1000, 10_000_000)


def test_rpm_blocks_the_next_request_until_the_oldest_expires():
    w = RateWindow(rpm=3)
    assert w.admit(0.0) is None
    assert w.admit(10.0) is None
    assert w.admit(20.5) is None
    assert w.check(30.0) == 30.0           # the event at 0 expires at 60
    assert w.check(29.8) == 31.0           # 30.2 s rounds up, never down
    assert w.check(59.2) == 1.0            # 0.8 s rounds up to 1
    assert w.check(59.999) == 1.0
    assert w.check(60.0) is None           # exactly 60 s later the event no longer counts
    assert w.admit(60.0) is None
    assert w.check(61.0) == 9.0            # next: the event at 10 expires at 70
    assert w.admit(70.0) is None
    assert w.check(71.0) == 10.0           # the event at 20.5 expires at 80.5: 9.5 s, ceil
    assert w.usage(71.0) == (3, 0)


def test_check_does_not_record_and_record_does_not_check():
    w = RateWindow(rpm=1)
    assert w.check(0.0) is None and w.check(0.0) is None
    assert len(w) == 0
    w.record(0.0)
    w.record(1.0)  # over the limit: record counts it anyway (e.g. a request let through by policy)
    assert w.usage(1.0) == (2, 0)
    assert w.check(2.0) == 59.0  # both must expire: the later one at 61


def test_tpm_waits_until_enough_tokens_are_freed():
    w = RateWindow(tpm=1000)
    assert w.admit(0.0, 400) is None
    assert w.admit(5.0, 300) is None
    assert w.admit(10.0, 300) is None
    assert w.usage(10.0) == (3, 1000)
    assert w.check(11.0, 0) is None         # zero tokens always fit a tpm limit
    assert w.check(11.0, 1) == 49.0         # freeing the 400 at t=0 is enough: 60 - 11
    assert w.check(11.0, 400) == 49.0
    assert w.check(11.0, 401) == 54.0       # needs the 300 at t=5 too: 65 - 11
    assert w.check(11.0, 1000) == 59.0      # needs everything: 70 - 11
    assert w.check(60.0, 400) is None
    assert w.check(60.0, 401) == 5.0


def test_a_request_larger_than_tpm_can_never_fit():
    w = RateWindow(tpm=100)
    assert w.check(0.0, 101) == NEVER == math.inf
    assert w.admit(0.0, 101) == math.inf
    assert len(w) == 0
    assert w.check(0.0, 100) is None  # exactly the limit fits an empty window


def test_both_limits_take_the_longer_wait():
    w = RateWindow(rpm=2, tpm=100)
    assert w.admit(0.0, 90) is None
    assert w.admit(30.0, 5) is None
    # rpm: the event at 0 must go (wait 60 - 40 = 20); tpm: 95 + 10 > 100 also needs t=0 gone
    assert w.check(40.0, 10) == 20.0
    w2 = RateWindow(rpm=10, tpm=100)
    assert w2.admit(0.0, 50) is None
    assert w2.admit(30.0, 50) is None
    assert w2.check(40.0, 60) == 50.0  # rpm fine; tpm needs both gone: 90 - 40
    w3 = RateWindow(rpm=1, tpm=1000)
    assert w3.admit(0.0, 1) is None
    assert w3.admit(30.0, 1) == 30.0   # rpm is the binding limit


def test_eviction_bounds_memory():
    w = RateWindow(rpm=1_000_000, tpm=10**12)
    for i in range(10_000):
        w.record(i * 0.1, 7)         # 10 events a second for 1000 s
    now = 9999 * 0.1
    assert len(w) == 600             # only the last 60 s remain
    assert w.usage(now) == (600, 4200)
    assert w.usage(now + 60) == (0, 0)
    assert len(w) == 0


def test_clock_going_backwards_is_treated_as_the_last_event_time():
    w = RateWindow(rpm=2)
    assert w.admit(100.0) is None
    assert w.admit(50.0) is None     # counted at 100, not 50
    assert w.check(120.0) == 40.0    # both expire at 160
    assert w.check(90.0) == 60.0     # "now" is taken as 100


def test_retry_after_is_a_whole_number_at_least_one():
    w = RateWindow(rpm=1)
    w.record(0.0)
    retry = w.check(59.9999999)
    assert retry == 1.0 and isinstance(retry, float)


def test_custom_window():
    w = RateWindow(rpm=1, window=1.0)
    assert w.admit(0.0) is None
    assert w.check(0.5) == 1.0
    assert w.admit(1.0) is None


@pytest.mark.parametrize("kwargs", [{"rpm": 0}, {"rpm": -1}, {"tpm": 0}, {"rpm": 1.5}, {"tpm": True}, {"window": 0}])
def test_invalid_limits_are_refused(kwargs):
    with pytest.raises(ValueError):
        RateWindow(**kwargs)


def test_negative_tokens_are_refused():
    w = RateWindow(tpm=10)
    with pytest.raises(ValueError):
        w.check(0.0, -1)
    with pytest.raises(ValueError):
        w.record(0.0, -1)


def test_rate_book_keeps_one_window_per_wallet_and_follows_limit_changes():
    from pouch_addon.limits import RateBook

    book = RateBook()
    assert book.admit("a", 2, None, 0.0) is None and book.admit("a", 2, None, 1.0) is None
    assert book.admit("a", 2, None, 2.0) == 58.0  # a's third request within the minute
    assert book.admit("b", 2, None, 2.0) is None  # b has its own window
    assert book.admit("a", 3, None, 3.0) is None  # raised: the two counted events are kept
    assert book.admit("a", 1, None, 4.0) == 59.0  # lowered: takes effect at once (events at 0, 1, 3)
    assert book.admit("a", None, None, 5.0) is None  # no limits at all
    assert book.admit("c", None, 10, 0.0, tokens=11) == float("inf")
