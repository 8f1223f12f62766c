"""Prices and exact costs: the price table, normalised token usage and the cost formula.

Pure core. The only I/O is reading the JSON price table (``assets/pricing.json``, packaged as
``pouch_addon.assets``), which ``scripts/update_pricing.py`` generates from LiteLLM's
``model_prices_and_context_window.json``.

Money is ``Decimal`` USD throughout; table prices are USD per 1M tokens stored as decimal strings,
so ``tokens × price / 1_000_000`` is exact (computed in a local 50-digit context).

Cost rules (``cost``):

- ``Usage`` follows OpenAI's convention: cached and cache-written tokens are subsets of
  ``input_tokens``; reasoning tokens are a subset of ``output_tokens`` and are never added again.
  The provider adapters (``Usage.from_openai`` / ``from_anthropic`` / ``from_gemini``) convert.
- Uncached input = input − cached − cache_write − cache_write_1h; each part at its own rate;
  all output at the output rate.
- A missing cache-read or cache-write rate falls back to the input rate (LiteLLM convention);
  a missing 1-hour write rate falls back to the (resolved) cache-write rate; an explicit 0 is 0.
- A long-context tier (``long_context``) reprices the WHOLE request when ``input_tokens`` is
  strictly greater than its threshold (LiteLLM's rule).
- Service tiers: a model's explicit tier prices when the table has them; otherwise the table's
  ``tier_multipliers`` scale the standard rates (batch 0.5, flex 0.5, priority 2.5, ultrafast 6:
  the priority and ultrafast factors are the largest ratios published anywhere in the table, i.e.
  a conservative upper bound for models whose own premium price is unknown).
- Components that an explicit tier or long-context block leaves out (e.g. a priority block with no
  cache-read price) are the standard component scaled by that block's input-price ratio, so a
  premium block never silently falls back to the cheaper standard price.

Tool fees (USD per call, not per token): a model's ``fees`` and the table's per-provider
``tool_fees`` price the Responses output items of server-side tools (``web_search_call`` by
search context size, ``code_interpreter_call`` per container session, ...). ``count_tool_calls``
counts the billable items of a response and ``tool_fee_cost`` prices them; ``PriceTable.call_fee``
says which fee applies. A provider's ``tool_fees`` entry for a kind a model has no fee of its own
for is the dearest fee LiteLLM lists for any model of that provider (an upper bound, generated).

``PriceTable.resolve_bound`` is what a request is reserved at: an undated name (an alias such as
``gpt-4o``) may be served by any dated snapshot of it, and the provider's reported model is what
is billed, so the bound is the component-wise dearest price of the whole family.
"""

from __future__ import annotations

import decimal
import difflib
import importlib.resources
import json
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from types import MappingProxyType
from typing import Any

__all__ = [
    "UnknownModel", "Usage", "Rates", "ModelPrice", "PriceTable", "normalise_tier", "cost",
    "DEFAULT_TIER_MULTIPLIERS", "TIERS", "FEE_CALLS", "FREE_CALLS", "count_tool_calls", "tool_fee_cost",
]

_PER_MILLION = Decimal(1_000_000)
_ZERO = Decimal(0)
_CTX = decimal.Context(prec=50, rounding=decimal.ROUND_HALF_EVEN, traps=[decimal.InvalidOperation])

#: tiers pouch knows how to price (normalised names)
TIERS = ("batch", "flex", "priority", "ultrafast")
#: used when a table has no ``tier_multipliers`` (same values as the generated table)
DEFAULT_TIER_MULTIPLIERS: Mapping[str, Decimal] = MappingProxyType({
    "batch": Decimal("0.5"), "flex": Decimal("0.5"), "priority": Decimal("2.5"), "ultrafast": Decimal(6),
})


class UnknownModel(LookupError):
    """The model is not in the price table: pouch refuses rather than guess (never $0)."""

    def __init__(self, model: str, table: str = "", updated: str = "", detail: str = "",
                 suggestions: list[str] | None = None) -> None:
        self.model = model
        self.table = table
        self.updated = updated
        self.suggestions = list(suggestions or [])
        where = f"the price table {table} (updated {updated or 'unknown'})" if table else "the price table"
        msg = f"unknown model {model!r}: not in {where}."
        if detail:
            msg += f" {detail}"
        if self.suggestions:
            msg += f" Similar names in the table: {', '.join(self.suggestions)}."
        msg += (" Regenerate the table with `python scripts/update_pricing.py PATH/TO/"
                "model_prices_and_context_window.json` or add an entry for this model to the table "
                "(and point pouch at it).")
        super().__init__(msg)

    def __str__(self) -> str:  # LookupError would not quote, but be explicit
        return str(self.args[0])


