"""The budget gate: reserve the worst case before a billed request leaves, or answer 402/429.

Runs in the ``request`` hook as a coroutine: reading the body, estimating tokens and the
ledger transaction happen in a worker thread, so mitmproxy's event loop never waits on them.

The request is charged to the wallet ``Identify`` found (``flow.metadata["pouch_identity"]``)
and to the global budget, in one atomic reservation. Before reserving, the wallet's rpm/tpm
limits are applied in memory (``Core.limits``, one sliding window per wallet *per proxy
process*): a request over the limit is answered 429 with ``retry-after`` (whole seconds) and
``x-should-retry: true``, so the OpenAI SDKs wait and retry by themselves; a request whose
worst-case tokens (estimated input with margin + output cap x n) exceed the whole tpm can never
fit and is answered 429 with ``x-should-retry: false``. A request counts toward rpm/tpm once
admitted, even if the budget then refuses it (as the providers count failed requests).
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import zlib
from decimal import Decimal, InvalidOperation
from typing import Any, Optional

from mitmproxy import ctx, exceptions, http

from ..budget import Ledger, LedgerState, Refusal
from ..keystore import KeyStore
from ..money import ZERO, format_usd
from ..plan import BudgetTooSmall, CallPlan, PlanError, PlanSettings, make_plan, parse_body
from ..pricing import PriceTable
from .core import CALL, Core, FlowCall
from .identity import IDENTITY, Identity
from .replies import reply
from .scope import SCOPE

log = logging.getLogger(__name__)


class BodyTooLarge(Exception):
    pass


def decode_body(request: http.Request, limit: int) -> bytes:
    """The decoded request body, refusing to inflate past ``limit`` bytes (compression bombs)."""
    raw = request.raw_content or b""
    encoding = request.headers.get("content-encoding", "").strip().lower()
    if encoding in ("", "identity"):
        data = raw
    elif encoding in ("gzip", "deflate"):
        wbits = 31 if encoding == "gzip" else 47  # 47: zlib or gzip header autodetect
        d = zlib.decompressobj(wbits)
        try:
            data = d.decompress(raw, limit + 1)
        except zlib.error:
            if encoding != "deflate":
                raise ValueError(f"the body is not valid {encoding}") from None
            d = zlib.decompressobj(-15)  # raw deflate
            try:
                data = d.decompress(raw, limit + 1)
            except zlib.error:
                raise ValueError("the body is not valid deflate") from None
    else:
        try:
            data = request.get_content(strict=True) or b""
        except ValueError as exc:
            raise ValueError(f"cannot decode the body ({encoding}): {exc}") from None
    if len(data) > limit:
        raise BodyTooLarge(f"decoded request body exceeds pouch_max_body_mb ({limit // 1048576} MiB)")
    return data


def set_body(request: http.Request, body: dict[str, Any]) -> None:
    """Rewrite the JSON body; mitmproxy re-encodes it and fixes content-length."""
    request.text = json.dumps(body, ensure_ascii=False, separators=(",", ":"))


class BudgetGate:
    def __init__(self, core: Core) -> None:
        self.core = core

    def load(self, loader) -> None:
        loader.add_option(
            name="pouch_home", typespec=Optional[str], default=None,
            help="pouch's data directory, shared with the `pouch` CLI and TUI "
                 "(default: $POUCH_HOME or ~/.pouch).",
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
            name="pouch_inject_usage", typespec=bool, default=True,
            help="Ask for stream_options.include_usage on streamed chat/completions requests so the "
                 "provider reports exact usage; the extra chunk is hidden from clients that did not ask.",
        )

    def configure(self, updated: set[str]) -> None:
        if updated & {"pouch_input_margin", "pouch_inject_max_tokens", "pouch_inject_usage"}:
            try:
                margin = Decimal(ctx.options.pouch_input_margin)
            except InvalidOperation:
                margin = Decimal(-1)
            if not (margin.is_finite() and 0 <= margin <= 10):
                raise exceptions.OptionsError(
                    f"pouch_input_margin: expected a fraction like 0.10, got {ctx.options.pouch_input_margin!r}")
            self.core.settings = PlanSettings(
                input_margin=margin, inject_max_tokens=ctx.options.pouch_inject_max_tokens,
                inject_usage=ctx.options.pouch_inject_usage,
            )
        if "pouch_prices" in updated or self.core.table is None:
            try:
                self.core.table = PriceTable.load(ctx.options.pouch_prices)
            except (OSError, ValueError) as exc:
                raise exceptions.OptionsError(f"pouch_prices: cannot load the price table: {exc}") from None
        if "pouch_home" in updated or self.core.ledger is None:
            try:
                ledger = Ledger(ctx.options.pouch_home)
                ledger.snapshot()  # a corrupt ledger stops the proxy at start, with the way out
            except Exception as exc:
                raise exceptions.OptionsError(f"pouch_home: {exc}") from None
            self.core.ledger = ledger
            self.core.keys = KeyStore(ledger.home)

    async def running(self) -> None:
        ledger, table = self.core.require()
        recovered = await asyncio.to_thread(ledger.recover_orphans)
        for e in recovered:
            log.warning(f"pouch: settled reservation {e['id']} left open by a dead process at "
                        f"{format_usd(Decimal(e['cost']))} (flagged orphaned; see `pouch history`)")
        st = await asyncio.to_thread(ledger.status)
        log.info(f"pouch: ledger {ledger.home}: remaining {format_usd(st.remaining)} of {format_usd(st.budget)}; "
                 f"prices updated {table.updated}")

    async def request(self, flow: http.HTTPFlow) -> None:
        if flow.response is not None or flow.metadata.get(SCOPE) != "billed":
            return
        try:
            await self._gate(flow)
        except Exception as exc:  # fail closed: an unexpected error never lets a call through unbudgeted
            log.exception("pouch: internal error while budgeting a request")
            call = flow.metadata.pop(CALL, None)
            if call is not None:
                self.core.active.discard(call)
                call.settled = True
                await asyncio.to_thread(self.core.ledger.release, call.reservation.id, status="pouch_error")
            reply(flow, 500, f"pouch: internal error, the request was not sent ({type(exc).__name__}: {exc})",
                  code="pouch_internal_error", type_="server_error")

    async def _gate(self, flow: http.HTTPFlow) -> None:
        ledger, table = self.core.require()
        ident: Identity = flow.metadata.get(IDENTITY) or Identity("default", "default")
        meta = {"endpoint": flow.request.path.split("?", 1)[0], "client": client_label(flow), **ident.meta()}
        wallet = ident.wallet
        try:
            plan, body, st = await asyncio.to_thread(self._plan, flow, ledger, table, wallet)
        except BodyTooLarge as exc:
            reply(flow, 413, f"pouch: {exc}; nothing was sent", code="pouch_body_too_large")
            return
        except PlanError as exc:
            reply(flow, exc.status, str(exc), code=exc.code)
            await asyncio.to_thread(ledger.record_block, Refusal("invalid", Decimal(0), Decimal(0)),
                                    {**meta, "why": exc.code, "detail": str(exc)})
            return
        except BudgetTooSmall as exc:
            state: LedgerState | None = getattr(exc, "state", None)
            glob, wrem = state.remaining_for(wallet, time.time()) if state is not None else (exc.remaining, None)
            by_wallet = wallet if wrem is not None and wrem < glob else None
            refusal = Refusal("insufficient", exc.needed, exc.remaining, wallet=by_wallet)
            await asyncio.to_thread(ledger.record_block, refusal, {**meta, "why": "budget"})
            reply(flow, 402, refusal.message, code="budget_exceeded", type_="insufficient_quota")
            return
        meta.update(model=plan.model, stream=plan.stream, estimated_input_tokens=plan.input_tokens,
                    output_cap=plan.output_cap)
        if await self._rate_limited(flow, ledger, st, wallet, plan, meta):
            return
        result = await asyncio.to_thread(ledger.reserve, plan.worst_case, meta, wallet=wallet)
        if isinstance(result, Refusal):
            code = {"paused": "pouch_paused", "expired": "pouch_wallet_expired"}.get(result.reason, "budget_exceeded")
            reply(flow, 402, result.message, code=code, type_="insufficient_quota")
            return
        call = FlowCall(plan=plan, reservation=result, client=meta["client"], wallet=wallet)
        flow.metadata[CALL] = call
        self.core.active.add(call)
        if plan.rewrites:
            body.update(plan.rewrites)
            await asyncio.to_thread(set_body, flow.request, body)
        # SSE must reach the meter uncompressed
        flow.request.headers["accept-encoding"] = "identity"

    async def _rate_limited(self, flow: http.HTTPFlow, ledger: Ledger, st: LedgerState, wallet: str,
                            plan: CallPlan, meta: dict[str, Any]) -> bool:
        """Apply the wallet's rpm/tpm (in memory, on the loop: check and record are one step)."""
        w = st.wallets.get(wallet)
        if w is None or (w.rpm is None and w.tpm is None):
            return False
        tokens = plan.reserved_input_tokens + plan.output_cap * plan.choices
        retry = self.core.limits.admit(wallet, w.rpm, w.tpm, time.monotonic(), tokens)
        if retry is None:
            return False
        refusal = Refusal("rate_limited", plan.worst_case, ZERO, wallet=wallet)
        await asyncio.to_thread(ledger.record_block, refusal, {**meta, "why": "rate_limit"})
        if math.isinf(retry):
            reply(flow, 429, f"pouch: this request may use up to {tokens} tokens, more than wallet {wallet!r} "
                  f"allows per minute (tpm {w.tpm}); nothing was sent", code="pouch_request_exceeds_tpm",
                  type_="tokens")
        else:
            limits = ", ".join(f"{k} {v}" for k, v in (("rpm", w.rpm), ("tpm", w.tpm)) if v is not None)
            reply(flow, 429, f"{refusal.message} ({limits}); retry after {int(retry)} s",
                  code="rate_limit_exceeded", type_="requests",
                  headers={"retry-after": str(int(retry)), "x-should-retry": "true"})
        return True

    def _plan(self, flow: http.HTTPFlow, ledger: Ledger, table: PriceTable,
              wallet: str) -> tuple[CallPlan, dict[str, Any], LedgerState | None]:
        """Worker thread: decode, parse, estimate and price the request against the tighter of
        the global and the wallet's remaining budget."""
        body = parse_body(decode_body(flow.request, ctx.options.pouch_max_body_mb * 1048576))
        if body.get("background") is True:
            raise PlanError("pouch: background responses are billed outside this request, so pouch cannot "
                            "meter them; nothing was sent", code="pouch_unsupported")
        st = ledger.snapshot()
        glob, wrem = st.remaining_for(wallet, time.time())
        remaining = glob if wrem is None else min(glob, wrem)
        try:
            plan = make_plan(flow.request.method, flow.request.path, body, table=table, remaining=remaining,
                             settings=self.core.settings)
        except BudgetTooSmall as exc:
            exc.state = st  # type: ignore[attr-defined]
            raise
        return plan, body, st


def client_label(flow: http.HTTPFlow) -> str:
    peer = flow.client_conn.peername
    return f"{peer[0]}:{peer[1]}" if peer else "unknown"
