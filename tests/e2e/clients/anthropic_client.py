"""Perform ONE anthropic-SDK call, the way an unmodified app would, and print ONE JSON line.

The Anthropic twin of ``sdk_client.py`` (same JSON-in/JSON-out protocol). Runs in the client
venv (scripts/make_client_venv.sh), configured purely by the environment: ``HTTPS_PROXY``,
``SSL_CERT_FILE`` (= the mitmproxy CA), ``ANTHROPIC_API_KEY``. ``anthropic.Anthropic()`` is
built with the SDK defaults (``max_retries`` = 2) unless the args contain ``"client": {...}``.

Usage::

    python anthropic_client.py MODE [N] --json-args '{"max_tokens": 50,
                                                     "extra_headers": {"x-fake-chunks": "4"}}'

``--json-args`` are keyword arguments of the SDK method (defaults: ``model``
``claude-sonnet-4-5``, ``max_tokens`` 64 (thinking modes: 2048), one user message ``say
hello``). Keys the client itself consumes: ``client`` (Anthropic() kwargs), ``sleep_after``.
``batch`` runs ``[{"mode", "args"}, ...]`` in one process, one JSON line per call; ``parallel``
runs them at once (a thread each).

Modes:
- ``create``: ``messages.create``; ``stream``: ``messages.create(stream=True)`` (raw events);
  ``stream_helper``: ``messages.stream()`` and ``get_final_message()``;
- ``tools`` / ``tools_stream``: the same with one tool ``search`` (default ``tools`` and
  ``x-fake-tool-calls: search`` unless given);
- ``thinking`` / ``thinking_stream``: with ``thinking={"type": "enabled", "budget_tokens": 1024}``
  (default ``x-fake-reasoning-tokens: 5`` unless given);
- ``count_tokens``: ``messages.count_tokens``; ``models``: ``models.list()``;
- ``stream_disconnect_after N`` (also ``..._after:N``): read N raw events, then close.

Output (one JSON object; exit code 0 even on API errors)::

    {"mode", "ok", "content" (text), "thinking" (text), "tool_uses": [{"id", "name", "input"}],
     "stop_reason", "usage" (the final usage as the SDK has it: the body's, or for streams
     message_start's updated by each message_delta as the SDK's accumulator does),
     "start_usage" (message_start's), "delta_usages" ([message_delta usage, ...]),
     "events": [event types], "chunks": int (raw events), "id", "model", "input_tokens"
     (count_tokens), "elapsed", "anthropic_version",
     "error": null | {"class", "mro", "status_code", "message", "type", "body", "request_id"}}
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from typing import Any

import anthropic

TOOL = {"name": "search", "description": "Search the web for a query.",
        "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}


def _dump(obj: Any) -> Any:
    if obj is None:
        return None
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json", exclude_none=False)
    return obj


class Result:
    def __init__(self, mode: str):
        self.d: dict[str, Any] = {
            "mode": mode, "ok": False, "content": "", "thinking": "", "tool_uses": [], "stop_reason": None,
            "usage": None, "start_usage": None, "delta_usages": [], "events": [], "chunks": 0, "id": None,
            "model": None, "elapsed": None, "error": None,
        }
        self.t0 = time.monotonic()
        self._partial: dict[int, str] = {}
        self._tool_blocks: dict[int, dict] = {}

    def message(self, m: Any) -> None:
        d = self.d
        d["id"], d["model"], d["stop_reason"] = m.id, m.model, m.stop_reason
        d["usage"] = _dump(getattr(m, "usage", None))
        d["content"] = "".join(b.text for b in m.content if b.type == "text")
        d["thinking"] = "".join(b.thinking for b in m.content if b.type == "thinking")
        d["tool_uses"] = [{"id": b.id, "name": b.name, "input": b.input} for b in m.content if b.type == "tool_use"]

    def event(self, ev: Any) -> None:
        d = self.d
        d["chunks"] += 1
        d["events"].append(ev.type)
        if ev.type == "message_start":
            d["id"], d["model"] = ev.message.id, ev.message.model
            d["start_usage"] = _dump(getattr(ev.message, "usage", None))
            d["usage"] = dict(d["start_usage"]) if d["start_usage"] else None
        elif ev.type == "content_block_start":
            if ev.content_block.type == "tool_use":
                self._tool_blocks[ev.index] = {"id": ev.content_block.id, "name": ev.content_block.name}
                self._partial[ev.index] = ""
        elif ev.type == "content_block_delta":
            dt = ev.delta
            if dt.type == "text_delta":
                d["content"] += dt.text
            elif dt.type == "thinking_delta":
                d["thinking"] += dt.thinking
            elif dt.type == "input_json_delta":
                self._partial[ev.index] = self._partial.get(ev.index, "") + dt.partial_json
        elif ev.type == "content_block_stop":
            if ev.index in self._tool_blocks:
                blk = self._tool_blocks.pop(ev.index)
                raw = self._partial.pop(ev.index, "")
                d["tool_uses"].append({**blk, "input": json.loads(raw) if raw else {}})
        elif ev.type == "message_delta":
            d["stop_reason"] = ev.delta.stop_reason
            u = _dump(getattr(ev, "usage", None))
            d["delta_usages"].append(u)
            if u:  # as the SDK's accumulator: assign the fields the delta carries (cumulative)
                base = d["usage"] or {}
                for k, v in u.items():
                    if v is not None:
                        base[k] = v
                d["usage"] = base

    def error(self, e: BaseException) -> None:
        self.d["error"] = {
            "class": type(e).__name__, "module": type(e).__module__,
            "mro": [c.__name__ for c in type(e).__mro__],
            "status_code": getattr(e, "status_code", None), "message": str(e),
            "type": getattr(e, "type", None), "body": getattr(e, "body", None),
            "request_id": getattr(e, "request_id", None),
            "cause": repr(e.__cause__) if e.__cause__ is not None else None,
            "traceback": traceback.format_exc(limit=6),
        }


def defaults(mode: str, args: dict) -> dict:
    a = dict(args)
    if mode == "models":
        return a
    a.setdefault("model", "claude-sonnet-4-5")
    a.setdefault("messages", [{"role": "user", "content": "say hello"}])
    if mode == "count_tokens":
        return a
    if mode.startswith("thinking"):
        a.setdefault("max_tokens", 2048)
        a.setdefault("thinking", {"type": "enabled", "budget_tokens": 1024})
        a["extra_headers"] = {"x-fake-reasoning-tokens": "5", **(a.get("extra_headers") or {})}
    if mode.startswith("tools"):
        a.setdefault("tools", [TOOL])
        a["extra_headers"] = {"x-fake-tool-calls": "search", **(a.get("extra_headers") or {})}
    a.setdefault("max_tokens", 64)
    return a


def run(mode: str, n: int | None, a: dict, client_kw: dict, r: Result) -> None:
    client = anthropic.Anthropic(**client_kw)
    d = r.d
    try:
        if mode in ("create", "tools", "thinking"):
            r.message(client.messages.create(**a))
        elif mode in ("stream", "tools_stream", "thinking_stream"):
            for ev in client.messages.create(stream=True, **a):
                r.event(ev)
        elif mode == "stream_helper":
            with client.messages.stream(**a) as stream:
                for ev in stream:
                    if ev.type in ("message_start", "content_block_start", "content_block_delta",
                                   "content_block_stop", "message_delta", "message_stop"):
                        r.event(ev)
                final = stream.get_final_message()
            d["helper_usage"] = _dump(final.usage)
            d["helper_content"] = "".join(b.text for b in final.content if b.type == "text")
            d["usage"] = d["helper_usage"]
        elif mode == "stream_disconnect_after":
            stream = client.messages.create(stream=True, **a)
            for ev in stream:
                r.event(ev)
                if d["chunks"] >= (n or 0):
                    break
            stream.close()
            d["disconnected_after"] = d["chunks"]
        elif mode == "count_tokens":
            d["input_tokens"] = client.messages.count_tokens(**a).input_tokens
        elif mode == "models":
            d["models"] = [m.id for m in client.models.list()]
        else:
            raise SystemExit(f"unknown mode {mode!r}")
        d["ok"] = True
    except anthropic.AnthropicError as e:
        r.error(e)
    finally:
        client.close()


def run_one(mode: str, n: int | None, args: dict) -> dict:
    if ":" in mode:
        mode, _, n_s = mode.partition(":")
        n = int(n_s)
    args = dict(args)
    client_kw = args.pop("client", None) or {}
    sleep_after = float(args.pop("sleep_after", 0) or 0)
    r = Result(mode if n is None else f"{mode}:{n}")
    try:
        run(mode, n, defaults(mode, args), client_kw, r)
    except Exception as e:  # noqa: BLE001 - report, never crash without a JSON line
        r.error(e)
    r.d["elapsed"] = round(time.monotonic() - r.t0, 4)
    r.d["anthropic_version"] = anthropic.__version__
    if sleep_after:
        time.sleep(sleep_after)
    return r.d


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode")
    ap.add_argument("n", nargs="?", type=int)
    ap.add_argument("--json-args", default="{}")
    ns = ap.parse_args(argv)
    args = json.loads(ns.json_args)
    if ns.mode == "batch":
        for call in args:
            print(json.dumps(run_one(call["mode"], call.get("n"), call.get("args") or {}), default=repr), flush=True)
        return 0
    if ns.mode == "parallel":  # the batch's calls at once, one thread each (results in call order)
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(max_workers=len(args) or 1) as pool:
            futures = [pool.submit(run_one, c["mode"], c.get("n"), c.get("args") or {}) for c in args]
            for fut in futures:
                print(json.dumps(fut.result(), default=repr), flush=True)
        return 0
    print(json.dumps(run_one(ns.mode, ns.n, args), default=repr), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
