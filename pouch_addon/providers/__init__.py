"""One module per provider wire format: what it bills, how it bounds, meters and answers.

Each module (``openai``, ``anthropic``, ``gemini``) offers the same functions: ``classify(method, path)`` (billed / free / refused /
unknown), ``refusal(method, path)``, ``draft(method, path, body, table=, settings=)`` (a
``plan.DraftPlan``), ``usage_from_body(body)`` (usage, reported model, tier), ``output_texts(body)``,
``tool_calls_from_body(api, body)``, ``error_body(status, message, code)`` (pouch's answers in
the provider's error shape) and ``new_meter(plan, reservation, sse=)`` (a stream meter with
``metering.StreamMeter``'s interface). The gate, the meter and settlement ask the module of the
flow's host (``for_host``); a host in ``pouch_hosts`` that none claims speaks OpenAI's format.
"""

from __future__ import annotations

from types import ModuleType

from . import anthropic, gemini, local, openai

#: provider modules by name
PROVIDERS: dict[str, ModuleType] = {openai.NAME: openai, anthropic.NAME: anthropic, gemini.NAME: gemini}
#: local model servers: chosen by host and port (``pouch_local_hosts``), never by ``for_host``
PROVIDERS[local.NAME] = local
#: the hosts pouch decrypts and budgets by default
DEFAULT_HOSTS = [host for mod in PROVIDERS.values() for host in mod.HOSTS]
#: provider name by host
HOSTS: dict[str, str] = {host: mod.NAME for mod in PROVIDERS.values() for host in mod.HOSTS}


def for_host(host: str) -> ModuleType:
    """The provider module answering at ``host`` (OpenAI's format for any host none claims)."""
    return PROVIDERS[HOSTS.get(host.lower().rstrip("."), openai.NAME)]


def model_label(entry: dict) -> str:
    """How the CLI and the TUI name a call's model: ``provider/model`` when the entry records its
    provider (entries from before providers show the bare model)."""
    model, provider = entry.get("model"), entry.get("provider")
    if not model:
        return ""
    return f"{provider}/{model}" if provider else str(model)


__all__ = ["PROVIDERS", "HOSTS", "DEFAULT_HOSTS", "for_host", "model_label", "openai", "anthropic", "gemini", "local"]
