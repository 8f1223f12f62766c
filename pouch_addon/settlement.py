"""What a finished call costs, for every way a call can end. Pure.

- completed: the provider's ``usage`` is authoritative; pouch's own count is the fallback;
- provider error status (4xx/5xx): not billed, released in full;
- disconnect mid-stream (client or provider) and pouch's own cut-off: the input plus the output
  counted so far, never $0 and never more than the reservation, flagged ``usage_missing`` when
  that is pouch's own count rather than the provider's usage (a stream whose ``[DONE]`` or
  terminal event arrived is not mid-stream: it settles as completed, see ``addons/meter.py``);
- a stream pouch cannot decode (an unknown or unbounded ``content-encoding``): the reservation,
  flagged ``undecodable_stream``;
- no response at all after the request was sent (non-stream timeout, provider died): the
  outcome is unknown, so the whole reservation is billed and flagged for review;
- never sent (the upstream connection failed): released.

Tool fees: the server-side tool calls a response reports (Responses ``web_search_call``,
``code_interpreter_call`` items, ...; ``pricing.count_tool_calls``) are billed at the fees the
plan reserved for (``CallPlan.fees``), plus a Chat Completions search's fixed fee. A call the
plan has no fee for (a tool a stored prompt carried that pouch cannot price) settles the call at
no less than its whole reservation, flagged ``unpriced_tool_call``: never $0, and the most pouch
was allowed to spend.

Which model prices the call: the one the provider reports, since that is what it bills. The plan
reserved at ``PriceTable.resolve_bound``, the dearest model the requested name may be served as,
so a reported snapshot of the requested alias is never dearer than the reservation. We chose
that over capping a dearer reported model at the reservation because the ledger must say what
was really spent: a cap would hide real spend. A reported model outside that family (the
provider served another model than the one asked for) is still billed as reported and flagged
``model_reported_dearer`` when it costs more than the reserved price would, and
``model_reported_mismatch`` (logged by the meter) whenever it is outside that family; a reported
name the table does not know is priced at the reserved bound, flagged ``model_reported_unknown``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from . import tokens
from .plan import CallPlan
from .pricing import ModelPrice, PriceTable, UnknownModel, Usage, _undated, cost, normalise_tier, tool_fee_cost


@dataclass
class Settlement:
    cost: Decimal
    status: str
    usage: Usage | None = None
    usage_source: str = "none"  # provider / counted / none
    model_reported: str | None = None
    flags: list[str] = field(default_factory=list)
    tool_calls: dict[str, int] = field(default_factory=dict)  # billable tool calls reported
    fees: Decimal = Decimal(0)  # the part of ``cost`` that is tool fees

    def details(self) -> dict[str, Any]:
        out: dict[str, Any] = {"usage_source": self.usage_source, "flags": list(self.flags)}
        if self.usage is not None:
            out.update(self.usage.to_dict())
        if self.model_reported:
            out["model_reported"] = self.model_reported
        if self.tool_calls:
            out["tool_calls"] = dict(self.tool_calls)
        if self.fees:
            out["tool_fees"] = str(self.fees)
        return out


def price_for(table: PriceTable, plan: CallPlan, model_reported: str | None) -> tuple[ModelPrice, list[str]]:
    """Price by the model the provider says it ran; the reserved bound if that name is unknown
    (or the response names none). See the module docstring for why."""
    if model_reported:
        try:
            return table.resolve(model_reported), []
        except UnknownModel:
            return plan.price, ["model_reported_unknown"]
    return plan.price, []


def fees_for(plan: CallPlan, tool_calls: dict[str, int] | None) -> tuple[Decimal, list[str]]:
    """The fixed fee plus the reported tool calls at the plan's fees; flags for unpriced calls."""
    fees, unpriced = tool_fee_cost(plan.fees, tool_calls or {})
    return plan.fixed_fee + fees, (["unpriced_tool_call"] if unpriced else [])


def _with_fees(plan: CallPlan, amount: Decimal, tool_calls: dict[str, int] | None,
               flags: list[str]) -> tuple[Decimal, Decimal]:
    """``amount`` plus the fees (and the fees alone)."""
    fees, fee_flags = fees_for(plan, tool_calls)
    flags.extend(fee_flags)
    amount += fees
    if fee_flags:  # a call pouch cannot price: at least everything it was allowed to spend
        amount = max(amount, plan.worst_case)
    return amount, fees


def _tier(reported: Any, plan: CallPlan) -> str | None:
    try:
        return normalise_tier(reported) if isinstance(reported, str) else plan.tier
    except ValueError:
        return plan.tier


