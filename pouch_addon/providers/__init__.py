"""One module per provider wire format: what it bills, how it bounds, meters and answers.

Each module (``anthropic``, ``gemini``; OpenAI's rules live in ``plan``, ``metering`` and
``settlement``) offers the same functions: ``classify(method, path)`` (billed / free / refused /
unknown), ``refusal(method, path)``, ``draft(method, path, body, table=, settings=)`` (a
``plan.DraftPlan``), ``usage_from_body(body)`` (usage, reported model, tier), ``output_texts(body)``,
``error_body(status, message, code)`` (pouch's answers in the provider's error shape) and
``new_meter(plan, reservation, ...)`` (a stream meter with ``metering.StreamMeter``'s interface).
"""

from __future__ import annotations

from types import ModuleType

from . import anthropic, gemini

#: provider modules by name
PROVIDERS: dict[str, ModuleType] = {anthropic.NAME: anthropic, gemini.NAME: gemini}
#: provider name by host
HOSTS: dict[str, str] = {host: mod.NAME for mod in PROVIDERS.values() for host in mod.HOSTS}


def for_host(host: str) -> ModuleType | None:
    """The provider module answering at ``host`` (None: OpenAI's rules, or not a provider)."""
    name = HOSTS.get(host.lower().rstrip("."))
    return PROVIDERS.get(name) if name else None


__all__ = ["PROVIDERS", "HOSTS", "for_host", "anthropic", "gemini"]
