"""From an intercepted request to a ``CallPlan``: what it is, what it may cost at worst, what to rewrite.

Pure: the caller passes the decoded body, the price table and the remaining budget. The worst
case is ``input estimate × (1 + margin) + output cap × choices``, priced exactly. When the
request carries no output cap (agents rarely send one), pouch injects the smaller of the
model's max output and what the remaining budget can pay for, so the provider can never run
past the reservation.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from . import tokens
from .money import PER_MILLION, format_usd
from .pricing import ModelPrice, PriceTable, UnknownModel, Usage, cost, normalise_tier

# billed endpoints -> api kind
BILLED = {
    "/v1/chat/completions": "chat",
    "/v1/responses": "responses",
    "/v1/completions": "completions",
    "/v1/embeddings": "embeddings",
}
# POSTs that cost nothing
FREE_POSTS = ("/v1/moderations", "/v1/responses/input_tokens")
FREE_METHODS = ("GET", "HEAD", "OPTIONS")
COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # the legacy API's documented default


class PlanError(ValueError):
    """The request cannot be priced; answered by pouch in OpenAI's error shape, never forwarded."""

    def __init__(self, message: str, *, status: int = 400, code: str = "pouch_invalid_request") -> None:
        super().__init__(message)
        self.status = status
        self.code = code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": str(self), "type": "invalid_request_error", "param": None, "code": self.code}}


@dataclass(frozen=True)
class PlanSettings:
    """What a user configures (``--set pouch_*``) that shapes plans."""

    input_margin: Decimal = Decimal("0.10")
    inject_max_tokens: bool = True
    inject_usage: bool = True


@dataclass
class CallPlan:
    api: str
    path: str
    model: str
    price: ModelPrice
    stream: bool
    input_tokens: int  # the estimate, before the margin
    reserved_input_tokens: int  # with the margin (or the context window when it can't be seen)
    output_cap: int  # per choice
    choices: int
    tier: str | None
    client_wants_usage: bool
    worst_case: Decimal
    rewrites: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def input_cost(self) -> Decimal:
        return cost(self.price, Usage(input_tokens=self.input_tokens), self.tier)


def classify(method: str, path: str) -> str:
    """``billed`` / ``free`` / ``unknown`` for a request to an LLM host (query string ignored)."""
    path = path.split("?", 1)[0].rstrip("/")
    if method.upper() in FREE_METHODS:
        return "free"
    if method.upper() == "POST" and path in BILLED:
        return "billed"
    if method.upper() == "POST" and path in FREE_POSTS:
        return "free"
    return "unknown"


def parse_body(raw: bytes | str) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise PlanError(f"pouch: the request body is not valid JSON ({exc}); nothing was sent", code="pouch_bad_json") from None
    if not isinstance(body, dict):
        raise PlanError("pouch: the request body must be a JSON object; nothing was sent", code="pouch_bad_json")
    return body


def _int_field(body: Mapping[str, Any], name: str, minimum: int) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PlanError(f"pouch: `{name}` must be an integer >= {minimum}, not {value!r}")
    return value


def estimate_input_tokens(body: Mapping[str, Any], *, endpoint: str, model: str | None = None) -> int:
    """Prompt tokens of a request body by the cookbook method (also `pouch tokens`)."""
    api = BILLED.get(endpoint.rstrip("/"))
    if api is None:
        raise PlanError(f"pouch: unknown endpoint {endpoint!r}; known: {', '.join(BILLED)}")
    model = model or body.get("model")
    if not isinstance(model, str) or not model:
        raise PlanError("pouch: the request has no `model`")
    try:
        if api == "chat":
            return tokens.estimate_chat_prompt(dict(body), model)
        if api == "responses":
            return tokens.estimate_responses_input(dict(body), model)
        if api == "completions":
            return tokens.estimate_completion_prompt(dict(body), model)
        return tokens.estimate_embedding_input(dict(body), model)
    except ValueError as exc:
        raise PlanError(f"pouch: cannot read the request: {exc}") from None


def _output_rate_per_token(price: ModelPrice, input_tokens: int, tier: str | None) -> Decimal:
    return price.rates_for(input_tokens, tier).output / PER_MILLION


@dataclass
class DraftPlan:
    """A billed request read, validated and estimated: everything but what depends on the budget.

    The expensive part (parsing, token estimation) happens once, outside the ledger; only
    :meth:`finish`, which picks an injected output cap from the remaining budget and prices the
    worst case, runs inside the reserving transaction, so the cap is fitted to the balance the
    reservation is checked against (no separate read of the balance, no race with it).
    """

    api: str
    path: str
    model: str
    price: ModelPrice
    stream: bool
    input_tokens: int
    reserved_input_tokens: int
    choices: int
    tier: str | None
    client_wants_usage: bool
    cap: int | None  # the request's own cap (or the API's default); None: pouch injects one
    cap_field: str | None  # where an injected cap goes (when cap is None)
    rewrites: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def finish(self, remaining: Decimal) -> CallPlan:
        """The plan against ``remaining``; raises :class:`BudgetTooSmall` when not even one output
        token of an injected cap can be paid for. Pure and cheap (Decimal arithmetic only)."""
        rewrites, notes = dict(self.rewrites), list(self.notes)
        cap = self.cap
        if cap is None:
            cap = _inject_cap(self.price, self.reserved_input_tokens, self.choices, self.tier, remaining)
            rewrites[self.cap_field] = cap
            notes.append(f"injected {self.cap_field}={cap}")
        if self.api != "embeddings" and self.price.max_output_tokens is not None:
            cap = min(cap, self.price.max_output_tokens)
        worst_usage = Usage(input_tokens=self.reserved_input_tokens, output_tokens=cap * self.choices)
        # a flex/batch request may still be served (and billed) at the standard price
        worst = max(cost(self.price, worst_usage, self.tier), cost(self.price, worst_usage, None))
        return CallPlan(
            api=self.api, path=self.path, model=self.model, price=self.price, stream=self.stream,
            input_tokens=self.input_tokens, reserved_input_tokens=self.reserved_input_tokens, output_cap=cap,
            choices=self.choices, tier=self.tier, client_wants_usage=self.client_wants_usage, worst_case=worst,
            rewrites=rewrites, notes=notes,
        )


