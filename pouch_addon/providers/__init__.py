"""One module per provider wire format: what it bills, how it bounds, meters and answers.

Each module (``openai``, ``anthropic``, ``gemini``, ``azure``, and one ``compat.CompatProvider``
object per OpenAI-compatible host) offers the same functions: ``classify(method, path)`` (billed / free / refused /
unknown), ``refusal(method, path)``, ``draft(method, path, body, table=, settings=)`` (a
``plan.DraftPlan``), ``usage_from_body(body)`` (usage, reported model, tier), ``output_texts(body)``,
``tool_calls_from_body(api, body)``, ``error_body(status, message, code)`` (pouch's answers in
the provider's error shape) and ``new_meter(plan, reservation, sse=)`` (a stream meter with
``metering.StreamMeter``'s interface). The gate, the meter and settlement ask the module of the
flow's host (``for_host``; ``*.`` in a host pattern is one DNS label); a host in ``pouch_hosts``
that none claims speaks OpenAI's format.
"""

from __future__ import annotations

from types import ModuleType

from typing import Any

from . import anthropic, azure, compat, gemini, local, openai

#: provider modules by name (the OpenAI-compatible hosts of ``compat.HOSTS_TABLE`` are objects
#: with the same interface)
PROVIDERS: dict[str, Any] = {openai.NAME: openai, anthropic.NAME: anthropic, gemini.NAME: gemini}
PROVIDERS.update({p.NAME: p for p in compat.PROVIDERS})
PROVIDERS[azure.NAME] = azure
#: local model servers: chosen by host and port (``pouch_local_hosts``), never by ``for_host``
PROVIDERS[local.NAME] = local
#: the hosts pouch decrypts and budgets by default (``*.`` stands for one DNS label)
DEFAULT_HOSTS = [host for mod in PROVIDERS.values() for host in mod.HOSTS]
#: provider name by host (or host pattern)
HOSTS: dict[str, str] = {host: mod.NAME for mod in PROVIDERS.values() for host in mod.HOSTS}


def host_matches(pattern: str, host: str) -> bool:
    """``host`` is ``pattern``, or one DNS label in front of a ``*.`` pattern's suffix."""
    if pattern.startswith("*."):
        label, dot, rest = host.partition(".")
        return bool(label) and bool(dot) and rest == pattern[2:]
    return host == pattern


def for_host(host: str) -> ModuleType:
    """The provider module answering at ``host`` (OpenAI's format for any host none claims)."""
    host = host.lower().rstrip(".")
    name = HOSTS.get(host)
    if name is None:
        name = next((n for p, n in HOSTS.items() if p.startswith("*.") and host_matches(p, host)), openai.NAME)
    return PROVIDERS[name]


def model_label(entry: dict) -> str:
    """How the CLI and the TUI name a call's model: ``provider/model`` when the entry records its
    provider (entries from before providers show the bare model)."""
    model, provider = entry.get("model"), entry.get("provider")
    if not model:
        return ""
    return f"{provider}/{model}" if provider else str(model)


__all__ = ["PROVIDERS", "HOSTS", "DEFAULT_HOSTS", "for_host", "host_matches", "model_label", "openai", "anthropic",
           "gemini", "compat", "azure", "local"]