# ---------------------------------------------------------------------------------------------
# Usage


def _count(value: Any, name: str) -> int:
    """A token count from provider JSON: int (or integral float); None -> 0; anything else -> ValueError."""
    if value is None:
        return 0
    if isinstance(value, bool):
        raise ValueError(f"usage field {name} must be an integer, got {value!r}")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise ValueError(f"usage field {name} must be an integer, got {value!r}")


def _details(usage: Mapping, *names: str) -> Mapping:
    for name in names:
        value = usage.get(name)
        if value is None:
            continue
        if not isinstance(value, Mapping):
            raise ValueError(f"usage field {name} must be an object, got {value!r}")
        return value
    return {}


def _mapping(usage: Any, what: str) -> Mapping:
    if not isinstance(usage, Mapping):
        raise ValueError(f"{what} must be an object, got {type(usage).__name__}")
    return usage


@dataclass(frozen=True)
class Usage:
    """Token usage of one call, normalised to OpenAI's convention (subsets, never added twice)."""

    input_tokens: int = 0           # ALL prompt tokens, incl. cached and cache-written ones
    cached_tokens: int = 0          # subset of input_tokens read from cache
    cache_write_tokens: int = 0     # subset of input_tokens written to cache (default / 5-minute TTL)
    cache_write_1h_tokens: int = 0  # subset of input_tokens written with the 1-hour TTL (Anthropic)
    output_tokens: int = 0          # ALL generated tokens incl. reasoning
    reasoning_tokens: int = 0       # subset of output_tokens (informational; never added again)
    #: what the provider says it billed for the call, in USD (OpenRouter's ``usage.cost``): when
    #: present it is the cost (``cost``), whatever the table's price says
    billed: Decimal | None = None

    def __post_init__(self) -> None:
        for name in ("input_tokens", "cached_tokens", "cache_write_tokens", "cache_write_1h_tokens",
                     "output_tokens", "reasoning_tokens"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"Usage.{name} must be an int, got {value!r}")
            if value < 0:
                raise ValueError(f"Usage.{name} must not be negative, got {value}")
        parts = self.cached_tokens + self.cache_write_tokens + self.cache_write_1h_tokens
        if parts > self.input_tokens:
            raise ValueError(
                f"invalid usage: cached ({self.cached_tokens}) + cache-write ({self.cache_write_tokens}) "
                f"+ 1h cache-write ({self.cache_write_1h_tokens}) tokens = {parts} exceed the "
                f"{self.input_tokens} input tokens they are part of")
        if self.billed is not None and (not isinstance(self.billed, Decimal) or not self.billed.is_finite()
                                        or self.billed < 0):
            raise ValueError(f"Usage.billed must be a finite, non-negative Decimal, got {self.billed!r}")
        if self.reasoning_tokens > self.output_tokens:
            raise ValueError(
                f"invalid usage: {self.reasoning_tokens} reasoning tokens exceed the "
                f"{self.output_tokens} output tokens they are part of")

    @classmethod
    def from_openai(cls, usage: Mapping) -> Usage:
        """OpenAI-style ``usage``: Chat Completions / legacy Completions, Responses, Embeddings,
        Realtime, and OpenAI-compatible providers (DeepSeek's ``prompt_cache_hit_tokens``)."""
        usage = _mapping(usage, "usage")
        if "prompt_tokens" in usage or "input_tokens" not in usage:
            total_key, out_key = "prompt_tokens", "completion_tokens"
            in_details = _details(usage, "prompt_tokens_details", "input_tokens_details")
            out_details = _details(usage, "completion_tokens_details", "output_tokens_details")
        else:  # Responses API (and Realtime: input_token_details)
            total_key, out_key = "input_tokens", "output_tokens"
            in_details = _details(usage, "input_tokens_details", "input_token_details")
            out_details = _details(usage, "output_tokens_details", "output_token_details")
        hit = _count(usage.get("prompt_cache_hit_tokens"), "prompt_cache_hit_tokens")
        miss = _count(usage.get("prompt_cache_miss_tokens"), "prompt_cache_miss_tokens")
        if usage.get(total_key) is None:
            if "prompt_cache_hit_tokens" in usage or "prompt_cache_miss_tokens" in usage:
                input_tokens = hit + miss
            else:
                raise ValueError(f"usage has no {total_key}: {dict(usage)!r}")
        else:
            input_tokens = _count(usage.get(total_key), total_key)
        cached = _count(in_details.get("cached_tokens"), "cached_tokens")
        if not cached and hit:
            cached = hit  # DeepSeek reports cache hits at the top level
        return cls(
            input_tokens=input_tokens,
            cached_tokens=cached,
            cache_write_tokens=_count(in_details.get("cache_write_tokens"), "cache_write_tokens"),
            output_tokens=_count(usage.get(out_key), out_key),
            reasoning_tokens=_count(out_details.get("reasoning_tokens"), "reasoning_tokens"),
        )

    @classmethod
    def from_anthropic(cls, usage: Mapping) -> Usage:
        """Anthropic Messages ``usage``: ``input_tokens`` EXCLUDES cache reads and writes."""
        usage = _mapping(usage, "usage")
        if usage.get("input_tokens") is None and usage.get("output_tokens") is None:
            raise ValueError(f"usage has neither input_tokens nor output_tokens: {dict(usage)!r}")
        plain = _count(usage.get("input_tokens"), "input_tokens")
        read = _count(usage.get("cache_read_input_tokens"), "cache_read_input_tokens")
        written = _count(usage.get("cache_creation_input_tokens"), "cache_creation_input_tokens")
        split = _details(usage, "cache_creation")
        w5 = _count(split.get("ephemeral_5m_input_tokens"), "ephemeral_5m_input_tokens")
        w1h = _count(split.get("ephemeral_1h_input_tokens"), "ephemeral_1h_input_tokens")
        if w5 + w1h < written:
            w5 += written - (w5 + w1h)  # no (or partial) TTL breakdown: the default TTL is 5 minutes
        output = _count(usage.get("output_tokens"), "output_tokens")
        thinking = _count(_details(usage, "output_tokens_details").get("thinking_tokens"), "thinking_tokens")
        return cls(
            input_tokens=plain + read + w5 + w1h, cached_tokens=read, cache_write_tokens=w5,
            cache_write_1h_tokens=w1h, output_tokens=output, reasoning_tokens=min(thinking, output),
        )

    @classmethod
    def from_gemini(cls, usage_metadata: Mapping) -> Usage:
        """Gemini ``usageMetadata`` (REST camelCase or SDK snake_case).

        ``thoughtsTokenCount`` is reported beside ``candidatesTokenCount`` and is billed as output,
        so it is added, unless ``totalTokenCount`` shows that candidates already include it
        (LiteLLM's ``is_candidate_token_count_inclusive`` check). ``cachedContentTokenCount`` is
        part of ``promptTokenCount``; ``toolUsePromptTokenCount`` is billed as input.
        """
        meta = _mapping(usage_metadata, "usageMetadata")

        def get(camel: str, snake: str) -> int:
            value = meta.get(camel)
            return _count(meta.get(snake) if value is None else value, camel)

        if all(meta.get(k) is None for k in ("promptTokenCount", "prompt_token_count", "candidatesTokenCount",
                                             "candidates_token_count", "totalTokenCount", "total_token_count")):
            raise ValueError(f"usageMetadata has no token counts: {dict(meta)!r}")
        prompt = get("promptTokenCount", "prompt_token_count")
        tool = get("toolUsePromptTokenCount", "tool_use_prompt_token_count")
        cached = get("cachedContentTokenCount", "cached_content_token_count")
        candidates = get("candidatesTokenCount", "candidates_token_count")
        thoughts = get("thoughtsTokenCount", "thoughts_token_count")
        total_raw = meta.get("totalTokenCount", meta.get("total_token_count"))
        inclusive = (thoughts > 0 and total_raw is not None
                     and _count(total_raw, "totalTokenCount") == prompt + candidates + tool)
        output = candidates if inclusive else candidates + thoughts
        return cls(input_tokens=prompt + tool, cached_tokens=cached, output_tokens=output,
                   reasoning_tokens=min(thoughts, output))

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "input_tokens": self.input_tokens, "cached_tokens": self.cached_tokens,
            "cache_write_tokens": self.cache_write_tokens, "cache_write_1h_tokens": self.cache_write_1h_tokens,
            "output_tokens": self.output_tokens, "reasoning_tokens": self.reasoning_tokens,
        }
        if self.billed is not None:
            out["billed_usd"] = str(self.billed)
        return out