def completed(
    table: PriceTable, plan: CallPlan, usage: Usage | None, counted_output: int, *,
    model_reported: str | None = None, tier_reported: str | None = None, status: str = "ok",
    tool_calls: dict[str, int] | None = None,
) -> Settlement:
    """A call the provider finished: its usage if present, else our own count, plus the fees of
    the tool calls it reports (``tool_calls``: ``pricing.count_tool_calls`` of its output)."""
    price, flags = price_for(table, plan, model_reported)
    tier = _tier(tier_reported, plan)
    if usage is not None:
        source = "provider"
    else:
        usage = Usage(input_tokens=plan.input_tokens, output_tokens=counted_output)
        source = "counted"
        flags.append("usage_missing")
    amount = cost(price, usage, tier)
    if price is not plan.price and amount > cost(plan.price, usage, tier):
        flags.append("model_reported_dearer")
    if price is not plan.price and _family(price.name) != _family(plan.price.name):
        # another model than the one reserved for (an Azure deployment mapped to the wrong model)
        flags.append("model_reported_mismatch")
    amount, fees = _with_fees(plan, amount, tool_calls, flags)
    return Settlement(amount, status, usage, source, model_reported, flags, dict(tool_calls or {}), fees)


def _family(name: str) -> str:
    low = name.lower()
    return _undated(low) or low


def partial(plan: CallPlan, reservation: Decimal, counted_output: int, status: str,
            usage: Usage | None = None, tool_calls: dict[str, int] | None = None) -> Settlement:
    """Disconnect or cut-off mid-stream: input + output so far + the fees of the tool calls seen,
    capped at the reservation."""
    source = "provider" if usage is not None else "counted"
    flags: list[str] = []
    if usage is None:  # pouch's own count of what it forwarded: the provider's bill may differ
        usage = Usage(input_tokens=plan.input_tokens, output_tokens=counted_output)
        flags.append("usage_missing")
    amount, fees = _with_fees(plan, cost(plan.price, usage, plan.tier), tool_calls, flags)
    if amount > reservation:
        amount = reservation
        flags.append("capped_at_reservation")
    return Settlement(amount, status, usage, source, None, flags, dict(tool_calls or {}), fees)


def counted(result: Settlement) -> Settlement:
    """``result`` marked as priced from pouch's own count (``usage_source`` counted, flagged
    ``usage_missing``): for a stream whose usage is the provider's input plus the output pouch
    counted, the provider's final usage never having come."""
    if result.usage_source == "provider":
        result.usage_source = "counted"
    if "usage_missing" not in result.flags:
        result.flags.append("usage_missing")
    return result


def undecodable(reservation: Decimal, tool_calls: dict[str, int] | None = None) -> Settlement:
    """A stream compressed in a way pouch cannot decode (``StreamMeter.undecodable``): cut off at
    once, and what the provider generated is unknown, so the whole reservation, flagged."""
    return Settlement(reservation, "cut_off", None, "none", None, ["undecodable_stream"], dict(tool_calls or {}))


def unanswered(reservation: Decimal, *, sent: bool) -> Settlement:
    if sent:
        return Settlement(reservation, "outcome_unknown", None, "none", None, ["outcome_unknown"])
    return Settlement(Decimal(0), "not_sent")


def provider_error(http_status: int) -> Settlement:
    return Settlement(Decimal(0), f"http_{http_status}")


def from_response_body(table: PriceTable, plan: CallPlan, raw: bytes | None, provider: Any) -> Settlement:
    """Settle a non-streamed 2xx response from the usage ``provider`` (a ``providers`` module)
    reads in it, or count its text."""
    try:
        body = json.loads(raw or b"")
    except ValueError:
        body = None
    if not isinstance(body, (dict, list)):
        # a 2xx we cannot read: we cannot know what was billed
        return Settlement(plan.worst_case, "unreadable_response", None, "none", None, ["usage_missing"])
    usage, model, tier = provider.usage_from_body(body)
    counted = 0 if usage is not None else count_output(plan, provider.output_texts(body))
    calls = provider.tool_calls_from_body(plan.api, body)
    return completed(table, plan, usage, counted, model_reported=model, tier_reported=tier, tool_calls=calls)


def count_output(plan: CallPlan, texts: list[str]) -> int:
    """Output tokens of a response's text, counted with tiktoken (the fallback without usage)."""
    return sum(tokens.count_text(t, plan.model) for t in texts)
