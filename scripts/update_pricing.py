#!/usr/bin/env python3
"""Regenerate pouch's price table (assets/pricing.json) from LiteLLM's price file.

    python scripts/update_pricing.py PATH/TO/model_prices_and_context_window.json \
        [--out assets/pricing.json] [--check] [--allow-rejects] [--litellm-version 1.109.1]

LiteLLM's file ships inside the `litellm` wheel as
`litellm/model_prices_and_context_window_backup.json` (and lives in the BerriAI/litellm repo as
`model_prices_and_context_window.json`). Prices there are USD per token as JSON floats; they are
converted exactly (`Decimal(repr(x)) * 1_000_000`) to decimal strings per 1M tokens.

Selection (see `select`):
- providers `openai`, `text-completion-openai`, `anthropic`, `gemini`; modes chat / responses /
  completion / embedding; `gemini/X` keys are stored as `X` (pouch resolves `gemini/X` too);
- the OpenAI-compatible hosts of `COMPAT_PREFIXES` (DeepSeek, Groq, Mistral, xAI, Together,
  Fireworks, Perplexity, Azure): their entries whose key carries the provider's prefix, stored
  under that key (`deepseek/deepseek-chat`), so a name prices only on its own host. DeepSeek's
  `input_cost_per_token_cache_hit` is its cached-input price; a cache-write price of 0 (DeepSeek
  states one, and bills no writes) is dropped, so a write would price as input. OpenRouter has no
  entries of its own in LiteLLM's file: its `vendor/model` names price at the vendor's entry
  (`pouch_addon/providers/compat.py`);
- skipped with a reason: entries without a token price, chat entries priced 0/0 (free or
  experimental: a $0 price would let unbounded spend through a budget firewall; pouch refuses an
  unknown model instead), and OpenAI audio chat models (audio tokens are priced separately and
  pouch only prices text tokens: refusing beats under-pricing);
- plus EXTRAS (models the file lacks, each with its source), OVERRIDES (known upstream data
  problems, each with its reason and applied only while the problem is present) and ALIASES.

Sanity rules (`sanity_problems`, prices per 1M tokens). An entry is REJECTED (left out, reported,
exit status 2 unless --allow-rejects) when:
- a price is not a finite decimal, or is negative;
- input > $1000 or any other price (output, cache, tier, long context) > $2000 per 1M
  (the dearest real prices are ~$150 in / $600 out: o1-pro);
- a chat/responses/completion model is priced 0 for both input and output, or an embedding model
  has input 0;
- output < input / 10 for chat/responses/completion models (no real model is priced like that; it
  smells of a mistyped exponent);
- cached input > input, or a cache write < input (reads are discounted, writes are not);
- a batch/flex tier dearer than standard, or a priority/ultrafast tier cheaper than standard;
- a long-context block cheaper than the standard rates, or a threshold that is not a positive int;
- several long-context thresholds, or a reasoning-token price that differs from the output price
  (pouch prices one threshold and bills reasoning as output);
- max_input_tokens / max_output_tokens present but not a positive integer;
- a tool fee (USD per call) that is not a decimal above 0 and at most $MAX_FEE.

Tool fees (USD per call, see `FEE_KEYS`): a model's `search_context_cost_per_query` becomes
`fees.web_search_call` by search context size, `file_search_cost_per_1k_calls` / 1000
`fees.file_search_call`, `code_interpreter_cost_per_session` `fees.code_interpreter_call`. The
table-level `tool_fees` holds, per provider, the fee for models without their own: the
`code_interpreter_cost_per_session` of LiteLLM's `PROVIDER/container` entry, and for every other
kind the dearest fee any selected model of that provider has (an upper bound, not a guess).

Output: a readable diff against the current table (added / removed / changed models, old -> new).
`--check` prints it and exits 1 if anything would change, writing nothing. Without changes the
file is left untouched (its `updated` stamp too).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import re
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

SOURCE = ("LiteLLM model_prices_and_context_window.json (github.com/BerriAI/litellm), per-token "
          "prices x 1e6; entries with their own `source` are pouch extras or overrides")
PROVIDERS = {"openai": "openai", "text-completion-openai": "openai", "anthropic": "anthropic", "gemini": "gemini"}
#: OpenAI-compatible hosts (``pouch_addon/providers/compat.py``, ``azure.py``): LiteLLM provider ->
#: (pouch provider, the key prefix its entries carry). Their entries keep LiteLLM's key, prefix
#: included (``deepseek/deepseek-chat``), so a name only ever prices on its own host.
COMPAT_PREFIXES = {
    "deepseek": ("deepseek", "deepseek/"), "groq": ("groq", "groq/"), "mistral": ("mistral", "mistral/"),
    "xai": ("xai", "xai/"), "together_ai": ("together", "together_ai/"),
    "fireworks_ai": ("fireworks", "fireworks_ai/"), "perplexity": ("perplexity", "perplexity/"),
    "azure": ("azure", "azure/"),
}
PROVIDERS.update({litellm: pouch for litellm, (pouch, _) in COMPAT_PREFIXES.items()})
MODES = ("chat", "responses", "completion", "embedding")
CHATTY = ("chat", "responses", "completion")

#: table-level fallbacks when a model has no explicit price for a tier (see pouch_addon/pricing.py)
TIER_MULTIPLIERS = {"batch": "0.5", "flex": "0.5", "priority": "2.5", "ultrafast": "6"}
#: LiteLLM key suffix -> pouch tier name ("_decisions" and other unknown suffixes are ignored)
TIER_SUFFIXES = {"batches": "batch", "flex": "flex", "priority": "priority", "ultrafast": "ultrafast"}
#: pouch rate field -> LiteLLM key
FIELD_KEYS = {
    "input": "input_cost_per_token",
    "cached_input": "cache_read_input_token_cost",
    "output": "output_cost_per_token",
    "cache_write": "cache_creation_input_token_cost",
    "cache_write_1h": "cache_creation_input_token_cost_above_1hr",
}
RATE_FIELDS = tuple(FIELD_KEYS)
MAX_INPUT_PRICE = Decimal(1000)
MAX_OTHER_PRICE = Decimal(2000)
#: the dearest plausible tool fee, USD per call (real ones are cents)
MAX_FEE = Decimal(5)
#: LiteLLM key -> (pouch fee kind = Responses output item type, divisor to get USD per call)
FEE_KEYS = {
    "search_context_cost_per_query": ("web_search_call", 1),
    "file_search_cost_per_1k_calls": ("file_search_call", 1000),
    "code_interpreter_cost_per_session": ("code_interpreter_call", 1),
}
_SIZE_PREFIX = "search_context_size_"

_THRESHOLD_KEY = re.compile(r"^(?:input|output)_cost_per_token_above_(\d+)(k?)_tokens$")

ANTHROPIC_PRICING = "Anthropic pricing page (docs.anthropic.com/en/docs/about-claude/pricing)"

#: models LiteLLM's file lacks (retired from it, or only present under other providers' keys)
EXTRAS: dict[str, dict[str, Any]] = {
    "claude-opus-4-20250514": {
        "provider": "anthropic", "mode": "chat", "input": "15", "cached_input": "1.5", "output": "75",
        "cache_write": "18.75", "cache_write_1h": "30",
        "tiers": {"batch": {"input": "7.5", "output": "37.5"}},
        "max_input_tokens": 200000, "max_output_tokens": 32000,
        "source": f"pouch extra: {ANTHROPIC_PRICING}; LiteLLM Bedrock entry "
                  "anthropic.claude-opus-4-20250514-v1:0 has the same base prices",
        "_check_against": "anthropic.claude-opus-4-20250514-v1:0",
    },
    "claude-opus-4-1-20250805": {
        "provider": "anthropic", "mode": "chat", "input": "15", "cached_input": "1.5", "output": "75",
        "cache_write": "18.75", "cache_write_1h": "30",
        "tiers": {"batch": {"input": "7.5", "output": "37.5"}},
        "max_input_tokens": 200000, "max_output_tokens": 32000,
        "source": f"pouch extra: {ANTHROPIC_PRICING}; LiteLLM Bedrock entry "
                  "anthropic.claude-opus-4-1-20250805-v1:0 has the same base prices",
        "_check_against": "anthropic.claude-opus-4-1-20250805-v1:0",
    },
    "claude-sonnet-4-20250514": {
        "provider": "anthropic", "mode": "chat", "input": "3", "cached_input": "0.3", "output": "15",
        "cache_write": "3.75", "cache_write_1h": "6",
        "tiers": {"batch": {"input": "1.5", "output": "7.5"}},
        "long_context": {"threshold": 200000, "input": "6", "cached_input": "0.6", "output": "22.5",
                         "cache_write": "7.5", "cache_write_1h": "12"},
        "max_input_tokens": 1000000, "max_output_tokens": 64000,
        "source": f"pouch extra: {ANTHROPIC_PRICING}; LiteLLM Bedrock entry "
                  "anthropic.claude-sonnet-4-20250514-v1:0 (same prices incl. >200K tier); "
                  "1M-token context with the context-1m beta",
        "_check_against": "anthropic.claude-sonnet-4-20250514-v1:0",
    },
    "claude-3-5-haiku-20241022": {
        "provider": "anthropic", "mode": "chat", "input": "0.8", "cached_input": "0.08", "output": "4",
        "cache_write": "1", "cache_write_1h": "1.6",
        "tiers": {"batch": {"input": "0.4", "output": "2"}},
        "max_input_tokens": 200000, "max_output_tokens": 8192,
        "source": f"pouch extra: {ANTHROPIC_PRICING}; LiteLLM Bedrock entry "
                  "anthropic.claude-3-5-haiku-20241022-v1:0 has the same base prices",
        "_check_against": "anthropic.claude-3-5-haiku-20241022-v1:0",
    },
    "chatgpt-4o-latest": {
        "provider": "openai", "mode": "chat", "input": "5", "cached_input": "5", "output": "15",
        "max_input_tokens": 128000, "max_output_tokens": 16384,
        "source": "pouch extra: OpenAI list price $5 / $15 per 1M (no cached-input discount), as in "
                  "earlier LiteLLM releases; no longer in LiteLLM 1.109.1",
    },
    "o1-mini": {
        "provider": "openai", "mode": "chat", "input": "1.1", "cached_input": "0.55", "output": "4.4",
        "tiers": {"batch": {"input": "0.55", "output": "2.2"}},
        "max_input_tokens": 128000, "max_output_tokens": 65536,
        "source": "pouch extra: LiteLLM azure/o1-mini entry (same as OpenAI's o1-mini list price "
                  "after the January 2025 cut); no openai entry in LiteLLM 1.109.1",
        "_check_against": "azure/o1-mini",
    },
    "gpt-4-32k": {
        "provider": "openai", "mode": "chat", "input": "60", "cached_input": "60", "output": "120",
        "max_input_tokens": 32768, "max_output_tokens": 4096,
        "source": "pouch extra: LiteLLM azure/gpt-4-32k entry (OpenAI list price $60 / $120 per 1M)",
        "_check_against": "azure/gpt-4-32k",
    },
}

#: name -> target (resolution also strips provider prefixes, dates and the Azure gpt-35 spelling)
ALIASES: dict[str, str] = {
    "claude-opus-4-0": "claude-opus-4-20250514",
    "claude-opus-4-1": "claude-opus-4-1-20250805",
    "claude-sonnet-4-0": "claude-sonnet-4-20250514",
    "claude-3-5-haiku-latest": "claude-3-5-haiku-20241022",
    "gpt-4-turbo-preview": "gpt-4-turbo",
    "gpt-4-0125-preview": "gpt-4-turbo",
    "o1-mini-2024-09-12": "o1-mini",
    "gpt-4-32k-0613": "gpt-4-32k",
}

_SONNET_45_LONG_CONTEXT = {
    "long_context": {"threshold": 200000, "input": "6", "cached_input": "0.6", "output": "22.5",
                     "cache_write": "7.5", "cache_write_1h": "12"},
    "max_input_tokens": 1000000,
    "source": f"LiteLLM + pouch override: >200K-token tier and 1M context (context-1m beta) from the "
              f"{ANTHROPIC_PRICING}; LiteLLM 1.109.1 lacks them for the direct anthropic entry",
}


@dataclass(frozen=True)
class Override:
    when: Callable[[Mapping[str, Any]], bool]  # applied only while the upstream problem is present
    patch: Mapping[str, Any]  # None deletes a key
    reason: str


OVERRIDES: dict[str, Override] = {
    "ft:gpt-4o-2024-11-20": Override(
        when=lambda raw: "cache_creation_input_token_cost" in raw and "cache_read_input_token_cost" not in raw,
        patch={"cached_input": "1.875", "cache_write": None},
        reason="LiteLLM lists the cached-input price (half the input price, as for ft:gpt-4o-2024-08-06) "
               "under cache_creation_input_token_cost",
    ),
    "claude-sonnet-4-5": Override(
        when=lambda raw: "input_cost_per_token_above_200k_tokens" not in raw,
        patch=_SONNET_45_LONG_CONTEXT, reason="add the >200K-token long-context tier"),
    "claude-sonnet-4-5-20250929": Override(
        when=lambda raw: "input_cost_per_token_above_200k_tokens" not in raw,
        patch=_SONNET_45_LONG_CONTEXT, reason="add the >200K-token long-context tier"),
}


# ---------------------------------------------------------------------------------------------
# conversion


def per_million(value: Any) -> str:
    """LiteLLM's per-token float -> exact decimal string per 1M tokens (2.5e-06 -> "2.5")."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"not a price: {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"not a finite price: {value!r}")
    try:
        d = Decimal(repr(value) if isinstance(value, float) else str(value)) * 1_000_000
    except InvalidOperation:
        raise ValueError(f"not a price: {value!r}") from None
    return _dec_str(d)


