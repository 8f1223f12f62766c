"""Metering: stream every budgeted response through its provider's stream meter and settle each call once.

The meter comes from the flow's provider module (``new_meter``): SSE for every provider, and
Gemini's streamed JSON array (``streamGenerateContent`` without ``alt=sse``); a non-streamed
body is priced from the usage the provider module reads in it.

The per-chunk callable runs on mitmproxy's event loop, so it only does in-memory work; every
ledger write (settle, the batched checkpoint of streams in flight) goes to the ledger's committer
thread, and a finished response is not held back for its settle (``done`` waits for them).
Settling happens on whichever path a call ends by (response, error, cut-off, shutdown) and
exactly once: ``FlowCall.settled`` is flipped before the write is scheduled.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Iterable
from functools import partial
from typing import Any

from mitmproxy import ctx, http
from mitmproxy.log import LegacyLogEvents

from .. import settlement, tokens
from ..ledger_postgres import LedgerUnavailable
from ..budget import Ledger, NotOpen
from ..metering import StreamMeter
from ..money import format_usd
from ..endpoints import folded, header_index
from ..providers import PROVIDERS, openai
from .core import CALL, Core, FlowCall, with_views
from .gate import exact_input_tokens
from .replies import PROVIDER
from .scope import SCOPE

log = logging.getLogger(__name__)

CLIENT_GONE = "Client disconnected."
#: non-streamed response bodies up to this size (bytes) are priced on the event loop
INLINE_PARSE_BYTES = 16384
#: the longest a checkpoint pass holds the event loop before letting other flows run (seconds)
CHECKPOINT_SLICE = 0.001


def close_connection(flow: http.HTTPFlow, which: str) -> bool:
    """Close the flow's ``server`` or ``client`` connection (mitmproxy private API, tested e2e)."""
    try:
        proxyserver = ctx.master.addons.get("proxyserver")
        handler = proxyserver.connections.get(flow.client_conn.id)
        conn = flow.server_conn if which == "server" else flow.client_conn
        if handler is not None and conn in handler.transports:
            handler.close_connection(conn)
            return True
    except Exception:  # pragma: no cover - depends on mitmproxy internals
        log.exception(f"pouch: could not close the {which} connection")
    return False


def cut_connections(flow: http.HTTPFlow) -> None:
    """After a cut-off: stop the provider now; retire the client's connection once our bytes are out.

    The provider may already have finished its response, in which case mitmproxy still writes
    its own end-of-body after ours; closing the client connection (on the next loop turn, after
    the error event and our terminator were handed to the transport) keeps that stray terminator
    from being read as the start of the next response on a keep-alive connection.
    """
    close_connection(flow, "server")
    asyncio.get_running_loop().call_later(0.05, close_connection, flow, "client")


def debug_kept() -> bool:
    """Whether a DEBUG record of this module would reach a handler that shows it.

    mitmdump sets the root logger to DEBUG and lets its handlers filter (its terminal log keeps
    INFO and up unless ``termlog_verbosity=debug``), so ``isEnabledFor(DEBUG)`` is always true in
    the proxy. Its ``LegacyLogEvents`` handler keeps every record only to re-send it as the
    deprecated ``add_log`` event to every addon (a cross-thread call and a walk of the whole addon
    chain per record): it does not count here. A per-call record nobody shows cost tens of
    microseconds on the loop."""
    if not log.isEnabledFor(logging.DEBUG):
        return False
    c: logging.Logger | None = log
    while c is not None:
        for h in c.handlers:
            if h.level <= logging.DEBUG and not isinstance(h, LegacyLogEvents):
                return True
        if not c.propagate:
            break
        c = c.parent
    return False


def meter_usage(m: Any) -> tuple[Any, int]:
    """(usage, counted output) of a meter: the provider's final usage; else, for meters that know
    the provider's input (``partial_usage``: Anthropic's message_start, Gemini's running totals),
    that input plus the output so far; else None and the output counted."""
    if m.usage_source == "provider":
        return m.final_usage(), 0
    partial = getattr(m, "partial_usage", None)
    if partial is not None:
        return partial(), 0
    return None, m.output_tokens_counted


