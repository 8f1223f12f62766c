"""The dashboard's widgets, one per file. They only render what the app hands them."""

from .blocked_table import BlockedPanel
from .breakdown import Breakdown
from .budget_gauge import BudgetGauge
from .history_table import HistoryTable
from .inflight_table import InFlightTable
from .spend_chart import SpendChart
from .state_banner import StateBanner

__all__ = ["BlockedPanel", "Breakdown", "BudgetGauge", "HistoryTable", "InFlightTable", "SpendChart", "StateBanner"]
