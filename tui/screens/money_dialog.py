"""Top up or set the budget: type an amount, then confirm. Dismisses with the Decimal, or None."""

from __future__ import annotations

from decimal import Decimal

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Input, Label, Static

from pouch_addon.money import MoneyError, format_usd, parse_usd

from .confirm import ConfirmScreen

MAX_AMOUNT = Decimal(1_000_000)  # a typo guard, not a rule of the ledger


class MoneyDialog(ModalScreen[Decimal | None]):
    """``mode`` is ``add`` (top up) or ``set``; ``budget`` is the current budget, for the preview."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, mode: str, budget: Decimal | None) -> None:
        super().__init__(classes="dialog")
        self.mode = mode
        self.budget = budget

    def compose(self) -> ComposeResult:
        title = "Top up the budget" if self.mode == "add" else "Set the budget"
        now = f"The budget is {format_usd(self.budget)}." if self.budget is not None else ""
        hint = "Amount in USD to add" if self.mode == "add" else "New budget in USD"
        with Vertical(id="money-box", classes="dialog-box"):
            yield Label(title, classes="dialog-title")
            yield Static(f"{now} {hint}, e.g. 5 or 12.50:".strip(), markup=False)
            yield Input(placeholder="0.00", id="amount", restrict=r"[0-9$_.,]*")
            yield Static("", id="money-error", markup=False)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Continue", id="ok", variant="primary")
                yield Button("Cancel", id="cancel")

    def on_mount(self) -> None:
        self.query_one("#amount", Input).focus()

    def parse(self) -> Decimal | None:
        text = self.query_one("#amount", Input).value.replace(",", "")
        error = self.query_one("#money-error", Static)
        try:
            amount = parse_usd(text)
        except MoneyError:
            error.update("Type an amount in dollars, e.g. 5 or 12.50.")
            return None
        if self.mode == "add" and amount <= 0:
            error.update("A top-up must be more than $0.")
            return None
        if amount > MAX_AMOUNT:
            error.update(f"That is more than {format_usd(MAX_AMOUNT)}; use `pouch budget` for that.")
            return None
        if amount.as_tuple().exponent < -6:  # type: ignore[operator]
            error.update("Use at most 6 decimal places.")
            return None
        error.update("")
        return amount

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.submit()

    def on_button_pressed(self, event: Button.Pressed) -> None:
        event.stop()
        if event.button.id == "ok":
            self.submit()
        else:
            self.dismiss(None)

    def action_cancel(self) -> None:
        self.dismiss(None)

    def submit(self) -> None:
        amount = self.parse()
        if amount is None:
            return
        if self.mode == "add":
            after = f" The budget becomes {format_usd(self.budget + amount)}." if self.budget is not None else ""
            question = f"Add {format_usd(amount)} to the budget?{after}"
        else:
            before = f" (now {format_usd(self.budget)})" if self.budget is not None else ""
            question = f"Set the budget to {format_usd(amount)}{before}?"
            if amount == 0:
                question += " Every request will then be blocked."

        def done(yes: bool | None) -> None:
            if yes:
                self.dismiss(amount)

        title = "Confirm top-up" if self.mode == "add" else "Confirm new budget"
        self.app.push_screen(ConfirmScreen(title, question, yes="Add" if self.mode == "add" else "Set"),
                             done)
