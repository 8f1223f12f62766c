"""Alerts from the proxy: thresholds crossed, the first 402 of a period, expired wallets and keys,
a ledger that needs attention (the rules are ``alerts.py``; the sinks ``alert_sinks.py``).

Nothing here runs on the hot path. The event loop only puts facts on a queue (``AlertWorker.post``: a
deque append; the thread is woken once per batch of ``BATCH_S``, not per call): the spend a settle
left (``on_settle``, from the meter's settle callback, with views the settle's own transaction
computed: no read of the ledger file) and the refusals it answered (``request``, after the audit
trail). One alert thread applies the rules, writes ``alerts-state.json`` (so a restart does not fire
again), appends each alert to the audit log and hands it to one sender thread per sink, which delivers it with
retries and backoff: a dead webhook delays nothing but its own retries. Every
``pouch_alert_scan_s`` the thread also reads the ledger (off the loop): budget changes made with
the CLI (a top-up re-arms, a lower budget may fire), wallets and virtual keys that expired, a ledger
that cannot be read.
"""

from __future__ import annotations

import collections
import json
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any, Optional

from mitmproxy import ctx, exceptions, http

from ..alert_sinks import Sinks, deliver_one
from ..threads import give_way
from ..alerts import (
    CONFIG_FILE, STATE_FILE, Alert, AlertConfig, AlertState, block_alert, global_view, once, spend_alerts, wallet_view,
)
from ..audit import AUDIT_FILE, AuditLog
from ..budget import Ledger, LedgerCorrupt
from ..keystore import KeyStore
from ..periods import period_key
from ..vault import write_private
from .core import Core, FlowCall, SettleViews
from .identity import IDENTITY

log = logging.getLogger(__name__)

_STOP = object()
_WAKE = object()
#: the alert thread, woken by a settle, gathers what else comes for this long before applying it
#: all: under load it wakes ~5 times a second, not once per call (each wake is a thread switch
#: and a turn of the GIL taken from the event loop)
BATCH_S = 0.2
ATTENTION_FLAGS = ("over_reservation", "orphaned")


def read_config(home: Path) -> AlertConfig:
    try:
        return AlertConfig.from_json(json.loads((home / CONFIG_FILE).read_text()))
    except FileNotFoundError:
        return AlertConfig()


def read_state(home: Path) -> AlertState:
    try:
        return AlertState.loads((home / STATE_FILE).read_text())
    except FileNotFoundError:
        return AlertState()
    except (ValueError, KeyError, TypeError) as exc:
        log.error(f"pouch: {home / STATE_FILE} is unreadable ({exc}); alerts start afresh")
        return AlertState()


def emit(home: Path, state: AlertState, alerts: list[Alert], sinks: Sinks, send: Any) -> None:
    """Record ``alerts`` (state file, audit log) and hand each to ``send(sinks, payload)``."""
    state.remember(alerts)
    try:
        write_private(home / STATE_FILE, json.dumps(state.to_json(), indent=1).encode())
    except OSError as exc:
        log.error(f"pouch: could not write {home / STATE_FILE}: {exc}")
    audit = AuditLog(home / AUDIT_FILE)
    for a in alerts:
        log.warning(a.message)
        try:
            audit.append("alert", a.to_json(), actor="proxy")
        except Exception as exc:
            log.error(f"pouch: could not append an alert to the audit log: {exc}")
        send(sinks, a.to_json())


class Sender(threading.Thread):
    """Delivers to one sink, alert after alert (a daemon: a sink that hangs never holds up the exit)."""

    def __init__(self, name: str, sinks: Sinks) -> None:
        super().__init__(name=f"pouch-alert-{name}", daemon=True)
        self.sink, self.sinks = name, sinks
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.start()

    def run(self) -> None:
        give_way()
        while (payload := self.queue.get()) is not _STOP:
            deliver_one(self.sinks, self.sink, payload)