def make_plan(
    method: str,
    path: str,
    body: dict[str, Any],
    *,
    table: PriceTable,
    remaining: Decimal,
    settings: PlanSettings = PlanSettings(),
) -> CallPlan:
    """Price a billed request at its worst case and decide the body rewrites."""
    return draft_plan(method, path, body, table=table, settings=settings).finish(remaining)


def draft_plan(
    method: str,
    path: str,
    body: dict[str, Any],
    *,
    table: PriceTable,
    settings: PlanSettings = PlanSettings(),
) -> DraftPlan:
    """Read, validate and estimate a billed request (raises :class:`PlanError`); see :class:`DraftPlan`."""
    path = path.split("?", 1)[0].rstrip("/")
    api = BILLED[path]
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise PlanError("pouch: the request has no `model`; nothing was sent", code="pouch_missing_model")
    try:
        price = table.resolve(model)
    except UnknownModel as exc:
        raise PlanError(str(exc).strip("\"'"), code="pouch_unknown_model") from None
    try:
        tier = normalise_tier(body.get("service_tier"))
    except ValueError as exc:
        raise PlanError(f"pouch: {exc}") from None
    stream = body.get("stream") is True
    notes: list[str] = []

    estimate = estimate_input_tokens(body, endpoint=path, model=model)
    reserved_input = math.ceil(estimate * (1 + settings.input_margin))
    if price.max_input_tokens is not None:
        # the provider cannot bill more input than the context window (longer prompts are rejected)
        reserved_input = min(reserved_input, price.max_input_tokens)
    if api == "responses" and (body.get("previous_response_id") or body.get("conversation")):
        # the server prepends earlier turns that the body does not show: bound by the context window
        if price.max_input_tokens is None:
            raise PlanError(
                f"pouch: cannot bound the input of a continued conversation for {model} "
                "(its context window is unknown); nothing was sent", code="pouch_unbounded")
        reserved_input = max(reserved_input, price.max_input_tokens)
        notes.append("input bounded by the context window (previous_response_id/conversation)")

    choices = 1
    if api == "chat":
        choices = _int_field(body, "n", 1) or 1
    elif api == "completions":
        choices = max(_int_field(body, "n", 1) or 1, _int_field(body, "best_of", 1) or 1)

    rewrites: dict[str, Any] = {}
    cap: int | None
    cap_field: str | None = None
    if api == "embeddings":
        cap = 0
    else:
        fields = {"chat": ("max_completion_tokens", "max_tokens"), "responses": ("max_output_tokens",),
                  "completions": ("max_tokens",)}[api]
        caps = [c for c in (_int_field(body, f, 0) for f in fields) if c is not None]
        if caps:
            cap = min(caps)
        elif api == "completions":
            cap = COMPLETIONS_DEFAULT_MAX_TOKENS
        elif not settings.inject_max_tokens:
            if price.max_output_tokens is None:
                raise PlanError(
                    f"pouch: the request sets no output cap and {model}'s max output is unknown, so its "
                    "cost cannot be bounded; set max_completion_tokens/max_output_tokens", code="pouch_unbounded")
            cap = price.max_output_tokens
        else:
            cap, cap_field = None, fields[0]

    client_wants_usage = False
    if stream and api in ("chat", "completions"):
        opts = body.get("stream_options")
        client_wants_usage = isinstance(opts, dict) and opts.get("include_usage") is True
        if not client_wants_usage and settings.inject_usage:
            rewrites["stream_options"] = {**(opts if isinstance(opts, dict) else {}), "include_usage": True}

    return DraftPlan(
        api=api, path=path, model=model, price=price, stream=stream, input_tokens=estimate,
        reserved_input_tokens=reserved_input, choices=choices, tier=tier, client_wants_usage=client_wants_usage,
        cap=cap, cap_field=cap_field, rewrites=rewrites, notes=notes,
    )


def _inject_cap(price: ModelPrice, input_tokens: int, choices: int, tier: str | None, remaining: Decimal) -> int:
    """The output cap pouch adds: min(model max output, what the remaining budget can pay)."""
    input_cost = cost(price, Usage(input_tokens=input_tokens), tier)
    rate = _output_rate_per_token(price, input_tokens, tier)
    affordable = int((remaining - input_cost) / (rate * choices)) if rate > 0 else 0
    if affordable < 1:
        raise BudgetTooSmall(input_cost + rate * choices, remaining)
    return min(affordable, price.max_output_tokens) if price.max_output_tokens else affordable


class BudgetTooSmall(Exception):
    """Even one output token cannot be paid for: the caller answers 402."""

    def __init__(self, needed: Decimal, remaining: Decimal) -> None:
        super().__init__(f"needs at least {format_usd(needed)}, {format_usd(remaining)} remains")
        self.needed = needed
        self.remaining = remaining
