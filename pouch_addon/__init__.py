"""pouch: a budget firewall for pay-per-token LLM APIs, built as a mitmproxy addon.

The pure core (pricing, token estimates, stream parsing, ledger rules) lives in modules named
after each concept; the mitmproxy hooks in ``pouch_addon.addons``; the CLI in ``cli``.
"""

__version__ = "0.1.0"
