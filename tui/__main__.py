"""``python -m pouch_tui [--home DIR] [--poll SECONDS]``."""

from __future__ import annotations

import argparse

from .app import run


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m pouch_tui", description="pouch's live terminal dashboard")
    ap.add_argument("--home", help="ledger directory (default $POUCH_HOME, else ~/.pouch)")
    ap.add_argument("--poll", type=float, default=0.25, metavar="SECONDS", help="ledger poll interval (default 0.25)")
    args = ap.parse_args()
    run(home=args.home, poll_interval=args.poll)


if __name__ == "__main__":
    main()