class AlertWorker(threading.Thread):
    """The one thread that applies the alert rules; deliveries run on a pool beside it."""

    def __init__(self, home: Path, sinks: Sinks, scan_s: float) -> None:
        super().__init__(name="pouch-alerts", daemon=True)
        self.home, self.sinks, self.scan_s = home, sinks, scan_s
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        # facts from the event loop (``post``), applied in order by one wake of this thread
        self._pending: collections.deque = collections.deque()
        self._signalled = False
        self._batch_config: AlertConfig | None = None
        # one sender per sink, so a webhook that hangs holds back only its own deliveries
        self.senders = {name: Sender(name, sinks) for name in sinks.names()}
        self.state = AlertState()
        self.ledger = Ledger(home)  # its own reader: never the proxy's committer
        self._config: tuple[float, AlertConfig] | None = None
        self.wallet_periods: dict[str, str] = {}

    def post(self, ev: tuple) -> None:
        """Hand a fact over from the event loop: queued, and the thread woken only when it is not
        already (the loop's side: a deque append, and a queue put per batch, not per fact)."""
        self._pending.append(ev)
        if not self._signalled:
            self._signalled = True
            self.events.put(_WAKE)

    def _drain(self) -> None:
        """Apply the posted facts in order (alerts.json read once for the batch)."""
        self._signalled = False  # a fact posted from now on wakes the thread again
        pending = self._pending
        if not pending:
            return
        self._batch_config = None
        self._batch_config = self.config()
        try:
            while pending:
                ev = pending.popleft()
                try:
                    alerts = getattr(self, f"_{ev[0]}")(*ev[1:])
                    if alerts:
                        emit(self.home, self.state, alerts, self.sinks, self._send)
                except Exception:
                    log.exception("pouch: the alert thread failed on one event")
        finally:
            self._batch_config = None

    def config(self) -> AlertConfig:
        if self._batch_config is not None:
            return self._batch_config
        try:
            mtime = (self.home / CONFIG_FILE).stat().st_mtime
        except OSError:
            mtime = 0.0
        if self._config is None or self._config[0] != mtime:
            try:
                self._config = (mtime, read_config(self.home))
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.error(f"pouch: {self.home / CONFIG_FILE} is unreadable ({exc}); using the default thresholds")
                self._config = (mtime, AlertConfig())
        return self._config[1]

    def run(self) -> None:
        give_way()  # no preempting the event loop when woken (``threads``)
        self.state = read_state(self.home)
        next_scan = 0.0
        while True:
            try:
                ev = self.events.get(timeout=max(0.0, next_scan - time.monotonic()))
            except queue.Empty:
                ev = None
            if ev is _STOP:
                self._drain()
                return
            if ev is _WAKE:
                time.sleep(BATCH_S)  # let the facts of the calls finishing meanwhile join this batch
                self._drain()
                continue
            try:
                if ev is None:
                    next_scan = time.monotonic() + self.scan_s
                    alerts = self.scan(time.time())
                else:
                    alerts = getattr(self, f"_{ev[0]}")(*ev[1:])
                if alerts:
                    emit(self.home, self.state, alerts, self.sinks, self._send)
            except Exception:
                log.exception("pouch: the alert thread failed on one event")

    def _send(self, sinks: Sinks, payload: dict[str, Any]) -> None:
        for sender in self.senders.values():
            sender.queue.put(payload)

    def stop(self, timeout: float = 5.0) -> None:
        """Apply what is queued, then stop; deliveries still retrying are not waited for (daemon threads)."""
        self.events.put(_STOP)
        self.join(timeout)
        for sender in self.senders.values():
            sender.queue.put(_STOP)

    # -- rules ------------------------------------------------------------------------------------
    def _settle(self, entry: dict[str, Any], views: SettleViews) -> list[Alert]:
        cfg, now = self.config(), float(entry["ts"])
        out = spend_alerts(self.state, views.global_, cfg.thresholds_for("global"), now)
        if views.wallet is not None:
            self.wallet_periods[views.wallet.scope[len("wallet:"):]] = views.wallet.period
            out += spend_alerts(self.state, views.wallet, cfg.thresholds_for(views.wallet.scope), now)
        for flag in entry.get("flags") or ():
            if flag in ATTENTION_FLAGS:
                day = time.strftime("%Y-%m-%d", time.gmtime(now))
                out += once(self.state, f"ledger:{flag}:{day}", Alert(
                    "ledger", "global", f"pouch: the ledger needs attention: a settle was flagged {flag} "
                                        f"(reservation {entry.get('id')}; see `pouch history --json`)", now))
        return out

    def _block(self, code: str, wallet: str | None, message: str, now: float) -> list[Alert]:
        if code == "budget_exceeded":
            if wallet is not None and message.startswith("pouch: wallet "):
                period = self.wallet_periods.get(wallet)
                if period is None:
                    self.scan(now)  # learns the wallet's period
                    period = self.wallet_periods.get(wallet, "total")
                return block_alert(self.state, wallet, period_key(period, now), message, now)  # type: ignore[arg-type]
            return block_alert(self.state, None, None, message, now)
        if code == "pouch_wallet_expired" or (code == "invalid_api_key" and "expired" in message):
            return self.scan(now)
        return []

    def _problem(self, message: str, now: float) -> list[Alert]:
        return once(self.state, f"ledger:{message}", Alert("ledger", "global", f"pouch: the ledger needs attention: {message}", now))

    def scan(self, now: float) -> list[Alert]:
        """Read the ledger and the keys (this thread) and apply every rule to what they say now."""
        cfg = self.config()
        try:
            st = self.ledger.snapshot()
        except LedgerCorrupt as exc:
            return self._problem(str(exc), now)
        except OSError as exc:
            log.error(f"pouch: alerts could not read the ledger: {exc}")
            return []
        out = spend_alerts(self.state, global_view(st), cfg.thresholds_for("global"), now)
        for name, w in sorted(st.wallets.items()):
            self.wallet_periods[name] = w.period
            view = wallet_view(st, name, now)
            if view is not None:
                out += spend_alerts(self.state, view, cfg.thresholds_for(view.scope), now)
            if w.expired(now):
                out += once(self.state, f"wallet_expired:{name}:{w.expires}", Alert(
                    "wallet_expired", view.scope if view else f"wallet:{name}",
                    f"pouch: wallet {name!r} has expired: its calls are refused "
                    f"(`pouch wallet set {name} --expires ...`)", now))
        try:
            keys = KeyStore(self.home).by_hash()
        except Exception:
            keys = {}
        for rec in keys.values():
            if rec.state(now) == "expired":
                out += once(self.state, f"key_expired:{rec.id}", Alert(
                    "key_expired", f"wallet:{rec.wallet}",
                    f"pouch: virtual key {rec.id} (wallet {rec.wallet!r}) has expired: calls with it get 401 "
                    f"(issue a new one: `pouch key issue --wallet {rec.wallet}`)", now))
        return out


