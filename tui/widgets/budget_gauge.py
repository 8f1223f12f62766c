"""Budget at a glance: remaining of budget, a gauge that changes colour as it runs low,
spend today / this week / this month (UTC), what is reserved right now, and the paused state."""

from __future__ import annotations

from decimal import Decimal

from textual.content import Content
from textual.widget import Widget

from pouch_addon.forecast import Estimate, duration_text, forecast

from ..aggregate import Aggregates, burn_costs
from ..format import bar, duration, fitting, money, ratio
from ..messages import LedgerSnapshot

LOW, CRITICAL = 0.25, 0.10


def plural(n: int, word: str) -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def level(remaining: Decimal, budget: Decimal) -> str:
    """``ok`` above 25 % left, ``low`` above 10 %, else ``critical`` (also for a $0 budget)."""
    if budget <= 0 or remaining <= 0:
        return "critical"
    frac = ratio(remaining, budget)
    return "ok" if frac > LOW else "low" if frac > CRITICAL else "critical"


COLOUR = {"ok": "$success", "low": "$warning", "critical": "$error"}


class BudgetGauge(Widget):
    """Renders the latest :class:`LedgerSnapshot` and :class:`Aggregates`; does no I/O."""

    DEFAULT_CSS = """
    BudgetGauge { height: auto; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self.snapshot: LedgerSnapshot | None = None
        self.aggregates: Aggregates | None = None
        self.now: float = 0.0
        self.placeholder = "reading the ledger…"
        self.border_title = "Budget"

    def show(self, snapshot: LedgerSnapshot | None, aggregates: Aggregates | None, now: float,
             placeholder: str = "reading the ledger…") -> None:
        self.snapshot, self.aggregates, self.now = snapshot, aggregates, now
        self.placeholder = placeholder
        lvl = level(snapshot.status.remaining, snapshot.status.budget) if snapshot else "ok"
        for name in ("ok", "low", "critical"):
            self.set_class(lvl == name, f"-{name}")
        self.set_class(bool(snapshot and snapshot.status.paused), "-paused")
        self.refresh(layout=True)

    def render(self) -> Content:
        snap = self.snapshot
        if snap is None:
            return Content.styled(self.placeholder, "$text-muted")
        s = snap.status
        width = max(20, self.size.width or 60)
        lvl = level(s.remaining, s.budget)
        colour = COLOUR[lvl]
        state = (Content.styled(" ⏸ PAUSED ", "bold $text on $error") if s.paused
                 else Content.styled("● live", "$success"))
        head = Content.assemble(
            ("Remaining ", "$text-muted"), (money(s.remaining), f"bold {colour}"),
            ("  of ", "$text-muted"), (money(s.budget), "bold"),
        )
        gap = max(1, width - head.cell_length - state.cell_length)
        short_head = Content.assemble((money(s.remaining), f"bold {colour}"), (" of ", "$text-muted"),
                                      (money(s.budget), "bold"), (" left", "$text-muted"))
        lines = [fitting(width, head + Content(" " * gap) + state, short_head + Content("  ") + state,
                         short_head + Content(" ") + state, short_head)]

        frac = ratio(s.remaining, s.budget) if s.budget > 0 else 0.0
        pct = f" {frac * 100:5.1f}%" if s.budget > 0 else "   n/a"
        filled, empty = bar(frac, max(4, width - len(pct)))
        lines.append(Content.assemble((filled + empty, f"{colour} on $panel"), (pct, colour)))

        agg = self.aggregates
        if agg is None:
            lines.append(Content.styled("today … · week … · month … (UTC)", "$text-muted"))
        else:
            today, week, month = ((money(v), "bold") for v in (agg.today, agg.week, agg.month))
            variants = (
                Content.assemble(("today ", "$text-muted"), today, ("  week ", "$text-muted"), week,
                                 ("  month ", "$text-muted"), month, (" (UTC)", "$text-muted")),
                Content.assemble(("today ", "$text-muted"), today, ("  week ", "$text-muted"), week,
                                 ("  month ", "$text-muted"), month),
                Content.assemble(("today ", "$text-muted"), today, (" wk ", "$text-muted"), week,
                                 (" mo ", "$text-muted"), month),
            )
            one_line = next((v for v in variants if v.cell_length <= width), None)
            if one_line is not None:
                lines.append(one_line)
            else:  # two lines (the gauge has a spare one)
                lines.append(fitting(
                    width, Content.assemble(("today ", "$text-muted"), today, ("  week ", "$text-muted"), week),
                    Content.assemble(("today ", "$text-muted"), today, (" wk ", "$text-muted"), week)))
                lines.append(Content.assemble(("month ", "$text-muted"), month, (" (UTC)", "$text-muted")))
        reserved, spent = (money(s.reserved), "bold"), (money(s.spent), "bold")
        lines.append(fitting(
            width,
            Content.assemble(("reserved ", "$text-muted"), reserved, (f" ({s.in_flight} in flight)", "$text-muted"),
                             ("  spent ", "$text-muted"), spent, (" all time", "$text-muted")),
            Content.assemble(("reserved ", "$text-muted"), reserved, (f" ({s.in_flight} in flight)", "$text-muted"),
                             ("  spent ", "$text-muted"), spent),
            Content.assemble(("reserved ", "$text-muted"), reserved, ("  spent ", "$text-muted"), spent),
            Content.assemble(("rsv ", "$text-muted"), reserved, (" spent ", "$text-muted"), spent),
        ))
        lines.append(Content.styled(
            f"{plural(s.requests, 'request')} · {s.blocked:,} blocked · {s.flagged:,} flagged", "$text-muted"
        ))
        if s.budget <= 0:
            note = Content.styled("no budget: every request is blocked (b: set one)", "$error")
        elif s.remaining <= 0:
            note = Content.styled("budget used up: every request is blocked (t: top up)", "$error")
        elif s.paused:
            note = Content.styled("paused: every LLM call is answered 402 (p: resume)", "bold $error")
        else:
            last = "no ledger file yet" if snap.modified is None else f"last write {duration(self.now - snap.modified)} ago"
            note = Content.styled(last, "$text-muted")
        lines.append(note)
        if agg is not None:  # last: on a short panel the forecast is what is cut, never the note above
            lines.append(burn_line(forecast(burn_costs(agg), s.remaining, self.now), width))
        return Content("\n").join(line.truncate(width, ellipsis=True) for line in lines)


def burn_line(estimates: list[Estimate], width: int) -> Content:
    """``burn $0.50/h (1 h) · $0.20/h (24 h) · runs out in 3 h 20 min`` (at the 1 h rate, else the 24 h one)."""
    one, day = estimates
    first = next((e for e in estimates if e.seconds is not None), None)
    if first is None:
        when = ("no spend in 24 h", "$text-muted")
    elif first.seconds == 0:
        when = ("nothing left", "$error")
    else:
        assert first.seconds is not None
        when = (f"runs out in {duration_text(first.seconds)}", "bold $warning" if first.seconds < 86400 else "bold")
    r1, r24 = (money(one.rate), "bold"), (money(day.rate), "bold")
    return fitting(
        width,
        Content.assemble(("burn ", "$text-muted"), r1, ("/h (1 h) · ", "$text-muted"), r24,
                         ("/h (24 h) · ", "$text-muted"), when),
        Content.assemble(("burn ", "$text-muted"), r1, ("/h · ", "$text-muted"), when),
        Content.assemble(when),
    )