# ---------------------------------------------------------------------------------------------
# Prices


@dataclass(frozen=True)
class Rates:
    """USD per 1M tokens, fully resolved (no missing components)."""

    input: Decimal
    cached_input: Decimal
    output: Decimal
    cache_write: Decimal
    cache_write_1h: Decimal

    def scaled(self, factor: Decimal) -> Rates:
        with decimal.localcontext(_CTX):
            return Rates(*(getattr(self, f) * factor for f in _RATE_FIELDS))


_RATE_FIELDS = ("input", "cached_input", "output", "cache_write", "cache_write_1h")


@dataclass(frozen=True)
class ModelPrice:
    name: str
    provider: str
    mode: str  # chat / responses / completion / embedding
    rates: Rates
    tiers: Mapping[str, Rates]  # explicit per-model tier prices ("batch", "flex", "priority", ...)
    long_context: tuple[int, Rates, Mapping[str, Rates]] | None  # (threshold, rates above, tier rates above)
    max_input_tokens: int | None
    max_output_tokens: int | None
    encoding: str | None  # "o200k_base" / "cl100k_base" for OpenAI models, else None
    tier_multipliers: Mapping[str, Decimal] = field(
        default_factory=lambda: DEFAULT_TIER_MULTIPLIERS, compare=False, repr=False)
    deprecation_date: str | None = None
    source: str | None = None
    #: USD per call by Responses output item type; a value is one Decimal or one per search
    #: context size ("low" / "medium" / "high")
    fees: Mapping[str, Decimal | Mapping[str, Decimal]] = field(
        default_factory=lambda: MappingProxyType({}), compare=False, repr=False)

    def rates_for(self, input_tokens: int, tier: str | None = None) -> Rates:
        """The rates that apply to a request with this many input tokens, in this service tier.

        Raises ValueError for a tier string pouch does not know (see ``normalise_tier``).
        """
        tier = normalise_tier(tier)
        base, tiers = self.rates, self.tiers
        if self.long_context is not None and input_tokens > self.long_context[0]:
            lc_rates, lc_tiers = self.long_context[1], self.long_context[2]
            if tier is None:
                return lc_rates
            if tier in lc_tiers:
                return lc_tiers[tier]
            # no explicit long-context price for this tier: scale the long-context rates by the
            # tier's ratio at standard context length
            std_tier = self.rates_for(0, tier)
            return lc_rates.scaled(_ratio(std_tier, base, self.tier_multipliers.get(tier)))
        if tier is None:
            return base
        if tier in tiers:
            return tiers[tier]
        factor = self.tier_multipliers.get(tier)
        if factor is None:
            raise ValueError(f"no price for service tier {tier!r} on {self.name} and no multiplier for it")
        return base.scaled(factor)


