"""``pouch alert set|show|test``: thresholds and sinks in ``alerts.json`` (each change audited).

The proxy reads ``alerts.json`` for thresholds on every alert it considers (a change applies at
once) and for its sinks at start (``--set pouch_alert_webhook=...``/``pouch_alert_command`` win).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from .alert_sinks import Sinks, deliver, desktop_tool
from .alerts import CONFIG_FILE, STATE_FILE, Alert, AlertConfig, AlertState, parse_thresholds
from .home import home_path, resolve_home
from .vault import write_private


class AlertCliError(Exception):
    pass


def read_config(home: Path) -> AlertConfig:
    try:
        return AlertConfig.from_json(json.loads((home / CONFIG_FILE).read_text()))
    except FileNotFoundError:
        return AlertConfig()
    except (ValueError, KeyError, TypeError) as exc:
        raise AlertCliError(f"{home / CONFIG_FILE} is unreadable ({exc}): fix or remove it") from None


def cmd_alert(args: argparse.Namespace) -> None:
    from . import admin

    home = home_path(args.home) if args.action == "show" else resolve_home(args.home)  # no ledger needed
    cfg = read_config(home)
    if args.action == "set":
        changes: dict[str, Any] = {}
        if args.thresholds is not None:
            try:
                t = parse_thresholds(args.thresholds)
            except ValueError as exc:
                raise AlertCliError(str(exc)) from None
            if args.wallet:
                changes["wallets"] = {**cfg.wallets, args.wallet: t}
            else:
                changes["thresholds"] = t
        elif args.wallet and args.default:
            changes["wallets"] = {k: v for k, v in cfg.wallets.items() if k != args.wallet}
        if args.webhook is not None:
            if args.webhook != "none" and not args.webhook.startswith(("http://", "https://")):
                raise AlertCliError(f"--webhook: expected an http:// or https:// URL (or none), got {args.webhook!r}")
            changes["webhook"] = None if args.webhook == "none" else args.webhook
        if args.command is not None:
            changes["command"] = None if args.command == "none" else args.command
        if args.desktop is not None:
            changes["desktop"] = args.desktop
        if not changes:
            raise AlertCliError("nothing to set: give THRESHOLDS (e.g. 50,80,95,100), --webhook, --command or --desktop")
        cfg = replace(cfg, **changes)
        write_private(home / CONFIG_FILE, json.dumps(cfg.to_json(), indent=1).encode())
        admin.audit(home, "alert.set", {k: (list(v) if isinstance(v, tuple) else v) for k, v in changes.items()
                                        if k != "wallets"} | ({"wallet": args.wallet} if args.wallet else {}))
        _print(cfg)
    elif args.action == "show":
        if args.json:
            print(json.dumps(cfg.to_json()))
        else:
            _print(cfg)
            try:
                recent = AlertState.loads((home / STATE_FILE).read_text()).recent
            except (OSError, ValueError):
                recent = []
            for a in recent[-5:]:
                print(f"  {a.get('time')}  {a.get('text')}")
    else:  # test
        sinks = Sinks(webhook=args.webhook or cfg.webhook, command=args.command or cfg.command, desktop=cfg.desktop)
        names = sinks.names()
        if not names:
            raise AlertCliError("no sink configured: `pouch alert set --webhook URL` or `--command CMD` "
                                "(desktop notifications need notify-send or osascript)")
        alert = Alert("test", "global", "pouch: a test alert (`pouch alert test`): this sink works", time.time())
        results = deliver(sinks, alert.to_json(), retries=args.retries, backoff=0.5)
        admin.audit(home, "alert.test", {"sinks": names, "failed": sorted(k for k, v in results.items() if v)})
        failed = False
        for name, error in results.items():
            print(f"{name:<8} {'sent' if error is None else 'FAILED: ' + error}")
            failed = failed or error is not None
        if failed:
            raise AlertCliError("a sink failed (see above)")


def _print(cfg: AlertConfig) -> None:
    def pct(t: tuple[int, ...]) -> str:
        return ", ".join(f"{x}%" for x in t) or "off"
    print(f"thresholds  {pct(cfg.thresholds)} of each budget's period")
    for name, t in sorted(cfg.wallets.items()):
        print(f"  wallet {name}: {pct(t)}")
    print(f"webhook     {cfg.webhook or '-'}")
    print(f"command     {cfg.command or '-'}")
    tool = desktop_tool()
    print(f"desktop     {'on' if cfg.desktop else 'off'}" + ("" if tool else " (no notify-send/osascript here)"))


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("alert", parents=[common], help="alert thresholds and sinks: set, show, test")
    asub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    sp = asub.add_parser("set", parents=[common], help="thresholds (global or --wallet) and sinks")
    sp.add_argument("thresholds", nargs="?", metavar="THRESHOLDS",
                    help="percentages of the period's budget, e.g. 50,80,95,100 (off: none)")
    sp.add_argument("--wallet", metavar="APP", help="the thresholds are this wallet's")
    sp.add_argument("--default", action="store_true", help="with --wallet: use the global thresholds again")
    sp.add_argument("--webhook", metavar="URL", help="POST alerts as JSON here (none: no webhook)")
    sp.add_argument("--command", metavar="CMD", help="run CMD with the alert JSON on stdin (none: no command)")
    dp = sp.add_mutually_exclusive_group()
    dp.add_argument("--desktop", dest="desktop", action="store_true", default=None, help="desktop notifications on")
    dp.add_argument("--no-desktop", dest="desktop", action="store_false", help="desktop notifications off")
    shp = asub.add_parser("show", parents=[common], help="thresholds, sinks and the last alerts")
    shp.add_argument("--json", action="store_true")
    tp = asub.add_parser("test", parents=[common], help="send a sample alert to every configured sink")
    tp.add_argument("--webhook", metavar="URL", help="this webhook instead of the configured one")
    tp.add_argument("--command", metavar="CMD", help="this command instead of the configured one")
    tp.add_argument("--retries", type=int, default=1, help=argparse.SUPPRESS)
    p.set_defaults(func=cmd_alert)
