"""Mock mode (``pouch_mock``, ``pouch proxy --mock``): answer admitted LLM calls without forwarding.

Runs after the budget gate, so pause, wallets, rate limits and the 402 behave exactly as for a
real call; a call the gate admitted is then answered here (``mock.reply``: the provider's shape,
stream or not) after ``pouch_mock_latency_ms``, and settled at $0 with status ``mock`` and ``"mock": true`` (no flag: it is not
for review; ``mock_cost`` records what the same usage would have cost at the real price). Nothing
reaches the provider and no key is needed; ``connection_strategy`` is set to ``lazy`` so no
upstream connection is opened for a CONNECT either. Free calls (model lists, token counts) are not
answered: they go upstream as usual, or fail where there is no network.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

from mitmproxy import ctx, exceptions, http

from .. import mock
from ..money import ZERO, usd_str
from ..pricing import cost
from .core import CALL, Core, FlowCall
from .gate import exact_input_tokens
from .replies import PROVIDER

log = logging.getLogger(__name__)


class Mock:
    def __init__(self, core: Core) -> None:
        self.core = core
        self._settles: set[asyncio.Future] = set()
        # the options read per request, kept by ``configure``: mitmproxy's ``ctx.options.X`` deep-copies
        # an option's default on every read of an option left at it (~3-6 us on the loop per request)
        self._on = False
        self._latency_ms = 0

    def load(self, loader) -> None:
        loader.add_option(
            name="pouch_mock", typespec=bool, default=False,
            help="Answer every admitted LLM call from pouch itself (the provider's response shape, streamed "
                 "or not) without forwarding it; settled at $0, status mock. The budget, pause and rate "
                 "limits still apply. `pouch proxy --mock` sets it.",
        )
        loader.add_option(
            name="pouch_mock_latency_ms", typespec=int, default=0,
            help="Mock mode: how long (ms) pouch waits before answering a call (0 to 600000).",
        )
        loader.add_option(
            name="pouch_mock_length", typespec=int, default=24,
            help="Mock mode: words (one token each) in an answer, at most the request's output cap (1 to 100000).",
        )

    def configure(self, updated: set[str]) -> None:
        if "pouch_mock_latency_ms" in updated and not 0 <= ctx.options.pouch_mock_latency_ms <= 600_000:
            raise exceptions.OptionsError(
                f"pouch_mock_latency_ms: expected 0 to 600000 ms, got {ctx.options.pouch_mock_latency_ms}")
        if "pouch_mock_length" in updated and not 1 <= ctx.options.pouch_mock_length <= 100_000:
            raise exceptions.OptionsError(
                f"pouch_mock_length: expected 1 to 100000 words, got {ctx.options.pouch_mock_length}")
        self._on, self._latency_ms = ctx.options.pouch_mock, ctx.options.pouch_mock_latency_ms

    def running(self) -> None:
        if ctx.options.pouch_mock:
            # nothing is forwarded: never connect upstream on a CONNECT (there may be no network)
            ctx.options.update(connection_strategy="lazy")
            log.warning("pouch: mock mode: LLM calls are answered by pouch itself, settled at $0 (status mock); "
                        "nothing is sent to any provider")

    def request(self, flow: http.HTTPFlow) -> Awaitable[None] | None:
        """The answer, awaited by mitmproxy (pouch's chain) only in mock mode: no coroutine per call otherwise."""
        if not self._on or flow.response is not None:
            return None
        call: FlowCall | None = flow.metadata.get(CALL)
        if call is None:
            return None
        return self._answer(flow, call)

    async def _answer(self, flow: http.HTTPFlow, call: FlowCall) -> None:
        if self._latency_ms:
            await asyncio.sleep(self._latency_ms / 1000)
        plan = call.plan
        if plan.input_method == "utf8_bytes":  # the usage reported is the input estimate: count it exactly
            exact = await asyncio.to_thread(exact_input_tokens, flow, self.core)
            if exact is not None:
                plan.input_tokens, plan.input_method = exact, "tiktoken"
        try:
            body = flow.request.json()
        except ValueError:
            body = {}
        answer = mock.reply(
            flow.metadata.get(PROVIDER, "openai"), plan.api, body if isinstance(body, dict) else {},
            model=plan.model, stream=plan.stream, input_tokens=plan.input_tokens, output_cap=plan.output_cap,
            length=ctx.options.pouch_mock_length, client_wants_usage=plan.client_wants_usage,
            sse=flow.request.query.get("alt") == "sse")
        flow.response = http.Response.make(answer.status, answer.body,
                                           {"content-type": answer.content_type, "x-pouch-mock": "true"})
        flow.metadata.pop(CALL, None)  # settled here: the meter leaves this flow alone
        self.core.active.discard(call)
        call.settled = True
        details = {**answer.usage.to_dict(), "usage_source": "mock", "mock": True, "http_status": answer.status,
                   "mock_cost": usd_str(cost(plan.price, answer.usage)), "estimated_cost": str(plan.worst_case)}
        fut = call.ledger.submit_async(call.ledger.settle_op(call.reservation.id, ZERO, status="mock", details=details),
                                       lazy=True)
        self._settles.add(fut)
        fut.add_done_callback(self._settles.discard)

    async def done(self) -> None:
        if self._settles:
            await asyncio.gather(*self._settles, return_exceptions=True)