def _ratio(block: Rates, base: Rates, fallback: Decimal | None) -> Decimal:
    with decimal.localcontext(_CTX):
        if base.input:
            return block.input / base.input
        if base.output:
            return block.output / base.output
    return fallback if fallback is not None else Decimal(1)


def normalise_tier(tier: str | None) -> str | None:
    """A request's or response's ``service_tier`` as a pricing tier.

    None, "auto", "default", "standard", "standard_only" (Anthropic) and "scale" price as standard
    (None). "flex" -> "flex"; "priority" and "fast" -> "priority" (OpenAI reports "priority" for
    both); "batch" -> "batch"; "ultrafast" -> "ultrafast". Case-insensitive.

    Any other string raises ValueError: an unknown tier has an unknown price, and pouch refuses to
    guess one (the planner turns this into a clear refusal; settlement keeps the requested tier).
    """
    if tier is None:
        return None
    if not isinstance(tier, str):
        raise ValueError(f"service_tier must be a string, got {tier!r}")
    key = tier.strip().lower()
    if key in ("", "auto", "default", "standard", "standard_only", "scale", "on_demand"):
        return None
    if key in ("priority", "fast"):
        return "priority"
    if key in ("flex", "batch", "ultrafast"):
        return key
    if key == "batches":
        return "batch"
    raise ValueError(
        f"unknown service_tier {tier!r}: pouch can price auto/default/standard/scale, flex, batch, "
        "priority/fast and ultrafast")


def cost(price: ModelPrice, usage: Usage, tier: str | None = None) -> Decimal:
    """Exact USD cost of ``usage`` on ``price`` in ``tier`` (a Decimal, never rounded); the
    provider's own bill (``usage.billed``) when it stated one."""
    if usage.billed is not None:
        return usage.billed
    rates = price.rates_for(usage.input_tokens, tier)
    uncached = usage.input_tokens - usage.cached_tokens - usage.cache_write_tokens - usage.cache_write_1h_tokens
    with decimal.localcontext(_CTX):
        total = (
            Decimal(uncached) * rates.input
            + Decimal(usage.cached_tokens) * rates.cached_input
            + Decimal(usage.cache_write_tokens) * rates.cache_write
            + Decimal(usage.cache_write_1h_tokens) * rates.cache_write_1h
            + Decimal(usage.output_tokens) * rates.output
        ) / _PER_MILLION
    return total


# ---------------------------------------------------------------------------------------------
# Tool calls

