"""Prometheus metrics: ``--set pouch_metrics=127.0.0.1:9464`` serves ``/metrics`` (prometheus-client).

Off by default. Counters and histograms are updated in memory on the event loop (a few
microseconds a call): settles from ``Core.observers`` (the entry and the spend its transaction
left), blocks from the ``request`` hook, times from the flow's timestamps. A scrape runs in
prometheus-client's own server thread and reads only memory: the live reservations of this proxy
(``Core.active``) and the budget and spend of the last settle, refreshed from a ledger snapshot
by a worker thread every ``REFRESH_S`` (budget changes made with the CLI). It never touches the
ledger file, on the event loop or elsewhere.

Names follow Prometheus' conventions (unit suffixes, ``_total`` counters); wallet and model
labels are capped (``pouch_metrics_wallets``, ``MODEL_LABELS``), the rest counted as ``other``.
"""

from __future__ import annotations

import logging
import threading
import time
from decimal import Decimal
from typing import Any

from mitmproxy import ctx, exceptions, http

from ..money import ZERO
from ..telemetry import TOKEN_TYPES, LabelCap, parse_listen
from .core import CALL, Core, FlowCall, SettleViews

log = logging.getLogger(__name__)

MODEL_LABELS = 50
REFRESH_S = 5.0
SECONDS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.server: Any = None
        self.listen: str = ""
        self.on = False
        self.budget = self.spent = ZERO
        self._stop = threading.Event()
        core.observers.append(self)

    def load(self, loader) -> None:
        loader.add_option(
            name="pouch_metrics", typespec=str, default="",
            help="Serve Prometheus metrics at http://HOST:PORT/metrics (e.g. 127.0.0.1:9464). Off when empty.",
        )
        loader.add_option(
            name="pouch_metrics_wallets", typespec=int, default=20,
            help="At most this many wallets get their own metric label; the others are counted as `other`.",
        )

    def configure(self, updated: set[str]) -> None:
        if "pouch_metrics" not in updated and "pouch_metrics_wallets" not in updated:
            return
        if ctx.options.pouch_metrics_wallets < 1:
            raise exceptions.OptionsError("pouch_metrics_wallets: expected 1 or more")
        listen = ctx.options.pouch_metrics.strip()
        if listen == self.listen:
            return
        try:
            host, port = parse_listen(listen) if listen else ("", 0)
        except ValueError as exc:
            raise exceptions.OptionsError(f"pouch_metrics: {exc}") from None
        self._shutdown()
        self.listen = listen
        if not listen:
            return
        self.build(ctx.options.pouch_metrics_wallets)
        from prometheus_client import start_http_server
        try:
            self.server, _ = start_http_server(port, host, registry=self.registry)
        except OSError as exc:
            raise exceptions.OptionsError(f"pouch_metrics: cannot listen on {listen}: {exc.strerror or exc}") from None
        self.on = True
        log.info(f"pouch: metrics at http://{host}:{self.server.server_port}/metrics")

    def build(self, wallets: int) -> None:
        """The registry and its metrics (``wallets``: how many wallet labels before ``other``)."""
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        r = self.registry = CollectorRegistry()
        self._children: dict[tuple, tuple] = {}
        self.wallet_label = LabelCap(wallets)
        self.model_label = LabelCap(MODEL_LABELS)
        who = ("provider", "model", "wallet")
        self.requests = Counter("pouch_requests", "LLM calls settled, by outcome", (*who, "status"), registry=r)
        self.blocks = Counter("pouch_blocks", "Requests pouch answered itself, by reason", ("reason",), registry=r)
        self.spend = Counter("pouch_spend_usd", "USD settled", who, registry=r)
        self.tokens = Counter("pouch_tokens", "Tokens settled (cached is part of input, reasoning of output)",
                              (*who, "type"), registry=r)
        Gauge("pouch_in_flight_requests", "Calls reserved and not settled yet (this proxy)", registry=r
              ).set_function(lambda: len(self._active()))
        Gauge("pouch_reserved_usd", "USD reserved by calls in flight (this proxy)", registry=r
              ).set_function(lambda: float(self._reserved()))
        Gauge("pouch_remaining_usd", "Global budget minus spend minus this proxy's reservations", registry=r
              ).set_function(lambda: float(self.budget - self.spent - self._reserved()))
        Gauge("pouch_budget_usd", "The global budget", registry=r).set_function(lambda: float(self.budget))
        Gauge("pouch_spent_usd", "Settled spend against the global budget", registry=r
              ).set_function(lambda: float(self.spent))
        self.added = Histogram("pouch_request_added_seconds",
                               "Time pouch held a billed request before sending it (plan, reservation)",
                               buckets=SECONDS, registry=r)
        self.upstream = Histogram("pouch_upstream_seconds",
                                  "Time from sending a billed request to the end of its response",
                                  buckets=SECONDS, registry=r)
        self.commit = Histogram("pouch_ledger_commit_seconds", "Time from a settle's submission to its durable commit",
                                buckets=SECONDS, registry=r)

    def _active(self) -> list[FlowCall]:
        for _ in range(5):  # the event loop may change the set while a scrape copies it
            try:
                return list(self.core.active)
            except RuntimeError:
                continue
        return []

    def _reserved(self) -> Decimal:
        return sum((c.reserved for c in self._active()), ZERO)

    def running(self) -> None:
        if self.on:
            threading.Thread(target=self._refresh, name="pouch-metrics-refresh", daemon=True).start()

    def _refresh(self) -> None:
        """Budget and spend from a ledger snapshot (this thread), now and every ``REFRESH_S``."""
        while not self._stop.is_set():
            ledger = self.core.ledger
            if ledger is not None:
                try:
                    st = ledger.snapshot()
                    self.budget, self.spent = st.budget, st.spent
                except Exception as exc:
                    log.debug(f"pouch: metrics could not read the ledger: {exc}")
            self._stop.wait(REFRESH_S)

    def _shutdown(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None
        self.on = False

    def done(self) -> None:
        self._stop.set()
        self._shutdown()

    # -- on the event loop ------------------------------------------------------------------------
    def on_settle(self, call: FlowCall, entry: dict[str, Any], views: SettleViews, commit_s: float) -> None:
        if not self.on:
            return
        self.budget, self.spent = views.global_.budget, views.global_.spent
        key = (str(entry.get("provider") or "openai"), entry.get("model"), call.wallet, str(entry.get("status", "")))
        children = self._children.get(key)
        if children is None:  # labels() costs microseconds: look each combination up once
            labels = (key[0], self.model_label(key[1]), self.wallet_label(key[2]))
            children = self._children[key] = (
                self.requests.labels(*labels, key[3]), self.spend.labels(*labels),
                tuple(self.tokens.labels(*labels, kind) for kind in TOKEN_TYPES))
        requests, spend, tokens = children
        requests.inc()
        cost = entry.get("cost", "0")
        if cost != "0":
            spend.inc(float(cost))  # exported as a float; the ledger keeps the exact amount
        for child, kind in zip(tokens, TOKEN_TYPES):
            n = entry.get(f"{kind}_tokens")
            if n:
                child.inc(n)
        self.commit.observe(commit_s)

    def request(self, flow: http.HTTPFlow) -> None:
        if not self.on:
            return
        code = flow.metadata.get("pouch_blocked")
        if code is not None:
            if not flow.metadata.get("pouch_metered_block"):
                flow.metadata["pouch_metered_block"] = True
                self.blocks.labels(str(code)).inc()
        elif CALL in flow.metadata and flow.request.timestamp_end is not None:
            now = time.time()
            flow.metadata["pouch_sent_at"] = now
            self.added.observe(max(0.0, now - flow.request.timestamp_end))

    def response(self, flow: http.HTTPFlow) -> None:
        self._upstream(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._upstream(flow)

    def _upstream(self, flow: http.HTTPFlow) -> None:
        sent = flow.metadata.pop("pouch_sent_at", None)
        if self.on and sent is not None:
            end = flow.response.timestamp_end if flow.response is not None and flow.response.timestamp_end else time.time()
            self.upstream.observe(max(0.0, end - sent))
