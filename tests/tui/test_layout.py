"""Amounts are never off-screen or cut: at 80x24, 120x40 and 140x40, over a realistic ledger
(long dated and fine-tuned model names, three apps, spends far below a cent), every row on
screen shows its whole cost, read from the rendered screen itself."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from pouch_addon.money import format_usd
from pouch_tui.aggregate import Aggregates, ranked, to_decimal

from .conftest import NOW, fixed_now, loaded, make_app, realistic_entries, run

SIZES = [(80, 24), (120, 40), (140, 40)]


def screen_lines(app) -> list[str]:
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True, color_system=None,
                      record=True, legacy_windows=False, safe_box=False)
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text().splitlines()


def row_lines(app, table) -> list[str]:
    """The on-screen text of each data row of ``table`` that is visible (top first)."""
    lines = screen_lines(app)
    region = table.content_region
    out = []
    for i in range(table.row_count):
        y = region.y + table.header_height + i - int(table.scroll_y)
        if y >= region.bottom:
            break
        if y >= region.y + table.header_height:
            out.append(lines[y][region.x:region.right])
    assert out, f"no row of #{table.id} is on screen"
    return out


def check(problems: list[str], lines: list[str], expected: list[list[str]], what: str) -> None:
    for line, needles in zip(lines, expected):
        problems += [f"{what}: {needle!r} is not shown in full on its row: {line!r}"
                     for needle in needles if needle not in line]


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_every_amount_is_fully_visible(real_home: Path, size):
    entries = realistic_entries()
    newest_first = sorted(entries, key=lambda e: -e["ts"])
    agg = Aggregates.empty(NOW).add_all(entries)
    app = make_app(real_home, now=fixed_now)

    problems: list[str] = []

    async def scenario(pilot):
        await loaded(pilot)
        # Recent: the cost of every settled request on screen
        recent = [[format_usd(to_decimal(e["cost"]))] if e["kind"] == "settle" else [] for e in newest_first]
        check(problems, row_lines(app, app.history_table), recent, f"Recent at {size}")
        # In flight: the running cost, the app (wallet, not the client's address) and the whole state
        check(problems, row_lines(app, app.inflight), [["$0.0653", "coding-agent", "streaming"],
                                             ["—", "research-notebook", "waiting"]], f"In flight at {size}")
        await pilot.press("2")
        await pilot.pause()
        for table, buckets in ((app.breakdown.by_model, agg.by_model), (app.breakdown.by_app, agg.by_app)):
            check(problems, row_lines(app, table), [[format_usd(b.cost)] for _, b in ranked(buckets)],
                  f"Breakdown #{table.id} at {size}")
        await pilot.press("3")
        await pilot.pause()
        check(problems, row_lines(app, app.blocked.table), [["budget", "$0.3072"]], f"Blocked at {size}")

    run(app, scenario, size=size)
    assert not problems, "\n".join(problems)