def settle_from_meter(m: Any, result: settlement.Settlement) -> settlement.Settlement:
    """``result`` with its usage marked as pouch's own count when the provider's final usage never
    came (a partial usage is the provider's input plus the output pouch counted)."""
    return result if m.usage_source == "provider" else settlement.counted(result)


def content_type_and_encoding(headers: http.Headers) -> tuple[str, str | None]:
    """``headers.get("content-type", "")`` and ``headers.get("content-encoding")`` from the fields'
    one-pass ``header_index`` (mitmproxy's ``get`` decodes and lower-cases every field's name per
    lookup: ~4-8 us each on the VM, between the answer's head and its first byte to the client)."""
    found = header_index(headers.fields).values
    return folded(found.get(b"content-type")) or "", folded(found.get(b"content-encoding"))


class QuietStreaming(logging.Filter):
    """Drops mitmproxy's "Streaming response from HOST." record (INFO, ``mitmproxy.proxy.server``).

    pouch streams billed streamed answers itself (its stream meters; ``stream_large_bodies`` is
    refused by ``Scope``), so the line says nothing per call, yet each record cost the event loop
    ~0.1 ms between the answer's head and its first body bytes: mitmdump's ``LegacyLogEvents`` handler formats it, wakes the loop through its
    self-pipe (``call_soon_threadsafe``) and re-sends it as the deprecated ``add_log`` event to
    every addon."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.msg
        return not (record.levelno == logging.INFO and isinstance(msg, str) and msg.startswith("Streaming response from "))


QUIET_STREAMING = QuietStreaming()


class Metering:
    def __init__(self, core: Core) -> None:
        self.core = core
        self._checkpointer: asyncio.Task | None = None
        self._settles: set[asyncio.Task] = set()
        self._pricing: dict[FlowCall, tuple[asyncio.Handle, Any]] = {}  # claimed calls priced on the next loop turn
        self._counting: set[asyncio.Task] = set()  # claimed calls being counted off the loop (``_count_then_settle``)

    def load(self, loader) -> None:
        logging.getLogger("mitmproxy.proxy.server").addFilter(QUIET_STREAMING)  # once: the same filter
        loader.add_option(
            name="pouch_checkpoint_ms", typespec=int, default=500,
            help="How often (ms) the progress of streams in flight is written to the ledger in one "
                 "batched write, for the TUI and crash recovery. 0 disables it.",
        )

    def running(self) -> None:
        # Everything loaded so far (mitmproxy, its addons, the price table, the tokeniser) lives
        # as long as the proxy: move it out of the cyclic GC's reach, so a full collection scans
        # only what the flows allocate (on a busy proxy, tens of ms per collection otherwise).
        # (``running`` runs addon by addon in chain order: the gate has loaded them by now.)
        gc.collect()
        gc.freeze()
        tokens.trim_heap()  # what start-up freed (the price table's JSON parse: ~1.5 MiB) back to the OS
        if ctx.options.pouch_checkpoint_ms > 0:
            self._checkpointer = asyncio.get_running_loop().create_task(self._checkpoint_loop())

    # -- response path -------------------------------------------------------------------------
    def request(self, flow: http.HTTPFlow) -> None:
        """A streamed call's meter is made while its request is in flight (on the next loop turn,
        once mitmproxy has sent the request), not between the provider's first bytes and the
        client's: ``responseheaders`` takes it when the answer is an uncompressed SSE stream."""
        call: FlowCall | None = flow.metadata.get(CALL)
        if call is not None and flow.response is None and call.plan.stream and not call.settled:
            asyncio.get_running_loop().call_soon(self._prepare_meter, flow, call)

    def _prepare_meter(self, flow: http.HTTPFlow, call: FlowCall) -> None:
        if call.response_started or call.settled:
            return
        provider = PROVIDERS.get(flow.metadata.get(PROVIDER, ""), openai)
        try:
            call.next_meter = provider.new_meter(call.plan, call.reserved, sse=True, content_encoding=None)
        except Exception:  # made (and its error raised) in responseheaders, as without this step
            call.next_meter = None

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        """A billed answer's body is metered (a stream) or kept for pricing; any other answer in
        pouch's scope (a free call such as ``GET /v1/models``, a passed unknown endpoint) is
        forwarded as it arrives, as bare mitmdump's with ``stream_large_bodies``: buffered, it
        waited for mitmproxy's ``response`` event walk and a loop turn behind every other ready
        callback (issue 16 §3: ~0.2-0.35 ms of an unrelated request's wait under metered streams).
        A flow outside pouch's scope (a host the user decrypts for other addons) is left as it is."""
        call: FlowCall | None = flow.metadata.get(CALL)
        if flow.response is None:
            return
        if call is None:
            if not flow.response.stream and flow.metadata.get(SCOPE) is not None:
                flow.response.stream = True
            return
        call.response_started = True
        headers = flow.response.headers
        ctype, encoding = content_type_and_encoding(headers)
        sse = "text/event-stream" in ctype
        provider = PROVIDERS.get(flow.metadata.get(PROVIDER, ""), openai)
        # a provider may stream a JSON array sent piece by piece (Gemini without alt=sse)
        array = not sse and call.plan.stream and provider.JSON_ARRAY_STREAMS and "json" in ctype
        if flow.response.status_code < 400 and (sse or array):
            ready, call.next_meter = call.next_meter, None
            call.meter = (ready if ready is not None and sse and encoding is None
                          else provider.new_meter(call.plan, call.reserved, sse=sse, content_encoding=encoding))
            if encoding is not None:
                # the meter forwards decoded events (or only its error event): say so to the client
                del headers["content-encoding"]
                if "content-length" in headers:
                    del headers["content-length"]
                    if flow.request.http_version == "HTTP/1.1":
                        headers["transfer-encoding"] = "chunked"
            flow.response.stream = self._stream_callable(flow, call)

    def _stream_callable(self, flow: http.HTTPFlow, call: FlowCall):
        meter = call.meter
        assert meter is not None
        feed = meter.feed

        def on_chunk(chunk: bytes) -> Iterable[bytes]:
            if meter.cut:
                return []
            try:
                if not chunk:  # mitmproxy's end of the body
                    return meter.finish()
                out = feed(chunk)
            except Exception:
                log.exception("pouch: metering failed; cutting the stream (fail closed)")
                meter.cut = True
                out = []
            if meter.cut:
                cut_connections(flow)
                if meter.undecodable is not None:
                    log.warning(f"pouch: {meter.undecodable}; stream cut off, billed at its reservation")
                    result = settlement.undecodable(call.reserved, meter.tool_calls)
                else:
                    result = settle_from_meter(meter, settlement.partial(
                        call.plan, call.reserved, meter.output_tokens_counted, "cut_off", meter_usage(meter)[0],
                        tool_calls=meter.tool_calls))
                self._settle_soon(call, result)
                return [*out, b""]  # b"" ends an HTTP/1.1 chunked body for the client
            return out

        return on_chunk

    async def response(self, flow: http.HTTPFlow) -> None:
        call: FlowCall | None = flow.metadata.get(CALL)
        if call is None or call.settled or flow.response is None:
            return
        status = flow.response.status_code
        provider = PROVIDERS.get(flow.metadata.get(PROVIDER, ""), openai)
        raw = None
        if status < 400 and call.meter is None:
            raw = flow.response.get_content(strict=False)
            if raw is None or len(raw) > INLINE_PARSE_BYTES:  # a large body is priced in a worker thread
                if self._claim(call):
                    self._count_then_settle(flow, call)
                return
        # the client need not wait for the price nor the ledger write: the call is claimed now
        # (settled exactly once) and priced on the next loop turn, once mitmproxy has handed the
        # response to the client's connection; ``done`` prices what is still pending
        if not self._claim(call):
            return
        job = partial(self._price, call, provider, raw, status, flow)
        self._pricing[call] = (asyncio.get_running_loop().call_soon(job), job)

    def _price(self, call: FlowCall, provider: Any, raw: bytes | None, status: int, flow: http.HTTPFlow) -> None:
        """Price a finished call whose response was already sent, and queue its settle. A call
        priced from pouch's own count (no usage from the provider) is counted off the loop."""
        if self._pricing.pop(call, None) is None:
            return  # ``done`` ran it already
        try:
            result = self._inline_price(call, self.core.require()[1], status, raw, provider)
            if result is None:
                return self._count_then_settle(flow, call)
        except Exception:  # never leave a reservation open: bill it in full, flagged
            log.exception("pouch: could not price a finished call; settling at its reservation")
            result = settlement.unanswered(call.reserved, sent=True)
        self._submit_settle(call, result, http_status=status)

    def _inline_price(self, call: FlowCall, table: Any, status: int, raw: bytes | None,
                      provider: Any) -> settlement.Settlement | None:
        """The price of a finished call without loading an encoding on the loop; None when it needs
        pouch's own count (no usage from the provider, or a byte-bound input) or a large body."""
        if status >= 400:
            return settlement.provider_error(status)
        if call.meter is not None:
            return None if call.meter.usage_source != "provider" else self._finished(call, call.meter, table)
        if raw is None or len(raw) > INLINE_PARSE_BYTES:
            return None
        try:
            with tokens.loaded_only():  # a body without usage is counted: never load on the loop
                result = settlement.from_response_body(table, call.plan, raw, provider)
        except tokens.NotLoaded:
            return None
        if result.usage_source == "counted" and call.plan.input_method == "utf8_bytes":
            return None  # priced from pouch's count: the input exactly, off the loop
        return result

    def _count_then_settle(self, flow: http.HTTPFlow, call: FlowCall) -> None:
        """A claimed call priced off the loop (pouch's own count, or a large body): load the
        encoding and count or parse in a worker thread (``_outcome``), then settle; ``done`` waits
        for these."""
        task = asyncio.get_running_loop().create_task(self._counted_settle(flow, call))
        self._counting.add(task)
        task.add_done_callback(self._counting.discard)

    async def _counted_settle(self, flow: http.HTTPFlow, call: FlowCall) -> None:
        status = flow.response.status_code if flow.response is not None else None
        try:
            result, status = await self._outcome(flow, call)
        except Exception:  # never leave a reservation open: bill it in full, flagged
            log.exception("pouch: could not price a finished call; settling at its reservation")
            result = settlement.unanswered(call.reserved, sent=True)
        self._submit_settle(call, result, http_status=status)

    async def _outcome(self, flow: http.HTTPFlow, call: FlowCall) -> tuple[settlement.Settlement, int]:
        """A finished call's price, counting off the loop where it needs pouch's own count."""
        _, table = self.core.require()
        status = flow.response.status_code
        provider = PROVIDERS.get(flow.metadata.get(PROVIDER, ""), openai)
        raw = flow.response.get_content(strict=False) if status < 400 and call.meter is None else None
        result = self._inline_price(call, table, status, raw, provider)
        if result is not None:
            return result, status
        if call.meter is not None:
            await self._own_count(flow, call)
            return self._finished(call, call.meter, table), status
        if call.plan.input_method == "utf8_bytes":
            await self._own_count(flow, call)
        return await asyncio.to_thread(settlement.from_response_body, table, call.plan, raw, provider), status

    async def _own_count(self, flow: http.HTTPFlow, call: FlowCall) -> None:
        """Before a call is priced from pouch's own count (the provider reported no usage), in a
        worker thread: load the model's encoding (the first load takes ~0.25 s) and count the
        input exactly where the plan holds its byte bound."""
        plan = call.plan
        if plan.input_method == "utf8_bytes":
            exact = await asyncio.to_thread(exact_input_tokens, flow, self.core)
            if exact is not None:
                plan.input_tokens, plan.input_method = exact, "tiktoken"
        if not tokens.loaded_for(plan.model):
            await asyncio.to_thread(tokens.get_encoding, tokens.encoding_for_model(plan.model))

    async def error(self, flow: http.HTTPFlow) -> None:
        call: FlowCall | None = flow.metadata.get(CALL)
        if call is None or call.settled:
            return
        msg = flow.error.msg if flow.error else ""
        try:
            m = call.meter
            if m is not None and m.usage_source != "provider":
                if not (m.done or m.usage_final):
                    m.cut = True  # it ends here, as if settled at once: nothing more is metered meanwhile
                await self._own_count(flow, call)
                if call.settled:  # settled by another path meanwhile
                    return
            result = self._early_end(flow, call, msg)
        except Exception:
            log.exception("pouch: could not price an interrupted call; settling at its reservation")
            result = settlement.unanswered(call.reserved, sent=True)
        log.info(f"pouch: {call.plan.model} call ended early ({msg}); settling as {result.status}")
        self._settle_soon(call, result)

    @staticmethod
    def _finished(call: FlowCall, m: StreamMeter, table) -> settlement.Settlement:
        """A stream the provider ended (its body ended, or its ``[DONE]`` / terminal event came)."""
        if m.undecodable is not None:
            return settlement.undecodable(call.reserved, m.tool_calls)
        # the provider's usage is authoritative: tokenise our copy of the text only without it
        usage, counted = meter_usage(m)
        return settle_from_meter(m, settlement.completed(
            table, call.plan, usage, counted,
            model_reported=m.model_reported, tier_reported=m.service_tier,
            status="ok" if m.done or m.usage_final else "incomplete", tool_calls=m.tool_calls))

    def _interrupted(self, call: FlowCall, m: StreamMeter, why: str) -> settlement.Settlement:
        """A metered stream that ended before its body did (disconnect, shutdown).

        Once ``[DONE]``, the terminal Responses event or the final usage arrived the call is
        complete, whatever happens next: the openai SDK hangs up as soon as it reads ``[DONE]``,
        often before the provider's last HTTP chunk. It is settled like any finished call (the provider's usage,
        priced by the model it reports, even above the reservation). Before that, the input plus
        the output received so far, capped at the reservation (``settlement.partial``)."""
        if m.undecodable is not None or ((m.done or m.usage_final) and not m.cut):
            return self._finished(call, m, self.core.require()[1])
        usage, counted = meter_usage(m)
        return settle_from_meter(m, settlement.partial(call.plan, call.reserved, counted, why, usage, m.tool_calls))

    def _early_end(self, flow: http.HTTPFlow, call: FlowCall, msg: str) -> settlement.Settlement:
        m = call.meter
        if m is not None:
            result = self._interrupted(call, m, "client_disconnect" if msg == CLIENT_GONE else "upstream_disconnect")
        elif call.response_started:
            # a non-streamed body that broke off: the provider had finished generating
            result = settlement.unanswered(call.reserved, sent=True)
        else:
            sent = flow.server_conn.timestamp_start is not None and flow.request.timestamp_end is not None
            result = settlement.unanswered(call.reserved, sent=sent)
        return result

    # -- settling --------------------------------------------------------------------------------
    def _settle_soon(self, call: FlowCall, result: settlement.Settlement, http_status: int | None = None) -> None:
        """Queue the settle and go on at once (the flow is not held back); ``done`` waits for these.

        The write goes straight to the ledger's committer as a lazy operation; its outcome is
        handled by a done callback (no task per call: one loop callback fewer per request)."""
        if self._claim(call):
            self._submit_settle(call, result, http_status)

    def _claim(self, call: FlowCall) -> bool:
        """Mark the call settled (no other path settles it again); False when it already was."""
        if call.settled:
            return False
        call.settled = True
        self.core.active.discard(call)
        return True

    def _submit_settle(self, call: FlowCall, result: settlement.Settlement, http_status: int | None = None) -> None:
        ledger = call.ledger
        if "model_reported_mismatch" in result.flags:
            log.warning(f"pouch: a call reserved for {call.plan.model} was served by {result.model_reported}; "
                        f"priced at what it reported (an Azure deployment mapped to the wrong model? `pouch azure map`)")
        details = {**result.details(), "http_status": http_status, "estimated_cost": str(call.plan.worst_case)}
        try:
            op = ledger.settle_op(call.reservation.id, result.cost, status=result.status, details=details)
            if self.core.observers:  # alerts, metrics, traces: the spend as this settle left it
                op = with_views(op, call.wallet)
            # nobody waits for a settle: it rides with the next admission's commit (see Ledger.submit)
            fut = ledger.submit_async(op, lazy=True)
        except Exception:
            # the reservation stays open and is settled conservatively by the orphan rule at restart
            log.exception(f"pouch: could not settle reservation {call.reservation.id}")
            return
        self._settles.add(fut)
        fut.add_done_callback(partial(self._settled, call, result, time.perf_counter()))

    def _settled(self, call: FlowCall, result: settlement.Settlement, submitted: float, fut: asyncio.Future) -> None:
        """Done callback of a settle write: say what failed (the orphan rule settles what stays open)."""
        self._settles.discard(fut)
        exc = None if fut.cancelled() else fut.exception()
        if isinstance(exc, NotOpen):
            log.error(f"pouch: reservation {call.reservation.id} was already settled")
        elif exc is not None or fut.cancelled():
            log.error(f"pouch: could not settle reservation {call.reservation.id}",
                      exc_info=exc if exc is not None else None)
            for o in self.core.observers:
                if hasattr(o, "on_ledger_problem"):
                    o.on_ledger_problem(f"could not write the settle of reservation {call.reservation.id}: {exc!r}")
        else:
            outcome = fut.result()
            if self.core.observers and isinstance(outcome, tuple):  # a spooled settle (team ledger down) has no views
                entry, views = outcome
                commit_s = time.perf_counter() - submitted
                for o in self.core.observers:
                    try:
                        o.on_settle(call, entry, views, commit_s)
                    except Exception:  # an observer never changes what happened to the call
                        log.exception("pouch: a settle observer failed")
            if debug_kept():  # per call: DEBUG, a log record costs tens of µs on the loop
                log.debug(f"pouch: {call.plan.model} {result.status}: {format_usd(result.cost)} "
                          f"(reserved {format_usd(call.reserved)})")

    # -- checkpoints ----------------------------------------------------------------------------
    async def _checkpoint_loop(self) -> None:
        interval = ctx.options.pouch_checkpoint_ms / 1000
        while True:
            await asyncio.sleep(interval)
            await self.checkpoint_once()

    async def checkpoint_once(self) -> None:
        """Write the progress of every stream that moved since the last pass, one write per ledger.

        A stream's checkpoint counts the tokens of the text it received since the last one
        (about 60 µs for 50 events of prose, more for code or CJK), so a pass over many streams
        is milliseconds of event-loop work: it gives the loop back every ``CHECKPOINT_SLICE``
        seconds, so no flow waits behind the whole pass."""
        updates: dict[Ledger, dict[str, dict]] = {}  # one write per ledger (one, unless pouch_home changed)
        started = time.perf_counter()
        for call in list(self.core.active):
            if time.perf_counter() - started >= CHECKPOINT_SLICE:
                await asyncio.sleep(0)
                started = time.perf_counter()
            m = call.meter
            if m is not None and m.events != call.last_checkpoint_events and not call.settled:
                call.last_checkpoint_events = m.events
                try:
                    updates.setdefault(call.ledger, {})[call.reservation.id] = m.checkpoint()
                except Exception:  # one stream's progress is skipped; the pass (and the others') goes on
                    log.exception(f"pouch: checkpoint of reservation {call.reservation.id} failed")
        for ledger, batch in updates.items():
            try:
                await ledger.submit_async(ledger.checkpoint_op(batch), lazy=True)
            except LedgerUnavailable as exc:  # the team ledger is down: the settles are spooled meanwhile
                log.warning(f"pouch: checkpoint not written: {exc}")
            except Exception:
                log.exception("pouch: checkpoint write failed")

    async def done(self) -> None:
        """Shutdown: settle what is still in flight (connections close, providers stop) and wait
        for every settle still being written."""
        if self._checkpointer is not None:
            self._checkpointer.cancel()
        for handle, job in list(self._pricing.values()):  # finished calls not priced yet
            handle.cancel()
            job()
        if self._counting:  # calls priced from pouch's own count: their settles follow
            await asyncio.gather(*self._counting, return_exceptions=True)
        for call in list(self.core.active):
            m = call.meter
            if m is not None:
                try:
                    result = self._interrupted(call, m, "shutdown")
                except Exception:
                    log.exception("pouch: could not price a call at shutdown; settling at its reservation")
                    result = settlement.unanswered(call.reserved, sent=True)
            else:
                result = settlement.unanswered(call.reserved, sent=True)
            self._settle_soon(call, result)
        if self._settles:
            await asyncio.gather(*self._settles, return_exceptions=True)
        ledger = self.core.ledger
        if ledger is not None and ledger.commits:
            log.info(f"pouch: ledger: {ledger.operations} operations in {ledger.commits} group commits")
            compact = getattr(ledger, "compact", None)
            if compact is not None:
                # the local store: a snapshot, and an empty log (no preallocated zeros left, which a
                # pouch from before the preallocated log would read as corrupt; a faster next start)
                try:
                    await asyncio.to_thread(compact)
                except Exception as exc:  # the log stays as it is: complete, read on the next start
                    log.warning(f"pouch: could not compact the ledger at shutdown: {exc!r}")
