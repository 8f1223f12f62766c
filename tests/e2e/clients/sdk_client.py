"""Perform ONE openai-SDK call, the way an unmodified app would, and print ONE JSON line.

Runs in the separate client venv (scripts/make_client_venv.sh), configured purely by the
environment: ``HTTPS_PROXY``, ``SSL_CERT_FILE`` (= the mitmproxy CA), ``OPENAI_API_KEY``.
``openai.OpenAI()`` is built with the SDK defaults (``max_retries`` = 2) unless the args
contain ``"client": {...}`` (keyword arguments for ``OpenAI(...)``/``AsyncOpenAI(...)``; with
``"azure": true`` in it, ``AzureOpenAI(...)`` for the sync modes).

Usage::

    python sdk_client.py MODE [N] --json-args '{"model": "gpt-4o-mini", "max_tokens": 5,
                                               "extra_headers": {"x-fake-chunks": "4"}}'

``--json-args`` are passed as keyword arguments to the SDK method (defaults: ``model``
``gpt-4o-mini`` (embeddings: ``text-embedding-3-small``, completions:
``gpt-3.5-turbo-instruct``) and a one-message ``messages`` / ``input`` / ``prompt``).
``stream`` is set by the mode. Extra keys the client itself consumes: ``client`` (dict,
OpenAI() kwargs), ``sleep_after`` (seconds to sleep after the call before printing, e.g. to
keep a disconnected process alive briefly).

Batch: ``python sdk_client.py batch --json-args '[{"mode": "chat", "args": {...}}, ...]'``
runs the calls one after another in one process (each with a new client) and prints one
JSON line per call.

Modes: chat, chat_stream, chat_stream_helper (``client.chat.completions.stream()``),
async_chat, async_chat_stream, responses, responses_stream (``responses.create(stream=True)``),
responses_stream_helper (``client.responses.stream()``), responses_stream_until_done (stops
reading at the terminal event and closes the connection), completions, completions_stream,
embeddings, models, and ``chat_stream_disconnect_after N`` (also ``..._after:N``): read N
SDK chunks (the role chunk counts) then ``stream.close()`` the connection.

Output (always one JSON object on stdout, exit code 0 even on API errors)::

    {"mode", "ok": bool, "content": str, "chunks": int, "empty_choices_chunks": int,
     "any_empty_choices": bool, "chunk_contents": [...], "finish_reason", "usage": {...}|null,
     "events": [event types] (responses streams), "id", "model", "service_tier",
     "chunk_times": [seconds since the call started, one per chunk/event],
     "elapsed": s, "error": null | {"class", "module", "status_code", "message", "code",
                                     "type", "body"}}

``usage`` is the last usage object seen (non-stream body, a stream chunk, or the
response.completed/incomplete event). On an error, everything seen before it is kept.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import traceback
from typing import Any

import openai


def _dump(obj: Any) -> Any:
    if obj is None:
        return None
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json", exclude_none=False)
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    return obj


class Result:
    def __init__(self, mode: str):
        self.d: dict[str, Any] = {
            "mode": mode, "ok": False, "content": "", "chunks": 0, "empty_choices_chunks": 0,
            "any_empty_choices": False, "chunk_contents": [], "finish_reason": None, "usage": None,
            "events": [], "id": None, "model": None, "service_tier": None, "elapsed": None, "error": None,
            "chunk_times": [],
        }
        self.t0 = time.monotonic()

    def _tick(self) -> None:
        self.d["chunk_times"].append(round(time.monotonic() - self.t0, 4))

    def chat_chunk(self, ch: Any) -> None:
        d = self.d
        d["chunks"] += 1
        self._tick()
        d["id"] = d["id"] or getattr(ch, "id", None)
        d["model"] = getattr(ch, "model", None) or d["model"]
        d["service_tier"] = getattr(ch, "service_tier", None) or d["service_tier"]
        if not ch.choices:
            d["empty_choices_chunks"] += 1
            d["any_empty_choices"] = True
        piece = ""
        for choice in ch.choices:
            delta = getattr(choice, "delta", None)
            text = getattr(delta, "content", None) if delta is not None else getattr(choice, "text", None)
            if text:
                piece += text
            if choice.finish_reason:
                d["finish_reason"] = choice.finish_reason
        d["content"] += piece
        d["chunk_contents"].append(piece)
        if getattr(ch, "usage", None) is not None:
            d["usage"] = _dump(ch.usage)

    def completion(self, resp: Any) -> None:
        d = self.d
        d["id"], d["model"] = resp.id, resp.model
        d["service_tier"] = getattr(resp, "service_tier", None)
        ch = resp.choices[0] if resp.choices else None
        if ch is not None:
            d["content"] = ch.message.content if hasattr(ch, "message") else ch.text
            d["finish_reason"] = ch.finish_reason
        d["choices"] = len(resp.choices)
        d["usage"] = _dump(resp.usage)

    def response_event(self, ev: Any) -> None:
        d = self.d
        d["chunks"] += 1
        self._tick()
        d["events"].append(ev.type)
        if ev.type == "response.output_text.delta":
            d["content"] += ev.delta
            d["chunk_contents"].append(ev.delta)
        resp = getattr(ev, "response", None)
        if resp is not None:
            d["id"] = resp.id
            d["model"] = resp.model
            d["service_tier"] = getattr(resp, "service_tier", None)
            d["status"] = resp.status
            if resp.usage is not None:
                d["usage"] = _dump(resp.usage)

    def error(self, e: BaseException) -> None:
        self.d["error"] = {
            "class": type(e).__name__,
            "module": type(e).__module__,
            "mro": [c.__name__ for c in type(e).__mro__],
            "status_code": getattr(e, "status_code", None),
            "message": str(e),
            "code": getattr(e, "code", None),
            "type": getattr(e, "type", None),
            "body": getattr(e, "body", None),
            "cause": repr(e.__cause__) if e.__cause__ is not None else None,
            "traceback": traceback.format_exc(limit=6),
        }


def defaults(mode: str, args: dict) -> dict:
    a = dict(args)
    if mode.startswith("embeddings"):
        a.setdefault("model", "text-embedding-3-small")
        a.setdefault("input", "hello fake world")
    elif mode.startswith("completions"):
        a.setdefault("model", "gpt-3.5-turbo-instruct")
        a.setdefault("prompt", "say hello")
    elif mode.startswith("responses"):
        a.setdefault("model", "gpt-4o-mini")
        a.setdefault("input", "say hello")
    elif mode != "models":
        a.setdefault("model", "gpt-4o-mini")
        a.setdefault("messages", [{"role": "user", "content": "say hello"}])
    return a


def run_sync(mode: str, n: int | None, a: dict, client_kw: dict, r: Result) -> None:
    client_kw = dict(client_kw)
    # "client": {"azure": true, ...}: openai.AzureOpenAI(azure_endpoint=..., api_version=..., ...)
    client = (openai.AzureOpenAI if client_kw.pop("azure", False) else openai.OpenAI)(**client_kw)
    d = r.d
    try:
        if mode == "chat":
            r.completion(client.chat.completions.create(**a))
        elif mode == "chat_stream":
            for ch in client.chat.completions.create(stream=True, **a):
                r.chat_chunk(ch)
        elif mode == "chat_stream_disconnect_after":
            stream = client.chat.completions.create(stream=True, **a)
            for ch in stream:
                r.chat_chunk(ch)
                if d["chunks"] >= (n or 0):
                    break
            stream.close()
            d["disconnected_after"] = d["chunks"]
        elif mode == "chat_stream_helper":
            with client.chat.completions.stream(**a) as stream:
                for ev in stream:
                    d["events"].append(ev.type)
                    if ev.type == "chunk":
                        r.chat_chunk(ev.chunk)
                final = stream.get_final_completion()
            d["helper_content"] = final.choices[0].message.content if final.choices else None
            d["helper_finish_reason"] = final.choices[0].finish_reason if final.choices else None
            d["helper_usage"] = _dump(final.usage)
            if final.usage is not None:
                d["usage"] = _dump(final.usage)
        elif mode == "completions":
            r.completion(client.completions.create(**a))
        elif mode == "completions_stream":
            for ch in client.completions.create(stream=True, **a):
                r.chat_chunk(ch)
        elif mode == "responses":
            resp = client.responses.create(**a)
            d["id"], d["model"], d["status"] = resp.id, resp.model, resp.status
            d["service_tier"] = getattr(resp, "service_tier", None)
            d["content"] = resp.output_text
            d["usage"] = _dump(resp.usage)
        elif mode == "responses_stream":
            for ev in client.responses.create(stream=True, **a):
                r.response_event(ev)
        elif mode == "responses_stream_until_done":
            stream = client.responses.create(stream=True, **a)
            for ev in stream:
                r.response_event(ev)
                if ev.type in ("response.completed", "response.incomplete", "response.failed"):
                    break  # an app that stops reading at the final event and hangs up
            stream.close()
        elif mode == "responses_stream_helper":
            with client.responses.stream(**a) as stream:
                for ev in stream:
                    r.response_event(ev)
                final = stream.get_final_response()
            d["helper_content"] = final.output_text
            d["usage"] = _dump(final.usage)
        elif mode == "embeddings":
            resp = client.embeddings.create(**a)
            d["model"] = resp.model
            d["embeddings"] = len(resp.data)
            d["dims"] = [len(x.embedding) for x in resp.data]
            d["usage"] = _dump(resp.usage)
        elif mode == "models":
            d["models"] = [m.id for m in client.models.list()]
        else:
            raise SystemExit(f"unknown mode {mode!r}")
        d["ok"] = True
    except openai.OpenAIError as e:
        r.error(e)
    finally:
        client.close()


async def run_async(mode: str, a: dict, client_kw: dict, r: Result) -> None:
    client = openai.AsyncOpenAI(**client_kw)
    try:
        if mode == "async_chat":
            r.completion(await client.chat.completions.create(**a))
        elif mode == "async_chat_stream":
            stream = await client.chat.completions.create(stream=True, **a)
            async for ch in stream:
                r.chat_chunk(ch)
        else:
            raise SystemExit(f"unknown mode {mode!r}")
        r.d["ok"] = True
    except openai.OpenAIError as e:
        r.error(e)
    finally:
        await client.close()


def run_one(mode: str, n: int | None, args: dict) -> dict:
    if ":" in mode:
        mode, _, n_s = mode.partition(":")
        n = int(n_s)
    args = dict(args)
    client_kw = args.pop("client", None) or {}
    sleep_after = float(args.pop("sleep_after", 0) or 0)
    a = defaults(mode, args)
    r = Result(mode if n is None else f"{mode}:{n}")
    try:
        if mode.startswith("async_"):
            asyncio.run(run_async(mode, a, client_kw, r))
        else:
            run_sync(mode, n, a, client_kw, r)
    except Exception as e:  # noqa: BLE001 - non-OpenAIError (e.g. IndexError in user-ish code)
        r.error(e)
    r.d["elapsed"] = round(time.monotonic() - r.t0, 4)
    r.d["openai_version"] = openai.__version__
    if sleep_after:
        time.sleep(sleep_after)
    return r.d


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", help="a mode, or 'batch' with --json-args '[{\"mode\": ..., \"args\": {...}}, ...]'")
    ap.add_argument("n", nargs="?", type=int)
    ap.add_argument("--json-args", default="{}")
    ns = ap.parse_args(argv)
    args = json.loads(ns.json_args)
    if ns.mode == "batch":
        # Several calls in one process (saves ~1 s of `import openai` per call); each call
        # builds its own client, so each opens its own connection as a fresh app would.
        for call in args:
            print(json.dumps(run_one(call["mode"], call.get("n"), call.get("args") or {}), default=repr), flush=True)
        return 0
    print(json.dumps(run_one(ns.mode, ns.n, args), default=repr), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
