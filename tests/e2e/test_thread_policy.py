"""A real mitmdump with pouch, after a streamed call: its event loop (the main thread) keeps the
normal scheduling policy, as do the threads an admission waits for (the ledger's committer and
flusher), while the alert thread runs in ``SCHED_BATCH``, so its wake-ups do not preempt the loop
(``pouch_addon/threads.py``)."""

from __future__ import annotations

import os

import pytest

from fake_openai import fake_text
from test_firewall import headers, settled, start

pytestmark = [pytest.mark.e2e,
              pytest.mark.skipif(not hasattr(os, "SCHED_BATCH"), reason="SCHED_BATCH is Linux only")]


def policies(pid: int) -> dict[int, int]:
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            out[int(tid)] = os.sched_getscheduler(int(tid))
        except OSError:  # a thread that ended meanwhile
            pass
    return out


def test_pouch_threads_give_way_to_the_event_loop(e2e, fake, tmp_path):
    home, proxy, env = start(e2e, tmp_path)
    r = e2e.run_sdk("chat_stream", {"model": "gpt-4o-mini", "max_tokens": 50,
                                    "extra_headers": headers(prompt_tokens=10, chunks=5)}, env)
    assert r["ok"] and r["content"] == fake_text(5)
    settled(home)
    pid = proxy.proc.pid
    seen = policies(pid)
    assert seen[pid] == os.SCHED_OTHER  # mitmproxy's event loop
    # the alert thread lives as long as the proxy (the committer's policy: tests/unit/test_threads.py)
    assert sum(p == os.SCHED_BATCH for tid, p in seen.items() if tid != pid) >= 1, seen