def _dec_str(d: Decimal) -> str:
    if d == 0:
        return "0"
    return format(d.normalize(), "f")


def encoding_for(name: str) -> str:
    """tiktoken's encoding for an OpenAI model name (rules of tiktoken/model.py)."""
    n = name[3:] if name.startswith("ft:") else name
    n = n.split(":", 1)[0]
    if n in ("gpt-4", "gpt-3.5-turbo", "gpt-3.5", "gpt-35-turbo", "davinci-002", "babbage-002") or \
            n.startswith(("gpt-4-", "gpt-3.5-turbo-", "gpt-35-turbo-", "text-embedding-")):
        return "cl100k_base"
    return "o200k_base"


def usd_exact(value: Any) -> str:
    """LiteLLM's USD float -> exact decimal string (0.025 -> "0.025")."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"not a fee: {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"not a finite fee: {value!r}")
    try:
        return _dec_str(Decimal(repr(value) if isinstance(value, float) else str(value)))
    except InvalidOperation:
        raise ValueError(f"not a fee: {value!r}") from None


def convert_fees(raw: Mapping[str, Any]) -> dict[str, Any]:
    """A LiteLLM entry's tool fees -> pouch `fees` ({} when it has none); raises ValueError."""
    fees: dict[str, Any] = {}
    for key, (kind, divisor) in FEE_KEYS.items():
        value = raw.get(key)
        if value is None:
            continue
        if isinstance(value, Mapping):
            sizes = {k.removeprefix(_SIZE_PREFIX): _dec_str(Decimal(usd_exact(v)) / divisor)
                     for k, v in sorted(value.items()) if v is not None}
            if sizes:
                fees[kind] = sizes
        else:
            fees[kind] = _dec_str(Decimal(usd_exact(value)) / divisor)
    return fees


