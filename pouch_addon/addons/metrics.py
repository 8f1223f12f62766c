"""Prometheus metrics: ``--set pouch_metrics=127.0.0.1:9464`` serves ``/metrics`` (prometheus-client).

Off by default. Counters and histograms are plain numbers updated on the event loop (about two
microseconds a settle: list additions and ``telemetry.Buckets``, no lock, no label lookup) and
turned into prometheus-client metric families at a scrape (``_Settled``, a custom collector):
settles from ``Core.observers`` (the entry and the spend its transaction left), blocks from the ``request`` hook, times from the flow's timestamps. A scrape runs in
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
from ..telemetry import TOKEN_TYPES, Buckets, LabelCap, parse_listen
from ..threads import give_way
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
        from prometheus_client import CollectorRegistry, Counter, Gauge

        r = self.registry = CollectorRegistry()
        self._rows: dict[tuple, list] = {}
        self.wallet_label = LabelCap(wallets)
        self.model_label = LabelCap(MODEL_LABELS)
        self.settled: dict[tuple, list] = {}  # labels -> [calls, spend (Decimal), tokens by TOKEN_TYPES...]
        self.blocks = Counter("pouch_blocks", "Requests pouch answered itself, by reason", ("reason",), registry=r)
        self.added = Buckets(SECONDS)
        self.upstream = Buckets(SECONDS)
        self.commit = Buckets(SECONDS)
        r.register(_Settled(self, time.time()))
        Gauge("pouch_in_flight_requests", "Calls reserved and not settled yet (this proxy)", registry=r
              ).set_function(lambda: len(self._active()))
        Gauge("pouch_reserved_usd", "USD reserved by calls in flight (this proxy)", registry=r
              ).set_function(lambda: float(self._reserved()))
        Gauge("pouch_remaining_usd", "Global budget minus spend minus this proxy's reservations", registry=r
              ).set_function(lambda: float(self.budget - self.spent - self._reserved()))
        Gauge("pouch_budget_usd", "The global budget", registry=r).set_function(lambda: float(self.budget))
        Gauge("pouch_spent_usd", "Settled spend against the global budget", registry=r
              ).set_function(lambda: float(self.spent))

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
        give_way()
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
        row = self._rows.get(key)
        if row is None:  # the capped labels of each combination, looked up once
            labels = (key[0], self.model_label(key[1]), self.wallet_label(key[2]), key[3])
            row = self._rows[key] = self.settled.setdefault(labels, [0, ZERO, 0, 0, 0, 0])
        row[0] += 1
        cost = entry.get("cost", "0")
        if cost != "0":
            row[1] += Decimal(cost)  # exact; a float only in the scrape
        row[2] += entry.get("input_tokens") or 0
        row[3] += entry.get("cached_tokens") or 0
        row[4] += entry.get("output_tokens") or 0
        row[5] += entry.get("reasoning_tokens") or 0
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


class _Settled:
    """The settle counters and the time histograms, read at a scrape (prometheus-client's custom
    collector): the event loop only adds to lists and ``Buckets`` (no lock, no label lookup)."""

    def __init__(self, metrics: Metrics, created: float) -> None:
        self.m = metrics
        self.created = created

    def collect(self):  # noqa: ANN201
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
        from prometheus_client.utils import floatToGoString

        who = ["provider", "model", "wallet"]
        requests = CounterMetricFamily("pouch_requests", "LLM calls settled, by outcome", labels=[*who, "status"])
        spend = CounterMetricFamily("pouch_spend_usd", "USD settled", labels=who)
        tokens = CounterMetricFamily("pouch_tokens", "Tokens settled (cached is part of input, reasoning of output)",
                                     labels=[*who, "type"])
        by_who: dict[tuple, list] = {}
        for labels, row in list(self.m.settled.items()):  # a copy: the event loop may add a row
            requests.add_metric(list(labels), row[0], created=self.created)
            acc = by_who.setdefault(labels[:3], [ZERO, 0, 0, 0, 0])
            for i in range(5):
                acc[i] += row[i + 1]
        for labels, acc in by_who.items():
            spend.add_metric(list(labels), float(acc[0]), created=self.created)
            for kind, n in zip(TOKEN_TYPES, acc[1:]):
                tokens.add_metric([*labels, kind], n, created=self.created)
        yield from (requests, spend, tokens)
        for name, doc, b in (
                ("pouch_request_added_seconds", "Time pouch held a billed request before sending it (plan, reservation)",
                 self.m.added),
                ("pouch_upstream_seconds", "Time from sending a billed request to the end of its response", self.m.upstream),
                ("pouch_ledger_commit_seconds", "Time from a settle's submission to its durable commit", self.m.commit)):
            cum, total = b.cumulative()
            h = HistogramMetricFamily(name, doc, labels=[])
            h.add_metric([], [(floatToGoString(bound), n) for bound, n in cum], total)
            yield h
