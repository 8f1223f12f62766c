"""Pilot tests: every screen and action against a real ledger in a tmp home."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from textual.widgets import Input, Markdown, Static

from pouch_addon.budget import Ledger
from pouch_tui.screens import ConfirmScreen, DetailScreen, HelpScreen, MoneyDialog
from pouch_tui.widgets import HistoryTable, StateBanner
from pouch_tui.widgets.blocked_table import BlockedTable
from pouch_tui.widgets.breakdown import BreakdownTable

from .conftest import fixed_entries, fixed_now, loaded, make_app, run, wait_for

D = Decimal


def shown(table, key: str) -> dict[str, str]:
    """A row's cells as shown, by column key (amounts without their alignment padding)."""
    return {col: str(table.get_cell(key, col)).strip() for col in table.fitted}


def gauge_text(app) -> str:
    return app.gauge.render().plain


def banner(app) -> StateBanner:
    return app.banner


def test_top_up_changes_budget_exactly(home: Path):
    Ledger(home).set_budget(D("10"))
    app = make_app(home)

    async def scenario(pilot):
        await loaded(pilot)
        assert "of $10.00" in gauge_text(app)
        await pilot.press("t")
        await wait_for(pilot, lambda: isinstance(app.screen, MoneyDialog), what="money dialog")
        await pilot.press(*"2.345678")
        await pilot.press("enter")
        confirm = await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen) and app.screen, what="confirm")
        text = str(confirm.query_one("#confirm-message", Static).render())
        assert "Add $2.345678 to the budget? The budget becomes $12.345678." in text  # exact, one rule
        assert Ledger(home).status().budget == D("10")  # nothing before the confirmation
        await pilot.press("y")
        await wait_for(pilot, lambda: Ledger(home).status().budget == D("12.345678"), what="budget written")
        await wait_for(pilot, lambda: "of $12.345678" in gauge_text(app), what="gauge updated")
        assert not isinstance(app.screen, (MoneyDialog, ConfirmScreen))

    run(app, scenario)
    assert isinstance(Ledger(home).status().budget, Decimal)
    from pouch_addon.audit import AUDIT_FILE, AuditLog

    [entry] = AuditLog(home / AUDIT_FILE).entries()  # the top-up is audited
    assert (entry["action"], entry["details"]) == ("budget.add", {"amount": "2.345678", "budget": "12.345678",
                                                                  "via": "tui"})


def test_set_budget(home: Path):
    Ledger(home).set_budget(D("10"))
    app = make_app(home)

    async def scenario(pilot):
        await loaded(pilot)
        await pilot.press("b")
        await wait_for(pilot, lambda: isinstance(app.screen, MoneyDialog))
        await pilot.press(*"$3.5", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert "Set the budget to $3.50 (now $10.00)?" in str(app.screen.query_one("#confirm-message").render())
        await pilot.click("#yes")
        await wait_for(pilot, lambda: Ledger(home).status().budget == D("3.5"))

    run(app, scenario)


def test_money_dialog_rejects_bad_amounts_and_cancel_changes_nothing(home: Path):
    Ledger(home).set_budget(D("10"))
    app = make_app(home)

    async def scenario(pilot):
        await loaded(pilot)
        await pilot.press("t")
        await wait_for(pilot, lambda: isinstance(app.screen, MoneyDialog))
        dialog = app.screen
        error = dialog.query_one("#money-error", Static)
        await pilot.press("enter")  # empty
        assert "Type an amount" in str(error.render())
        await pilot.press("0", "enter")
        assert "more than $0" in str(error.render())
        dialog.query_one(Input).value = "1.0000001"
        await pilot.press("enter")
        assert "6 decimal places" in str(error.render())
        assert isinstance(app.screen, MoneyDialog)
        dialog.query_one(Input).value = "5"
        await pilot.press("enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("enter")  # focus is on Cancel: a stray Enter does not move money
        await wait_for(pilot, lambda: isinstance(app.screen, MoneyDialog))
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, MoneyDialog))
        await pilot.pause(0.1)
        assert Ledger(home).status().budget == D("10")

    run(app, scenario)


def test_pause_and_resume_with_confirmation(home: Path):
    Ledger(home).set_budget(D("10"))
    app = make_app(home)

    async def scenario(pilot):
        await loaded(pilot)
        await pilot.press("p")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("n")
        await pilot.pause(0.1)
        assert Ledger(home).status().paused is False
        await pilot.press("p")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert "Pause all LLM traffic?" in str(app.screen.query_one(".dialog-title").render())
        await pilot.press("y")
        await wait_for(pilot, lambda: Ledger(home).status().paused is True)
        await wait_for(pilot, lambda: "PAUSED" in gauge_text(app), what="paused shown")
        assert app.gauge.has_class("-paused")
        await pilot.press("p")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        assert "Resume" in str(app.screen.query_one(".dialog-title").render())
        await pilot.press("y")
        await wait_for(pilot, lambda: Ledger(home).status().paused is False)
        await wait_for(pilot, lambda: "● live" in gauge_text(app))

    run(app, scenario)
    from pouch_addon.audit import AUDIT_FILE, AuditLog

    assert [e["action"] for e in AuditLog(home / AUDIT_FILE).entries()] == ["pause", "resume"]


