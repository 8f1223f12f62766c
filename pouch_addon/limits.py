"""Sliding-window rate limits: requests and tokens per minute. Pure; the caller passes the clock.

A :class:`RateWindow` remembers the ``(ts, tokens)`` of the requests it admitted during the
last ``window`` seconds (60 by default). An event at ``ts`` counts while ``now < ts + window``
and is evicted once ``now >= ts + window``, so memory is bounded by what one window holds.

Use a monotonic clock (``time.monotonic()``): a wall clock stepping backwards would keep
events alive too long. Events are kept in order; a ``now`` earlier than the last event is
treated as that event's time.

``check`` answers "may this request go now?" with ``None`` (yes) or the whole number of
seconds after which it would fit (for a ``Retry-After`` header). A request asking for more
tokens than ``tpm`` can never fit: ``check`` returns ``math.inf`` and the caller must refuse
it outright rather than ask the client to retry.

API: ``RateWindow(rpm=None, tpm=None, window=60.0)`` with :meth:`~RateWindow.check`,
:meth:`~RateWindow.record`, :meth:`~RateWindow.admit` (check and record in one step) and
:meth:`~RateWindow.usage`; :class:`RateBook` keeps one window per wallet.
"""

from __future__ import annotations

import math
from collections import deque

__all__ = ["NEVER", "RateBook", "RateWindow"]

NEVER = math.inf  # returned by check() when the request is larger than the whole tpm


class RateWindow:
    """Requests-per-minute and tokens-per-minute over a sliding window; ``None`` = no limit."""

    def __init__(self, rpm: int | None = None, tpm: int | None = None, window: float = 60.0) -> None:
        for name, value in (("rpm", rpm), ("tpm", tpm)):
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
                raise ValueError(f"{name} must be a positive whole number or None, not {value!r}")
        if window <= 0:
            raise ValueError("window must be positive")
        self.rpm = rpm
        self.tpm = tpm
        self.window = float(window)
        self._events: deque[tuple[float, int]] = deque()
        self._tokens = 0  # running sum of the tokens in _events

    def _now(self, now: float) -> float:
        return max(now, self._events[-1][0]) if self._events else now

    def _evict(self, now: float) -> None:
        horizon = now - self.window
        while self._events and self._events[0][0] <= horizon:
            self._tokens -= self._events.popleft()[1]

    def usage(self, now: float) -> tuple[int, int]:
        """``(requests, tokens)`` counted in the window ending at ``now``."""
        self._evict(self._now(now))
        return len(self._events), self._tokens

    def check(self, now: float, tokens: int = 0) -> float | None:
        """``None`` if a request of ``tokens`` fits now, else the seconds to wait (ceil, >= 1).

        Returns :data:`NEVER` (``math.inf``) if ``tokens`` alone exceeds ``tpm``.
        """
        if tokens < 0:
            raise ValueError("tokens must not be negative")
        now = self._now(now)
        self._evict(now)
        if self.tpm is not None and tokens > self.tpm:
            return NEVER
        wait_until = now
        if self.rpm is not None and len(self._events) + 1 > self.rpm:
            # the oldest events must expire until one slot is free
            k = len(self._events) + 1 - self.rpm
            wait_until = max(wait_until, self._events[k - 1][0] + self.window)
        if self.tpm is not None and self._tokens + tokens > self.tpm:
            excess = self._tokens + tokens - self.tpm
            freed = 0
            for ts, n in self._events:
                freed += n
                if freed >= excess:
                    wait_until = max(wait_until, ts + self.window)
                    break
        if wait_until == now:
            return None
        return float(max(1, math.ceil(wait_until - now)))

    def record(self, now: float, tokens: int = 0) -> None:
        """Count a request of ``tokens`` at ``now`` (whether or not :meth:`check` was asked)."""
        if tokens < 0:
            raise ValueError("tokens must not be negative")
        now = self._now(now)
        self._evict(now)
        self._events.append((now, tokens))
        self._tokens += tokens

    def admit(self, now: float, tokens: int = 0) -> float | None:
        """Check and, if it fits, record in one step; returns what :meth:`check` returned."""
        retry = self.check(now, tokens)
        if retry is None:
            self.record(now, tokens)
        return retry

    def __len__(self) -> int:
        return len(self._events)


class RateBook:
    """One :class:`RateWindow` per wallet, following the wallet's current ``rpm``/``tpm``.

    When a wallet's limits change, its window is rebuilt with the new limits and keeps the
    events it had already counted (so lowering a limit takes effect at once).
    """

    def __init__(self, window: float = 60.0) -> None:
        self.window = window
        self._windows: dict[str, RateWindow] = {}

    def admit(self, wallet: str, rpm: int | None, tpm: int | None, now: float, tokens: int = 0) -> float | None:
        """:meth:`RateWindow.admit` on ``wallet``'s window; no limits: always ``None`` (and not kept)."""
        if rpm is None and tpm is None:
            self._windows.pop(wallet, None)
            return None
        win = self._windows.get(wallet)
        if win is None or (win.rpm, win.tpm) != (rpm, tpm):
            new = RateWindow(rpm, tpm, self.window)
            if win is not None:
                new._events, new._tokens = win._events, win._tokens
            self._windows[wallet] = win = new
        return win.admit(now, tokens)