def provider_tool_fees(litellm: Mapping[str, Any], models: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Per provider, the fee for models without their own (see the module docstring)."""
    out: dict[str, dict[str, Any]] = {}
    for key, raw in litellm.items():
        if not isinstance(raw, Mapping) or key.partition("/")[2] != "container":
            continue
        provider = PROVIDERS.get(str(raw.get("litellm_provider")))
        if provider is not None and key.partition("/")[0] == raw.get("litellm_provider"):
            try:
                fees = convert_fees(raw)
            except ValueError:
                continue
            if "code_interpreter_call" in fees:
                out.setdefault(provider, {})["code_interpreter_call"] = fees["code_interpreter_call"]
    # kind -> size ("" for a flat fee) -> the dearest fee, per provider
    dearest: dict[str, dict[str, dict[str, str]]] = {}
    for entry in models.values():
        for kind, fee in (entry.get("fees") or {}).items():
            sizes = dearest.setdefault(entry["provider"], {}).setdefault(kind, {})
            for size, value in (fee.items() if isinstance(fee, Mapping) else [("", fee)]):
                if size not in sizes or Decimal(value) > Decimal(sizes[size]):
                    sizes[size] = value
    for provider, kinds in dearest.items():
        for kind, sizes in kinds.items():
            fee: Any = sizes[""] if list(sizes) == [""] else {k: v for k, v in sorted(sizes.items()) if k}
            out.setdefault(provider, {}).setdefault(kind, fee)
    return {p: {k: out[p][k] for k in sorted(out[p])} for p in sorted(out)}


def _rates_block(raw: Mapping[str, Any], key_of: Callable[[str], str]) -> dict[str, str]:
    out = {}
    for f, base_key in FIELD_KEYS.items():
        key = key_of(base_key)
        if raw.get(key) is not None:
            out[f] = per_million(raw[key])
    return out


def _thresholds(raw: Mapping[str, Any]) -> list[tuple[int, str]]:
    found = {}
    for key, value in raw.items():
        m = _THRESHOLD_KEY.match(key)
        if m and value is not None:
            label = m.group(1) + m.group(2)
            found[label] = int(m.group(1)) * (1000 if m.group(2) else 1)
    return sorted(((v, k) for k, v in found.items()))


def convert(name: str, raw: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """One LiteLLM entry -> (pouch entry, problems found while converting)."""
    problems: list[str] = []
    provider = PROVIDERS[raw["litellm_provider"]]
    mode = raw["mode"]
    entry: dict[str, Any] = {"provider": provider, "mode": mode}
    try:
        if raw.get("cache_read_input_token_cost") is None and raw.get("input_cost_per_token_cache_hit") is not None:
            raw = {**raw, "cache_read_input_token_cost": raw["input_cost_per_token_cache_hit"]}  # DeepSeek
        if raw["litellm_provider"] in COMPAT_PREFIXES and raw.get("cache_creation_input_token_cost") == 0:
            raw = {k: v for k, v in raw.items() if k != "cache_creation_input_token_cost"}
        base = _rates_block(raw, lambda k: k)
        if mode == "embedding" and "output" not in base:
            base["output"] = "0"
        if "cached_input" not in base and "input" in base:
            base["cached_input"] = base["input"]  # no cache discount published: billed as input
        for f in RATE_FIELDS:
            if f in base:
                entry[f] = base[f]
        tiers = {}
        for suffix, tier in TIER_SUFFIXES.items():
            block = _rates_block(raw, lambda k: f"{k}_{suffix}")
            if block:
                tiers[tier] = block
        if tiers:
            entry["tiers"] = tiers
        thresholds = _thresholds(raw)
        if len(thresholds) > 1:
            problems.append(f"several long-context thresholds {[t for t, _ in thresholds]}; pouch prices one")
        if thresholds:
            threshold, label = thresholds[0]
            lc: dict[str, Any] = {"threshold": threshold}
            lc.update(_rates_block(raw, lambda k: f"{k}_above_{label}_tokens"))
            lc_tiers = {}
            for suffix, tier in TIER_SUFFIXES.items():
                block = _rates_block(raw, lambda k: f"{k}_above_{label}_tokens_{suffix}")
                if block:
                    lc_tiers[tier] = block
            if lc_tiers:
                lc["tiers"] = lc_tiers
            entry["long_context"] = lc
        reasoning = raw.get("output_cost_per_reasoning_token")
        if reasoning is not None and "output" in entry and per_million(reasoning) != entry["output"]:
            problems.append(f"reasoning tokens priced apart from output ({per_million(reasoning)} vs "
                            f"{entry['output']}); pouch bills reasoning as output")
        fees = convert_fees(raw)
        if fees:
            entry["fees"] = fees
    except ValueError as exc:
        problems.append(str(exc))
    for key in ("max_input_tokens", "max_output_tokens"):
        entry[key] = raw.get(key)
    if provider == "openai":
        entry["encoding"] = encoding_for(name)
    if raw.get("deprecation_date"):
        entry["deprecation_date"] = raw["deprecation_date"]
    return entry, problems


def _apply_patch(entry: dict[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(entry)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = json.loads(json.dumps(value))
    return out


# ---------------------------------------------------------------------------------------------
# sanity


def _dec(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        return None
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        return None
    return d if d.is_finite() else None


def _resolved(block: Mapping[str, Any]) -> dict[str, Decimal]:
    """The rate fields a block states (already known to parse)."""
    return {f: d for f in RATE_FIELDS if f in block and (d := _dec(block[f])) is not None}


def sanity_problems(entry: Mapping[str, Any]) -> list[str]:
    """What is wrong with one pouch table entry (prices per 1M tokens); [] when it looks sane."""
    problems: list[str] = []
    mode = entry.get("mode")
    if mode not in MODES:
        problems.append(f"mode {mode!r} is not one of {', '.join(MODES)}")
    blocks: list[tuple[str, Mapping[str, Any]]] = [("", entry)]
    for tier, block in (entry.get("tiers") or {}).items():
        blocks.append((f"tiers.{tier}.", block))
    lc = entry.get("long_context")
    if lc:
        blocks.append(("long_context.", lc))
        for tier, block in (lc.get("tiers") or {}).items():
            blocks.append((f"long_context.tiers.{tier}.", block))
    for prefix, block in blocks:
        for f in RATE_FIELDS:
            if f not in block:
                continue
            d = _dec(block[f])
            if d is None:
                problems.append(f"{prefix}{f} is not a decimal price: {block[f]!r}")
            elif d < 0:
                problems.append(f"{prefix}{f} is negative: {block[f]}")
            elif f == "input" and d > MAX_INPUT_PRICE:
                problems.append(f"{prefix}input ${d}/1M is above the ${MAX_INPUT_PRICE}/1M sanity limit")
            elif f != "input" and d > MAX_OTHER_PRICE:
                problems.append(f"{prefix}{f} ${d}/1M is above the ${MAX_OTHER_PRICE}/1M sanity limit")
    if problems:
        return problems

    base = _resolved(entry)
    inp, out = base.get("input"), base.get("output")
    if inp is None:
        problems.append("no input price")
        return problems
    if out is None and mode != "embedding":
        problems.append("no output price")
        return problems
    out = out or Decimal(0)
    if mode in CHATTY:
        if inp == 0 and out == 0:
            problems.append("input and output are both 0 (a free price would bypass the budget)")
        elif out < inp / 10:
            problems.append(f"output ${out}/1M is below a tenth of input ${inp}/1M (mistyped exponent?)")
    elif mode == "embedding" and inp == 0:
        problems.append("embedding input price is 0 (a free price would bypass the budget)")
    if "cached_input" in base and base["cached_input"] > inp:
        problems.append(f"cached_input ${base['cached_input']}/1M is above input ${inp}/1M")
    for f in ("cache_write", "cache_write_1h"):
        if f in base and base[f] < inp:
            problems.append(f"{f} ${base[f]}/1M is below input ${inp}/1M (cache writes are not discounted)")

    for tier, block in (entry.get("tiers") or {}).items():
        rates = _resolved(block)
        for f, d in rates.items():
            ref = base.get(f, inp if f != "output" else out)
            if tier in ("batch", "flex") and d > ref:
                problems.append(f"tiers.{tier}.{f} ${d}/1M is above the standard ${ref}/1M")
            if tier in ("priority", "ultrafast") and d < ref:
                problems.append(f"tiers.{tier}.{f} ${d}/1M is below the standard ${ref}/1M")
    if lc:
        threshold = lc.get("threshold")
        if isinstance(threshold, bool) or not isinstance(threshold, int) or threshold <= 0:
            problems.append(f"long_context.threshold must be a positive integer, got {threshold!r}")
        for f, d in _resolved(lc).items():
            ref = base.get(f, inp if f != "output" else out)
            if d < ref:
                problems.append(f"long_context.{f} ${d}/1M is below the standard ${ref}/1M")
    for key in ("max_input_tokens", "max_output_tokens"):
        value = entry.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
            problems.append(f"{key} must be a positive integer or null, got {value!r}")
    problems += fee_problems(entry.get("fees"), "fees")
    return problems


def fee_problems(fees: Any, where: str) -> list[str]:
    """What is wrong with a `fees` object (USD per call): each fee must be in (0, MAX_FEE]."""
    if fees is None:
        return []
    if not isinstance(fees, Mapping):
        return [f"{where} must be an object"]
    problems = []
    for kind, fee in fees.items():
        values = fee.items() if isinstance(fee, Mapping) else [("", fee)]
        for size, value in values:
            label = f"{where}.{kind}" + (f".{size}" if size else "")
            d = _dec(value)
            if d is None:
                problems.append(f"{label} is not a decimal fee: {value!r}")
            elif d <= 0:
                problems.append(f"{label} is {value}: a free tool call would bypass the budget")
            elif d > MAX_FEE:
                problems.append(f"{label} ${d} per call is above the ${MAX_FEE} sanity limit")
    return problems


# ---------------------------------------------------------------------------------------------
# build


@dataclass
class BuildReport:
    rejected: dict[str, list[str]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def skip_reason(key: str, raw: Mapping[str, Any]) -> str | None:
    """Why a selected-provider LiteLLM entry is left out (None: keep it)."""
    if raw.get("input_cost_per_token") is None or (
            raw.get("output_cost_per_token") is None and raw.get("mode") != "embedding"):
        return "no token price"
    if raw.get("mode") in CHATTY and not raw.get("input_cost_per_token") and not raw.get("output_cost_per_token"):
        return "priced 0/0 (free or experimental): pouch refuses it instead of metering it at $0"
    if raw.get("litellm_provider") in ("openai", "azure") and "audio" in key:
        return "audio model: audio tokens are priced apart and pouch prices text tokens only"
    return None


def select(litellm: Mapping[str, Any]) -> dict[str, str]:
    """pouch name -> LiteLLM key, for the providers and modes pouch prices."""
    chosen: dict[str, str] = {}
    for key, raw in litellm.items():
        if key == "sample_spec" or not isinstance(raw, Mapping):
            continue
        if raw.get("litellm_provider") not in PROVIDERS or raw.get("mode") not in MODES:
            continue
        compat = COMPAT_PREFIXES.get(str(raw.get("litellm_provider")))
        if compat is not None:
            if key.startswith(compat[1]) and len(key) > len(compat[1]) and key.rpartition("/")[2] != "container":
                chosen[key] = key  # kept whole: the prefix scopes it to its host
            continue
        name = key[len("gemini/"):] if key.startswith("gemini/") else key
        if "/" in name:
            continue  # e.g. openai/container: not a model name a client sends
        if name in chosen and not key.startswith("gemini/"):
            continue  # prefer the canonical gemini/X key over a bare duplicate
        chosen[name] = key
    return chosen


def build_table(litellm: Mapping[str, Any], *, updated: str | None = None,
                generated_from: str = "LiteLLM model_prices_and_context_window.json",
                report: BuildReport | None = None) -> dict[str, Any]:
    """LiteLLM's price dict -> pouch's table dict (rejected entries are left out, see `report`)."""
    report = report if report is not None else BuildReport()
    models: dict[str, dict[str, Any]] = {}
    chosen = select(litellm)
    for name, key in chosen.items():
        raw = litellm[key]
        # a bare duplicate of a gemini/X key that is skipped should not come back through the bare key
        reason = skip_reason(key, raw)
        if reason:
            bare = litellm.get(name) if key != name else None
            if isinstance(bare, Mapping) and bare.get("litellm_provider") == "gemini" \
                    and bare.get("mode") in MODES and skip_reason(name, bare) is None:
                key, raw = name, bare
                report.notes.append(f"{name}: gemini/{name} is {reason.split(':')[0]}; using the bare key")
            else:
                report.skipped[name] = reason
                continue
        elif key.startswith("gemini/") and isinstance(litellm.get(name), Mapping) \
                and litellm[name].get("litellm_provider") == "gemini" and litellm[name].get("mode") in MODES:
            other, _ = convert(name, litellm[name])
            mine, _ = convert(name, raw)
            if {f: other.get(f) for f in RATE_FIELDS} != {f: mine.get(f) for f in RATE_FIELDS}:
                report.notes.append(f"{name}: the gemini/{name} and bare keys disagree; using gemini/{name}")
        entry, problems = convert(name, raw)
        override = OVERRIDES.get(name)
        if override is not None and override.when(raw):
            entry = _apply_patch(entry, override.patch)
            report.notes.append(f"{name}: override applied ({override.reason})")
        problems += sanity_problems(entry)
        if problems:
            report.rejected[name] = problems
            continue
        models[name] = entry
    for name, extra in EXTRAS.items():
        if name in models:
            report.notes.append(f"{name}: now in LiteLLM's file; the pouch extra is not used")
            continue
        entry = {k: json.loads(json.dumps(v)) for k, v in extra.items() if not k.startswith("_")}
        if entry["provider"] == "openai":
            entry["encoding"] = encoding_for(name)
        check = extra.get("_check_against")
        if check and isinstance(litellm.get(check), Mapping):
            theirs = {f: per_million(litellm[check][k]) for f, k in FIELD_KEYS.items()
                      if f in ("input", "output") and litellm[check].get(k) is not None}
            mine = {f: entry[f] for f in theirs}
            if theirs != mine:
                report.notes.append(f"{name}: extra price {mine} differs from LiteLLM {check} {theirs}; check it")
        problems = sanity_problems(entry)
        if problems:
            report.rejected[name] = problems
            continue
        models[name] = entry
    aliases = {a: t for a, t in ALIASES.items() if t in models and a not in models}
    tool_fees = provider_tool_fees(litellm, models)
    for provider, fees in list(tool_fees.items()):
        problems = fee_problems(fees, f"tool_fees.{provider}")
        if problems:
            report.rejected[f"tool_fees.{provider}"] = problems
            del tool_fees[provider]
    return {
        "source": SOURCE,
        "updated": updated or _dt.date.today().isoformat(),
        "generated_from": generated_from,
        "tier_multipliers": dict(TIER_MULTIPLIERS),
        "tool_fees": tool_fees,
        "aliases": dict(sorted(aliases.items())),
        "models": {name: _ordered(models[name]) for name in sorted(models)},
    }


_ORDER = ("provider", "mode", *RATE_FIELDS, "tiers", "long_context", "max_input_tokens",
          "max_output_tokens", "encoding", "deprecation_date", "fees", "source")


def _ordered(entry: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: entry[k] for k in _ORDER if k in entry}
    out.update({k: v for k, v in entry.items() if k not in out})
    return out


def dumps_table(table: Mapping[str, Any]) -> str:
    """Stable JSON text: header keys first, then one line per model (diff-friendly)."""
    lines = ["{"]
    head = [k for k in table if k != "models"]
    for k in head:
        lines.append(f"  {json.dumps(k)}: {json.dumps(table[k], ensure_ascii=False)},")
    lines.append('  "models": {')
    names = list(table.get("models", {}))
    for i, name in enumerate(names):
        sep = "," if i < len(names) - 1 else ""
        lines.append(f"    {json.dumps(name)}: {json.dumps(table['models'][name], ensure_ascii=False)}{sep}")
    lines.append("  }")
    lines.append("}")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# diff


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def _summary(entry: Mapping[str, Any]) -> str:
    parts = [f"{f} {entry[f]}" for f in RATE_FIELDS if f in entry]
    if entry.get("tiers"):
        parts.append("tiers " + ",".join(sorted(entry["tiers"])))
    if entry.get("long_context"):
        parts.append(f"long context >{entry['long_context'].get('threshold')}")
    return f"{entry.get('provider', '?')} {entry.get('mode', '?')}: " + ", ".join(parts)


def diff_tables(old: Mapping[str, Any] | None, new: Mapping[str, Any]) -> list[str]:
    """Readable differences between two tables (the `updated` stamp and prose are ignored)."""
    old = old or {}
    lines: list[str] = []
    for key in ("tier_multipliers", "tool_fees", "aliases"):
        a, b = _flatten(old.get(key) or {}), _flatten(new.get(key) or {})
        for k in sorted(set(a) | set(b)):
            if a.get(k) != b.get(k):
                lines.append(f"~ {key}.{k}: {a.get(k, '(none)')} -> {b.get(k, '(none)')}")
    om, nm = old.get("models") or {}, new.get("models") or {}
    for name in sorted(set(nm) - set(om)):
        lines.append(f"+ {name}  ({_summary(nm[name])})")
    for name in sorted(set(om) - set(nm)):
        lines.append(f"- {name}  ({_summary(om[name])})")
    for name in sorted(set(om) & set(nm)):
        a, b = _flatten(om[name]), _flatten(nm[name])
        changes = [f"{k} {a.get(k, '(none)')} -> {b.get(k, '(none)')}"
                   for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k) and k != "source"]
        if changes:
            lines.append(f"~ {name}: " + "; ".join(changes))
    return lines


# ---------------------------------------------------------------------------------------------
# CLI


def _default_out() -> str:
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "pricing.json")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("litellm_json", help="LiteLLM's model_prices_and_context_window(_backup).json")
    ap.add_argument("--out", default=_default_out(), help="table to write (default: assets/pricing.json)")
    ap.add_argument("--check", action="store_true", help="print the diff, exit 1 if anything would change")
    ap.add_argument("--allow-rejects", action="store_true", help="write the table even if entries were rejected")
    ap.add_argument("--litellm-version", help="recorded in `generated_from`, e.g. 1.109.1")
    ap.add_argument("--updated", help="the `updated` stamp (default: today)")
    ap.add_argument("-v", "--verbose", action="store_true", help="also list skipped entries")
    args = ap.parse_args(argv)

    with open(args.litellm_json, encoding="utf-8") as fh:
        litellm = json.load(fh)
    if not isinstance(litellm, dict):
        print(f"{args.litellm_json}: not a LiteLLM price file", file=sys.stderr)
        return 2
    label = os.path.basename(args.litellm_json)
    generated_from = f"litellm {args.litellm_version} {label}" if args.litellm_version else label
    report = BuildReport()
    new = build_table(litellm, updated=args.updated, generated_from=generated_from, report=report)

    old = None
    if os.path.exists(args.out):
        with open(args.out, encoding="utf-8") as fh:
            old = json.load(fh)
    changes = diff_tables(old, new)
    meta_changed = old is not None and old.get("generated_from") != new["generated_from"]

    for note in report.notes:
        print(f"note: {note}")
    if args.verbose:
        for name, reason in sorted(report.skipped.items()):
            print(f"skipped: {name}: {reason}")
    else:
        print(f"skipped {len(report.skipped)} entries (use -v to list them)")
    for name, problems in sorted(report.rejected.items()):
        for problem in problems:
            print(f"REJECTED {name}: {problem}", file=sys.stderr)

    counts: dict[str, int] = {}
    for entry in new["models"].values():
        counts[entry["provider"]] = counts.get(entry["provider"], 0) + 1
    print(f"{len(new['models'])} models (" + ", ".join(f"{p} {n}" for p, n in sorted(counts.items())) + ")")
    if changes:
        print(f"{len(changes)} change(s) against {args.out}:")
        for line in changes:
            print(f"  {line}")
    else:
        print(f"no price changes against {args.out}")

    if args.check:
        return 1 if (changes or report.rejected) else 0
    if report.rejected and not args.allow_rejects:
        print(f"{len(report.rejected)} entries rejected; nothing written (use --allow-rejects to write "
              "the table without them)", file=sys.stderr)
        return 2
    if not changes and not meta_changed and old is not None:
        return 0
    tmp = args.out + ".tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(dumps_table(new))
    os.replace(tmp, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
