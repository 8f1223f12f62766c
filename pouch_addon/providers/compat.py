"""Hosted OpenAI-compatible providers: OpenRouter, DeepSeek, Groq, Mistral, xAI, Together, Fireworks,
Perplexity. Pure.

They speak OpenAI's Chat Completions (and Completions / Embeddings) format at their own base path,
so each is OpenAI's rules (``plan``, ``metering``) behind a host table (:data:`HOSTS_TABLE`): its
host names, the path prefixes its API lives under (mapped onto OpenAI's ``/v1/...``), the prefix
of its model names in the price table, and whether it accepts ``stream_options``.

**Prices.** ``scripts/update_pricing.py`` keeps LiteLLM's prefixed keys for these providers
(``deepseek/deepseek-chat``, ``groq/openai/gpt-oss-120b``), so a name prices only on its own
host: ``gpt-4o`` sent to DeepSeek is an unknown model there, refused like an unknown model on
OpenAI. The reported model is looked up the same way. LiteLLM has no OpenRouter entries: an
OpenRouter ``vendor/model`` is priced at the vendor's own entry (``openai/gpt-4o`` at OpenAI's
``gpt-4o``, ``anthropic/...`` at Anthropic's, ``google/...`` at Gemini's, ``x-ai/``,
``deepseek/``, ``mistralai/`` at xAI's, DeepSeek's, Mistral's), because OpenRouter passes the
underlying provider's price through (openrouter.ai/docs/faq). Other vendors are refused. pouch
also sets OpenRouter's ``provider.max_price`` to those rates, so OpenRouter does not route the
call to a dearer host than the reservation assumed. Routing suffixes (``:nitro``, ``:floor``,
``:free``, ``:exacto``, ``:thinking``) price as the model; ``:online``, ``plugins`` and model
fallbacks (``models``, ``route``) add fees or models pouch cannot bound: refused.

**Output bound.** The request's cap, or one pouch injects as ``max_tokens`` (the member every
compatible API takes; DeepSeek and Mistral know no other).

**Input bound.** These models' tokenizers are not tiktoken's, so the input is bounded like
Anthropic's (``_bounds``): at most one token per UTF-8 byte of the request's JSON, never more
than the context window; images and what the body does not show: the context window.

**Usage.** ``Usage.from_openai`` reads DeepSeek's ``prompt_cache_hit_tokens`` /
``prompt_cache_miss_tokens``. OpenRouter's ``usage.cost`` (USD; with BYOK plus
``cost_details.upstream_inference_cost``) is the bill when present (``Usage.billed``). Groq's
``x_groq.usage`` is read when no ``usage`` comes. A ``completion_tokens`` that leaves the
reasoning out (xAI), as the totals show, gets it added (``reasoning_inside``). OpenRouter reports streamed usage when asked
(``usage: {"include": true}`` besides ``stream_options``): pouch asks, and hides the usage chunk
from clients that did not. Its ``: OPENROUTER PROCESSING`` comments pass through unmetered, and
its mid-stream ``error`` events are recorded like OpenAI's. Hosts that reject ``stream_options``
(Mistral's API forbids unknown members; Fireworks and Perplexity are sent none either) get none:
their streams are metered by counting and settled from the usage they send anyway, if any.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from decimal import Decimal, InvalidOperation
from typing import Any

from ..metering import StreamMeter
from ..plan import BILLED, DraftPlan, PlanError, PlanSettings, canonical_path
from ..plan import classify as openai_classify
from ..pricing import ModelPrice, PriceTable, UnknownModel, Usage
from . import _bounds, openai

__all__ = ["Host", "HOSTS_TABLE", "CompatProvider", "CompatStreamMeter", "PROVIDERS", "openai_path"]


@dataclass(frozen=True)
class Host:
    """One OpenAI-compatible provider: where it answers and how its names are priced."""

    name: str  # the provider: vault key (`pouch key add NAME`), ledger, virtual keys
    title: str
    hosts: tuple[str, ...]
    bases: tuple[str, ...]  # path prefixes of its API, mapped onto OpenAI's /v1
    prefix: str  # its model names' prefix in the price table ("" for OpenRouter: by vendor)
    stream_options: bool  # accepts stream_options.include_usage


#: the host table (bases from each provider's documentation, §5.3 of llm-wire-formats.md)
HOSTS_TABLE: tuple[Host, ...] = (
    Host("openrouter", "OpenRouter", ("openrouter.ai",), ("/api/v1",), "", True),
    Host("deepseek", "DeepSeek", ("api.deepseek.com",), ("/v1", "/beta", ""), "deepseek/", True),
    Host("groq", "Groq", ("api.groq.com",), ("/openai/v1",), "groq/", True),
    Host("mistral", "Mistral", ("api.mistral.ai",), ("/v1",), "mistral/", False),
    Host("xai", "xAI", ("api.x.ai",), ("/v1",), "xai/", True),
    Host("together", "Together", ("api.together.xyz", "api.together.ai"), ("/v1",), "together_ai/", True),
    Host("fireworks", "Fireworks", ("api.fireworks.ai",), ("/inference/v1",), "fireworks_ai/", False),
    Host("perplexity", "Perplexity", ("api.perplexity.ai",), ("/v1", ""), "perplexity/", False),
)

#: OpenRouter vendor -> (price-table prefix, table provider)
OPENROUTER_VENDORS: dict[str, tuple[str, str]] = {
    "openai": ("", "openai"), "anthropic": ("", "anthropic"), "google": ("", "gemini"),
    "x-ai": ("xai/", "xai"), "deepseek": ("deepseek/", "deepseek"), "mistralai": ("mistral/", "mistral"),
}
#: OpenRouter model suffixes that choose a route, not another model (priced as the model)
_ROUTE_SUFFIX = re.compile(r":(free|nitro|floor|exacto|thinking|extended)$")


def openai_path(host: Host, path: str) -> str | None:
    """The OpenAI path (``/v1/...``) of a request path on ``host``, or None outside its API."""
    path = canonical_path(path)
    for base in host.bases:
        if not base:
            return "/v1" + path
        if path == base or path.startswith(base + "/"):
            return "/v1" + path[len(base):]
    return None


class _ScopedTable:
    """The price table as one host sees it: names resolve through the host's prefix only."""

    def __init__(self, table: PriceTable, provider: CompatProvider) -> None:
        self.table, self.provider = table, provider

    def resolve_bound(self, model: str) -> ModelPrice:
        return self.table.resolve_bound(self.provider.price_name(model))

    def resolve(self, model: str) -> ModelPrice:
        return self.table.resolve(self.provider.price_name(model))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.table, name)


