"""The TUI watching a real proxy: an in-flight stream with a rising token count, then its settle."""

from __future__ import annotations

import asyncio
import time
from decimal import Decimal as D

from pouch_addon.budget import Ledger
from pouch_tui.app import PouchApp
from pouch_tui.format import money
from test_firewall import headers, start


async def wait_for(pilot, predicate, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await pilot.pause(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def test_tui_follows_a_live_stream_through_the_proxy(e2e, fake, tmp_path):
    home, proxy, env = start(e2e, tmp_path, budget="2")
    app = PouchApp(home, poll_interval=0.05)
    seen_tokens: list[int] = []

    async def scenario() -> None:
        async with app.run_test(size=(140, 40)) as pilot:
            client = e2e.start_sdk("chat_stream", {"model": "gpt-4o-mini", "max_tokens": 200, "extra_headers": headers(
                prompt_tokens=25, chunks=30, delay_ms=150)}, env)
            table = app.inflight
            await wait_for(pilot, lambda: table.row_count == 1, what="the in-flight row")
            key = table.rows_shown[0][0]
            model, app_name = (str(table.get_cell(key, col)).strip() for col in ("model", "app"))
            assert model == "openai/gpt-4o-mini"
            while table.row_count == 1:  # record the streamed-token column as the proxy checkpoints
                cell = str(table.get_cell(key, "tokens")).strip().replace(",", "")
                if cell.isdigit() and (not seen_tokens or int(cell) != seen_tokens[-1]):
                    seen_tokens.append(int(cell))
                await pilot.pause(0.05)
            result = await asyncio.to_thread(client.result, 30)
            assert result["ok"], result
            history = app.history_table
            await wait_for(pilot, lambda: history.row_count >= 1, what="the settled row")
            [entry] = Ledger(home).history(kinds=("settle",))
            shown = {col: str(history.get_cell(history.keys[0], col)).strip() for col in ("model", "status", "cost")}
            assert shown == {"model": "openai/gpt-4o-mini", "status": "ok", "cost": money(D(entry["cost"]))}
            assert app_name == entry["wallet"] != "127.0.0.1"  # the app charged, not the client's address

    asyncio.run(scenario())
    assert len(seen_tokens) >= 3 and seen_tokens == sorted(seen_tokens)  # rising while streaming
    [entry] = Ledger(home).history(kinds=("settle",))
    assert D(entry["cost"]) == D(25) * D("0.15") / 10**6 + D(30) * D("0.6") / 10**6
