"""The budget gate: reserve the worst case before a billed request leaves, or answer 402/429.

Runs in the ``request`` hook as a coroutine. Reading the body and estimating its tokens happen
on the event loop for small plain bodies (``INLINE_PLAN_BYTES``: tens of microseconds, less
than a thread hop) and in a worker thread otherwise, or when the body's model needs a tokenizer
encoding not loaded yet (``tokens.loaded_only``: the first load takes ~0.3-1 s); the reservation is one operation of the
ledger's committer thread (``Ledger.submit``), so mitmproxy's event loop never waits on a disk.
While the model's encoding is not loaded the input is its UTF-8 byte bound (no ~41 MiB encoding
resident); near a limit ``Admission.decide`` raises :class:`NeedsExact` and the gate decides
again on the exact count, so no call is refused that the exact count would admit.

The request is charged to the wallet ``Identify`` found (``flow.metadata["pouch_identity"]``)
and to the global budget, in one atomic reservation whose amount is decided inside the ledger
transaction (:class:`Admission`): the injected output cap is fitted to the balance the
reservation is checked against, with no separate read. Then the wallet's rpm/tpm limits are
applied in memory (``Core.limits``, one sliding window per wallet *per proxy process*; with the
team ledger, windows shared by every proxy: ``ledger_postgres.SharedRates``): a
request over the limit is answered 429 with ``retry-after`` (whole seconds) and
``x-should-retry: true``, so the OpenAI SDKs wait and retry by themselves; a request whose
worst-case tokens (estimated input with margin + output cap x n) exceed the whole tpm can never
fit and is answered 429 with ``x-should-retry: false``. A request counts toward rpm/tpm once
it fits the budget, even if the reservation then refuses it (as the providers count failed
requests).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from dataclasses import replace
from decimal import Decimal, InvalidOperation
from typing import Any, Optional

from mitmproxy import ctx, exceptions, http

from ..budget import LedgerState, Refusal, Wallet
from ..ledger_local import DURABILITY
from ..keystore import KeyStore
from ..ledger_postgres import LedgerUnavailable, ledger_for, ledger_url, redact_url
from ..money import ZERO, format_usd
from ..limits import RateBook
from ..plan import (
    BodyTooLarge, BudgetTooSmall, CallPlan, DraftPlan, PlanError, PlanSettings, apply_rewrites, canonical_path,
    decode_content, parse_body, rewrite_bytes,
)
from .. import tokens
from ..pricing import PriceTable
from ..providers import PROVIDERS, openai
from .core import CALL, Core, FlowCall, reserve, set_content, set_header
from .identity import IDENTITY, Identity
from .replies import PROVIDER, reply
from .scope import SCOPE

log = logging.getLogger(__name__)


#: request bodies up to this size (bytes, uncompressed) are planned on the event loop
INLINE_PLAN_BYTES = 2048
#: a rewrite that only adds members (``plan.rewrite_bytes``) is done on the event loop for bodies
#: up to this size (bytes, decoded): one copy of the body (~80 us at 100 KB, mostly the new
#: buffer's page faults), where a worker thread re-serialising it took ~370-440 us wall
INLINE_INSERT_BYTES = 128 * 1024
#: a reservation on the input's byte bound is made only while it leaves at least this share of
#: the remaining budget (1/NEAR) for others; nearer the limit the input is counted exactly
NEAR = 4


def decode_body(request: http.Request, limit: int, coding: str | None = None) -> bytes:
    """The decoded request body (``plan.decode_content``: capped, 415 unknown, 400 corrupt).
    ``coding``: the ``content-encoding`` header's value when the caller read it already."""
    if coding is None:
        coding = request.headers.get("content-encoding", "")
    return decode_content(request.raw_content or b"", coding, limit)


def set_body(request: http.Request, body: dict[str, Any]) -> None:
    """Rewrite the JSON body; mitmproxy re-encodes it and fixes content-length."""
    request.text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))


