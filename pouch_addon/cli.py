"""The ``pouch`` command: budget, status, history, prices, token estimates, the proxy and the TUI;
wallets, keys and the audit log live in ``admin.py``.

Every command takes ``--home DIR`` (default ``$POUCH_HOME`` or ``~/.pouch``), so the CLI, the
proxy and the TUI share one ledger. Errors are one clear line on stderr and a non-zero exit.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from decimal import Decimal
from typing import Any

from . import admin, alert_cli, azure_map
from .audit import AUDIT_FILE, AuditLog
from .budget import Ledger, LedgerCorrupt, NotOpen
from .forecast import describe, forecast, settle_costs
from .home import HomeError, ledger_home, resolve_home
from .ledger_migrate import MigrateError
from .ledger_pg_schema import SchemaError
from .ledger_postgres import LedgerUnavailable, ledger_for, ledger_url
from .ledger_audit import reconcile, restore_details
from .money import ZERO, MoneyError, format_usd, parse_usd, usd_str
from .periods import period_end
from .presence import read_presence
from .providers import model_label

HISTORY_COLUMNS = [
    "time", "kind", "status", "provider", "model", "endpoint", "stream", "input_tokens", "cached_tokens",
    "output_tokens", "reasoning_tokens", "reserved", "cost", "duration_s", "wallet", "via", "client", "flags", "id",
]


class CliError(Exception):
    """A user-facing error: printed as one line, exit status 2."""


def _parse_since(text: str) -> float:
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise CliError(f"--since: not an ISO date or time: {text!r} (e.g. 2026-11-01 or 2026-11-01T08:00Z)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def open_ledger(home: str | None, *, create: bool = False) -> Ledger:
    """The ledger at ``home``; only commands that set something up create one (``create``).
    With ``--ledger URL`` or ``$POUCH_LEDGER``: the team ledger in PostgreSQL (``home`` keeps the
    local things: keys, vault, audit log)."""
    if ledger_url():
        return ledger_for(resolve_home(home))
    return Ledger(ledger_home(home, create=create))


def month_start(now: float) -> float:
    dt = datetime.fromtimestamp(now, timezone.utc)
    return dt.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()


def apps_without_wallet(entries: list[dict[str, Any]], wallets: set[str]) -> list[dict[str, Any]]:
    """Apps (wallet names) that settled calls without a configured wallet: spend and count, dearest first."""
    seen: dict[str, list[Any]] = {}
    for e in entries:
        name = e.get("wallet")
        if e.get("kind") != "settle" or not name or name in wallets:
            continue
        acc = seen.setdefault(name, [ZERO, 0])
        acc[0] += Decimal(e["cost"])
        acc[1] += 1
    rows = [{"name": n, "spent_usd": usd_str(v[0]), "requests": v[1]} for n, v in seen.items()]
    return sorted(rows, key=lambda r: (-Decimal(r["spent_usd"]), r["name"]))


def spend_by_provider(entries: list[dict[str, Any]]) -> dict[str, Decimal]:
    """Settled spend per provider of ``entries`` (this month's, for status)."""
    out: dict[str, Decimal] = {}
    for e in entries:
        name = str(e.get("provider") or "openai")  # entries from before providers were OpenAI's format
        out[name] = out.get(name, ZERO) + Decimal(e["cost"])
    return dict(sorted(out.items()))


def _print_status(ledger: Ledger, as_json: bool) -> None:
    st = ledger.status()
    wallets = ledger.wallets()
    month = ledger.history(since=month_start(ledger.clock()), kinds=("settle",))
    providers = spend_by_provider(month)
    others = apps_without_wallet(month, {w.name for w in wallets})
    proxy = read_presence(ledger.home)
    now = ledger.clock()
    day = ledger.history(since=now - 86400, kinds=("settle",))
    burn = forecast(settle_costs(day), st.remaining, now)
    wallet_burn = {w.name: forecast(settle_costs(day, w.name), w.remaining, now, period_end(w.period, now))
                   for w in wallets}
    if as_json:
        out = st.to_json()
        out["forecast"] = [e.to_json(now) for e in burn]
        if wallets:
            out["wallets"] = [{**w.to_json(), "forecast": [e.to_json(now) for e in wallet_burn[w.name]]}
                              for w in wallets]
        out["month_by_provider"] = {k: usd_str(v) for k, v in providers.items()}
        if others:
            out["apps_without_wallet"] = others
        out["proxy"] = proxy.to_json() if proxy else None
        print(json.dumps(out))
        return
    if st.budget == 0 and st.spent == 0:
        print("budget     $0.00: no budget set: `pouch budget set AMOUNT` (until then every LLM call is refused)")
    else:
        print(f"budget     {format_usd(st.budget)}")
    print(f"spent      {format_usd(st.spent)}")
    print(f"reserved   {format_usd(st.reserved)}  ({st.in_flight} in flight)")
    print(f"remaining  {format_usd(st.remaining)}")
    print(f"requests   {st.requests} settled, {st.blocked} blocked, {st.flagged} flagged for review")
    print(f"forecast   {describe(burn)}")
    if providers:
        print("this month " + ", ".join(f"{name} {format_usd(v)}" for name, v in providers.items()))
    if getattr(ledger, "url", None):  # the team ledger: every proxy holding a live lease, on any machine
        leases = ledger.live_lease_rows()
        print(f"ledger     team ledger {ledger.state_path}: {len(leases)} proxy lease(s) live"
              + (" (" + ", ".join(f"{host} pid {pid}" for host, pid in leases) + ")" if leases else ""))
    if proxy is None:
        print("proxy      none is serving this ledger (start one: `pouch proxy`)")
    elif proxy.state == "starting":
        print(f"proxy      starting on {proxy.url} (pid {proxy.pid})")
    else:
        print(f"proxy      serving this ledger on {proxy.url} (pid {proxy.pid}), {proxy.in_flight} call(s) in flight")
    if st.paused:
        print("PAUSED: every LLM request is answered 402 until `pouch resume`")
    if wallets:
        print()
        admin.print_wallets(wallets)
        for w in wallets:
            print(f"  {w.name}: {describe(wallet_burn[w.name])}")
    if others:
        print()
        print("apps without a wallet this month (charged to the global budget only):")
        for r in others:
            print(f"  {r['name']:<20} {format_usd(Decimal(r['spent_usd'])):>12}  {r['requests']} request(s)")


def cmd_status(args: argparse.Namespace) -> None:
    _print_status(open_ledger(args.home), args.json)


def cmd_budget(args: argparse.Namespace) -> None:
    ledger = open_ledger(args.home, create=args.action != "show")
    if args.action == "show":
        _print_status(ledger, False)
        return
    try:
        amount = parse_usd(args.amount)
    except MoneyError as exc:
        if args.action == "add" and args.amount.strip().startswith("-"):
            raise CliError("budget add takes a positive AMOUNT; to lower the budget use `pouch budget set AMOUNT`") from None
        raise CliError(str(exc)) from None
    if args.action == "set":
        st = ledger.set_budget(amount)
    else:
        try:
            st = ledger.add_budget(amount)
        except ValueError as exc:
            raise CliError(str(exc)) from None
    admin.audit(ledger.home, f"budget.{args.action}", {"amount": amount, "budget": st.budget})
    print(f"budget {format_usd(st.budget)}, remaining {format_usd(st.remaining)}")


def cmd_pause(args: argparse.Namespace) -> None:
    ledger = open_ledger(args.home, create=True)
    st = ledger.set_paused(args.command == "pause")
    admin.audit(ledger.home, args.command, {})
    print("paused: LLM requests are refused with 402" if st.paused else "resumed")


def cmd_history(args: argparse.Namespace) -> None:
    since = _parse_since(args.since) if args.since else None
    if args.limit is not None and args.limit < 1:
        raise CliError(f"--limit must be at least 1, not {args.limit}")
    ledger = open_ledger(args.home)
    if args.follow:
        if not args.jsonl or args.limit is not None:
            raise CliError("--follow goes with --jsonl (and --since, --wallet; not --limit)")
        from .follow import follow
        follow(ledger, sys.stdout, since=since, wallet=args.wallet)
        return
    kinds = None if args.blocked or args.jsonl else ("settle",)
    entries = ledger.history(since=since, limit=args.limit, kinds=kinds, wallet=args.wallet)
    entries.reverse()  # oldest first, like a statement
    if args.jsonl:  # settles and blocks, one JSON object a line (a stream for other tools)
        for e in entries:
            print(json.dumps(e, separators=(",", ":")))
    elif args.json:
        print(json.dumps(entries, indent=1))
    elif args.csv:
        writer = csv.DictWriter(sys.stdout, HISTORY_COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for e in entries:
            writer.writerow({**e, "flags": " ".join(e.get("flags") or [])})
    else:
        if not entries:
            print("no settled requests yet" if args.wallet is None else f"no settled requests for wallet {args.wallet!r}")
        for e in entries:
            tokens = f"{e.get('input_tokens', '?')}/{e.get('output_tokens', '?')} tok"
            flags = f" [{', '.join(e['flags'])}]" if e.get("flags") else ""
            print(
                f"{e['time']}  {e.get('status', ''):<10} {e.get('wallet', '-'):<16} {model_label(e) or '-':<24}"
                f" {tokens:<16} {format_usd(Decimal(e['cost'])):>14}{flags}"
            )
        if not args.blocked:
            hidden = len(ledger.history(since=since, kinds=("block",), wallet=args.wallet))
            if hidden:
                print(f"({hidden} blocked request{'' if hidden == 1 else 's'} not shown (`pouch history --blocked`))")


def cmd_cost(args: argparse.Namespace) -> None:
    from .pricing import PriceTable, UnknownModel, cost
    from .providers import PROVIDERS, openai

    try:
        price = PriceTable.load(args.prices).resolve(args.model)
        usage = PROVIDERS.get(price.provider, openai).usage_from_counts(
            input=args.input, cached=args.cached, cache_write=args.cache_write, cache_write_1h=args.cache_write_1h,
            output=args.output, reasoning=args.reasoning, thoughts=args.thoughts)
        total = cost(price, usage, args.tier)
    except (UnknownModel, ValueError) as exc:
        raise CliError(str(exc).strip("'\"")) from None
    if args.json:
        print(json.dumps({"model": price.name, "provider": price.provider, "usd": usd_str(total), **usage.to_dict()}))
    else:
        print(f"{price.name} ({price.provider}): {format_usd(total)}")


def cmd_tokens(args: argparse.Namespace) -> None:
    from .plan import PlanError, estimate_input_tokens

    try:
        raw = sys.stdin.read() if args.file == "-" else open(args.file, encoding="utf-8").read()
    except OSError as exc:
        raise CliError(f"cannot read {args.file}: {exc.strerror}") from None
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise CliError(f"{args.file} is not JSON: {exc}") from None
    try:
        n = estimate_input_tokens(body, endpoint=args.endpoint, model=args.model)
    except PlanError as exc:
        raise CliError(str(exc)) from None
    print(n)


def _status_line(st: Any) -> str:
    return (f"budget {format_usd(st.budget)}, spent {format_usd(st.spent)}, reserved {format_usd(st.reserved)}, "
            f"{st.requests} settled, {st.blocked} blocked")


def cmd_ledger(args: argparse.Namespace) -> None:
    if args.action == "init":
        from .ledger_postgres import init, redact_url
        url = ledger_url()
        if url is None:
            raise CliError("pouch ledger init: give the team ledger with --ledger postgresql://... or $POUCH_LEDGER")
        applied = init(url)
        print(f"ledger {redact_url(url)}: " + (f"schema migrations {applied} applied" if applied
                                                else "schema up to date"))
        return
    if args.action == "migrate":
        from .ledger_migrate import migrate
        from .ledger_postgres import redact_url
        if not args.to:
            raise CliError("pouch ledger migrate: give the team ledger with --to postgresql://...")
        os.environ.pop("POUCH_LEDGER", None)  # the source is the local ledger in --home
        done = migrate(Ledger(ledger_home(args.home)), ledger_url(args.to))
        print(f"copied the local ledger to {redact_url(args.to)}: {done['history']} history entries, "
              f"{done['wallets']} wallet(s), {done['audit']} audit entries; {_status_line(done['status'])}")
        print("checked: the copy is exact (status, wallets, every history entry, the audit head)")
        return
    ledger = open_ledger(args.home)
    if args.action == "verify" and getattr(ledger, "url", None):
        # the team ledger: the database's own checks (settings changes are audited in each
        # administrator's home, not in the shared database; see README "Team")
        from .ledger_migrate import audit_problems
        admin.report_problems(ledger.verify() + audit_problems(ledger),
                              lambda: f"ledger {ledger.state_path} is consistent")
    elif args.action == "verify":
        problems = ledger.verify()
        audit_problems = admin.audit_log_problems(ledger.home)
        problems += [f"audit log: {p}" for p in audit_problems]
        if not audit_problems:  # settings agree with the audited changes (item: unkeyed checksum)
            problems += reconcile(ledger.snapshot(), AuditLog(ledger.home / AUDIT_FILE).entries())
        admin.report_problems(problems, lambda: f"ledger {ledger.state_path} is consistent and agrees with "
                                                "the audit log")
    elif args.action == "restore":
        try:
            before = _status_line(ledger.status())
        except LedgerCorrupt:
            before = "unreadable"
        path = ledger.restore_backup()
        admin.audit(ledger.home, "ledger.restore", restore_details(ledger.snapshot()))
        print(f"restored the last good copy (the state before the last write) to {path}")
        print(f"  now:    {_status_line(ledger.status())}")
        print(f"  before: {before}")
        print("  settles written after that copy are replayed from history; a budget, wallet or pause change is not")
    elif args.action == "recover":
        entries = ledger.recover_orphans()
        print(f"settled {len(entries)} reservation(s) left open by dead processes")
        for e in entries:
            print(f"  {e['id']} {e.get('model', '-')} at {format_usd(Decimal(e['cost']))} (flagged orphaned)")


def _tokens(text: str) -> int:
    """A token count option: a whole number >= 0 (argparse names the option in its error)."""
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of tokens, got {text!r}") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"a token count cannot be negative, got {n}")
    return n


def cmd_options(args: argparse.Namespace) -> None:
    """pouch's mitmproxy options with their help (``mitmdump --options`` prints before loading scripts)."""
    from .options import dump_options
    print(dump_options(), end="")


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--home", metavar="DIR", default=argparse.SUPPRESS,
                        help="data directory (default: $POUCH_HOME or ~/.pouch)")
    common.add_argument("--ledger", metavar="URL", default=argparse.SUPPRESS,
                        help="the team ledger, postgresql://... (default: $POUCH_LEDGER, else the local ledger)")
    parser = argparse.ArgumentParser(
        prog="pouch", parents=[common],
        description="pouch: a budget firewall for pay-per-token LLM APIs (a mitmproxy addon).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("status", parents=[common], help="budget, spent, reserved, remaining")
    p.add_argument("--json", action="store_true", help="one JSON object with decimal-string amounts")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("budget", parents=[common], help="set or top up the budget (USD)")
    bsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (("set", "set the total budget to AMOUNT"), ("add", "add AMOUNT to the budget")):
        bp = bsub.add_parser(action, parents=[common], help=text)
        bp.add_argument("amount", metavar="AMOUNT", help="USD, e.g. 10 or 2.50")
    bsub.add_parser("show", parents=[common], help="same as `pouch status`")
    p.set_defaults(func=cmd_budget)

    for name, text in (("pause", "refuse all LLM traffic with 402 (kill switch)"), ("resume", "allow LLM traffic again")):
        sub.add_parser(name, parents=[common], help=text).set_defaults(func=cmd_pause)

    p = sub.add_parser("history", parents=[common], help="settled requests")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true")
    fmt.add_argument("--csv", action="store_true")
    fmt.add_argument("--jsonl", action="store_true", help="settles and blocks, one JSON object a line")
    p.add_argument("--follow", action="store_true",
                   help="with --jsonl: keep printing each new settle and block as it happens (from --since, else from now)")
    p.add_argument("--since", metavar="ISO", help="only entries at or after this UTC date/time")
    p.add_argument("--limit", type=int, default=None, help="at most N most recent entries (N >= 1)")
    p.add_argument("--blocked", action="store_true", help="include blocked requests")
    p.add_argument("--wallet", metavar="NAME", help="only requests charged to (or blocked for) this wallet")
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("cost", parents=[common], help="exact USD cost of a usage, to check a bill")
    p.add_argument("model")
    p.add_argument("--input", type=_tokens, default=0, metavar="N",
                   help="input tokens as the provider reports them (OpenAI, Gemini: cached ones included; "
                        "Anthropic: input_tokens, without cache reads and writes)")
    p.add_argument("--cached", type=_tokens, default=0, metavar="N", help="read from cache")
    p.add_argument("--cache-write", type=_tokens, default=0, metavar="N", help="written to cache (Anthropic: 5-minute TTL)")
    p.add_argument("--cache-write-1h", type=_tokens, default=0, metavar="N",
                   help="written to cache with the 1-hour TTL (Anthropic)")
    p.add_argument("--output", type=_tokens, default=0, metavar="N",
                   help="output tokens (OpenAI: reasoning included; Anthropic: thinking included; Gemini: candidates)")
    p.add_argument("--reasoning", type=_tokens, default=0, metavar="N", help="of which reasoning (OpenAI; not added again)")
    p.add_argument("--thoughts", type=_tokens, default=0, metavar="N", help="thinking tokens (Gemini; billed beside --output)")
    p.add_argument("--tier", default=None, help="service tier: flex, priority, batch")
    p.add_argument("--prices", default=None, help=argparse.SUPPRESS)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_cost)

    p = sub.add_parser("tokens", parents=[common], help="estimated prompt tokens of an OpenAI request body")
    p.add_argument("file", metavar="FILE", help="JSON request body, or - for stdin")
    p.add_argument("--endpoint", default="/v1/chat/completions",
                   help="which API the body is for (default /v1/chat/completions)")
    p.add_argument("--model", default=None, help="override the body's model")
    p.set_defaults(func=cmd_tokens)

    p = sub.add_parser("ledger", parents=[common],
                       help="check, restore or recover the ledger; init the team ledger's schema")
    p.add_argument("action", choices=["verify", "restore", "recover", "init", "migrate"])
    p.add_argument("--to", metavar="URL", default=None, help="migrate: the (empty) team ledger to copy the local one into")
    p.set_defaults(func=cmd_ledger)

    p = sub.add_parser("options", parents=[common], help="pouch's mitmproxy options (--set pouch_...=...) with their help")
    p.set_defaults(func=cmd_options)

    admin.add_commands(sub, common)
    azure_map.add_commands(sub, common)
    alert_cli.add_commands(sub, common)
    _add_runtime_commands(sub, common)
    from .models import add_parser as add_models_parser
    add_models_parser(sub, common)  # pouch models
    return parser


def _add_runtime_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    """Commands that start something (proxy, TUI); their modules import lazily."""
    try:
        from . import runtime
    except ImportError:  # pragma: no cover - during development only
        return
    runtime.add_commands(sub, common)


def split_proxy_argv(argv: list[str]) -> tuple[list[str], list[str]]:
    """``pouch [--home D] proxy ...``: pouch's own options (``--home``, ``--listen``, ``-h``) and
    everything else, which goes to mitmdump as it is (``-p 9090``, ``--set k=v``, ``--mode ...``;
    after ``--`` everything). Other commands: (argv, [])."""
    i = 0
    while i < len(argv) and argv[i] != "proxy":
        if argv[i] == "--home":
            i += 2
        elif argv[i].startswith("--home="):
            i += 1
        else:
            return argv, []
    if i >= len(argv):
        return argv, []
    ours, mitm = argv[:i + 1], []
    rest = argv[i + 1:]
    j = 0
    while j < len(rest):
        a = rest[j]
        if a == "--":
            mitm += rest[j + 1:]
            break
        if a in ("--home", "--listen"):
            ours += rest[j:j + 2]
            j += 1
        elif a.startswith(("--home=", "--listen=")) or a in ("-h", "--help"):
            ours.append(a)
        else:
            mitm.append(a)
        j += 1
    return ours, mitm


def _quiet_broken_pipe() -> int:
    """The reader went away (``pouch status | head -2``): stop quietly, like other Unix tools."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    return 141  # 128 + SIGPIPE, what a shell reports for a command killed by it


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ours, mitm = split_proxy_argv(list(sys.argv[1:] if argv is None else argv))
    args = parser.parse_args(ours)
    if getattr(args, "command", None) == "proxy":
        args.mitm_args = mitm
    if not hasattr(args, "home"):
        args.home = None
    if getattr(args, "ledger", None):
        os.environ["POUCH_LEDGER"] = args.ledger  # every command (and the TUI) opens the same ledger
    try:
        args.func(args)
        sys.stdout.flush()
    except (CliError, admin.AdminError, alert_cli.AlertCliError, LedgerCorrupt, NotOpen, HomeError, LedgerUnavailable,
            SchemaError, MigrateError) as exc:
        print(f"pouch: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