class CompatProvider:
    """A provider module's interface (see ``providers/__init__``) for one :class:`Host`."""

    JSON_ARRAY_STREAMS = False

    def __init__(self, host: Host) -> None:
        self.host = host
        self.NAME = host.name
        self.HOSTS = host.hosts

    def __repr__(self) -> str:
        return f"<provider {self.NAME}>"

    # -- names and prices ------------------------------------------------------------------------
    def price_name(self, model: str) -> str:
        """The price-table name of ``model`` on this host (raises UnknownModel)."""
        if self.host.name != "openrouter":
            return self.host.prefix + model
        name = _ROUTE_SUFFIX.sub("", model.strip())
        vendor, slash, rest = name.partition("/")
        found = OPENROUTER_VENDORS.get(vendor.lower())
        if not slash or not rest or found is None:
            raise UnknownModel(model, detail=(
                "pouch prices OpenRouter models of the vendors whose own prices OpenRouter passes through ("
                + ", ".join(f"{v}/" for v in OPENROUTER_VENDORS) + ")."))
        return found[0] + rest

    def _expected_provider(self, model: str) -> str:
        if self.host.name != "openrouter":
            return self.host.name
        return OPENROUTER_VENDORS[_ROUTE_SUFFIX.sub("", model.strip()).partition("/")[0].lower()][1]

    def reported_name(self, model: str | None) -> str | None:
        """The reported model as a price-table name (as reported when it has none)."""
        if not model:
            return model
        try:
            return self.price_name(model)
        except UnknownModel:
            return model

    # -- classify ----------------------------------------------------------------------------------
    def classify(self, method: str, path: str, *, has_body: bool = False) -> str:
        mapped = openai_path(self.host, path)
        if mapped is None:
            return "unknown"
        return openai_classify(method, mapped, has_body=has_body)

    def refusal(self, method: str, path: str) -> str:
        return f"pouch: {method} {path} cannot be priced on {self.host.title}; nothing was sent"

    # -- plan --------------------------------------------------------------------------------------
    def draft(self, method: str, path: str, body: dict[str, Any], *, table: Any,
              settings: PlanSettings = PlanSettings()) -> DraftPlan:
        mapped = openai_path(self.host, path)
        if mapped is None or mapped not in BILLED:
            raise PlanError(self.refusal(method, path), status=403, code="pouch_unknown_endpoint")
        model = body.get("model")
        if self.host.name == "openrouter":
            self._openrouter_checks(body)
        if isinstance(model, str) and model:
            try:
                self._check_provider(table, model)
            except UnknownModel as exc:
                raise PlanError(f"pouch: {model!r} is not a model pouch has a {self.host.title} price for "
                                f"({str(exc).strip(chr(34) + chr(39))}); nothing was sent",
                                code="pouch_unknown_model") from None
        settings = replace(settings, inject_usage=settings.inject_usage and self.host.stream_options)
        draft = openai.draft(method, mapped, body, table=_ScopedTable(table, self), settings=settings)
        if draft.cap_field == "max_completion_tokens":
            draft.cap_field = "max_tokens"  # what every compatible API takes (Mistral, DeepSeek: only that)
        # the input: one token per UTF-8 byte at most (these tokenizers are not tiktoken's)
        if not draft.input_hidden:
            bound, notes = _bounds.reserved_input(_bounds.utf8_len(body), [], draft.price, draft.model)
            if bound >= draft.reserved_input_tokens:  # the body's bytes decide: an exact count cannot lower it
                draft.input_method = None
            draft.reserved_input_tokens = max(draft.reserved_input_tokens, bound)
            draft.input_tokens = draft.reserved_input_tokens
        if self.host.name == "openrouter":
            self._openrouter_rewrites(draft, body)
        if self.host.name == "perplexity" and not draft.fixed_fee:
            # every Sonar request searches before it answers: one search fee per request
            opts = body.get("web_search_options")
            size = opts.get("search_context_size") if isinstance(opts, Mapping) else None
            found = table.call_fee(draft.price, "web_search_call", size if isinstance(size, str) else None)
            if found is not None:
                draft.fixed_fee = found[0]
        return draft

    def _check_provider(self, table: PriceTable, model: str) -> None:
        price = table.resolve(self.price_name(model))
        if price.provider != self._expected_provider(model):
            raise UnknownModel(model, detail=f"the table prices it as a {price.provider} model")

    @staticmethod
    def _openrouter_checks(body: dict[str, Any]) -> None:
        model = body.get("model")
        if isinstance(model, str) and model.strip().endswith(":online"):
            raise PlanError("pouch: OpenRouter's :online variant adds web search fees pouch cannot bound; "
                            "nothing was sent", code="pouch_unbounded")
        for member in ("plugins", "models", "route"):
            if body.get(member):
                raise PlanError(f"pouch: OpenRouter's `{member}` may run other models or paid plugins than the one "
                                "priced, so pouch cannot bound the call; nothing was sent", code="pouch_unbounded")

    @staticmethod
    def _openrouter_rewrites(draft: DraftPlan, body: dict[str, Any]) -> None:
        """Ask for usage in a stream (OpenRouter's own switch besides stream_options), and cap the
        route's price at the rates reserved (``provider.max_price``, USD per 1M tokens)."""
        if draft.stream and "stream_options" in draft.rewrites:
            usage = body.get("usage")
            draft.rewrites["usage"] = {**(usage if isinstance(usage, dict) else {}), "include": True}
        pref = body.get("provider")
        pref = pref if isinstance(pref, dict) else {}
        mine = {"prompt": draft.price.rates.input, "completion": draft.price.rates.output}
        theirs = pref.get("max_price") if isinstance(pref.get("max_price"), dict) else {}
        cap: dict[str, Any] = dict(theirs)
        for key, rate in mine.items():
            try:
                given = Decimal(str(theirs[key])) if key in theirs else None
            except InvalidOperation:
                given = None
            cap[key] = float(rate if given is None or given > rate else given)
        draft.rewrites["provider"] = {**pref, "max_price": cap}

    # -- responses ---------------------------------------------------------------------------------
    def usage_from_body(self, body: Any) -> tuple[Usage | None, str | None, str | None]:
        if isinstance(body, Mapping) and isinstance(body.get("usage"), Mapping):
            body = {**body, "usage": reasoning_inside(body["usage"])}
        usage, model, tier = openai.usage_from_body(body)
        if isinstance(body, Mapping):
            raw = body.get("usage")
            if usage is None:
                usage, raw = _groq_usage(body)
            if usage is not None and isinstance(raw, Mapping) and self.host.name == "openrouter":
                usage = with_billed(usage, raw)
        return usage, self.reported_name(model), tier

    tool_calls_from_body = staticmethod(openai.tool_calls_from_body)
    usage_from_counts = staticmethod(openai.usage_from_counts)
    output_texts = staticmethod(openai.output_texts)
    error_body = staticmethod(openai.error_body)

    def new_meter(self, plan: Any, reservation: Decimal, *, sse: bool = True,
                  content_encoding: str | None = None) -> CompatStreamMeter:
        meter = CompatStreamMeter(
            plan.api, plan.price, plan.model, plan.input_tokens, reservation,
            hide_usage_chunk=hide_usage(plan),
            tier=plan.tier, fees=plan.fees, fixed_fee=plan.fixed_fee, content_encoding=content_encoding)
        meter.provider = self
        return meter