def rewrite_body(request: http.Request, body: dict[str, Any], rewrites: dict[str, Any]) -> None:
    """Apply the plan's rewrites to the request ``body`` was parsed from: inserted into the
    client's own bytes when they only add members (``plan.rewrite_bytes``: a stream's
    ``stream_options``, an injected cap), else the parsed body re-serialised."""
    data = rewrite_bytes(request.raw_content or b"", body, rewrites)
    if data is None:
        reserialise(request, body, rewrites)
    else:
        request.content = data  # mitmproxy fixes content-length


def reserialise(request: http.Request, body: dict[str, Any], rewrites: dict[str, Any]) -> None:
    """The rewrites applied to the parsed ``body``, written as the request's whole new body."""
    apply_rewrites(body, rewrites)
    set_body(request, body)


class BudgetGate:
    def __init__(self, core: Core) -> None:
        self.core = core
        self._running = False  # set by ``running``: a ledger replaced after it is switched live
        self._closing: set[asyncio.Task] = set()  # previous ledgers waiting for their calls to end
        self._max_body = 32 * 1048576  # pouch_max_body_mb in bytes, kept by ``configure``

    def load(self, loader) -> None:
        loader.add_option(
            name="pouch_home", typespec=Optional[str], default=None,
            help="pouch's data directory, shared with the `pouch` CLI and TUI "
                 "(default: $POUCH_HOME or ~/.pouch).",
        )
        loader.add_option(
            name="pouch_ledger", typespec=Optional[str], default=None,
            help="The team ledger shared by many proxies: postgresql://user@host/db (sslmode etc. as URL "
                 "parameters; the password from the URL, PGPASSFILE or PGPASSWORD). Default: $POUCH_LEDGER, "
                 "else the local ledger in pouch_home.",
        )
        loader.add_option(
            name="pouch_ledger_lease_s", typespec=int, default=30,
            help="With pouch_ledger: how long (s) this proxy's lease outlives its last heartbeat; after it, "
                 "any live proxy settles the proxy's open reservations by the orphan rule.",
        )
        loader.add_option(
            name="pouch_prices", typespec=Optional[str], default=None,
            help="A price table to use instead of the packaged assets/pricing.json.",
        )
        loader.add_option(
            name="pouch_input_margin", typespec=str, default="0.10",
            help="Safety margin added to the estimated input tokens when reserving (0.10 = 10%).",
        )
        loader.add_option(
            name="pouch_inject_max_tokens", typespec=bool, default=True,
            help="When a request sets no output cap, add one: the smaller of the model's max output "
                 "and what the remaining budget can pay. Off: reserve the model's max output.",
        )
        loader.add_option(
            name="pouch_commit_delay_ms", typespec=int, default=3,
            help="When requests arrive together, how long (ms) a ledger write waits for other requests' "
                 "reservations and settles to share it (group commit). A lone caller's calls never wait. "
                 "0: never wait.",
        )
        loader.add_option(
            name="pouch_durability", typespec=str, default="overlap",
            help="When a reservation reaches the disk. overlap: written to the ledger's log before the "
                 "request leaves (a killed pouch cannot lose it) and flushed while the request is in "
                 "flight (a power loss in those milliseconds can). strict: flushed before the request "
                 "leaves (each call waits for the disk). Refusals never wait for the disk.",
        )
        loader.add_option(
            name="pouch_inject_usage", typespec=bool, default=True,
            help="Ask for stream_options.include_usage on streamed chat/completions requests so the "
                 "provider reports exact usage; the extra chunk is hidden from clients that did not ask.",
        )
        loader.add_option(
            name="pouch_fit_caps", typespec=bool, default=True,
            help="When an Anthropic request's max_tokens costs more than the budget left, lower it (and a "
                 "thinking budget above it) to what the budget can pay instead of answering 402. "
                 "Coding agents send max_tokens of 32K-128K. Off: such requests get 402.",
        )

    def configure(self, updated: set[str]) -> None:
        if updated & {"pouch_input_margin", "pouch_inject_max_tokens", "pouch_inject_usage", "pouch_fit_caps"}:
            try:
                margin = Decimal(ctx.options.pouch_input_margin)
            except InvalidOperation:
                margin = Decimal(-1)
            if not (margin.is_finite() and 0 <= margin <= 10):
                raise exceptions.OptionsError(
                    f"pouch_input_margin: expected a fraction like 0.10, got {ctx.options.pouch_input_margin!r}")
            self.core.settings = PlanSettings(
                input_margin=margin, inject_max_tokens=ctx.options.pouch_inject_max_tokens,
                inject_usage=ctx.options.pouch_inject_usage, fit_caps=ctx.options.pouch_fit_caps,
            )
        if "pouch_prices" in updated or self.core.table is None:
            try:
                self.core.table = PriceTable.load(ctx.options.pouch_prices)
            except (OSError, ValueError) as exc:
                raise exceptions.OptionsError(f"pouch_prices: cannot load the price table: {exc}") from None
        if "pouch_commit_delay_ms" in updated and not 0 <= ctx.options.pouch_commit_delay_ms <= 100:
            raise exceptions.OptionsError(
                f"pouch_commit_delay_ms: expected 0 to 100 ms, got {ctx.options.pouch_commit_delay_ms}")
        if "pouch_durability" in updated and ctx.options.pouch_durability not in DURABILITY:
            raise exceptions.OptionsError(
                f"pouch_durability: expected one of {', '.join(DURABILITY)}, got {ctx.options.pouch_durability!r}")
        if not 3 <= ctx.options.pouch_ledger_lease_s <= 3600:
            raise exceptions.OptionsError(
                f"pouch_ledger_lease_s: expected 3 to 3600 s, got {ctx.options.pouch_ledger_lease_s}")
        if updated & {"pouch_home", "pouch_ledger", "pouch_ledger_lease_s"} or self.core.ledger is None:
            try:
                url = ledger_url(ctx.options.pouch_ledger)
            except LedgerUnavailable as exc:
                raise exceptions.OptionsError(f"pouch_ledger: {exc}") from None
            try:
                ledger = (ledger_for(ctx.options.pouch_home, url, lease_seconds=float(ctx.options.pouch_ledger_lease_s))
                          if url else ledger_for(ctx.options.pouch_home))
                ledger.snapshot()  # a corrupt ledger stops the proxy at start, with the way out
            except Exception as exc:
                where = f"pouch_ledger {redact_url(url)}" if url else "pouch_home"
                raise exceptions.OptionsError(f"{where}: {exc}") from None
            old, self.core.ledger = self.core.ledger, ledger
            self.core.keys = KeyStore(ledger.home)
            if self._running:
                self._switched(old, ledger)
        self.core.ledger.commit_delay = ctx.options.pouch_commit_delay_ms / 1000  # a new ledger's, or a changed delay
        self.core.ledger.durability = ctx.options.pouch_durability
        # calls in flight: with others in flight a commit waits pouch_commit_delay_ms to gather
        self.core.ledger.siblings = self.core.active.__len__
        # read per request (``_draft``), so kept: ``ctx.options.X`` deep-copies an option's default
        self._max_body = ctx.options.pouch_max_body_mb * 1048576

    def _switched(self, old: Any, new: Any) -> None:
        """The ledger changed while the proxy runs (``pouch_ledger``/``pouch_home`` set at runtime): the
        new team ledger takes this proxy's lease now (before its first reservation); the old one is
        closed (its pool and heartbeat) once no call in flight still settles into it."""
        if hasattr(new, "start"):
            new.start()  # as ledger_for's snapshot() above: configure already waits for the database
        if old is not None and hasattr(old, "close"):
            task = asyncio.get_running_loop().create_task(self._close_when_idle(old))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _close_when_idle(self, old: Any) -> None:
        while any(call.ledger is old for call in self.core.active):
            await asyncio.sleep(0.2)
        await asyncio.to_thread(old.close)
        log.info(f"pouch: closed the previous ledger {getattr(old, 'display_url', old.home)}")

    async def running(self) -> None:
        self._running = True
        ledger, table = self.core.require()
        if hasattr(ledger, "start"):  # the team ledger: take this proxy's lease, write a spool left behind
            await asyncio.to_thread(ledger.start)
        recovered = await asyncio.to_thread(ledger.recover_orphans)
        for e in recovered:
            log.warning(f"pouch: settled reservation {e['id']} left open by a dead process at "
                        f"{format_usd(Decimal(e['cost']))} (flagged orphaned; see `pouch history`)")
        st = await asyncio.to_thread(ledger.status)
        log.info(f"pouch: ledger {getattr(ledger, 'display_url', ledger.home)}: remaining {format_usd(st.remaining)} of {format_usd(st.budget)}; "
                 f"prices updated {table.updated}")
        if st.budget == 0 and st.spent == 0:
            log.warning("pouch: no budget set: `pouch budget set AMOUNT` (until then every LLM call is answered 402)")

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or flow.metadata.get(SCOPE) != "billed":
            return
        try:
            await self._gate(flow)
        except LedgerUnavailable as exc:  # fail closed: nothing was reserved, nothing is sent
            if flow.response is None:
                reply(flow, 503, f"{exc}; the request was not sent (pouch cannot reserve its cost)",
                      code="pouch_ledger_unavailable", type_="server_error")
        except Exception as exc:  # fail closed: an unexpected error never lets a call through unbudgeted
            log.exception("pouch: internal error while budgeting a request")
            # answer first: the reply is what keeps the request from being sent, even if the
            # give-back below fails too
            reply(flow, 500, f"pouch: internal error, the request was not sent ({type(exc).__name__}: {exc})",
                  code="pouch_internal_error", type_="server_error")
            call = flow.metadata.pop(CALL, None)
            if call is not None:
                self.core.active.discard(call)
                call.settled = True
                try:
                    await call.ledger.submit_async(call.ledger.settle_op(call.reservation.id, ZERO,
                                                                         status="pouch_error"))
                except Exception:  # left open: it holds its budget until the orphan rule settles it
                    log.exception(f"pouch: could not give back reservation {call.reservation.id}")

    async def _gate(self, flow: http.HTTPFlow) -> None:
        ledger, table = self.core.require()
        ident: Identity = flow.metadata.get(IDENTITY) or Identity("default", "default")
        meta = {"endpoint": canonical_path(flow.request.path), "client": client_label(flow),
                "provider": flow.metadata.get(PROVIDER, openai.NAME), **ident.meta()}
        if meta["provider"] == "local":  # a local model server: reserved and settled at an explicit $0
            meta["local"] = True
        wallet = ident.wallet
        # read once for the inline test and the draft (a header lookup scans every header)
        coding = flow.request.headers.get("content-encoding", "")
        inline = inline_ok(flow.request, coding)
        try:
            drafted = self._draft_inline(flow, table, coding=coding) if inline else None
            if drafted is None:
                inline = False
                drafted = await asyncio.to_thread(self._draft, flow, table, None, coding)
            draft, body = drafted
        except BodyTooLarge as exc:
            reply(flow, exc.status, str(exc), code=exc.code)
            return
        except PlanError as exc:
            reply(flow, exc.status, str(exc), code=exc.code)
            await ledger.submit_async(ledger.block_op(Refusal("invalid", Decimal(0), Decimal(0)),
                                                      {**meta, "why": exc.code, "detail": str(exc)}))
            return
        # rpm/tpm: the team ledger's windows are shared by every proxy (read and written in the
        # admitting transaction); the local ledger's are this process's
        rates = getattr(ledger, "rates", None) or self.core.limits
        admission = Admission(draft, wallet, meta, rates)
        try:
            result = await reserve(ledger, ledger.reserve_op(admission.decide, meta, wallet=wallet))
        except NeedsExact:
            # the byte bound is too coarse for this decision: count exactly (the first time, the
            # encoding loads in a worker thread) and decide again on the exact count
            if inline:
                drafted = self._draft_inline(flow, table, body=body)
            if not inline or drafted is None:
                inline = False
                drafted = await asyncio.to_thread(self._draft, flow, table, body=body)
            draft, body = drafted
            admission = Admission(draft, wallet, meta, rates)
            result = await reserve(ledger, ledger.reserve_op(admission.decide, meta, wallet=wallet))
        if isinstance(result, Refusal):
            self._refuse(flow, result, admission)
            return
        plan = admission.plan
        assert plan is not None
        call = FlowCall(plan=plan, reservation=result, client=meta["client"], ledger=ledger, wallet=wallet)
        flow.metadata[CALL] = call
        self.core.active.add(call)
        if plan.rewrites:
            raw = flow.request.raw_content or b""
            tried = len(raw) <= INLINE_INSERT_BYTES
            data = rewrite_bytes(raw, body, plan.rewrites) if tried else None
            if data is not None:  # an insertion: one copy of the body, no thread hop
                set_content(flow.request, data)
            elif inline:  # not an insertion; a small body stays small with a cap and stream_options added
                reserialise(flow.request, body, plan.rewrites)
            else:  # a large body: the insertion (not tried yet) or the re-serialisation in a thread
                await asyncio.to_thread(reserialise if tried else rewrite_body, flow.request, body, plan.rewrites)
        # SSE must reach the meter uncompressed
        set_header(flow.request.headers, b"accept-encoding", b"identity")

    def _refuse(self, flow: http.HTTPFlow, refusal: Refusal, admission: Admission) -> None:
        """Answer a refused admission: 429 for rate limits, 402 for everything the budget refused."""
        if refusal.reason != "rate_limited":
            code = {"paused": "pouch_paused", "expired": "pouch_wallet_expired"}.get(refusal.reason, "budget_exceeded")
            reply(flow, 402, refusal.message, code=code, type_="insufficient_quota")
            return
        retry, w = admission.retry, admission.limited_by
        assert retry is not None and w is not None
        if math.isinf(retry):
            reply(flow, 429, f"pouch: this request may use up to {admission.tokens} tokens, more than wallet "
                  f"{w.name!r} allows per minute (tpm {w.tpm}); nothing was sent", code="pouch_request_exceeds_tpm",
                  type_="tokens")
        else:
            limits = ", ".join(f"{k} {v}" for k, v in (("rpm", w.rpm), ("tpm", w.tpm)) if v is not None)
            reply(flow, 429, f"{refusal.message} ({limits}); retry after {int(retry)} s",
                  code="rate_limit_exceeded", type_="requests",
                  headers={"retry-after": str(int(retry)), "x-should-retry": "true"})

    def _draft_inline(self, flow: http.HTTPFlow, table: PriceTable, body: dict[str, Any] | None = None,
                      coding: str | None = None) -> tuple[DraftPlan, dict[str, Any]] | None:
        """``_draft`` on the event loop, or None when it needs a tokenizer encoding not loaded
        yet: the first load takes ~0.3-1 s, so that request is planned in a worker thread."""
        try:
            with tokens.loaded_only():
                return self._draft(flow, table, body, coding)
        except tokens.NotLoaded:
            return None

    def _draft(self, flow: http.HTTPFlow, table: PriceTable, body: dict[str, Any] | None = None,
               coding: str | None = None) -> tuple[DraftPlan, dict[str, Any]]:
        """Decode, parse and estimate the request (in a worker thread unless the body is small).
        With ``body`` (already parsed): estimate it again, counting the input exactly.
        ``coding``: the request's ``content-encoding`` when the caller read it already."""
        settings = self.core.settings
        if body is None:
            if coding is None:
                coding = flow.request.headers.get("content-encoding", "")
            data = decode_body(flow.request, self._max_body, coding)
            body = parse_body(data)
            if coding.strip().lower() not in ("", "identity"):
                # send what was priced: the decoded bytes, not a second decoding by the provider
                del flow.request.headers["content-encoding"]
                flow.request.content = data
        else:
            settings = replace(settings, exact_input=True)
        provider = PROVIDERS.get(flow.metadata.get(PROVIDER, ""), openai)
        draft = provider.draft(flow.request.method, flow.request.path, body, table=table, settings=settings)
        return draft, body


