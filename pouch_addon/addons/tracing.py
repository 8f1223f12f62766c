"""OpenTelemetry traces: ``--set pouch_otel=true`` exports one span per settled LLM call.

Needs the optional extra ``pouch[otel]`` (the SDK and the OTLP/HTTP exporter). The exporter takes
its endpoint, headers, timeout, compression and certificates from the standard
``OTEL_EXPORTER_OTLP_*`` variables (default ``http://localhost:4318/v1/traces``);
``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES`` make the resource (the SDK's
``Resource.create``). Attributes: the GenAI semantic conventions (``gen_ai.system``,
``gen_ai.request.model``, ``gen_ai.usage.input_tokens``, ...) plus pouch's cost, reservation and
outcome (``telemetry.span_attributes``). The span starts when the call was admitted and ends at
its settle.

Cost: the event loop only queues the settle's facts (``Core.observers``, about a microsecond).
This addon's thread writes each span's OTLP protobuf bytes itself (``telemetry.SpanEncoder``, a
few microseconds) instead of making an SDK span and letting the exporter encode it (~200 us of
Python a span, CPU of this process all the same), and every ``OTEL_BSP_SCHEDULE_DELAY`` ms
(default 5000) posts what it has, at most ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE`` spans (512) a
request, through the OTLP/HTTP exporter's client. A slow or dead collector delays only this
thread; past ``OTEL_BSP_MAX_QUEUE_SIZE`` (2048) waiting spans the oldest are dropped, counted in
the log.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import Any, Callable

from mitmproxy import ctx, exceptions

from ..telemetry import SpanEncoder, attributes_message, export_request, field, span_attributes
from ..threads import give_way
from .core import Core, FlowCall, SettleViews

log = logging.getLogger(__name__)
_STOP = object()


def _env_int(name: str, default: int) -> int:
    try:
        return max(1, int(os.environ.get(name, default)))
    except ValueError:
        return default


class Tracing:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.send: Callable[[bytes], Any] | None = None
        self.thread: threading.Thread | None = None
        core.observers.append(self)

    def load(self, loader) -> None:
        loader.add_option(
            name="pouch_otel", typespec=bool, default=False,
            help="Export one OpenTelemetry span per LLM call over OTLP/HTTP (needs `pip install pouch[otel]`; "
                 "endpoint from OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT).",
        )

    def configure(self, updated: set[str]) -> None:
        if "pouch_otel" not in updated:
            return
        if not ctx.options.pouch_otel:
            self._shutdown()
            return
        if self.send is not None:
            return
        self.start()

    def start(self, send: Callable[[bytes], Any] | None = None) -> None:
        """Start the exporting thread; ``send``: what posts a request's bytes (default: the OTLP/HTTP
        exporter's client, configured from ``OTEL_EXPORTER_OTLP_*``)."""
        try:
            from opentelemetry.sdk.resources import Resource
            if send is None:
                from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            raise exceptions.OptionsError(
                f"pouch_otel: the OpenTelemetry SDK is not installed ({exc.name}): `pip install 'pouch[otel]'`") from None
        if send is None:
            exporter = OTLPSpanExporter()
            client = getattr(exporter, "_client", None)  # the exporter's HTTP part (>= 1.40), bytes in
            if client is not None:
                send = client.export
            elif hasattr(exporter, "_export"):  # older exporters: the same, one level up
                send = exporter._export
            else:
                raise exceptions.OptionsError("pouch_otel: this opentelemetry-exporter-otlp-proto-http has no way "
                                              "to post encoded spans; `pip install -U 'pouch[otel]'`")
        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "pouch")})
        self._resource = attributes_message(dict(resource.attributes))
        self._scope = field(1, b"pouch")
        self._delay_s = _env_int("OTEL_BSP_SCHEDULE_DELAY", 5000) / 1000
        self._batch = _env_int("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)
        self._max_queue = _env_int("OTEL_BSP_MAX_QUEUE_SIZE", 2048)
        self.encoder = SpanEncoder()
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self._wake = threading.Event()
        self.send = send
        self.thread = threading.Thread(target=self._run, name="pouch-tracing", daemon=True)
        self.thread.start()

    def _shutdown(self) -> None:
        if self.thread is not None:
            self.queue.put(_STOP)
            self._wake.set()
            self.thread.join(15)  # the spans of calls settled so far are posted first
            self.thread = None
        self.send = None

    def done(self) -> None:
        self._shutdown()

    def on_settle(self, call: FlowCall, entry: dict[str, Any], views: SettleViews, commit_s: float) -> None:
        if self.send is not None:  # the span is written and posted in this addon's thread
            self.queue.put((call.started, call.reserved, call.wallet, call.plan.model, entry, time.time_ns()))

    def _run(self) -> None:
        give_way()  # no preempting the event loop when woken (``threads``)
        stop = False
        while not stop:
            items = [self.queue.get()]  # sleep until a call settles
            if items[0] is not _STOP:
                self._wake.wait(self._delay_s)  # then gather a batch (shutdown: at once)
            while True:
                try:
                    items.append(self.queue.get_nowait())
                except queue.Empty:
                    break
            if _STOP in items:
                stop = True
                items = [i for i in items if i is not _STOP]
            if len(items) > self._max_queue:
                log.warning(f"pouch: OpenTelemetry: {len(items) - self._max_queue} spans dropped (the collector is slow)")
                items = items[-self._max_queue:]
            spans = []
            for item in items:
                try:
                    spans.append(self._span(*item))
                except Exception:
                    log.exception("pouch: could not make a span")
            for i in range(0, len(spans), self._batch):
                self._post(spans[i:i + self._batch])

    def _post(self, spans: list[bytes]) -> None:
        try:
            result = self.send(export_request(self._resource, self._scope, spans))
        except Exception as exc:
            log.error(f"pouch: OpenTelemetry export of {len(spans)} spans failed: {exc}")
            return
        ok = getattr(result, "success", getattr(result, "ok", True))
        if not ok:
            log.error(f"pouch: OpenTelemetry export of {len(spans)} spans failed: "
                      f"{getattr(result, 'error', None) or getattr(result, 'status_code', '')}")

    def _span(self, started: float, reserved: Any, wallet: str, model: str, entry: dict[str, Any], end_ns: int) -> bytes:
        attrs = span_attributes(entry, reserved=reserved, wallet=wallet, request_model=model)
        status = str(entry.get("status", ""))
        ids = os.urandom(24)
        return self.encoder.span(f"{attrs['gen_ai.operation.name']} {model}", attrs, trace_id=ids[:16],
                                 span_id=ids[16:], start_ns=int(started * 1e9), end_ns=end_ns,
                                 error=None if status in ("ok", "incomplete") else status)