#: Responses output items of server-side tools that carry a per-call fee (the keys of a model's
#: ``fees``); ``code_interpreter_call`` is priced per container session
FEE_CALLS = ("web_search_call", "file_search_call", "code_interpreter_call", "image_generation_call")
#: ``*_call`` items with no fee of their own, only their tokens: calls the client executes
#: (function, custom, computer use, local shell, apply_patch) and remote MCP calls (OpenAI bills
#: MCP by the tokens of the tool list and results, which the usage includes). Any other ``*_call``
#: item is a server-side tool call with a fee pouch must find in the table.
FREE_CALLS = frozenset({"function_call", "custom_tool_call", "computer_call", "local_shell_call",
                        "shell_call", "apply_patch_call", "mcp_call"})


def count_tool_calls(items: Any) -> dict[str, int]:
    """Billable tool calls among a response's output items, by item type.

    Only ``*_call`` items outside ``FREE_CALLS`` count. A code interpreter call counts once per
    container (OpenAI bills a container session, however many calls use it); a call without a
    ``container_id`` counts on its own. Anything that is not a list of objects counts nothing."""
    counts: dict[str, int] = {}
    containers: set[str] = set()
    for item in items if isinstance(items, (list, tuple)) else ():
        if not isinstance(item, Mapping):
            continue
        kind = item.get("type")
        if not isinstance(kind, str) or not kind.endswith("_call") or kind in FREE_CALLS:
            continue
        if kind == "code_interpreter_call":
            container = item.get("container_id")
            if isinstance(container, str) and container:
                if container in containers:
                    continue
                containers.add(container)
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def tool_fee_cost(fees: Mapping[str, Decimal], calls: Mapping[str, int]) -> tuple[Decimal, list[str]]:
    """USD of ``calls`` at ``fees`` (USD per call by item type), and the call types with no fee."""
    total = _ZERO
    unpriced: list[str] = []
    for kind, n in calls.items():
        fee = fees.get(kind)
        if fee is None:
            unpriced.append(kind)
        elif n > 0:
            total += fee * n
    return total, sorted(unpriced)


# ---------------------------------------------------------------------------------------------
# Table


def _price(raw: Any, where: str) -> Decimal | None:
    if raw is None:
        return None
    if isinstance(raw, bool) or isinstance(raw, float):
        raise ValueError(f"{where}: prices must be decimal strings, got {raw!r}")
    try:
        value = Decimal(str(raw))
    except decimal.InvalidOperation:
        raise ValueError(f"{where}: not a price: {raw!r}") from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"{where}: not a valid price: {raw!r}")
    return value


def _base_rates(raw: Mapping, where: str) -> Rates:
    inp = _price(raw.get("input"), f"{where}.input")
    out = _price(raw.get("output"), f"{where}.output")
    if inp is None:
        raise ValueError(f"{where}: no input price")
    if out is None:
        out = _ZERO if raw.get("mode") == "embedding" else None
        if out is None:
            raise ValueError(f"{where}: no output price")
    cached = _price(raw.get("cached_input"), f"{where}.cached_input")
    write = _price(raw.get("cache_write"), f"{where}.cache_write")
    write_1h = _price(raw.get("cache_write_1h"), f"{where}.cache_write_1h")
    cached = inp if cached is None else cached
    write = inp if write is None else write
    write_1h = write if write_1h is None else write_1h
    return Rates(inp, cached, out, write, write_1h)


def _complete(raw: Mapping, base: Rates, fallback: Decimal | None, where: str) -> Rates:
    """An explicit tier / long-context block; components it omits scale with its input ratio."""
    given = {f: _price(raw.get(f), f"{where}.{f}") for f in _RATE_FIELDS}
    with decimal.localcontext(_CTX):
        if given["input"] is not None and base.input:
            factor = given["input"] / base.input
        elif given["output"] is not None and base.output:
            factor = given["output"] / base.output
        elif fallback is not None:
            factor = fallback
        else:
            factor = Decimal(1)
        values = {}
        for f in _RATE_FIELDS:
            values[f] = given[f] if given[f] is not None else getattr(base, f) * factor
        if given["cache_write_1h"] is None and given["cache_write"] is not None and base.cache_write:
            values["cache_write_1h"] = base.cache_write_1h * (given["cache_write"] / base.cache_write)
    return Rates(**values)


_FEE_SIZES = ("low", "medium", "high")


def _fees(raw: Any, where: str) -> Mapping[str, Decimal | Mapping[str, Decimal]]:
    """``{item type: fee}`` where a fee is a decimal string or ``{size: decimal string}``."""
    if raw is None:
        return MappingProxyType({})
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where} must be an object")
    out: dict[str, Decimal | Mapping[str, Decimal]] = {}
    for kind, value in raw.items():
        if isinstance(value, Mapping):
            sizes = {}
            for size, fee in value.items():
                parsed = _price(fee, f"{where}.{kind}.{size}")
                if parsed is not None:
                    sizes[str(size)] = parsed
            if sizes:
                out[str(kind)] = MappingProxyType(sizes)
        else:
            parsed = _price(value, f"{where}.{kind}")
            if parsed is not None:
                out[str(kind)] = parsed
    return MappingProxyType(out)