def exact_input_tokens(flow: http.HTTPFlow, core: Core) -> int | None:
    """The input of an admitted call counted exactly, when its plan holds the byte bound (for a
    settle priced from pouch's own count, the provider having reported no usage); None when
    there is nothing better. Parses the request again and may load the encoding: call it in a
    worker thread."""
    plan = flow.metadata[CALL].plan
    if plan.input_method != "utf8_bytes" or plan.input_hidden or plan.max_tool_calls:
        return None
    try:
        body = parse_body(decode_body(flow.request, ctx.options.pouch_max_body_mb * 1048576))
        provider = PROVIDERS.get(flow.metadata.get(PROVIDER, ""), openai)
        draft = provider.draft(flow.request.method, flow.request.path, body, table=core.require()[1],
                               settings=replace(core.settings, exact_input=True))
    except Exception:  # the bound stays: never less than the exact count
        log.exception("pouch: could not count a call's input exactly; its byte bound is used")
        return None
    return min(draft.input_tokens, plan.input_tokens)


class NeedsExact(Exception):
    """Raised by :meth:`Admission.decide` before anything is reserved or counted: the plan rests
    on the UTF-8 byte bound of the input, and the decision could differ on the exact count."""


class Admission:
    """The admission decision, made inside the reserving ledger transaction (``decide``).

    Fits the draft plan to the tighter of the global and the wallet's remaining budget, then
    applies the wallet's rpm/tpm (in memory, ``Core.limits``; the ledger runs operations one
    at a time, so check and record are one step). A request counts toward rpm/tpm once it
    passes the budget fit, even if the reservation then refuses it (as providers count failed
    requests). What it decided is left on the object for the reply.
    """

    def __init__(self, draft: DraftPlan, wallet: str, meta: dict[str, Any], limits: RateBook) -> None:
        self.draft, self.wallet, self.meta, self.limits = draft, wallet, meta, limits
        self.plan: CallPlan | None = None
        self.retry: float | None = None  # seconds until a rate-limited request may retry (inf: never)
        self.limited_by: Wallet | None = None
        self.tokens = 0

    def decide(self, state: LedgerState, now: float) -> Decimal | Refusal:
        glob, wrem = state.remaining_for(self.wallet, now)
        remaining = glob if wrem is None else min(glob, wrem)
        bounded = self.draft.input_method == "utf8_bytes"
        try:
            plan = self.draft.finish(remaining)
        except BudgetTooSmall as exc:
            if bounded:  # the exact count may fit: refuse only on it
                raise NeedsExact from None
            self.meta["why"] = "budget"
            by_wallet = self.wallet if wrem is not None and wrem < glob else None
            return Refusal("insufficient", exc.needed, exc.remaining, wallet=by_wallet)
        w = state.wallets.get(self.wallet)
        if bounded and (plan.budget_shaped or plan.worst_case * NEAR > remaining or (w is not None and w.tpm is not None)):
            # near a limit the bound could refuse, or shape, what the exact count admits; and
            # tpm windows must hold exact counts (an inflated one would refuse later requests)
            raise NeedsExact
        self.plan = plan
        self.meta.update(model=plan.model, stream=plan.stream, estimated_input_tokens=plan.input_tokens,
                         output_cap=plan.output_cap)
        if plan.input_method is not None:
            self.meta["input_estimate"] = plan.input_method
        if w is None or (w.rpm is None and w.tpm is None):
            return plan.worst_case
        self.tokens = plan.reserved_input_tokens + plan.output_cap * plan.choices
        # the team ledger's shared windows count on the wall clock (several machines); a proxy's own on monotonic
        retry = self.limits.admit(self.wallet, w.rpm, w.tpm, getattr(self.limits, "clock", time.monotonic)(),
                                  self.tokens)
        if retry is None:
            return plan.worst_case
        self.retry, self.limited_by = retry, w
        self.meta["why"] = "rate_limit"
        return Refusal("rate_limited", plan.worst_case, ZERO, wallet=self.wallet)


def inline_ok(request: http.Request, coding: str | None = None) -> bool:
    """Small plain bodies are planned on the event loop (~60-200 µs, cheaper than a thread hop);
    larger or compressed ones in a worker thread. ``coding``: the ``content-encoding`` header's
    value when the caller read it already ("" when absent)."""
    raw = request.raw_content
    if raw is None or len(raw) > INLINE_PLAN_BYTES:
        return False
    if coding is None:
        coding = request.headers.get("content-encoding", "")
    return coding.strip().lower() in ("", "identity")


def client_label(flow: http.HTTPFlow) -> str:
    peer = flow.client_conn.peername
    return f"{peer[0]}:{peer[1]}" if peer else "unknown"
