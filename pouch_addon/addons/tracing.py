"""OpenTelemetry traces: ``--set pouch_otel=true`` exports one span per settled LLM call.

Needs the optional extra ``pouch[otel]`` (the SDK and the OTLP/HTTP exporter). The exporter takes
its endpoint, headers and timeout from the standard ``OTEL_EXPORTER_OTLP_*`` variables (default
``http://localhost:4318/v1/traces``); ``OTEL_SERVICE_NAME`` names the service (default ``pouch``).
Attributes: the GenAI semantic conventions (``gen_ai.system``, ``gen_ai.request.model``,
``gen_ai.usage.input_tokens``, ...) plus pouch's cost, reservation and outcome
(``telemetry.span_attributes``). The span starts when the call was admitted and ends at its
settle. The event loop only queues the settle's facts (``Core.observers``); this addon's thread
makes the span (the SDK's attribute checks cost tens of microseconds of Python a span) and the
SDK's own thread exports them in batches, so a slow or dead collector never delays a call.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from typing import Any

from mitmproxy import ctx, exceptions

from ..telemetry import span_attributes
from .core import Core, FlowCall, SettleViews

log = logging.getLogger(__name__)
_STOP = object()


class Tracing:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.provider: Any = None
        self.tracer: Any = None
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
        if self.provider is not None:
            return
        self.start()

    def start(self, exporter: Any = None) -> None:
        """pouch's own tracer provider with a batching OTLP/HTTP exporter (``exporter``: another one)."""
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
            from opentelemetry.sdk.resources import Resource
            from opentelemetry.sdk.trace import TracerProvider
            from opentelemetry.sdk.trace.export import BatchSpanProcessor
            from opentelemetry.trace import SpanKind, Status, StatusCode
        except ImportError as exc:
            raise exceptions.OptionsError(
                f"pouch_otel: the OpenTelemetry SDK is not installed ({exc.name}): `pip install 'pouch[otel]'`") from None
        resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME", "pouch")})
        provider = TracerProvider(resource=resource)  # pouch's own: the process-wide one is left alone
        provider.add_span_processor(BatchSpanProcessor(exporter if exporter is not None else OTLPSpanExporter()))
        self._kinds = (SpanKind.CLIENT, Status, StatusCode.ERROR)
        self.provider, self.tracer = provider, provider.get_tracer("pouch")
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="pouch-tracing", daemon=True)
        self.thread.start()

    def _shutdown(self) -> None:
        if self.provider is not None:
            self.queue.put(_STOP)
            self.thread.join(5)  # the spans of calls settled so far are made first
            try:
                self.provider.shutdown()  # exports what is still queued
            except Exception as exc:
                log.error(f"pouch: OpenTelemetry shutdown failed: {exc}")
            self.provider = self.tracer = None

    def done(self) -> None:
        self._shutdown()

    def on_settle(self, call: FlowCall, entry: dict[str, Any], views: SettleViews, commit_s: float) -> None:
        if self.tracer is not None:  # the span is made in this addon's thread (~60-90 us of the SDK's Python)
            self.queue.put((call.started, call.reserved, call.wallet, call.plan.model, entry, time.time_ns()))

    def _run(self) -> None:
        while (item := self.queue.get()) is not _STOP:
            try:
                self._span(*item)
            except Exception:
                log.exception("pouch: could not make a span")

    def _span(self, started: float, reserved: Any, wallet: str, model: str, entry: dict[str, Any], end_ns: int) -> None:
        tracer = self.tracer
        if tracer is None:
            return
        client, status_of, error = self._kinds
        attrs = span_attributes(entry, reserved=reserved, wallet=wallet, request_model=model)
        span = tracer.start_span(f"{attrs['gen_ai.operation.name']} {model}", kind=client,
                                 start_time=int(started * 1e9), attributes=attrs)
        status = str(entry.get("status", ""))
        if status not in ("ok", "incomplete"):
            span.set_status(status_of(error, status))
        span.end(end_time=end_ns)
