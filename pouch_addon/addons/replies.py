"""Responses pouch answers itself, in the flow's provider's error shape so its SDKs surface them
cleanly (OpenAI's shape where no provider was decided yet)."""

from __future__ import annotations

import json
from typing import Any

from mitmproxy import http

from ..providers import PROVIDERS, openai

#: flow.metadata key: the name of the provider module whose wire format the flow speaks
PROVIDER = "pouch_provider"

# SDKs retry 429/5xx twice by default; this header tells them not to (mitmproxy-mechanics §3).
NO_RETRY = {"content-type": "application/json", "x-should-retry": "false", "x-pouch": "blocked"}


def error_body(message: str, *, code: str, type_: str = "invalid_request_error") -> dict[str, Any]:
    return openai.error_body(0, message, code, type_)


def reply(flow: http.HTTPFlow, status: int, message: str, *, code: str,
          type_: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
    """Answer the flow from pouch; the request never reaches the provider."""
    provider = PROVIDERS.get(flow.metadata.get(PROVIDER, ""), openai)
    body = provider.error_body(status, message, code, type_)
    flow.response = http.Response.make(status, json.dumps(body), {**NO_RETRY, **(headers or {})})
    flow.metadata["pouch_blocked"] = code
