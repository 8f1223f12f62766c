"""A one-glance banner for states that are not "all is well": no ledger yet, an empty ledger,
a corrupt ledger (its message names the file and the way out), a read error, orphaned work."""

from __future__ import annotations

from textual.widgets import Static


class StateBanner(Static):
    DEFAULT_CSS = """
    StateBanner { display: none; }
    """

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__("", id=id, markup=False)
        self.kind = "ok"
        self.message = ""

    def show(self, kind: str, message: str) -> None:
        """``kind``: ok (hidden), info, warning, missing, corrupt, error."""
        self.kind, self.message = kind, message
        for name in ("info", "warning", "error"):
            self.set_class(name == _severity(kind), f"-{name}")
        self.display = kind != "ok"
        self.update(message)


def _severity(kind: str) -> str:
    return {"info": "info", "missing": "info", "warning": "warning"}.get(kind, "error")
