"""What a finished call costs, for every way a call can end. Pure.

- completed: the provider's ``usage`` is authoritative; pouch's own count is the fallback;
- provider error status (4xx/5xx): not billed, released in full;
- disconnect mid-stream (client or provider) and pouch's own cut-off: the input plus the output
  counted so far, never $0 and never more than the reservation;
- no response at all after the request was sent (non-stream timeout, provider died): the
  outcome is unknown, so the whole reservation is billed and flagged for review;
- never sent (the upstream connection failed): released.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from . import tokens
from .plan import CallPlan
from .pricing import ModelPrice, PriceTable, UnknownModel, Usage, cost, normalise_tier


@dataclass
class Settlement:
    cost: Decimal
    status: str
    usage: Usage | None = None
    usage_source: str = "none"  # provider / counted / none
    model_reported: str | None = None
    flags: list[str] = field(default_factory=list)

    def details(self) -> dict[str, Any]:
        out: dict[str, Any] = {"usage_source": self.usage_source, "flags": list(self.flags)}
        if self.usage is not None:
            out.update(self.usage.to_dict())
        if self.model_reported:
            out["model_reported"] = self.model_reported
        return out


def price_for(table: PriceTable, plan: CallPlan, model_reported: str | None) -> ModelPrice:
    """Price by the model the provider says it ran; the requested one if that name is unknown."""
    if model_reported and model_reported != plan.model:
        try:
            return table.resolve(model_reported)
        except UnknownModel:
            pass
    return plan.price


def _tier(reported: Any, plan: CallPlan) -> str | None:
    try:
        return normalise_tier(reported) if isinstance(reported, str) else plan.tier
    except ValueError:
        return plan.tier


def completed(
    table: PriceTable, plan: CallPlan, usage: Usage | None, counted_output: int, *,
    model_reported: str | None = None, tier_reported: str | None = None, status: str = "ok",
) -> Settlement:
    """A call the provider finished: its usage if present, else our own count."""
    price = price_for(table, plan, model_reported)
    tier = _tier(tier_reported, plan)
    flags: list[str] = []
    if usage is not None:
        source = "provider"
    else:
        usage = Usage(input_tokens=plan.input_tokens, output_tokens=counted_output)
        source = "counted"
        flags.append("usage_missing")
    return Settlement(cost(price, usage, tier), status, usage, source, model_reported, flags)


def partial(plan: CallPlan, reservation: Decimal, counted_output: int, status: str,
            usage: Usage | None = None) -> Settlement:
    """Disconnect or cut-off mid-stream: input + output so far, capped at the reservation."""
    source = "provider" if usage is not None else "counted"
    if usage is None:
        usage = Usage(input_tokens=plan.input_tokens, output_tokens=counted_output)
    amount = cost(plan.price, usage, plan.tier)
    flags = []
    if amount > reservation:
        amount = reservation
        flags.append("capped_at_reservation")
    return Settlement(amount, status, usage, source, None, flags)


def unanswered(reservation: Decimal, *, sent: bool) -> Settlement:
    if sent:
        return Settlement(reservation, "outcome_unknown", None, "none", None, ["outcome_unknown"])
    return Settlement(Decimal(0), "not_sent")


def provider_error(http_status: int) -> Settlement:
    return Settlement(Decimal(0), f"http_{http_status}")


def from_response_body(table: PriceTable, plan: CallPlan, raw: bytes | None) -> Settlement:
    """Settle a non-streamed 2xx response from its JSON ``usage`` (or count its text)."""
    try:
        body = json.loads(raw or b"")
    except ValueError:
        body = None
    if not isinstance(body, dict):
        # a 2xx we cannot read: we cannot know what was billed
        return Settlement(plan.worst_case, "unreadable_response", None, "none", None, ["usage_missing"])
    usage = None
    raw_usage = body.get("usage")
    if isinstance(raw_usage, dict):
        try:
            usage = Usage.from_openai(raw_usage)
        except ValueError:
            usage = None
    counted = 0 if usage is not None else count_output(plan, body)
    model = body.get("model") if isinstance(body.get("model"), str) else None
    return completed(table, plan, usage, counted, model_reported=model, tier_reported=body.get("service_tier"))


def count_output(plan: CallPlan, body: dict[str, Any]) -> int:
    """Output tokens of a response body without ``usage`` (the fallback)."""
    texts: list[str] = []
    if plan.api in ("chat", "completions"):
        for choice in body.get("choices") or []:
            if not isinstance(choice, dict):
                continue
            msg = choice.get("message") or {}
            for part in (choice.get("text"), msg.get("content"), msg.get("refusal")):
                if isinstance(part, str):
                    texts.append(part)
            for call in msg.get("tool_calls") or []:
                fn = call.get("function") or {} if isinstance(call, dict) else {}
                if isinstance(fn.get("arguments"), str):
                    texts.append(fn["arguments"])
    elif plan.api == "responses":
        for item in body.get("output") or []:
            for part in (item.get("content") or []) if isinstance(item, dict) else []:
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    texts.append(part["text"])
            if isinstance(item, dict) and isinstance(item.get("arguments"), str):
                texts.append(item["arguments"])
    return sum(tokens.count_text(t, plan.model) for t in texts)
