"""The column-fitting rule of the TUI's tables (pure: no Textual)."""

from pouch_tui.widgets.fit import Col, fit

COLS = (Col("time", "time", 1), Col("model", "model", 0, soft=8, hard=4), Col("endpoint", "endpoint", 3),
        Col("tokens", "tokens", 2), Col("cost", "cost", 0))
WIDTHS = {"time": 8, "model": 20, "endpoint": 16, "tokens": 6, "cost": 10}  # 60 + 2 per column = 70


def test_everything_fits_at_content_width():
    assert fit(COLS, WIDTHS, 70) == WIDTHS


def test_shrinkable_text_gives_way_before_a_column_is_dropped():
    assert fit(COLS, WIDTHS, 64) == {**WIDTHS, "model": 14}


def test_columns_drop_by_rank_and_the_cut_text_gets_the_room_back():
    got = fit(COLS, WIDTHS, 50)
    assert list(got) == ["time", "model", "tokens", "cost"]  # endpoint (rank 3) went first
    assert got["model"] == 50 - (8 + 6 + 10) - 8 and got["cost"] == 10


def test_cost_is_never_cut_and_never_dropped():
    for available in range(1, 80):
        got = fit(COLS, WIDTHS, available)
        assert got["cost"] == 10 and "model" in got
        assert got["model"] >= 4


def test_only_rank_zero_columns_left_at_the_narrowest():
    assert fit(COLS, WIDTHS, 20) == {"model": 6, "cost": 10}
    assert fit(COLS, WIDTHS, 12) == {"model": 4, "cost": 10}  # too narrow even so: the table scrolls