class Alerting:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.worker: AlertWorker | None = None
        core.observers.append(self)

    def load(self, loader) -> None:
        loader.add_option(
            name="pouch_alert_webhook", typespec=Optional[str], default=None,
            help="POST every alert as JSON to this URL (its `text` field is what Slack and Discord show). "
                 "Default: the webhook of `pouch alert set --webhook`.",
        )
        loader.add_option(
            name="pouch_alert_command", typespec=Optional[str], default=None,
            help="Run this shell command for every alert, with the alert as JSON on stdin. "
                 "Default: the command of `pouch alert set --command`.",
        )
        loader.add_option(
            name="pouch_alert_desktop", typespec=bool, default=True,
            help="Also show alerts as desktop notifications (notify-send or osascript) where the system has one.",
        )
        loader.add_option(
            name="pouch_alert_scan_s", typespec=int, default=15,
            help="How often (s) the alert thread reads the ledger for changes made outside the proxy "
                 "(a top-up, a lower budget), expired wallets and keys. 0: only at start.",
        )

    def configure(self, updated: set[str]) -> None:
        hook = ctx.options.pouch_alert_webhook
        if "pouch_alert_webhook" in updated and hook and not hook.startswith(("http://", "https://")):
            raise exceptions.OptionsError(f"pouch_alert_webhook: expected an http:// or https:// URL, got {hook!r}")
        if "pouch_alert_scan_s" in updated and ctx.options.pouch_alert_scan_s < 0:
            raise exceptions.OptionsError("pouch_alert_scan_s: expected 0 or more seconds")

    def running(self) -> None:
        ledger = self.core.ledger
        if ledger is None:
            return
        try:
            cfg = read_config(ledger.home)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error(f"pouch: {ledger.home / CONFIG_FILE} is unreadable ({exc}); alerts use the defaults")
            cfg = AlertConfig()
        sinks = Sinks(webhook=ctx.options.pouch_alert_webhook or cfg.webhook,
                      command=ctx.options.pouch_alert_command or cfg.command,
                      desktop=ctx.options.pouch_alert_desktop and cfg.desktop)
        scan = ctx.options.pouch_alert_scan_s
        self.worker = AlertWorker(ledger.home, sinks, float(scan) if scan > 0 else float("inf"))
        self.worker.start()

    def done(self) -> None:
        if self.worker is not None:
            self.worker.stop()

    # -- on the event loop: hand the facts on, nothing more ---------------------------------------
    def on_settle(self, call: FlowCall, entry: dict[str, Any], views: SettleViews, commit_s: float) -> None:
        if self.worker is not None:
            self.worker.post(("settle", entry, views))

    def on_ledger_problem(self, message: str) -> None:
        if self.worker is not None:
            self.worker.post(("problem", message, time.time()))

    def request(self, flow: http.HTTPFlow) -> None:
        code = flow.metadata.get("pouch_blocked")
        if code is None or self.worker is None or flow.metadata.get("pouch_alert_seen"):
            return
        flow.metadata["pouch_alert_seen"] = True
        if code not in ("budget_exceeded", "pouch_wallet_expired", "invalid_api_key"):
            return
        ident = flow.metadata.get(IDENTITY)
        try:
            message = json.loads(flow.response.content or b"{}").get("error", {}).get("message") or ""
        except (ValueError, AttributeError):
            message = ""
        self.worker.post(("block", code, ident.wallet if ident is not None else None, str(message), time.time()))
