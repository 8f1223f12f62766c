"""Alerts end to end: a real mitmdump with pouch, the fake OpenAI, the openai SDK, a local webhook
receiver (loopback) and a command sink.

Every call here costs exactly its reservation (the fake reports the reserved input tokens and
fills the output cap), and the budget is ten calls, so each call is 10 % of it.
"""

from __future__ import annotations

import json
import threading
from decimal import Decimal as D
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from harness import wait_until
from pouch_addon.audit import AUDIT_FILE, AuditLog
from pouch_addon.budget import Ledger
from pouch_addon.plan import PlanSettings, make_plan
from pouch_addon.pricing import PriceTable

pytestmark = pytest.mark.e2e

TABLE = PriceTable.load()
MESSAGES = [{"role": "user", "content": "say something short"}]
MAX_TOKENS = 8


def exact_call() -> tuple[dict, D]:
    """SDK args for a call whose cost equals its reservation, and that amount."""
    body = {"model": "gpt-4o-mini", "max_tokens": MAX_TOKENS, "messages": MESSAGES}
    # exact: near the budget pouch counts the input with tiktoken (far from it, its byte bound reserves more)
    plan = make_plan("POST", "/v1/chat/completions", body, table=TABLE, remaining=D(1),
                     settings=PlanSettings(exact_input=True))
    args = {**body, "client": {"max_retries": 0},
            "extra_headers": {"x-fake-prompt-tokens": str(plan.reserved_input_tokens),
                              "x-fake-chunks": str(MAX_TOKENS)}}
    return args, plan.worst_case


class Receiver:
    """A webhook on 127.0.0.1 that records each POSTed JSON body; ``hold`` keeps every answer back
    until ``release()`` (a webhook that hangs)."""

    def __init__(self, hold: bool = False) -> None:
        self.bodies: list[dict] = []
        self.arrived = threading.Event()
        self.gate = threading.Event()
        if not hold:
            self.gate.set()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                data = self.rfile.read(int(self.headers.get("content-length", "0")))
                outer.bodies.append(json.loads(data))
                outer.arrived.set()
                outer.gate.wait(60)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *a) -> None:  # noqa: ANN002
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def release(self) -> None:
        self.gate.set()

    def close(self) -> None:
        self.gate.set()
        self.server.shutdown()


@pytest.fixture
def receiver():
    r = Receiver()
    yield r
    r.close()


def command_sink(tmp_path: Path) -> tuple[str, Path]:
    """A shell command writing each alert (JSON on stdin) to its own file in a directory."""
    out = tmp_path / "command-alerts"
    out.mkdir()
    return f'f=$(mktemp "{out}/a.XXXXXX") && cat > "$f"', out


def command_alerts(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.iterdir()) if p.read_text().strip()]


def kinds(alerts: list[dict]) -> list[tuple]:
    return sorted((a["kind"], a["scope"], a.get("threshold_pct")) for a in alerts)


