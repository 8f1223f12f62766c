"""Fixtures for the TUI tests: tmp ledgers (fixed, empty, big) and a pilot runner.

The fixed ledger is written directly as it lies on disk (history partitions + a state file
pointing past them, like ``bench/ledger_bench.py``'s ``seed``) so every timestamp is fixed
and snapshot tests are deterministic with the app's injectable clock.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from decimal import Decimal
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import pytest

from pouch_addon.budget import Ledger, LedgerState, Owner, Reservation, partition_for
from pouch_tui.app import PouchApp

NOW = datetime(2025, 3, 14, 15, 30, 0, tzinfo=UTC).timestamp()  # a Friday
SIZE = (120, 40)


def fixed_now() -> float:
    return NOW


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def settle(seq: int, ts: float, model: str, cost: str, *, status: str = "ok", client: str = "127.0.0.1:50001",
           inp: int = 1200, cached: int = 0, out: int = 300, reasoning: int = 0, reserved: str = "0.05",
           flags: list[str] | None = None, endpoint: str = "/v1/chat/completions", wallet: str | None = None,
           via: str = "proxy_auth") -> dict[str, Any]:
    e = {
        "kind": "settle", "id": f"{seq:016x}", "seq": seq, "ts": ts, "time": _iso(ts), "started": _iso(ts - 2),
        "duration_s": 2.0, "model": model, "endpoint": endpoint, "client": client, "stream": True,
        "estimated_input_tokens": inp, "output_cap": 4096, "input_tokens": inp, "cached_tokens": cached,
        "output_tokens": out, "reasoning_tokens": reasoning, "reserved": reserved, "cost": cost,
        "status": status, "flags": flags or ([] if status == "ok" else [status] if status == "orphaned" else []),
    }
    if wallet:
        e.update(wallet=wallet, via=via)
    return e


def block(seq: int, ts: float, reason: str, *, needed: str = "0.2", remaining: str = "0.1",
          model: str | None = "gpt-4o", client: str = "10.0.0.7:41000", wallet: str | None = None) -> dict[str, Any]:
    messages = {
        "paused": "pouch: LLM traffic is paused (resume with `pouch resume` or from the TUI)",
        "insufficient": f"pouch: budget exceeded: this request may cost up to ${needed} but only ${remaining} remains",
        "invalid": "pouch: cannot reserve $0.000000",
    }
    e = {"kind": "block", "seq": seq, "ts": ts, "time": _iso(ts), "endpoint": "/v1/chat/completions",
         "client": client, "reason": reason, "needed": needed, "remaining": remaining,
         "message": messages[reason], "cost": "0", "status": "blocked"}
    if model:
        e["model"] = model
    if wallet:
        e.update(wallet=wallet, via="proxy_auth")
    return e


def fixed_entries() -> list[dict[str, Any]]:
    """A month of varied history ending shortly before NOW (oldest first)."""
    day = 86400
    spec: list[tuple[float, str, dict[str, Any]]] = [
        (NOW - 20 * day, "settle", dict(model="gpt-4o", cost="0.84", client="10.0.0.7:40000")),  # last month
        (NOW - 12 * day, "settle", dict(model="gpt-4o", cost="1.25")),
        (NOW - 10 * day, "settle", dict(model="gpt-4o-mini", cost="0.031", client="10.0.0.7:41000")),
        (NOW - 6 * day, "settle", dict(model="o3-mini", cost="0.4210", reasoning=2048, out=2600)),
        (NOW - 3 * day, "settle", dict(model="gpt-4o", cost="0.66", status="cut_off", flags=["cut_off"])),
        (NOW - 2 * day, "block", dict(reason="insufficient", needed="2.5", remaining="1.75")),
        (NOW - 1 * day, "settle", dict(model="gpt-4o-mini", cost="0.0042", client="10.0.0.7:41003")),
        (NOW - 9 * 3600, "settle", dict(model="gpt-4o", cost="0.1032", cached=1024)),
        (NOW - 7 * 3600, "settle", dict(model="gpt-4o", cost="0", status="released")),
        (NOW - 5 * 3600, "settle", dict(model="gpt-4o-mini", cost="0.0127", client="10.0.0.9:52000")),
        (NOW - 4 * 3600, "block", dict(reason="paused")),
        (NOW - 3 * 3600, "settle", dict(model="o3-mini", cost="0.0512", status="client_disconnect")),
        (NOW - 2 * 3600, "settle", dict(model="gpt-4o", cost="0.05", status="orphaned")),
        (NOW - 1 * 3600, "settle", dict(model="gpt-4o", cost="0.2391", inp=5400, out=1800)),
        (NOW - 600, "settle", dict(model="gpt-4o-mini", cost="0.0019", inp=800, out=120)),
        (NOW - 90, "settle", dict(model="gpt-4o", cost="0.0873", cached=512, client="10.0.0.9:52011")),
    ]
    out = []
    for seq, (ts, kind, kw) in enumerate(spec, start=1):
        out.append(settle(seq, ts, **kw) if kind == "settle" else block(seq, ts, **kw))
    return out


def write_ledger(home: Path, entries: list[dict[str, Any]], *, budget: Decimal, open_: list[Reservation] = (),
                 paused: bool = False, mtime: float | None = None) -> None:
    """Write ``entries`` as day partitions and a state that has applied them all."""
    hist = home / "history"
    hist.mkdir(parents=True, exist_ok=True)
    by_part: dict[str, list[str]] = {}
    for e in entries:
        by_part.setdefault(partition_for(e["ts"]), []).append(json.dumps(e, sort_keys=True, separators=(",", ":")))
    for name, lines in by_part.items():
        with open(hist / name, "a") as fh:
            fh.write("\n".join(lines) + "\n")
    last = max(by_part) if by_part else None
    settles = [e for e in entries if e["kind"] == "settle"]
    state = LedgerState(
        budget=budget, spent=sum((Decimal(e["cost"]) for e in settles), Decimal(0)), requests=len(settles),
        blocked=len(entries) - len(settles), flagged=sum(1 for e in settles if e.get("flags")), paused=paused,
        seq=len(entries), history_file=last, history_size=(hist / last).stat().st_size if last else 0,
        open={r.id: r for r in open_},
    )
    Ledger(home)._storage.write(state.to_tables())
    if mtime is not None:
        os.utime(home / "state.json", (mtime, mtime))


def fixed_reservation() -> Reservation:
    return Reservation(
        id="a1b2c3d4e5f60718", amount=Decimal("0.164"), created=NOW - 12.5, owner=Owner.current(),
        meta={"model": "gpt-4o", "endpoint": "/v1/chat/completions", "client": "10.0.0.9:52020", "stream": True,
              "estimated_input_tokens": 2100, "output_cap": 4096},
        checkpoint={"output_tokens": 734, "running_cost": "0.01259", "events": 120},
    )


FINE_TUNE = "ft:gpt-4o-mini-2024-07-18:acme:support-bot:9kX2pQ"


def realistic_entries() -> list[dict[str, Any]]:
    """A first week with pouch, as a user sees it: three apps (a wallet with proxy auth, one with
    a virtual key, one identified by its program), dated model names, a long fine-tune name,
    embeddings, and spends far below a cent next to a few cents. Costs are exact for the
    prices of the time (per 1M tokens: gpt-4o $2.50/$1.25 cached/$10, gpt-4o-mini $0.15/$0.60,
    o4-mini $1.10/$4.40, fine-tuned 4o-mini $0.30/$1.20, text-embedding-3-small $0.02)."""
    day, hour = 86400, 3600
    agent, notebook, script = ("coding-agent", "proxy_auth"), ("research-notebook", "key"), ("python3.11", "process")
    spec: list[tuple[float, str, dict[str, Any], tuple[str, str]]] = [
        (NOW - 9 * day, "settle", dict(model="gpt-4o-2024-08-06", cost="0.05214", inp=18400, cached=12288, out=2150,
                                       reserved="0.2161"), agent),
        (NOW - 5 * day, "settle", dict(model="gpt-4o-mini-2024-07-18", cost="0.0005937", inp=2310, out=412,
                                       reserved="0.0104"), notebook),
        (NOW - 3 * day, "settle", dict(model="o4-mini-2025-04-16", cost="0.022792", inp=5120, out=3900,
                                       reasoning=3072, reserved="0.1502"), agent),
        (NOW - 2 * day, "block", dict(reason="insufficient", needed="0.3072", remaining="0.0913",
                                      model="gpt-4o-2024-08-06"), agent),
        (NOW - 1 * day, "settle", dict(model="text-embedding-3-small", cost="0.0000001", inp=5, out=0,
                                       endpoint="/v1/embeddings", reserved="0.000000121"), script),
        (NOW - 6 * hour, "settle", dict(model="gpt-4o-mini-2024-07-18", cost="0.0001749", inp=1010, out=39,
                                        reserved="0.0098"), agent),
        (NOW - 2 * hour, "settle", dict(model="gpt-4o-mini-2024-07-18", cost="0.0312", inp=9800, out=49550,
                                        status="cut_off", flags=["cut_off"], reserved="0.0312"), agent),
        (NOW - 40 * 60, "settle", dict(model=FINE_TUNE, cost="0.00231", inp=4200, out=875, reserved="0.0203"),
         notebook),
        (NOW - 90, "settle", dict(model="gpt-4o-mini-2024-07-18", cost="0.0000996", inp=312, out=88,
                                  reserved="0.0101"), script),
    ]
    out = []
    for seq, (ts, kind, kw, (wallet, via)) in enumerate(spec, start=1):
        if kind == "settle":
            out.append(settle(seq, ts, client="127.0.0.1:50001", wallet=wallet, via=via, **kw))
        else:
            out.append(block(seq, ts, client="127.0.0.1:50001", wallet=wallet, **kw))
    return out


def realistic_reservations() -> list[Reservation]:
    """One stream well under way, one request waiting for its first byte."""
    return [
        Reservation(
            id="c0ffee0000000001", amount=D("0.1843"), created=NOW - 18.5, owner=Owner.current(),
            meta={"model": "gpt-4o-2024-08-06", "endpoint": "/v1/chat/completions", "client": "127.0.0.1:50714",
                  "stream": True, "wallet": "coding-agent", "via": "proxy_auth", "estimated_input_tokens": 21300,
                  "output_cap": 12400},
            checkpoint={"output_tokens": 1210, "running_cost": "0.0653", "events": 402},
        ),
        Reservation(
            id="c0ffee0000000002", amount=D("0.0887"), created=NOW - 1.2, owner=Owner.current(),
            meta={"model": "o4-mini-2025-04-16", "endpoint": "/v1/responses", "client": "127.0.0.1:50733",
                  "stream": True, "wallet": "research-notebook", "via": "key", "estimated_input_tokens": 3900,
                  "output_cap": 19200},
        ),
    ]


def write_realistic(home: Path) -> None:
    write_ledger(home, realistic_entries(), budget=D("3"), open_=realistic_reservations(), mtime=NOW - 1)


@pytest.fixture
def fixed_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The fixed ledger, under a relative path so the header shows the same text in every run."""
    monkeypatch.chdir(tmp_path)
    home = Path("pouch-home")
    write_ledger(home, fixed_entries(), budget=Decimal("25"), open_=[fixed_reservation()], mtime=NOW - 4)
    return home


@pytest.fixture
def real_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The realistic ledger (:func:`realistic_entries`), under a relative path like ``fixed_home``."""
    monkeypatch.chdir(tmp_path)
    home = Path("pouch-home")
    write_realistic(home)
    return home


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "pouch"


def make_app(home: Path, **kw: Any) -> PouchApp:
    kw.setdefault("poll_interval", 0.05)
    return PouchApp(home, **kw)


async def wait_for(pilot: Any, predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        await pilot.pause(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def loaded(pilot: Any, *, aggregates: bool = True) -> None:
    """The first snapshot and history page are shown (and, by default, the aggregates)."""
    app = pilot.app
    await wait_for(pilot, lambda: app.first_paint is not None, what="first paint")
    if aggregates:
        await wait_for(pilot, lambda: app.aggregates is not None, what="aggregates")
    await pilot.pause()


def run(app: PouchApp, scenario: Callable[[Any], Awaitable[None]], size: tuple[int, int] = SIZE) -> None:
    async def main() -> None:
        async with app.run_test(size=size) as pilot:
            await scenario(pilot)

    asyncio.run(main())
