"""Tables whose columns fit the terminal: the money column is always shown, in full.

A Textual ``DataTable`` sizes its columns to their content and scrolls sideways when they do
not fit, so on an 80-column terminal the cost (a right-hand column) was off-screen, or cut at
the panel's edge to ``$0.000``. Here each table declares its columns with a *rank*: rank 0
columns are always shown at full width (cost, and the name of what is shown), higher ranks are
dropped first when the width runs out, and text columns marked shrinkable give up width (cut
with ``…``) before anything is dropped. :func:`fit` is the pure rule; :class:`FitTable` applies
it on every update and resize.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rich.text import Text
from textual import events
from textual.widgets import DataTable


@dataclass(frozen=True)
class Col:
    """A column: ``rank`` 0 is always shown; the highest rank is dropped first.

    ``soft``: a text column may be cut to this many cells before any column is dropped;
    ``hard``: ... and down to this many when only rank-0 columns are left (0: never cut)."""

    key: str
    label: str
    rank: int
    soft: int = 0
    hard: int = 0


def fit(cols: Sequence[Col], widths: dict[str, int], available: int, padding: int = 1) -> dict[str, int]:
    """The columns to show and their widths (display order kept), for content ``widths``.

    1. cut shrinkable columns towards ``soft``, only as much as needed;
    2. drop columns, highest rank first (the rightmost of equal ranks), until the rest fit;
    3. give the room a drop freed back to the cut columns;
    4. if even the rank-0 columns do not fit, cut shrinkable ones down to ``hard``.
    A rank-0 column without ``hard`` (the cost) is never cut: the table scrolls instead.
    """
    pad = 2 * padding
    w = {c.key: max(1, widths.get(c.key, 1)) for c in cols}
    shown = list(cols)

    def excess() -> int:
        return sum(w[c.key] + pad for c in shown) - available

    def cut(floor: str) -> None:
        for c in sorted(shown, key=lambda c: w[c.key] - getattr(c, floor), reverse=True):
            limit = getattr(c, floor)
            if excess() <= 0:
                return
            if limit and w[c.key] > limit:
                w[c.key] -= min(excess(), w[c.key] - limit)

    cut("soft")
    while excess() > 0:
        droppable = [c for c in shown if c.rank > 0]
        if not droppable:
            break
        worst = max(reversed(droppable), key=lambda c: c.rank)
        shown.remove(worst)
    for c in shown:  # give back what a drop freed
        full = max(1, widths.get(c.key, 1))
        if w[c.key] < full and excess() < 0:
            w[c.key] += min(-excess(), full - w[c.key])
    cut("hard")
    return {c.key: w[c.key] for c in shown}


def place(text: Text, width: int) -> Text:
    """The cell as shown in a column ``width`` wide: cut with ``…`` when longer; right-justified
    text padded here, because Rich's right-justify strips trailing spaces (which line up the
    decimal points of amounts, see :func:`pouch_tui.format.align_points`)."""
    if text.cell_len > width:
        out = text.copy()
        out.truncate(width, overflow="ellipsis")
        return out
    if text.justify == "right":
        out = text.copy()
        out.pad_left(width - text.cell_len)
        out.justify = "left"
        return out
    return text


def same(a: Text | None, b: Text) -> bool:
    """``Text ==`` ignores the base style (a status colour that follows the theme)."""
    return (a is not None and a.plain == b.plain and a.style == b.style and a.spans == b.spans
            and a.justify == b.justify)


class FitTable(DataTable):
    """A ``DataTable`` fed whole rows (``{column key: Text}``) through :meth:`show_rows`; it
    shows the columns :func:`fit` picks for its width. Rows already shown are updated in place
    (the cursor stays); a new row set or column layout rebuilds the table, keeping the cursor on
    the same row key unless ``follow_top``."""

    COLS: tuple[Col, ...] = ()

    def __init__(self, *, id: str | None = None, **kwargs: object) -> None:
        super().__init__(id=id, **kwargs)  # type: ignore[arg-type]
        self.labels = {c.key: c.label for c in self.COLS}
        self.rows_shown: list[tuple[str, dict[str, Text]]] = []
        self.fitted: dict[str, int] | None = None
        self._cells: dict[str, dict[str, Text]] = {}
        for c in self.COLS:  # every column until the first fit (an update may come before a size)
            self.add_column(c.label, key=c.key)

    # -- feeding ----------------------------------------------------------------------------------
    def show_rows(self, rows: list[tuple[str, dict[str, Text]]], *, follow_top: bool = False) -> None:
        self.rows_shown = rows
        self._apply(follow_top)

    def on_resize(self, event: events.Resize) -> None:
        self._apply(False)

    def cell_text(self, row_key: str, column: str) -> str | None:
        """The full text of a cell, shown or not (for tests and details)."""
        for key, cells in self.rows_shown:
            if key == row_key:
                return cells[column].plain if column in cells else None
        return None

    # -- layout ---------------------------------------------------------------------------------
    def available_width(self) -> int:
        """Cells for columns: inside the border, less a vertical scrollbar when rows overflow."""
        width = self.content_region.width
        if len(self.rows_shown) + (1 if self.show_header else 0) > self.content_region.height:
            width -= self.styles.scrollbar_size_vertical
        return width

    def compute_fit(self) -> dict[str, int]:
        widths = {c.key: Text(self.labels[c.key]).cell_len for c in self.COLS}
        for _, cells in self.rows_shown:
            for key, text in cells.items():
                if key in widths and text.cell_len > widths[key]:
                    widths[key] = text.cell_len
        if not self.size.width:  # not laid out yet: everything, at content width
            return widths
        return fit(self.COLS, widths, self.available_width(), self.cell_padding)

    def _apply(self, follow_top: bool) -> None:
        layout = self.compute_fit()
        keys = [key for key, _ in self.rows_shown]
        if layout == self.fitted and keys == list(self._cells):
            for key, cells in self.rows_shown:  # same rows, same columns: update what changed
                old = self._cells[key]
                for col, width in layout.items():
                    cell = place(cells[col], width)
                    if not same(old.get(col), cell):
                        self.update_cell(key, col, cell)
                        old[col] = cell
            return
        current = None
        if self.row_count and 0 <= self.cursor_row < self.row_count:
            current = self.coordinate_to_cell_key(self.cursor_coordinate).row_key.value
        if layout != self.fitted:
            self.clear(columns=True)
            for col, width in layout.items():
                self.add_column(place(Text(self.labels[col]), width), width=width, key=col)
            self.fitted = layout
        else:
            self.clear()
        self._cells = {}
        for key, cells in self.rows_shown:
            shown = {col: place(cells[col], width) for col, width in layout.items()}
            self._cells[key] = shown
            self.add_row(*shown.values(), key=key)
        if not follow_top and current in self._cells:
            self.move_cursor(row=keys.index(current), animate=False)
