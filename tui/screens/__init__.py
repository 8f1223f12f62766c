"""Modal screens: request detail, money dialog, confirmation, help."""

from .confirm import ConfirmScreen
from .detail import DetailScreen
from .help import HelpScreen
from .money_dialog import MoneyDialog

__all__ = ["ConfirmScreen", "DetailScreen", "HelpScreen", "MoneyDialog"]
