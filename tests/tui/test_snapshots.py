"""Snapshot tests (pytest-textual-snapshot) of the main screens over a fixed ledger and clock.

Update after an intended visual change with ``pytest tests/tui --snapshot-update``.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from pouch_tui.screens import DetailScreen, HelpScreen

from .conftest import SIZE, fixed_entries, fixed_now, fixed_reservation, loaded, make_app, wait_for, write_ledger
from .conftest import NOW


def test_main_screen(fixed_home: Path, snap_compare):
    assert snap_compare(make_app(fixed_home, now=fixed_now), terminal_size=SIZE, run_before=loaded)


def test_main_screen_paused_and_low(tmp_path: Path, monkeypatch, snap_compare):
    monkeypatch.chdir(tmp_path)
    home = Path("pouch-home")
    write_ledger(home, fixed_entries(), budget=Decimal("4.60"), open_=[fixed_reservation()], paused=True,
                 mtime=NOW - 4)
    assert snap_compare(make_app(home, now=fixed_now), terminal_size=SIZE, run_before=loaded)


def test_detail_screen(fixed_home: Path, snap_compare):
    app = make_app(fixed_home, now=fixed_now)

    async def open_detail(pilot):
        await loaded(pilot)
        await pilot.press("down", "enter")
        await wait_for(pilot, lambda: isinstance(app.screen, DetailScreen))
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=open_detail)


def test_help_screen(fixed_home: Path, snap_compare):
    app = make_app(fixed_home, now=fixed_now)

    async def open_help(pilot):
        await loaded(pilot)
        await pilot.press("question_mark")
        await wait_for(pilot, lambda: isinstance(app.screen, HelpScreen))
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=open_help)


def test_corrupt_ledger_screen(tmp_path: Path, monkeypatch, snap_compare):
    monkeypatch.chdir(tmp_path)
    home = Path("pouch-home")
    home.mkdir()
    (home / "state.json").write_text("{not json")
    app = make_app(home, now=fixed_now)

    async def wait_error(pilot):
        await loaded(pilot, aggregates=False)

    assert snap_compare(app, terminal_size=SIZE, run_before=wait_error)


def test_pause_confirmation(fixed_home: Path, snap_compare):
    from pouch_tui.screens import ConfirmScreen

    app = make_app(fixed_home, now=fixed_now)

    async def ask(pilot):
        await loaded(pilot)
        await pilot.press("p")
        await wait_for(pilot, lambda: isinstance(app.screen, ConfirmScreen))
        await pilot.pause()

    assert snap_compare(app, terminal_size=SIZE, run_before=ask)


# A realistic first week (tests/tui/conftest.py: realistic_entries): long model names, three
# apps, spends far below a cent. Every amount is shown whole at 80x24 and 120x40; the 120x40
# one is also the README's screenshot (docs/tui.svg, written by scripts/tui_screenshot.py).
def test_realistic_80x24(real_home: Path, snap_compare):
    assert snap_compare(make_app(real_home, now=fixed_now), terminal_size=(80, 24), run_before=loaded)


def test_realistic_120x40(real_home: Path, snap_compare):
    assert snap_compare(make_app(real_home, now=fixed_now), terminal_size=(120, 40), run_before=loaded)


def test_realistic_breakdown_140x40(real_home: Path, snap_compare):
    app = make_app(real_home, now=fixed_now)

    async def breakdown(pilot):
        await loaded(pilot)
        await pilot.press("2")
        await pilot.pause()

    assert snap_compare(app, terminal_size=(140, 40), run_before=breakdown)
