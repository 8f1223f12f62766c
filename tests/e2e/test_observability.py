"""Following and exporting spend, end to end through a real mitmdump with pouch, the fake OpenAI
and the openai SDK: ``pouch history --jsonl --follow``, ``/metrics`` and OpenTelemetry spans."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime
from decimal import Decimal as D

import pytest

from harness import _proxy_env, wait_until
from pouch_addon.budget import Ledger

pytestmark = pytest.mark.e2e

CHAT = {"model": "gpt-4o-mini", "max_tokens": 20, "client": {"max_retries": 0},
        "extra_headers": {"x-fake-prompt-tokens": "30", "x-fake-chunks": "5", "x-fake-cached-tokens": "10",
                          "x-fake-reasoning-tokens": "2"}}


class LineReader:
    """Collects a subprocess's stdout lines in a thread (so a test can wait for one, bounded)."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.proc, self.lines = proc, []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)


def test_history_follow_prints_a_settle_as_it_happens(e2e, fake, tmp_path):
    home = tmp_path / "home"
    Ledger(home).set_budget(D(1))
    proxy = e2e.start_proxy(home)
    env = e2e.client_env(proxy)
    since = datetime.now(UTC).isoformat()
    follow = subprocess.Popen([sys.executable, "-m", "pouch_addon.cli", "history", "--jsonl", "--follow",
                               "--since", since, "--home", str(home)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_proxy_env())
    try:
        reader = LineReader(follow)
        r = e2e.run_sdk("chat_stream", CHAT, env)
        assert r["ok"], r
        wait_until(lambda: reader.lines, 10, "a line from pouch history --follow",
                   alive=lambda: follow.poll() is None)
        entry = json.loads(reader.lines[0])
        assert entry["kind"] == "settle" and entry["model"] == "gpt-4o-mini" and entry["output_tokens"] == 7
        assert D(entry["cost"]) == D(Ledger(home).history(kinds=("settle",))[0]["cost"]) > 0
        e2e.run_cli(home, "pause")
        r = e2e.run_curl("https://api.openai.com/v1/chat/completions", env=env,
                         json_body={"model": "gpt-4o", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})
        assert r.status == 402
        wait_until(lambda: len(reader.lines) >= 2, 10, "the block", alive=lambda: follow.poll() is None)
        assert json.loads(reader.lines[1])["kind"] == "block"
    finally:
        follow.terminate()
        follow.wait(5)
