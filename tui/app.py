"""pouch's live dashboard: what the proxy is spending, right now.

Threading: a :class:`~pouch_tui.watcher.LedgerWatcher` thread does every ledger *read* and
posts messages; ledger *writes* the user asks for (top up, set, pause) run in thread workers.
The event loop only routes messages to widgets, which only render.

``PouchApp(home, poll_interval=0.25, now=time.time)``: ``now`` is injectable so snapshot tests
are deterministic; ``poll_interval`` lets the end-to-end tests poll faster.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from textual import on, work
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.widgets import DataTable, Footer, Header, TabbedContent, TabPane

from pouch_addon.audit import AUDIT_FILE, AuditLog
from pouch_addon.budget import LedgerCorrupt
from pouch_addon.money import format_usd

from .aggregate import Aggregates
from .messages import AggregatesUpdated, AlertsUpdated, HistoryUpdated, LedgerProblem, LedgerSnapshot, LedgerUpdated
from .screens import ConfirmScreen, DetailScreen, HelpScreen, MoneyDialog
from .watcher import PAGE, LedgerWatcher
from .widgets import BlockedPanel, Breakdown, BudgetGauge, HistoryTable, InFlightTable, SpendChart, StateBanner


#: how long (s) the proxy's latest alert stays in the banner
ALERT_BANNER_S = 24 * 3600


def default_home(home: str | Path | None) -> Path:
    """Like ``pouch_addon.home.resolve_home`` but without creating the directory (a viewer must not)."""
    if home:
        return Path(home).expanduser()
    if os.environ.get("POUCH_HOME"):
        return Path(os.environ["POUCH_HOME"]).expanduser()
    return Path.home() / ".pouch"


class PouchApp(App[None]):
    # absolute: a relative CSS_PATH resolves against the file of the *subclass* (tests, bench)
    CSS_PATH = Path(__file__).with_name("pouch.tcss")
    TITLE = "pouch"

    BINDINGS = [
        Binding("q", "quit", "Quit"),
        Binding("question_mark", "help", "Help", key_display="?"),
        Binding("t", "money('add')", "Top up"),
        Binding("b", "money('set')", "Set budget"),
        Binding("p", "toggle_pause", "Pause/resume"),
        Binding("c", "toggle_chart", "Chart"),
        Binding("d", "details", "Details"),
        Binding("1", "tab('recent')", "Recent", show=False),
        Binding("2", "tab('breakdown')", "Breakdown", show=False),
        Binding("3", "tab('blocked')", "Blocked", show=False),
        Binding("m", "more", "More history", show=False),
        Binding("r", "refresh", "Refresh", show=False),
    ]

    def __init__(
        self,
        home: str | Path | None = None,
        *,
        poll_interval: float = 0.25,
        now: Callable[[], float] = time.time,
        tick_interval: float = 0.5,
    ) -> None:
        super().__init__()
        self.home = default_home(home)
        self.poll_interval = poll_interval
        self.now = now
        self.tick_interval = tick_interval
        self.snapshot: LedgerSnapshot | None = None
        self.latest_alert: dict[str, Any] | None = None  # the proxy's newest alert (alerts-state.json)
        self.aggregates: Aggregates | None = None
        self.history: list[dict[str, Any]] = []
        self.history_more = False  # older entries exist beyond the loaded pages (m loads more)
        self.problem: tuple[str, str] = ("ok", "")
        self.watcher: LedgerWatcher | None = None
        # for tests and the bench: set once the first snapshot + history page were shown
        self.first_paint: float | None = None
        self._got_snapshot = self._got_history = False
        self.sub_title = str(self.home)

    # -- layout ---------------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        # Kept as attributes: App.query_one() only searches the *active* screen, so a query made
        # while a modal (help, detail, dialog) is open would not find the dashboard's widgets.
        self.banner = StateBanner(id="banner")
        self.gauge = BudgetGauge(id="gauge")
        self.chart = SpendChart(id="chart")
        self.inflight = InFlightTable(id="inflight")
        self.history_table = HistoryTable(id="history")
        self.breakdown = Breakdown(id="breakdown-view")
        self.blocked = BlockedPanel(id="blocked-view")
        self.tabs = TabbedContent(id="tabs", initial="recent")
        yield Header(show_clock=False, icon="¤")
        yield self.banner
        with Horizontal(id="top"):
            yield self.gauge
            yield self.chart
        yield self.inflight
        with self.tabs:
            with TabPane("Recent [1]", id="recent"):
                yield self.history_table
            with TabPane("Breakdown [2]", id="breakdown"):
                yield self.breakdown
            with TabPane("Blocked [3]", id="blocked"):
                yield self.blocked
        yield Footer()

    def on_mount(self) -> None:
        self.chart.watch_mode()
        self.history_table.focus()
        self.theme_changed_signal.subscribe(self, lambda _theme: self.render_all())
        self.set_interval(self.tick_interval, self.tick)
        from pouch_addon.ledger_postgres import ledger_url
        url = ledger_url()
        if url:  # the team ledger: read when PostgreSQL notifies a write (LISTEN/NOTIFY), never polled
            from .team_watcher import TeamWatcher
            self.watcher = TeamWatcher(url, self.home, self.post_message, now=self.now)  # type: ignore[assignment]
        else:
            self.watcher = LedgerWatcher(self.home, self.post_message, interval=self.poll_interval, now=self.now)
        self.watcher.start()

    def on_unmount(self) -> None:
        if self.watcher is not None:
            self.watcher.close()
            self.watcher.join(timeout=2)

    @property
    def variables(self) -> dict[str, str]:
        return self.theme_variables or self.get_css_variables()

    # -- messages from the watcher ----------------------------------------------------------------
    def on_ledger_updated(self, message: LedgerUpdated) -> None:
        self.snapshot = message.snapshot
        now = self.now()
        self.gauge.show(self.snapshot, self.aggregates, now)
        self.inflight.show(self.snapshot, now, self.variables)
        self._got_snapshot = True
        self.update_banner()
        self._check_first_paint()

    def on_history_updated(self, message: HistoryUpdated) -> None:
        self.history = message.entries
        self.history_more = message.more
        self.history_table.show(self.history, self.now(), self.variables)
        self._got_history = True
        self._check_first_paint()

    def on_aggregates_updated(self, message: AggregatesUpdated) -> None:
        self.aggregates = message.aggregates
        now = self.now()
        self.gauge.show(self.snapshot, self.aggregates, now)
        self.chart.show(self.aggregates)
        self.breakdown.show(self.aggregates, self.variables)
        self.blocked.show(self.aggregates, now, self.variables)

    def on_ledger_problem(self, message: LedgerProblem) -> None:
        self.problem = (message.kind, message.message)
        if message.kind in ("missing", "corrupt"):
            # nothing trustworthy to show: clear what an earlier read displayed
            self.snapshot, self.aggregates, self.history = None, None, []
            self.gauge.show(None, None, self.now(), placeholder="nothing to show: see the message above")
            self.chart.show(None, placeholder="")
            self.inflight.show(None, self.now(), self.variables)
            self.history_table.show([], self.now(), self.variables)
            self.breakdown.show(None, self.variables)
            self.blocked.show(None, self.now(), self.variables)
            self._got_snapshot = self._got_history = True
            self._check_first_paint()
        self.update_banner()

    def on_alerts_updated(self, message: AlertsUpdated) -> None:
        self.latest_alert = message.latest
        self.update_banner()

    def update_banner(self) -> None:
        banner = self.banner
        kind, text = self.problem
        if kind != "ok":
            banner.show(kind, text)
            return
        snap = self.snapshot
        alert = self.latest_alert
        if snap is None:
            banner.show("ok", "")
        elif alert is not None and self.now() - float(alert.get("ts", 0)) < ALERT_BANNER_S:
            banner.show("warning", f"{alert.get('time', '')} {alert.get('text', '')}")
        elif snap.dead_owners:
            n = len(snap.dead_owners)
            banner.show("warning", f"{n} request{'s' if n != 1 else ''} in flight belong to a proxy process that is "
                                   "no longer running; the next proxy start (or `pouch ledger recover`) settles "
                                   "them as orphaned.")
        elif not snap.exists or (snap.status.requests == 0 and snap.status.blocked == 0 and not snap.open):
            budget = snap.status.budget
            first = ("The ledger is empty: no budget yet, so every request would be blocked. Press b to set one"
                     if budget <= 0 else f"No requests yet (budget {format_usd(budget)})")
            banner.show("info", f"{first}; then point apps at the proxy: eval \"$(pouch env)\".")
        else:
            banner.show("ok", "")

    def _check_first_paint(self) -> None:
        if self.first_paint is None and self._got_snapshot and self._got_history:
            self.call_after_refresh(self._mark_painted)

    def _mark_painted(self) -> None:
        if self.first_paint is None:
            self.first_paint = time.perf_counter()
            if self.watcher is not None:
                self.watcher.first_paint_done()  # now add up the month in the background

    def tick(self) -> None:
        """Twice a second: elapsed times and "last write" move even when the ledger does not."""
        now = self.now()
        self.inflight.tick(now)
        if self.snapshot is not None:
            self.gauge.show(self.snapshot, self.aggregates, now)

    def render_all(self) -> None:
        """Re-render tables (their cells hold theme colours resolved at render time)."""
        now = self.now()
        self.inflight.show(self.snapshot, now, self.variables)
        table = self.history_table
        table.keys = []
        table.show(self.history, now, self.variables)
        self.breakdown.show(self.aggregates, self.variables)
        self.blocked.show(self.aggregates, now, self.variables)

    # -- actions --------------------------------------------------------------------------------
    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_tab(self, tab: str) -> None:
        self.tabs.active = tab
        {"recent": self.history_table, "blocked": self.blocked.table}.get(tab, self.breakdown.by_model).focus()

    def action_toggle_chart(self) -> None:
        self.chart.toggle()

    def action_more(self) -> None:
        if self.watcher is not None:
            self.watcher.more()
            self.notify(f"Loading {PAGE} more history entries…", timeout=2)

    def action_refresh(self) -> None:
        if self.watcher is not None:
            self.watcher.wake(force=True)

    def action_details(self) -> None:
        """Details of the highlighted row of the visible tab (enter or a click does the same)."""
        if self.tabs.active == "blocked":
            entry = self.blocked.table.current_entry()
        else:
            entry = self.history_table.current_entry()
        if entry is not None:
            self.push_screen(DetailScreen(entry))

    @on(DataTable.RowSelected, "#history")
    def open_history_detail(self, event: DataTable.RowSelected) -> None:
        entry = self.history_table.entries.get(str(event.row_key.value))
        if entry is not None:
            self.push_screen(DetailScreen(entry))

    @on(DataTable.RowSelected, "#blocked-table")
    def open_block_detail(self, event: DataTable.RowSelected) -> None:
        entry = self.blocked.table.entries.get(str(event.row_key.value))
        if entry is not None:
            self.push_screen(DetailScreen(entry))

    def action_money(self, mode: str) -> None:
        if self.problem[0] == "corrupt":
            self.notify(self.problem[1], title="The ledger cannot be changed", severity="error", timeout=10)
            return
        budget = self.snapshot.status.budget if self.snapshot else None

        def done(amount: Decimal | None) -> None:
            if amount is not None:
                self.write_ledger(mode, amount)

        self.push_screen(MoneyDialog(mode, budget), done)

    def action_toggle_pause(self) -> None:
        if self.problem[0] == "corrupt":
            self.notify(self.problem[1], title="The ledger cannot be changed", severity="error", timeout=10)
            return
        paused = bool(self.snapshot and self.snapshot.status.paused)
        if paused:
            screen = ConfirmScreen("Resume LLM traffic?", "Calls will be budgeted and forwarded again.",
                                   yes="Resume")
        else:
            screen = ConfirmScreen("Pause all LLM traffic?",
                                   "Every LLM call through the proxy will be answered 402 \"paused\" until you "
                                   "resume. Calls already in flight finish normally.", yes="Pause", danger=True)

        def done(yes: bool | None) -> None:
            if yes:
                self.write_ledger("pause", not paused)

        self.push_screen(screen, done)

    @work(thread=True, group="ledger-write")
    def write_ledger(self, what: str, value: Decimal | bool) -> None:
        """Ledger writes take the cross-process lock and fsync: never on the event loop."""
        try:
            from pouch_addon.ledger_postgres import LedgerUnavailable, ledger_for
            ledger = ledger_for(self.home)
            if what == "add":
                assert isinstance(value, Decimal)
                status = ledger.add_budget(value)
                text = f"Added {format_usd(value)}: the budget is now {format_usd(status.budget)}."
            elif what == "set":
                assert isinstance(value, Decimal)
                status = ledger.set_budget(value)
                text = f"The budget is now {format_usd(status.budget)}."
            else:
                status = ledger.set_paused(bool(value))
                text = "LLM traffic is paused." if status.paused else "LLM traffic resumed."
            try:  # the change stands either way; a refused audit append is reported
                action = {"add": "budget.add", "set": "budget.set"}.get(what) or ("pause" if value else "resume")
                details = {"amount": value, "budget": status.budget} if what != "pause" else {}
                AuditLog(ledger.home / AUDIT_FILE).append(action, {**details, "via": "tui"})
                if hasattr(ledger, "audit_append"):  # the team ledger: the team's audit log too
                    ledger.audit_append(action, {**details, "via": "tui"})
            except Exception as exc:  # noqa: BLE001
                self.call_from_thread(self.notify, f"The audit log refused the change: {exc}",
                                      title="Not audited", severity="warning", timeout=10)
        except (LedgerCorrupt, ValueError, OSError, LedgerUnavailable) as exc:
            self.call_from_thread(self.notify, str(exc), title="Nothing was changed", severity="error", timeout=10)
            return
        except Exception as exc:  # noqa: BLE001 - the ledger refused: say so, never crash the dashboard
            self.call_from_thread(self.notify, f"{type(exc).__name__}: {exc}", title="The ledger write failed",
                                  severity="error", timeout=10)
            return
        finally:
            if self.watcher is not None:
                self.watcher.wake()
        self.call_from_thread(self.notify, text, timeout=4)


def run(home: str | Path | None = None, *, poll_interval: float = 0.25) -> None:
    """``pouch tui`` / ``python -m pouch_tui``."""
    PouchApp(home, poll_interval=poll_interval).run()
