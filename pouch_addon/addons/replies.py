"""Responses pouch answers itself, in OpenAI's error shape so SDKs surface them cleanly."""

from __future__ import annotations

import json
from typing import Any

from mitmproxy import http

# SDKs retry 429/5xx twice by default; this header tells them not to (mitmproxy-mechanics §3).
NO_RETRY = {"content-type": "application/json", "x-should-retry": "false", "x-pouch": "blocked"}


def error_body(message: str, *, code: str, type_: str = "invalid_request_error") -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def reply(flow: http.HTTPFlow, status: int, message: str, *, code: str,
          type_: str = "invalid_request_error", headers: dict[str, str] | None = None) -> None:
    """Answer the flow from pouch; the request never reaches the provider."""
    flow.response = http.Response.make(
        status, json.dumps(error_body(message, code=code, type_=type_)), {**NO_RETRY, **(headers or {})}
    )
    flow.metadata["pouch_blocked"] = code