def test_detail_view_opens_with_the_right_entry(fixed_home: Path):
    app = make_app(fixed_home, now=fixed_now)
    entries = list(reversed(fixed_entries()))  # newest first, as in the table

    async def scenario(pilot):
        await loaded(pilot)
        table = app.history_table
        assert table.row_count == len(entries)
        await pilot.press("down", "down", "down", "down", "enter")
        screen = await wait_for(pilot, lambda: isinstance(app.screen, DetailScreen) and app.screen)
        assert screen.entry == entries[4]
        text = str(screen.query_one("#detail-fields", Static).render())
        assert entries[4]["id"] in text and "client_disconnect" in text and "0.0512" in text
        assert entries[4]["id"] in str(screen.query_one(".dialog-title").render())
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, DetailScreen))
        # a blocked request, from the Blocked tab
        await pilot.press("3")
        await wait_for(pilot, lambda: app.tabs.active == "blocked")
        assert app.blocked.query_one(BlockedTable).row_count == 2
        await pilot.press("enter")
        screen = await wait_for(pilot, lambda: isinstance(app.screen, DetailScreen) and app.screen)
        assert screen.entry["kind"] == "block" and screen.entry["reason"] == "paused"
        assert "LLM traffic is paused" in str(screen.query_one("#detail-fields", Static).render())

    run(app, scenario)


def test_mouse_click_on_row_opens_detail(fixed_home: Path):
    app = make_app(fixed_home, now=fixed_now)

    async def scenario(pilot):
        await loaded(pilot)
        table = app.history_table
        await pilot.click(HistoryTable, offset=(5, 2))  # header is row 0; second entry is row 2
        await pilot.click(HistoryTable, offset=(5, 2))
        screen = await wait_for(pilot, lambda: isinstance(app.screen, DetailScreen) and app.screen)
        assert screen.entry == table.entries[table.keys[1]]

    run(app, scenario)


def test_help_screen(home: Path):
    app = make_app(home)

    async def scenario(pilot):
        await loaded(pilot, aggregates=False)
        await pilot.press("question_mark")
        screen = await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen) and app.screen)
        assert "top up the budget" in screen.query_one(Markdown).source
        await pilot.press("escape")
        await wait_for(pilot, lambda: not isinstance(app.screen, HelpScreen))

    run(app, scenario)