def test_crossing_50_80_100_fires_each_alert_once_to_the_webhook_and_the_command(e2e, fake, tmp_path, receiver):
    args, each = exact_call()
    home = tmp_path / "home"
    Ledger(home).set_budget(each * 10)
    cmd, out = command_sink(tmp_path)
    e2e.run_cli(home, "alert", "set", "50,80,100", "--webhook", receiver.url, "--command", cmd, "--no-desktop")
    proxy = e2e.start_proxy(home, {"pouch_alert_scan_s": 1})
    env = e2e.client_env(proxy)

    first = e2e.run_sdk("chat", args, env)
    assert first["ok"], first
    ledger = Ledger(home)
    wait_until(lambda: ledger.status().requests == 1, 10, "the first settle")
    assert D(ledger.history(kinds=("settle",))[0]["cost"]) == each  # 10 % of the budget per call

    results = e2e.run_sdk_batch([("chat", args)] * 10, env)
    assert [r["ok"] for r in results] == [True] * 9 + [False]  # the 11th call does not fit: 402
    assert results[-1]["error"]["status_code"] == 402
    want = [("blocked", "global", None), ("threshold", "global", 50), ("threshold", "global", 80),
            ("threshold", "global", 100)]
    wait_until(lambda: len(receiver.bodies) >= 4 and len(command_alerts(out)) >= 4, 20, "four alerts")

    # a top-up re-arms 50 %: spend 10 calls of a 30-call budget is 33 %; four more calls cross 50 %
    e2e.run_cli(home, "budget", "set", str(each * 30))
    results = e2e.run_sdk_batch([("chat", args)] * 5, env)
    assert all(r["ok"] for r in results)
    wait_until(lambda: len(receiver.bodies) >= 5 and len(command_alerts(out)) >= 5, 20, "the re-armed 50 % alert")
    want.append(("threshold", "global", 50))
    # exactly once each, to both sinks (and nothing else came meanwhile)
    assert kinds(receiver.bodies) == sorted(want)
    assert kinds(command_alerts(out)) == sorted(want)
    hook = next(b for b in receiver.bodies if b.get("threshold_pct") == 80)
    assert hook["text"].startswith("pouch: the global budget is 80% spent") and hook["content"] == hook["text"]
    # every alert is in the audit log
    audited = [e["details"] for e in AuditLog(home / AUDIT_FILE).entries() if e["action"] == "alert"]
    assert kinds(audited) == sorted(want)

    # a restart fires nothing again: the next alert after it is the next crossing (80 % of $30)
    proxy.stop()
    proxy = e2e.start_proxy(home, {"pouch_alert_scan_s": 1})
    env = e2e.client_env(proxy)
    results = e2e.run_sdk_batch([("chat", args)] * 10, env)
    assert all(r["ok"] for r in results)
    wait_until(lambda: len(receiver.bodies) >= 6, 20, "the 80 % alert after the restart")
    assert [(b["kind"], b.get("threshold_pct")) for b in receiver.bodies[5:]] == [("threshold", 80)]


def test_a_hanging_webhook_delays_no_call(e2e, fake, tmp_path):
    """The webhook takes the first alert and never answers while the calls go on: every call
    completes while that delivery is still held (an ordering fact, not a timing one)."""
    hanging = Receiver(hold=True)
    try:
        args, each = exact_call()
        home = tmp_path / "home"
        Ledger(home).set_budget(each * 4)
        cmd, out = command_sink(tmp_path)
        e2e.run_cli(home, "alert", "set", "50,100", "--webhook", hanging.url, "--command", cmd, "--no-desktop")
        proxy = e2e.start_proxy(home)
        env = e2e.client_env(proxy)
        results = e2e.run_sdk_batch([("chat", args)] * 2, env)  # 50 %: the webhook gets it and hangs
        assert all(r["ok"] for r in results)
        assert hanging.arrived.wait(20), "the 50 % alert never reached the webhook"
        results = e2e.run_sdk_batch([("chat", args)] * 3, env)  # 100 %, then a 402
        assert [r["ok"] for r in results] == [True, True, False]
        assert not hanging.gate.is_set()  # all of that happened while the webhook held its answer
        # the command sink is not held up by the webhook either
        wait_until(lambda: len(command_alerts(out)) >= 3, 20, "the command sink's alerts")
        assert kinds(command_alerts(out)) == [("blocked", "global", None), ("threshold", "global", 50),
                                              ("threshold", "global", 100)]
    finally:
        hanging.close()


def test_alert_test_sends_a_sample_to_each_sink(e2e, tmp_path, receiver):
    home = tmp_path / "home"
    cmd, out = command_sink(tmp_path)
    e2e.run_cli(home, "alert", "set", "--webhook", receiver.url, "--command", cmd, "--no-desktop")
    r = e2e.run_cli(home, "alert", "test")
    assert "webhook  sent" in r.stdout and "command  sent" in r.stdout
    assert [b["kind"] for b in receiver.bodies] == ["test"] and receiver.bodies[0]["text"].startswith("pouch: a test")
    assert [a["kind"] for a in command_alerts(out)] == ["test"]
    dead = e2e.run_cli(home, "alert", "test", "--webhook", "http://127.0.0.1:9/nothing", check=False)
    assert dead.returncode == 2 and "webhook  FAILED" in dead.stdout
