"""Azure OpenAI (``{resource}.openai.azure.com``): OpenAI's format, with the model chosen by a deployment.

The same API answers on an Azure AI Services (Foundry) resource's other names,
``{resource}.cognitiveservices.azure.com`` and ``{resource}.services.ai.azure.com`` (the endpoint
the portal shows for such a resource), so those are Azure hosts too: a call there is budgeted like
one on ``openai.azure.com``. Their other paths (Speech, Vision, Language, the Foundry model
inference API ``/models/...``) are not priced: refused as unknown endpoints (fail closed) unless
``pouch_unknown_endpoints=pass``, or the host is removed from ``pouch_hosts``.

Pure, apart from the deployment map the shell keeps current (:func:`set_deployments`, from
``azure.json`` in the pouch home, written by ``pouch azure map``).

**Paths.** ``/openai/deployments/{deployment}/chat/completions?api-version=...`` (also
``/completions``, ``/embeddings``), the v1 API ``/openai/v1/chat/completions`` (also
``/responses``, ``/embeddings``, ``/completions``) and the preview ``/openai/responses``, where
the body's ``model`` names the deployment. Each maps onto OpenAI's ``/v1/...`` and OpenAI's rules;
images, audio and "on your data" extensions are not priced (refused unless
``pouch_unknown_endpoints=pass``).

**The model.** A deployment is a name the customer chose; Azure says which model it runs only in
the response. To reserve before the call pouch needs it first: ``pouch azure map DEPLOYMENT
MODEL`` records it, and a call to a deployment with no mapping is refused (400
``pouch_unmapped_deployment``, naming that command). Prices are LiteLLM's ``azure/...`` entries.
At settle the response's ``model`` (e.g. ``gpt-4o-2024-08-06``) prices the call; one outside the
mapped model's family is flagged ``model_reported_mismatch`` and logged (the map is wrong).

**Keys.** The ``api-key`` header (or ``Authorization: Bearer``) carries the key; a pouch virtual key
there is swapped for the vault's ``azure`` key (``pouch key add azure``).

**Streams.** Azure starts a stream with a chunk with no model and no choices, only
``prompt_filter_results``, and annotates content chunks with ``content_filter_results`` (more
annotation chunks with asynchronous filtering): OpenAI's meter forwards and ignores them. pouch
asks for ``stream_options.include_usage`` only where Azure accepts it: the v1 API and
``api-version`` 2024-09-01 or later.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, unquote

from ..plan import BILLED, DraftPlan, PlanError, PlanSettings, canonical_path
from ..plan import classify as openai_classify
from ..pricing import UnknownModel
from . import openai
from .compat import CompatStreamMeter, _ScopedTable, hide_usage

NAME = "azure"
JSON_ARRAY_STREAMS = False
#: host patterns: ``*.`` matches one DNS label (``providers.host_matches``)
HOSTS = ("*.openai.azure.com", "*.cognitiveservices.azure.com", "*.services.ai.azure.com")
PREFIX = "azure/"
#: the first api-version that accepts ``stream_options``
STREAM_OPTIONS_SINCE = "2024-09-01"

_deployments: dict[str, str] = {}


def set_deployments(mapping: Mapping[str, str]) -> None:
    """Replace the deployment -> model map (names compared case-insensitively)."""
    global _deployments
    _deployments = {str(k).lower(): str(v) for k, v in mapping.items()}


def deployments() -> dict[str, str]:
    return dict(_deployments)


def split(path: str) -> tuple[str | None, str | None]:
    """(the OpenAI path ``/v1/...``, the deployment named in the path) of an Azure request path."""
    raw = [unquote(s) for s in path.split("?", 1)[0].split("/") if s]
    canon = canonical_path(path)
    parts = canon.strip("/").split("/")
    if len(parts) >= 3 and parts[0] == "openai" and parts[1] == "deployments":
        dep = raw[2] if len(raw) > 2 and raw[0].lower() == "openai" else parts[2]
        return "/v1/" + "/".join(parts[3:]), dep
    if len(parts) >= 2 and parts[0] == "openai" and parts[1] == "v1":
        return "/v1/" + "/".join(parts[2:]), None
    if len(parts) >= 2 and parts[0] == "openai":
        return "/v1/" + "/".join(parts[1:]), None
    return None, None


def classify(method: str, path: str, *, has_body: bool = False) -> str:
    mapped, _ = split(path)
    if mapped is None:
        return "unknown"
    return openai_classify(method, mapped, has_body=has_body)


def refusal(method: str, path: str) -> str:
    return f"pouch: {method} {path} cannot be priced on Azure OpenAI; nothing was sent"


def _api_version(path: str) -> str | None:
    values = parse_qs(path.partition("?")[2]).get("api-version")
    return values[0] if values else None


def unmapped(deployment: str) -> PlanError:
    return PlanError(
        f"pouch: the Azure deployment {deployment!r} is not mapped to a model, so pouch cannot price it. Map it "
        f"with `pouch azure map {deployment} MODEL` (the model it runs, e.g. gpt-4o-2024-08-06); "
        "nothing was sent", code="pouch_unmapped_deployment")


class _Names:
    """``compat._ScopedTable``'s provider: Azure's names are ``azure/`` + the model."""

    NAME = NAME

    @staticmethod
    def price_name(model: str) -> str:
        return PREFIX + model


def draft(method: str, path: str, body: dict[str, Any], *, table: Any,
          settings: PlanSettings = PlanSettings()) -> DraftPlan:
    mapped, deployment = split(path)
    if mapped is None or mapped not in BILLED:
        raise PlanError(refusal(method, path), status=403, code="pouch_unknown_endpoint")
    if deployment is None:  # v1 API and /openai/responses: the body's model names the deployment
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise PlanError("pouch: the request has no `model` (the deployment); nothing was sent",
                            code="pouch_missing_model")
        deployment = name
    model = _deployments.get(deployment.lower())
    if model is None:
        raise unmapped(deployment)
    try:
        price = table.resolve(PREFIX + model)
    except UnknownModel as exc:
        raise PlanError(f"pouch: the Azure deployment {deployment!r} is mapped to {model!r}, which has no Azure "
                        f"price ({str(exc).strip(chr(34) + chr(39))}); nothing was sent",
                        code="pouch_unknown_model") from None
    if price.provider != NAME:
        raise PlanError(f"pouch: {model!r} is not an Azure OpenAI model in the price table; nothing was sent",
                        code="pouch_unknown_model")
    version = _api_version(path)
    accepts = "/openai/v1/" in canonical_path(path) + "/" or (version is not None and version[:10] >= STREAM_OPTIONS_SINCE)
    settings = replace(settings, inject_usage=settings.inject_usage and accepts)
    draft = openai.draft(method, mapped, {**body, "model": model}, table=_ScopedTable(table, _Names()),
                         settings=settings)
    if draft.cap_field == "max_completion_tokens" and not accepts:
        draft.cap_field = "max_tokens"  # api-versions before 2024-09-01 know only max_tokens
    return draft


def reported_name(model: str | None) -> str | None:
    return PREFIX + model if model else model


def usage_from_body(body: Any) -> tuple[Any, str | None, str | None]:
    usage, model, tier = openai.usage_from_body(body)
    return usage, reported_name(model), tier


tool_calls_from_body = openai.tool_calls_from_body
usage_from_counts = openai.usage_from_counts
output_texts = openai.output_texts
error_body = openai.error_body


class AzureStreamMeter(CompatStreamMeter):
    """OpenAI's meter; the reported model named ``azure/...`` (the first chunk's is empty)."""

    @property
    def model_reported(self) -> str | None:  # type: ignore[override]
        return reported_name(self._model_reported)

    @model_reported.setter
    def model_reported(self, value: str | None) -> None:
        self._model_reported = value

    def _chat_chunk(self, obj: dict[str, Any]) -> bool:
        return super(CompatStreamMeter, self)._chat_chunk(obj)


def new_meter(plan: Any, reservation: Decimal, *, sse: bool = True,
              content_encoding: str | None = None) -> AzureStreamMeter:
    return AzureStreamMeter(
        plan.api, plan.price, plan.model, plan.input_tokens, reservation,
        hide_usage_chunk=hide_usage(plan),
        tier=plan.tier, fees=plan.fees, fixed_fee=plan.fixed_fee, content_encoding=content_encoding)


__all__ = ["NAME", "HOSTS", "classify", "refusal", "draft", "usage_from_body", "tool_calls_from_body",
           "output_texts", "error_body", "new_meter", "set_deployments", "deployments", "split"]
