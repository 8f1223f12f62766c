"""Administrative commands: ``pouch wallet``, ``pouch key`` and ``pouch audit``.

Every change made here (and budget set/top-up and pause/resume in ``cli.py``) is appended to
the hash-chained audit log (``audit.jsonl`` in the pouch home) *after* it succeeded; secrets
appear there, as everywhere, only as fingerprints.

Secrets: a provider key is read with ``getpass`` (or the first line of stdin when it is not a
terminal) and stored encrypted in ``vault.json``; the vault passphrase comes from
``$POUCH_VAULT_PASSPHRASE`` or a prompt. ``--no-passphrase`` (first ``key add`` only) keeps a
random key in ``vault.key`` (0600) instead. Virtual keys are printed once and stored only as
SHA-256 hashes; a wallet's proxy secret is printed once, hashed in the ledger, and kept for
``pouch run --wallet`` in ``wallet-secrets.json`` (0600; see ``wallet_secrets.py``).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import secrets
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

from .audit import AUDIT_FILE, AuditError, AuditLog
from .budget import Ledger, LedgerCorrupt, WalletStatus
from .home import ledger_exists, ledger_home, resolve_home
from .keystore import KeyStore
from .ledger_audit import has_history
from .money import MoneyError, format_usd, parse_usd
from .periods import parse_period
from .vault import Vault, VaultError, hash_virtual_key
from . import wallet_secrets

PASSPHRASE_ENV = "POUCH_VAULT_PASSPHRASE"
VAULT_FILE = "vault.json"
KEYFILE = "vault.key"


class AdminError(Exception):
    """A user-facing error (printed as one line by ``cli.main``)."""


def audit(home: Path, action: str, details: dict[str, Any]) -> None:
    """Record an administrative change; a refused append is reported, the change stands."""
    try:
        AuditLog(home / AUDIT_FILE).append(action, details)
    except (AuditError, OSError) as exc:
        raise AdminError(f"the change was made, but the audit log refused it: {exc}") from None
    from .ledger_postgres import LedgerUnavailable, PostgresLedger, ledger_url
    url = ledger_url()
    if url:  # the team ledger: the team's audit log in the database too (who changed the shared budget)
        try:
            with PostgresLedger(url, home) as team:
                team.audit_append(action, details)
        except LedgerUnavailable as exc:
            raise AdminError(f"the change was made, but the team audit log refused it: {exc}") from None


def audit_log_problems(home: Path) -> list[str]:
    """The audit log's own problems, and a log gone missing under a ledger that has history.

    Deleting both ``audit.jsonl`` and its head leaves an empty, valid chain; only the ledger
    beside it can tell that there was something to audit (every budget change is audited)."""
    log = AuditLog(home / AUDIT_FILE)
    problems = log.verify()
    if problems or log.head() is not None or log.path.exists():
        return problems
    try:
        state = Ledger(home).snapshot()
    except LedgerCorrupt:
        return [f"{log.path} and {log.head_path.name} are missing, and the ledger cannot be read to tell "
                "whether they should exist (`pouch ledger verify`)"]
    if has_history(state):
        return [f"{log.path} and {log.head_path.name} are missing but the ledger in {home} has history "
                f"(budget {format_usd(state.budget)}, {state.requests} requests): the audit log was removed"]
    return []


def parse_time(text: str, what: str, *, end_of_day: bool = False) -> float:
    """An ISO date or time, UTC unless it says otherwise. ``end_of_day``: a bare date means the
    end of that day (the next midnight UTC), so ``--expires 2026-12-31`` lasts through the 31st."""
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise AdminError(f"{what}: not an ISO date or time: {text!r} (e.g. 2026-12-31 or 2026-12-31T18:00Z)") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    if end_of_day and len(text.strip()) == 10:  # YYYY-MM-DD
        dt += timedelta(days=1)
    return dt.timestamp()


def iso(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%MZ")


def _usd(text: str, *, negative: bool = False) -> Decimal:
    try:
        return parse_usd(text, allow_negative=negative)
    except MoneyError as exc:
        raise AdminError(str(exc)) from None


def _limit(text: str | None) -> int | None:
    if text is None or text.lower() in ("none", "off", "0"):
        return None
    if not text.isdigit():
        raise AdminError(f"a rate limit is a whole number or 'none', not {text!r}")
    return int(text)


# -- wallets --------------------------------------------------------------------------------------
def print_wallets(wallets: list[WalletStatus]) -> None:
    if not wallets:
        print("no wallets (every app is charged to the global budget only; add one with `pouch wallet add`)")
        return
    print(f"{'wallet':<20} {'period':<8} {'window':<11} {'budget':>12} {'spent':>12} {'reserved':>12} "
          f"{'remaining':>12}  limits / expiry")
    for w in wallets:
        extra = [f"rpm {w.rpm}"] if w.rpm else []
        extra += [f"tpm {w.tpm}"] if w.tpm else []
        extra += [("EXPIRED " if w.expired else "expires ") + iso(w.expires)] if w.expires is not None else []
        extra += ["secret"] if w.has_secret else []
        print(f"{w.name:<20} {w.period:<8} {w.window:<11} {format_usd(w.budget):>12} {format_usd(w.spent):>12} "
              f"{format_usd(w.reserved):>12} {format_usd(w.remaining):>12}  {', '.join(extra)}")


def _secret_for(args: argparse.Namespace) -> tuple[str | None, dict[str, Any]]:
    """A new proxy secret (printed once) when --secret was given."""
    if not getattr(args, "secret", False):
        return None, {}
    secret = secrets.token_urlsafe(18)
    return secret, {"secret_hash": hash_virtual_key(secret)}


def cmd_wallet(args: argparse.Namespace) -> None:
    from .ledger_postgres import ledger_for, ledger_url
    home = resolve_home(args.home) if ledger_url() else ledger_home(args.home, create=args.action == "add")
    ledger = ledger_for(home)
    if args.action == "list":
        wallets = ledger.wallets()
        if args.json:
            print(json.dumps([w.to_json() for w in wallets], indent=1))
        else:
            print_wallets(wallets)
        return
    if args.action == "rm":
        try:
            ledger.remove_wallet(args.name)
        except KeyError as exc:
            raise AdminError(str(exc).strip("'\"")) from None
        _forget_secret(home, args.name)
        audit(home, "wallet.rm", {"wallet": args.name})
        print(f"removed wallet {args.name} (its history is kept)")
        return
    fields: dict[str, Any] = {}
    if args.period is not None:
        try:
            fields["period"] = parse_period(args.period)
        except ValueError as exc:
            raise AdminError(str(exc)) from None
    if args.rpm is not None:
        fields["rpm"] = _limit(args.rpm)
    if args.tpm is not None:
        fields["tpm"] = _limit(args.tpm)
    if args.expires is not None:
        fields["expires"] = (None if args.expires.lower() in ("never", "none")
                             else parse_time(args.expires, "--expires", end_of_day=True))
    secret, secret_fields = _secret_for(args)
    fields.update(secret_fields)
    try:
        if args.action == "add":
            if args.budget is None:
                raise AdminError("pouch wallet add: give --budget AMOUNT")
            ws = ledger.add_wallet(args.name, _usd(args.budget), **fields)
        else:
            if args.budget is not None:
                fields["budget"] = _usd(args.budget)
            if args.add is not None:
                fields["add"] = _usd(args.add, negative=True)
            if getattr(args, "no_secret", False):
                fields["secret_hash"] = None
            if not fields:
                raise AdminError("pouch wallet set: nothing to change (see --help)")
            ws = ledger.update_wallet(args.name, **fields)
    except (KeyError, ValueError) as exc:
        raise AdminError(str(exc).strip("'\"")) from None
    details = {k: v for k, v in fields.items() if k != "secret_hash"}
    if "secret_hash" in fields:
        details["requires_secret"] = bool(fields["secret_hash"])
    kept = _keep_secret(home, args.name, secret) if "secret_hash" in fields else True
    audit(home, f"wallet.{args.action}", {"wallet": args.name, **details, "budget": ws.budget})
    print_wallets([ws])
    if secret is not None:
        print(f"proxy secret for {args.name} (shown once): {secret}")
        if kept:
            print(f"  kept in {home / wallet_secrets.SECRETS_FILE} (0600) for "
                  f"`pouch run --wallet {args.name} -- CMD` and `eval \"$(pouch env --wallet {args.name})\"`")


def _keep_secret(home: Path, name: str, secret: str | None) -> bool:
    """Keep the wallet's new secret for `pouch run --wallet` (or forget its old one); a failure is
    reported and the change stands (the secret is still printed, so it is not lost)."""
    try:
        if secret is None:
            wallet_secrets.forget(home, name)
        else:
            wallet_secrets.keep(home, name, secret)
    except (wallet_secrets.SecretsError, OSError) as exc:
        print(f"pouch: warning: the wallet was changed, but its secret could not be kept: {exc}", file=sys.stderr)
        return False
    return True


def _forget_secret(home: Path, name: str) -> None:
    _keep_secret(home, name, None)


# -- keys -------------------------------------------------------------------------------------------
def _read_secret(prompt: str) -> str:
    if sys.stdin.isatty():
        return getpass.getpass(prompt)
    return sys.stdin.readline().strip()


def _passphrase(confirm: bool) -> str:
    env = os.environ.get(PASSPHRASE_ENV)
    if env:
        return env
    if not sys.stdin.isatty():
        raise AdminError(f"the vault needs a passphrase: set {PASSPHRASE_ENV} (or create it with --no-passphrase)")
    first = getpass.getpass("vault passphrase: ")
    if confirm and getpass.getpass("again: ") != first:
        raise AdminError("the passphrases differ")
    return first


def open_or_create_vault(home: Path, *, no_passphrase: bool) -> Vault:
    path, keyfile = home / VAULT_FILE, home / KEYFILE
    try:
        if path.exists():
            if keyfile.exists():
                return Vault.open(path, None, keyfile)
            return Vault.open(path, _passphrase(False))
        if no_passphrase:
            return Vault.create(path, None, keyfile)
        return Vault.create(path, _passphrase(True))
    except VaultError as exc:
        raise AdminError(str(exc)) from None


def vault_names(home: Path) -> list[str]:
    """Provider names in the vault (stored in the clear; no passphrase needed to list them)."""
    try:
        return sorted(json.loads((home / VAULT_FILE).read_text()).get("secrets", {}))
    except FileNotFoundError:
        return []
    except ValueError as exc:
        raise AdminError(f"{home / VAULT_FILE} cannot be read: {exc}") from None


def cmd_key(args: argparse.Namespace) -> None:
    home = resolve_home(args.home)
    store = KeyStore(home)
    now = time.time()
    if args.action == "add":
        vault = open_or_create_vault(home, no_passphrase=args.no_passphrase)
        real = _read_secret(f"{args.provider} API key: ")
        if not real:
            raise AdminError("no key given")
        try:
            fp = vault.put(args.provider, real)
        except VaultError as exc:
            raise AdminError(str(exc)) from None
        audit(home, "key.add", {"provider": args.provider, "fingerprint": fp})
        print(f"stored {args.provider} key {fp} in {vault.path} (encrypted)")
    elif args.action == "rm":
        vault = open_or_create_vault(home, no_passphrase=False)
        try:
            vault.remove(args.provider)
        except KeyError as exc:
            raise AdminError(str(exc).strip("'\"")) from None
        audit(home, "key.rm", {"provider": args.provider})
        print(f"removed the {args.provider} key from the vault")
    elif args.action == "issue":
        expires = parse_time(args.expires, "--expires", end_of_day=True) if args.expires else None
        try:
            from .budget import check_wallet_name
            check_wallet_name(args.wallet)
        except ValueError as exc:
            raise AdminError(str(exc)) from None
        if not ledger_exists(home) or args.wallet not in {w.name for w in Ledger(home).wallets()}:
            raise AdminError(f"no wallet named {args.wallet!r}: create it first with "
                             f"`pouch wallet add {args.wallet} --budget USD` (a key charges its wallet)")
        if args.provider not in vault_names(home):
            print(f"pouch: note: the vault holds no {args.provider!r} key yet (`pouch key add {args.provider}`)",
                  file=sys.stderr)
        key, rec = store.issue(args.wallet, provider=args.provider, expires=expires, now=now)
        audit(home, "key.issue", {"id": rec.id, "wallet": rec.wallet, "provider": rec.provider,
                                  "expires": rec.expires, "fingerprint": rec.fingerprint})
        print(key)
        print(f"virtual key {rec.id} for wallet {rec.wallet} ({rec.provider}), expires {iso(expires)}; "
              "shown once, only its hash is stored", file=sys.stderr)
    elif args.action == "revoke":
        try:
            rec = store.revoke(args.id, now=now)
        except KeyError as exc:
            raise AdminError(str(exc).strip("'\"")) from None
        audit(home, "key.revoke", {"id": rec.id, "wallet": rec.wallet, "fingerprint": rec.fingerprint})
        print(f"revoked virtual key {rec.id} ({rec.fingerprint}) of wallet {rec.wallet}")
    elif args.action == "list":
        recs = store.records()
        if args.json:
            print(json.dumps({"providers": vault_names(home), "virtual_keys": [
                {"id": r.id, "wallet": r.wallet, "provider": r.provider, "state": r.state(now),
                 "created": iso(r.created), "expires": None if r.expires is None else iso(r.expires),
                 "fingerprint": r.fingerprint} for r in recs]}, indent=1))
            return
        print("provider keys in the vault: " + (", ".join(vault_names(home)) or "none"))
        for r in recs:
            print(f"{r.id}  {r.state(now):<8} wallet {r.wallet:<16} {r.provider:<8} {r.fingerprint}  "
                  f"expires {iso(r.expires)}")


def report_problems(problems: list[str], ok: Callable[[], str]) -> None:
    """What `verify` commands print: each problem and exit status 1, or the ``ok`` line."""
    for p in problems:
        print(f"problem: {p}")
    if problems:
        raise SystemExit(1)
    print(ok())


# -- audit --------------------------------------------------------------------------------------------
def cmd_audit(args: argparse.Namespace) -> None:
    """The local audit log; with the team ledger (``--ledger``/``$POUCH_LEDGER``) the team's, in the
    database (every member's changes to the shared budget, not only this machine's)."""
    home = resolve_home(args.home)
    from .ledger_postgres import LedgerUnavailable, PostgresLedger, ledger_url
    url = ledger_url()
    if url:
        from .ledger_migrate import audit_problems, team_audit
        try:
            with PostgresLedger(url, home) as team:
                if args.action == "verify":
                    problems = audit_problems(team)
                    count = len(team_audit(team)[0])
                else:
                    entries = team_audit(team)[0]
        except LedgerUnavailable as exc:
            raise AdminError(str(exc)) from None
        if args.action == "verify":
            report_problems(problems, lambda: f"team audit log in {team.display_url} is intact ({count} entries)")
            return
    else:
        log = AuditLog(home / AUDIT_FILE)
        if args.action == "verify":
            report_problems(audit_log_problems(home),
                            lambda: f"audit log {log.path} is intact ({len(log.entries())} entries)")
            return
        entries = log.entries()
    entries = entries[-args.limit:] if args.limit else entries
    if args.json:
        print(json.dumps(entries, indent=1))
        return
    for e in entries:
        print(f"{e['time']}  {e['actor']:<10} {e['action']:<14} {json.dumps(e['details'], sort_keys=True)}")


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("wallet", parents=[common], help="per-app budgets: add, list, set, rm")
    wsub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (("add", "create a wallet"), ("set", "change a wallet")):
        wp = wsub.add_parser(action, parents=[common], help=text)
        wp.add_argument("name", metavar="APP")
        wp.add_argument("--budget", metavar="USD", help="the wallet's budget per period")
        if action == "set":
            wp.add_argument("--add", metavar="USD", help="top the budget up by USD (negative lowers it)")
        wp.add_argument("--period", help="total (default), daily, weekly or monthly (UTC); a change recounts "
                                         "the spend from history in the new window")
        wp.add_argument("--rpm", metavar="N", help="requests per minute (or none)")
        wp.add_argument("--tpm", metavar="N", help="tokens per minute, worst case per request (or none)")
        wp.add_argument("--expires", metavar="ISO", help="refuse requests from then on (or never); a bare date "
                                                         "means the end of that day, UTC")
        wp.add_argument("--secret", action="store_true", help="require a proxy secret (a new one is printed once)")
        if action == "set":
            wp.add_argument("--no-secret", action="store_true", help="no longer require a proxy secret")
    lp = wsub.add_parser("list", parents=[common], help="wallets with their spend in the current period")
    lp.add_argument("--json", action="store_true")
    rp = wsub.add_parser("rm", parents=[common], help="delete a wallet (history is kept)")
    rp.add_argument("name", metavar="APP")
    p.set_defaults(func=cmd_wallet)

    p = sub.add_parser("key", parents=[common], help="the key vault and virtual keys")
    ksub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    kp = ksub.add_parser("add", parents=[common], help="store a real provider key, encrypted (read from a prompt or stdin)")
    kp.add_argument("provider", help="e.g. openai")
    kp.add_argument("--no-passphrase", action="store_true",
                    help="new vault only: protect it with a random key in vault.key (0600) instead of a passphrase")
    kp = ksub.add_parser("rm", parents=[common], help="remove a provider key from the vault")
    kp.add_argument("provider")
    kp = ksub.add_parser("issue", parents=[common], help="print a new virtual key (pk-pouch-...) for a wallet")
    kp.add_argument("--wallet", required=True, metavar="APP")
    kp.add_argument("--provider", default="openai", help="whose real key it stands for (default openai)")
    kp.add_argument("--expires", metavar="ISO", help="a bare date means the end of that day, UTC")
    kp = ksub.add_parser("revoke", parents=[common], help="revoke a virtual key by its id")
    kp.add_argument("id")
    kp = ksub.add_parser("list", parents=[common], help="provider keys held and virtual keys issued")
    kp.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_key)

    p = sub.add_parser("audit", parents=[common], help="the hash-chained audit log: verify or show")
    asub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    asub.add_parser("verify", parents=[common], help="check the chain and its head (exit 1 on a problem)")
    ap = asub.add_parser("show", parents=[common], help="print entries, oldest first")
    ap.add_argument("--limit", type=int, default=None, metavar="N", help="only the last N")
    ap.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_audit)