def _model_price(name: str, raw: Mapping, multipliers: Mapping[str, Decimal]) -> ModelPrice:
    where = f"models[{name!r}]"
    if not isinstance(raw, Mapping):
        raise ValueError(f"{where} must be an object")
    base = _base_rates(raw, where)
    tiers = {}
    for tier, block in (raw.get("tiers") or {}).items():
        tiers[tier] = _complete(block, base, multipliers.get(tier), f"{where}.tiers.{tier}")
    long_context = None
    lc = raw.get("long_context")
    if lc:
        threshold = lc.get("threshold")
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold <= 0:
            raise ValueError(f"{where}.long_context.threshold must be a positive integer")
        lc_rates = _complete(lc, base, None, f"{where}.long_context")
        lc_tiers = {}
        for tier, block in (lc.get("tiers") or {}).items():
            # a long-context tier block falls back to long-context rates × the tier's ratio
            ref = tiers.get(tier)
            ratio = _ratio(ref, base, multipliers.get(tier)) if ref is not None else multipliers.get(tier)
            lc_tiers[tier] = _complete(block, lc_rates, ratio, f"{where}.long_context.tiers.{tier}")
        long_context = (threshold, lc_rates, MappingProxyType(lc_tiers))
    return ModelPrice(
        name=name, provider=str(raw.get("provider", "")), mode=str(raw.get("mode", "chat")), rates=base,
        tiers=MappingProxyType(tiers), long_context=long_context,
        max_input_tokens=raw.get("max_input_tokens"), max_output_tokens=raw.get("max_output_tokens"),
        encoding=raw.get("encoding"), tier_multipliers=multipliers,
        deprecation_date=raw.get("deprecation_date"), source=raw.get("source"),
        fees=_fees(raw.get("fees"), f"{where}.fees"),
    )


def _cmax(rates: list[Rates]) -> Rates:
    return Rates(*(max(getattr(r, f) for r in rates) for f in _RATE_FIELDS))


def _same_price(a: ModelPrice, b: ModelPrice) -> bool:
    return (a.rates, dict(a.tiers), a.long_context, a.max_input_tokens, a.max_output_tokens, dict(a.fees)) == \
        (b.rates, dict(b.tiers), b.long_context, b.max_input_tokens, b.max_output_tokens, dict(b.fees))


def _max_or_none(values: list[int | None]) -> int | None:
    return None if any(v is None for v in values) else max(v for v in values if v is not None)


def _bound_price(resolved: ModelPrice, members: list[ModelPrice]) -> ModelPrice:
    """One price at least as dear as every member's, for every usage and tier (component-wise max).

    Below the smallest long-context threshold of any member, the rates are the dearest standard
    rates; above it, the dearest rates any member charges above its own threshold (or its
    standard ones, when it has none), so no member is dearer at any input size. Context window
    and max output are the largest (unknown if any member's is unknown); a fee is kept only when
    every member has one (the provider's fallback, the dearest of its models, covers the rest)."""
    if all(_same_price(m, resolved) for m in members):
        return resolved
    tiers = set(TIERS).union(*(m.tiers for m in members))
    thresholds = [m.long_context[0] for m in members if m.long_context is not None]
    long_context = None
    if thresholds:
        above = max(thresholds) + 1
        long_context = (min(thresholds), _cmax([m.rates_for(above) for m in members]),
                        MappingProxyType({t: _cmax([m.rates_for(above, t) for m in members]) for t in sorted(tiers)}))
    fees: dict[str, Decimal | Mapping[str, Decimal]] = {}
    for kind in set.intersection(*(set(m.fees) for m in members)):
        values = [m.fees[kind] for m in members]
        if all(isinstance(v, Decimal) for v in values):
            fees[kind] = max(values)  # type: ignore[type-var]
        else:
            sizes = set().union(*(v.keys() for v in values if isinstance(v, Mapping)))
            fees[kind] = MappingProxyType({
                size: max(v if isinstance(v, Decimal) else v.get(size, max(v.values())) for v in values)
                for size in sorted(sizes)})
    return ModelPrice(
        name=resolved.name, provider=resolved.provider, mode=resolved.mode,
        rates=_cmax([m.rates for m in members]),
        tiers=MappingProxyType({t: _cmax([m.rates_for(0, t) for m in members]) for t in sorted(tiers)}),
        long_context=long_context,
        max_input_tokens=_max_or_none([m.max_input_tokens for m in members]),
        max_output_tokens=_max_or_none([m.max_output_tokens for m in members]),
        encoding=resolved.encoding, tier_multipliers=resolved.tier_multipliers,
        deprecation_date=resolved.deprecation_date,
        source=f"pouch bound: the dearest of {', '.join(sorted(m.name for m in members))}",
        fees=MappingProxyType(fees),
    )


