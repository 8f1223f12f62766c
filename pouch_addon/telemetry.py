"""What pouch exports to monitoring, as pure functions: bounded metric labels and the attributes
of a call's OpenTelemetry span (the GenAI semantic conventions plus pouch's money). No I/O; the
shells are ``addons/metrics.py`` (Prometheus) and ``addons/tracing.py`` (OTLP).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

OTHER = "other"
TOKEN_TYPES = ("input", "cached", "output", "reasoning")


def parse_listen(text: str) -> tuple[str, int]:
    """``127.0.0.1:9464`` or ``9464`` (loopback) -> (host, port)."""
    host, _, port = str(text).strip().rpartition(":")
    try:
        n = int(port)
    except ValueError:
        raise ValueError(f"expected HOST:PORT like 127.0.0.1:9464, got {text!r}") from None
    if not 0 <= n < 65536:  # 0: any free port
        raise ValueError(f"port out of range in {text!r}")
    return (host.strip("[]") or "127.0.0.1"), n


class LabelCap:
    """Bounded label values: the first ``limit`` distinct values keep their name, every later one is
    ``other`` (a label per wallet or model must not grow a scrape without end)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.known: set[str] = set()

    def __call__(self, value: str | None) -> str:
        v = value or "unknown"
        if v in self.known:
            return v
        if len(self.known) < self.limit:
            self.known.add(v)
            return v
        return OTHER


def tokens_by_type(entry: dict[str, Any]) -> dict[str, int]:
    """Token counts of a settle entry by Prometheus ``type`` label."""
    return {t: int(entry.get(f"{t}_tokens") or 0) for t in TOKEN_TYPES}


def span_attributes(entry: dict[str, Any], *, reserved: Decimal, wallet: str, request_model: str) -> dict[str, Any]:
    """A settled call as span attributes: OpenTelemetry's GenAI conventions (``gen_ai.*``) and
    pouch's cost, reservation and outcome (``pouch.*``; amounts as exact decimal strings)."""
    provider = str(entry.get("provider") or "openai")
    endpoint = str(entry.get("endpoint") or "")
    op = ("embeddings" if "embeddings" in endpoint else "text_completion" if endpoint.endswith("/completions")
          and "chat" not in endpoint else "chat")
    attrs: dict[str, Any] = {
        "gen_ai.system": provider,
        "gen_ai.provider.name": provider,
        "gen_ai.operation.name": op,
        "gen_ai.request.model": request_model,
        "gen_ai.response.model": str(entry.get("model_reported") or request_model),
        "gen_ai.usage.input_tokens": int(entry.get("input_tokens") or 0),
        "gen_ai.usage.output_tokens": int(entry.get("output_tokens") or 0),
        "pouch.cost_usd": str(entry.get("cost", "0")),
        "pouch.reserved_usd": str(reserved),
        "pouch.reservation_id": str(entry.get("id", "")),
        "pouch.wallet": wallet,
        "pouch.status": str(entry.get("status", "")),
        "pouch.usage_source": str(entry.get("usage_source", "")),
    }
    if entry.get("output_cap") is not None:
        attrs["gen_ai.request.max_tokens"] = int(entry["output_cap"])
    for name in ("cached", "reasoning"):
        if entry.get(f"{name}_tokens"):
            attrs[f"gen_ai.usage.{name}_tokens"] = int(entry[f"{name}_tokens"])
    if entry.get("http_status") is not None:
        attrs["http.response.status_code"] = int(entry["http_status"])
    if entry.get("flags"):
        attrs["pouch.flags"] = [str(f) for f in entry["flags"]]
    return attrs
