"""Where alerts go: a webhook, a desktop notification, a command; with retries and backoff.

Every function here blocks (network, processes, sleeps between retries), so the proxy calls them
only from its alert thread (``addons/alerting.py``), never from mitmproxy's event loop, and
``pouch alert test`` calls them directly. A sink that fails is retried (``RETRIES`` times, the
wait doubling from ``BACKOFF`` seconds), then logged; nothing here raises.

- webhook: ``POST`` of the alert's JSON (``text`` for Slack, ``content`` for Discord);
- desktop: ``notify-send`` (Linux) or ``osascript`` (macOS), when one is on the PATH;
- command: run through the shell with the alert's JSON on stdin (``pouch_alert_command``).
"""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

RETRIES = 3  # attempts after the first
BACKOFF = 1.0  # seconds before the first retry; doubles
TIMEOUT = 5.0  # seconds for one webhook request or one command


@dataclass(frozen=True)
class Sinks:
    webhook: str | None = None
    command: str | None = None
    desktop: bool = False

    def names(self) -> list[str]:
        return [n for n, on in (("webhook", self.webhook), ("command", self.command),
                                ("desktop", self.desktop and desktop_tool() is not None)) if on]


def post_webhook(url: str, payload: dict[str, Any]) -> None:
    req = urllib.request.Request(url, data=json.dumps(payload).encode(), method="POST",
                                 headers={"content-type": "application/json", "user-agent": "pouch-alerts"})
    # the proxy variables of the environment are not for this request: pouch may be that proxy
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(req, timeout=TIMEOUT) as resp:
        if resp.status >= 300:
            raise OSError(f"webhook answered {resp.status}")


def run_command(command: str, payload: dict[str, Any]) -> None:
    r = subprocess.run(command, shell=True, input=json.dumps(payload).encode(), capture_output=True,
                       timeout=TIMEOUT * 2)
    if r.returncode != 0:
        raise OSError(f"alert command exited {r.returncode}: {r.stderr.decode(errors='replace')[-300:]}")


def desktop_tool() -> str | None:
    if sys.platform == "darwin":
        return shutil.which("osascript")
    return shutil.which("notify-send")


def notify_desktop(payload: dict[str, Any]) -> None:
    tool = desktop_tool()
    if tool is None:
        return
    text = str(payload.get("text", ""))
    if sys.platform == "darwin":
        cmd = [tool, "-e", f"display notification {json.dumps(text)} with title \"pouch\""]
    else:
        cmd = [tool, "--app-name=pouch", "pouch", text]
    subprocess.run(cmd, capture_output=True, timeout=TIMEOUT, check=True)


def with_retries(name: str, send: Callable[[], None], *, retries: int = RETRIES, backoff: float = BACKOFF,
                 sleep: Callable[[float], None] = time.sleep) -> str | None:
    """Run ``send`` until it succeeds or has failed ``retries + 1`` times; the last error, or None."""
    wait = backoff
    for attempt in range(retries + 1):
        try:
            send()
            return None
        except Exception as exc:  # any failure of a sink is logged, never raised
            error = f"{type(exc).__name__}: {exc}"
            if attempt < retries:
                sleep(wait)
                wait *= 2
    log.error(f"pouch: alert sink {name} failed after {retries + 1} attempts: {error}")
    return error


def deliver_one(sinks: Sinks, name: str, payload: dict[str, Any], *, retries: int = RETRIES,
                backoff: float = BACKOFF) -> str | None:
    """Send ``payload`` to the sink ``name`` (webhook, command, desktop) with retries; the error or None."""
    if name == "webhook" and sinks.webhook:
        url = sinks.webhook
        return with_retries("webhook", lambda: post_webhook(url, payload), retries=retries, backoff=backoff)
    if name == "command" and sinks.command:
        cmd = sinks.command
        return with_retries("command", lambda: run_command(cmd, payload), retries=retries, backoff=backoff)
    if name == "desktop" and sinks.desktop and desktop_tool() is not None:
        return with_retries("desktop", lambda: notify_desktop(payload), retries=min(1, retries), backoff=backoff)
    return None


def deliver(sinks: Sinks, payload: dict[str, Any], *, retries: int = RETRIES, backoff: float = BACKOFF) -> dict[str, str | None]:
    """Send ``payload`` to every configured sink, one after the other; sink name -> error or None."""
    return {name: deliver_one(sinks, name, payload, retries=retries, backoff=backoff) for name in sinks.names()}
