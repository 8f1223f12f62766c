"""The help screen (``?``): keys, what the panels show, what the statuses mean."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, Markdown

HELP = """\
pouch reserves the worst-case cost of every LLM call before it leaves, meters streams and
settles the exact cost. This dashboard reads the shared ledger and never slows the proxy.

| key | action |
|---|---|
| `t` | top up the budget (asks for an amount, then confirms) |
| `b` | set the budget |
| `p` | pause all LLM traffic / resume (confirms; paused calls get HTTP 402) |
| `enter` / `d` / click | details of the selected request |
| `1` `2` `3` | recent requests, breakdown by model and app, blocked requests |
| `c` | spend chart: per hour today / per day this month |
| `m` | load 200 more history entries |
| `r` | re-read the ledger now |
| `ctrl+p` | command palette (themes, …) |
| `?` | this help |
| `q` | quit |

**Gauge**: remaining of budget; green above 25 % left, amber above 10 %, red below.
**In flight**: calls holding a reservation; cost so far and tokens come from the proxy's
checkpoints (every 0.5 s while streaming). *owner gone*: the proxy process that made it is
not running; `pouch ledger recover` (or the next proxy start) settles it as *orphaned*.

**Statuses**: `ok` settled at the provider's usage · `released` provider error, not billed ·
`cut_off` stopped at its reservation · `client_disconnect` / `upstream_disconnect` billed
for what was streamed · `orphaned` settled at the full reservation after a crash ·
`blocked` refused before it left (paused, budget, or an invalid request).

Periods are UTC. Times in the tables are UTC.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "close", "Close")]

    def __init__(self) -> None:
        super().__init__(classes="dialog")

    def compose(self) -> ComposeResult:
        with Vertical(id="help-box", classes="dialog-box"):
            yield Label("pouch — help", classes="dialog-title")
            yield Markdown(HELP, id="help-text")

    def action_close(self) -> None:
        self.dismiss(None)