def test_empty_ledger_state(home: Path):
    home.mkdir()
    app = make_app(home)

    async def scenario(pilot):
        await loaded(pilot)
        b = banner(app)
        assert b.display and b.kind == "info"
        assert "The ledger is empty" in b.message and "Press b" in b.message
        assert "Remaining $0.00  of $0.00" in gauge_text(app)
        assert "no budget" in gauge_text(app)
        assert app.history_table.row_count == 0
        assert app.inflight.row_count == 0
        # setting a budget from the empty state clears it once a request exists
        await pilot.press("b", *"5", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.press("y")
        await wait_for(pilot, lambda: "No requests yet (budget $5.00)" in banner(app).message)

    run(app, scenario)


def test_missing_ledger_dir_is_not_created(tmp_path: Path):
    home = tmp_path / "nowhere"
    app = make_app(home)

    async def scenario(pilot):
        await loaded(pilot, aggregates=False)
        assert banner(app).kind == "missing" and f"No ledger at {home}" in banner(app).message
        assert not home.exists()
        Ledger(home).set_budget(D("2"))  # the proxy / CLI creates it: the dashboard follows
        # the watcher posts the new state, then the history, then "ok" for the banner: the gauge
        # may show the budget a message before the banner leaves "missing"
        await wait_for(pilot, lambda: "of $2.00" in gauge_text(app) and banner(app).kind != "missing",
                       what="ledger appears")
        assert banner(app).kind == "info"

    run(app, scenario)


def test_corrupt_ledger_shows_message_without_crashing(home: Path):
    Ledger(home).set_budget(D("7"))
    Ledger(home).set_budget(D("8"))  # so a backup exists
    good = (home / "state.json").read_bytes()
    (home / "state.json").write_bytes(b"\x00garbage{{{")
    app = make_app(home)

    async def scenario(pilot):
        await loaded(pilot, aggregates=False)
        b = banner(app)
        assert b.display and b.kind == "corrupt"
        assert "state.json cannot be read" in b.message and "pouch ledger restore" in b.message
        assert "nothing to show: see the message above" in gauge_text(app)
        await pilot.press("t")  # refused with the same message, no dialog
        await pilot.pause(0.1)
        assert not isinstance(app.screen, MoneyDialog)
        # the user restores it: the dashboard recovers
        (home / "state.json").write_bytes(good)
        # (the banner's "ok" comes a message after the new state: wait for both)
        await wait_for(pilot, lambda: "of $8.00" in gauge_text(app) and banner(app).kind != "corrupt",
                       what="recovered")
        # corrupt again after history was shown, then restored: the table comes back
        r = Ledger(home).reserve(D("1"), {"model": "gpt-4o"})
        Ledger(home).settle(r.id, D("0.5"))
        await wait_for(pilot, lambda: app.history_table.row_count == 1)
        good_again = (home / "state.json").read_bytes()
        (home / "state.json").write_bytes(b"{}")
        await wait_for(pilot, lambda: banner(app).kind == "corrupt" and app.history_table.row_count == 0)
        (home / "state.json").write_bytes(good_again)
        await wait_for(pilot, lambda: app.history_table.row_count == 1 and app.aggregates is not None,
                       what="history shown again")

    run(app, scenario)


def test_inflight_row_appears_and_disappears(home: Path):
    ledger = Ledger(home, durable=False)
    ledger.set_budget(D("5"))
    app = make_app(home)

    async def scenario(pilot):
        await loaded(pilot)
        table = app.inflight
        assert table.row_count == 0
        res = ledger.reserve(D("0.25"), {"model": "gpt-4o-mini", "endpoint": "/v1/chat/completions",
                                          "client": "127.0.0.1:40404", "stream": True,
                                          "estimated_input_tokens": 900, "output_cap": 2000})
        await wait_for(pilot, lambda: table.row_count == 1, what="in-flight row")
        row = shown(table, res.id)
        assert (row["model"], row["app"], row["tokens"], row["state"]) == ("gpt-4o-mini", "127.0.0.1", "—", "waiting")
        ledger.checkpoint({res.id: {"output_tokens": 1234, "running_cost": "0.0601"}})
        await wait_for(pilot, lambda: shown(table, res.id)["tokens"] == "1,234", what="checkpoint shown")
        row = shown(table, res.id)
        assert row["cost"] == "$0.0601" and row["reserved"] == "$0.25" and "24%" in row["use"]
        assert row["state"] == "streaming"
        assert "In flight (1)" in str(table.border_title)
        ledger.checkpoint({res.id: {"output_tokens": "junk"}})  # missing/odd keys are shown as unknown
        await wait_for(pilot, lambda: shown(table, res.id)["tokens"] == "—")
        ledger.settle(res.id, D("0.0601"), details={"input_tokens": 900, "output_tokens": 1234})
        await wait_for(pilot, lambda: table.row_count == 0, what="row removed")
        history = app.history_table
        await wait_for(pilot, lambda: history.row_count == 1)
        assert str(history.get_row_at(0)[-1]) == "ok"

    run(app, scenario)


def test_live_updates_under_frequent_writes(home: Path):
    """A ledger written every few ms: the app keeps up and shows the final state."""
    import threading

    ledger = Ledger(home, durable=False)
    ledger.set_budget(D("100"))
    app = make_app(home, poll_interval=0.05)  # the watcher polls faster than the default, on purpose
    done = threading.Event()

    def writer() -> None:
        for i in range(100):
            r = ledger.reserve(D("0.01"), {"model": "gpt-4o", "client": f"127.0.0.1:{1000 + i}"})
            ledger.checkpoint({r.id: {"output_tokens": i, "running_cost": "0.001"}})
            ledger.settle(r.id, D("0.001"))
        done.set()

    async def scenario(pilot):
        await loaded(pilot)
        t = threading.Thread(target=writer)
        t.start()
        await wait_for(pilot, done.is_set, timeout=60, what="writer")
        t.join()
        await wait_for(pilot, lambda: app.history_table.row_count == 100, what="all rows")
        await wait_for(pilot, lambda: app.aggregates is not None and app.aggregates.requests_today == 100)
        assert app.inflight.row_count == 0
        assert app.problem[0] == "ok"

    run(app, scenario)


def test_breakdown_chart_and_more_history(fixed_home: Path):
    app = make_app(fixed_home, now=fixed_now)

    async def scenario(pilot):
        await loaded(pilot)
        chart = app.chart
        assert "today" in chart.render().plain and "per hour" in str(chart.border_title)
        await pilot.press("c")
        await wait_for(pilot, lambda: chart.mode == "day")
        assert "March" in chart.render().plain and "per day" in str(chart.border_title)
        await pilot.press("2")
        await wait_for(pilot, lambda: app.tabs.active == "breakdown")
        by_model = app.breakdown.query_one("#by-model", BreakdownTable)
        names = [str(by_model.get_row_at(i)[0]) for i in range(by_model.row_count)]
        assert names[0] == "gpt-4o" and set(names) == {"gpt-4o", "gpt-4o-mini", "o3-mini"}
        by_app = app.breakdown.query_one("#by-app", BreakdownTable)
        assert {str(by_app.get_row_at(i)[0]) for i in range(by_app.row_count)} == {"127.0.0.1", "10.0.0.7",
                                                                                        "10.0.0.9"}
        await pilot.press("m")
        await pilot.press("r")
        await pilot.pause(0.2)
        assert app.watcher is not None and app.watcher.recent_limit == 400

    run(app, scenario)


def test_theme_change_rerenders(fixed_home: Path):
    app = make_app(fixed_home, now=fixed_now)

    async def scenario(pilot):
        await loaded(pilot)
        before = app.history_table.get_row_at(0)[-1].style
        app.theme = "textual-light"
        await pilot.pause(0.1)
        after = app.history_table.get_row_at(0)[-1].style
        assert before != after
        assert app.history_table.row_count == len(fixed_entries())

    run(app, scenario)


def test_panels_take_data_before_they_are_mounted():
    """The watcher's first messages may reach the app before a panel in a tab not yet shown has
    mounted its children (seen once on a loaded machine: NoMatches for '#by-model'). Every
    panel the app feeds accepts data from construction on, and shows it once mounted."""
    import asyncio

    from textual.app import App

    from pouch_addon.budget import Owner, Reservation, Status
    from pouch_tui.aggregate import Aggregates
    from pouch_tui.messages import LedgerSnapshot
    from pouch_tui.widgets import BlockedPanel, Breakdown, InFlightTable

    entries = fixed_entries()
    aggregates = Aggregates.empty(fixed_now()).add_all(entries)
    res = Reservation(id="r1", amount=D("0.25"), created=fixed_now() - 3, owner=Owner.current(),
                      meta={"model": "gpt-4o-mini", "client": "127.0.0.1:40404"})
    snapshot = LedgerSnapshot(status=Status(budget=D("5"), spent=D("1"), reserved=D("0.25"), requests=1,
                                            blocked=0, flagged=0, paused=False, in_flight=1), open=[res])

    class Bare(App):
        def compose(self):
            variables = self.get_css_variables()
            breakdown, blocked = Breakdown(), BlockedPanel()
            inflight, history = InFlightTable(), HistoryTable()
            breakdown.show(aggregates, variables)  # unmounted: children not composed yet
            blocked.show(aggregates, fixed_now(), variables)
            inflight.show(snapshot, fixed_now(), variables)
            history.show(entries, fixed_now(), variables)
            self.panels = breakdown, blocked, inflight, history
            yield from self.panels

    async def main():
        app = Bare()
        async with app.run_test(size=(120, 60)) as pilot:
            await pilot.pause()
            breakdown, blocked, inflight, history = app.panels
            assert breakdown.query_one("#by-model", BreakdownTable) is breakdown.by_model
            assert {str(breakdown.by_model.get_row_at(i)[0]) for i in range(breakdown.by_model.row_count)} == {
                "gpt-4o", "gpt-4o-mini", "o3-mini"}
            assert blocked.table.row_count == len(aggregates.recent_blocks()) > 0
            assert "blocked this month" in str(blocked.summary.render())
            assert [str(c) for c in inflight.get_row("r1")][:2] == ["gpt-4o-mini", "127.0.0.1"]
            assert history.row_count == len(entries)

    asyncio.run(main())


def test_the_proxys_latest_alert_shows_in_the_banner_and_the_forecast_in_the_gauge(home: Path):
    import json
    import time

    from pouch_addon.alerts import STATE_FILE, Alert, AlertState

    ledger = Ledger(home)
    ledger.set_budget(D(4))
    r = ledger.reserve(D(2))
    ledger.settle(r.id, D(2))  # $2 in the last hour, $2 left: runs out in 1 h at that rate
    app = make_app(home)
    now = time.time()

    async def scenario(pilot):
        await loaded(pilot)
        assert banner(app).kind == "ok"
        await wait_for(pilot, lambda: "runs out in 1 h" in gauge_text(app))
        assert "burn $2.00/h" in gauge_text(app)
        st = AlertState()
        st.remember([Alert("threshold", "global", "pouch: the global budget is 50% spent: $2.00 of $4.00", now)])
        (home / STATE_FILE).write_text(json.dumps(st.to_json()))
        app.watcher.wake()
        await wait_for(pilot, lambda: "50% spent" in banner(app).message)
        assert banner(app).kind == "warning" and banner(app).display

    run(app, scenario)