def hide_usage(plan: Any) -> bool:
    """Whether the usage chunk (and the ``"usage": null`` of the others) is pouch's doing, to be
    taken out: only when pouch asked for it, for a client that did not."""
    return (plan.stream and not plan.client_wants_usage and plan.api in ("chat", "completions")
            and "stream_options" in plan.rewrites)


def _number(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        d = Decimal(repr(value) if isinstance(value, float) else str(value))
    except InvalidOperation:
        return None
    return d if d.is_finite() and d >= 0 else None


def with_billed(usage: Usage, raw: Mapping[str, Any]) -> Usage:
    """``usage`` with OpenRouter's bill (``usage.cost``, plus the upstream cost for BYOK calls,
    where OpenRouter's cost is its fee only); unchanged without one."""
    cost = _number(raw.get("cost"))
    if cost is None:
        return usage
    if raw.get("is_byok") is True:
        details = raw.get("cost_details")
        upstream = _number(details.get("upstream_inference_cost")) if isinstance(details, Mapping) else None
        if upstream is None:
            return usage  # the upstream bill is unknown: priced by the table
        cost += upstream
    return replace(usage, billed=cost)


def reasoning_inside(raw: Mapping[str, Any]) -> Mapping[str, Any]:
    """``raw`` with the reasoning inside ``completion_tokens`` (OpenAI's convention, which
    ``Usage`` keeps). Some hosts (xAI) report ``completion_tokens`` without the reasoning; that is
    taken as so only when the totals prove it: ``total_tokens`` = prompt + completion + reasoning
    (and not prompt + completion)."""
    details = raw.get("completion_tokens_details")
    reasoning = details.get("reasoning_tokens") if isinstance(details, Mapping) else None
    prompt, completion, total = raw.get("prompt_tokens"), raw.get("completion_tokens"), raw.get("total_tokens")
    if not all(isinstance(v, int) and not isinstance(v, bool) for v in (reasoning, prompt, completion, total)):
        return raw
    if reasoning > 0 and total == prompt + completion + reasoning and total != prompt + completion:
        return {**raw, "completion_tokens": completion + reasoning}
    return raw


def _groq_usage(obj: Mapping[str, Any]) -> tuple[Usage | None, Any]:
    extra = obj.get("x_groq")
    raw = extra.get("usage") if isinstance(extra, Mapping) else None
    if not isinstance(raw, Mapping):
        return None, None
    try:
        return Usage.from_openai(raw), raw
    except ValueError:
        return None, None


class CompatStreamMeter(StreamMeter):
    """OpenAI's stream meter plus the hosts' usage quirks: OpenRouter's ``usage.cost``, Groq's
    ``x_groq.usage``; the reported model named as the price table names it on this host."""

    provider: CompatProvider

    def _chat_chunk(self, obj: dict[str, Any]) -> bool:
        usage = obj.get("usage")
        if usage.__class__ is dict and "completion_tokens_details" in usage:
            obj["usage"] = reasoning_inside(usage)  # the parsed copy; the bytes forwarded are the provider's
        keep = super()._chat_chunk(obj)
        usage = obj.get("usage")
        if usage.__class__ is dict:
            if self._usage is not None and "cost" in usage and self.provider.host.name == "openrouter":
                self._usage = with_billed(self._usage, usage)
        elif "x_groq" in obj:
            found, _ = _groq_usage(obj)
            if found is not None:
                self._usage, self._usage_final = found, True
        return keep

    @property
    def model_reported(self) -> str | None:  # type: ignore[override]
        return self.provider.reported_name(self._model_reported) if hasattr(self, "provider") else self._model_reported

    @model_reported.setter
    def model_reported(self, value: str | None) -> None:
        self._model_reported = value


#: one provider object per host
PROVIDERS: tuple[CompatProvider, ...] = tuple(CompatProvider(h) for h in HOSTS_TABLE)