_PREFIXES = ("openai/", "text-completion-openai/", "anthropic/", "gemini/", "google/", "models/")
_DATE_SUFFIX = re.compile(r"(?:-\d{4}-\d{2}-\d{2}|-\d{8}|@\d{8}|-\d{4}|-\d{3})$")


def _strip_prefixes(name: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in _PREFIXES:
            if name.startswith(prefix) and len(name) > len(prefix):
                name, changed = name[len(prefix):], True
    return name


def _undated(name: str) -> str | None:
    stripped = _DATE_SUFFIX.sub("", name)
    return stripped if stripped != name and stripped else None


#: names whose ``resolve_bound`` answer a table keeps (then it starts over)
BOUND_MEMO = 1024


class PriceTable:
    """The loaded price table. ``resolve`` maps a model name (as sent or reported) to its price."""

    _default: PriceTable | None = None
    _default_lock = threading.Lock()

    def __init__(self, data: Mapping, path: str = "<memory>") -> None:
        if not isinstance(data, Mapping) or not isinstance(data.get("models"), Mapping):
            raise ValueError(f"{path}: not a pouch price table (no `models` object)")
        self.path = path
        self.source: str = str(data.get("source", ""))
        self.updated: str = str(data.get("updated", ""))
        multipliers = dict(DEFAULT_TIER_MULTIPLIERS)
        for tier, factor in (data.get("tier_multipliers") or {}).items():
            value = _price(factor, f"tier_multipliers.{tier}")
            if value is not None:
                multipliers[tier] = value
        self.tier_multipliers: Mapping[str, Decimal] = MappingProxyType(multipliers)
        self._models: dict[str, ModelPrice] = {}
        self._bound_by_name: dict[str, ModelPrice] = {}  # resolve_bound's answers by the name asked
        for name, raw in data["models"].items():
            self._models[name] = _model_price(name, raw, self.tier_multipliers)
        self._lower = {name.lower(): name for name in self._models}
        self._aliases = {str(k).lower(): str(v) for k, v in (data.get("aliases") or {}).items()}
        for alias, target in self._aliases.items():
            if target not in self._models:
                raise ValueError(f"{path}: alias {alias!r} points to unknown model {target!r}")
        raw_fees = data.get("tool_fees", {})
        if not isinstance(raw_fees, Mapping):
            raise ValueError(f"{path}: tool_fees must be an object")
        #: per provider: the fee of a tool call for models without their own (see module docstring)
        self.tool_fees: Mapping[str, Mapping[str, Decimal | Mapping[str, Decimal]]] = MappingProxyType(
            {str(p): _fees(f, f"tool_fees.{p}") for p, f in raw_fees.items()})
        self._families: dict[str, list[ModelPrice]] = {}
        for name, price in self._models.items():
            low = name.lower()
            self._families.setdefault(_undated(low) or low, []).append(price)
        self._bounds: dict[str, ModelPrice] = {}

    # -- loading

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> PriceTable:
        """Load a table file; ``None`` loads (once, then cached) the packaged ``pricing.json``."""
        if path is not None:
            with open(path, encoding="utf-8") as fh:
                return cls(json.load(fh), os.fspath(path))
        with cls._default_lock:
            if cls._default is None:
                resource = importlib.resources.files("pouch_addon.assets") / "pricing.json"
                cls._default = cls(json.loads(resource.read_text(encoding="utf-8")), str(resource))
            return cls._default

    # -- lookup

    def _get(self, name: str) -> ModelPrice | None:
        if name in self._models:
            return self._models[name]
        low = name.lower()
        if low in self._lower:
            return self._models[self._lower[low]]
        if low in self._aliases:
            return self._models[self._aliases[low]]
        return None

    def _plain(self, name: str) -> ModelPrice | None:
        """Exact / case-insensitive / alias, then without provider prefix, Azure spelling, date."""
        seen: list[str] = []
        for candidate in self._spellings(name):
            if candidate in seen:
                continue
            seen.append(candidate)
            found = self._get(candidate)
            if found is not None:
                return found
        return None

    @staticmethod
    def _spellings(name: str) -> list[str]:
        out = [name]
        bare = _strip_prefixes(name.lower())
        out.append(bare)
        if bare.startswith("gpt-35-"):
            bare = "gpt-3.5-" + bare[len("gpt-35-"):]
            out.append(bare)
        if bare.startswith("claude-") and "." in bare:  # OpenRouter style claude-sonnet-4.5
            bare = bare.replace(".", "-")
            out.append(bare)
        if "@" in bare:  # Vertex style claude-sonnet-4@20250514
            bare = bare.replace("@", "-")
            out.append(bare)
        undated = _undated(bare)
        if undated:
            out.append(undated)
        return out

    def resolve(self, model: str) -> ModelPrice:
        """The price of ``model``; raises UnknownModel (never a guess, never $0)."""
        if not isinstance(model, str) or not model.strip():
            raise UnknownModel(str(model), self.path, self.updated, "A model name is required.")
        name = model.strip()
        bare = _strip_prefixes(name.lower())
        if bare.startswith("ft:"):
            return self._resolve_fine_tune(model, name, bare)
        found = self._plain(name)
        if found is None:
            raise UnknownModel(model, self.path, self.updated, suggestions=self._suggest(bare))
        return found

    def resolve_bound(self, model: str) -> ModelPrice:
        """The price to reserve a request for ``model`` at: at least as dear as any model the
        provider may serve (and report, and bill) for that name. Raises UnknownModel.

        A dated snapshot (``gpt-4o-2024-08-06``) or a fine-tune is served as itself: its own
        price. An undated name is an alias the provider resolves to one of its dated snapshots
        (``gpt-4o`` to ``gpt-4o-2024-05-13`` once, ``-08-06`` now), so the bound is the
        component-wise dearest of the name's entry and every snapshot of it in the table. A
        snapshot newer than the table resolves (date stripped) to the name's own entry, which
        is part of the bound."""
        memo = self._bound_by_name.get(model) if isinstance(model, str) else None
        if memo is not None:  # the table does not change: each name is resolved once
            return memo
        found = self._resolve_bound(model)
        if len(self._bound_by_name) >= BOUND_MEMO:
            self._bound_by_name.clear()  # bounded: clients may send any number of names
        self._bound_by_name[model] = found
        return found

    def _resolve_bound(self, model: str) -> ModelPrice:
        price = self.resolve(model)
        bare = _strip_prefixes(model.strip().lower())
        if bare.startswith("ft:") or _undated(bare) is not None:
            return price
        low = price.name.lower()
        key = _undated(low) or low
        found = self._bounds.get(key)
        if found is None:
            members = self._families.get(key, [])
            if price not in members:
                members = [*members, price]
            found = self._bounds[key] = _bound_price(price, members)
        return found

    def call_fee(self, price: ModelPrice, kind: str, size: str | None = None) -> tuple[Decimal, bool] | None:
        """USD per ``kind`` call (a Responses output item type) on ``price``: the model's own fee,
        else its provider's fallback (then the flag is True); None when the table has neither.

        A fee by search context size uses ``size`` ("medium", the API's default, when None); an
        unknown size gets the dearest size, so a reservation never undershoots."""
        for fees, fallback in ((price.fees, False), (self.tool_fees.get(price.provider, {}), True)):
            fee = fees.get(kind)
            if fee is None:
                continue
            if isinstance(fee, Mapping):
                size = "medium" if size is None else size
                fee = fee[size] if size in fee else max(fee.values())
            return fee, fallback
        return None

    def _resolve_fine_tune(self, model: str, name: str, bare: str) -> ModelPrice:
        # ft:BASE:org:name:id / ft:BASE:org::id / ft:BASE
        base = bare[3:].split(":", 1)[0]
        found = self._get(name) or self._get(bare) or self._get("ft:" + base)
        if found is not None:
            return found
        # the table's ft: entries for the same base model, any snapshot: the dearest, to be safe
        key = _undated(base) or base
        candidates = [p for n, p in self._models.items()
                      if n.lower().startswith("ft:") and (_undated(n[3:].lower()) or n[3:].lower()) == key]
        if candidates:
            return max(candidates, key=lambda p: (p.rates.input + p.rates.output, p.name))
        raise UnknownModel(
            model, self.path, self.updated,
            f"It is a fine-tune of {base!r}, and the table has no `ft:` price for that base model. "
            "Fine-tuned inference is priced above the base model, so pouch will not use the base "
            "model's price.")

    def _suggest(self, bare: str) -> list[str]:
        return difflib.get_close_matches(bare, list(self._lower), n=3, cutoff=0.75)

    def __contains__(self, model: object) -> bool:
        if not isinstance(model, str):
            return False
        try:
            self.resolve(model)
        except UnknownModel:
            return False
        return True

    def names(self) -> list[str]:
        return sorted(self._models)

    def __len__(self) -> int:
        return len(self._models)
