"""Perform ONE google-genai call, the way an unmodified app would, and print ONE JSON line.

The Gemini twin of ``sdk_client.py`` (same JSON-in/JSON-out protocol). Runs in the client
venv (scripts/make_client_venv.sh), configured purely by the environment: ``HTTPS_PROXY``,
``SSL_CERT_FILE`` (= the mitmproxy CA; google-genai builds its SSL context from it),
``GEMINI_API_KEY``. ``genai.Client()`` is built with no arguments unless the args contain
``"client": {...}`` (e.g. ``{"http_options": {"api_version": "v1"}}``).

Usage::

    python genai_client.py MODE [N] --json-args '{"model": "gemini-2.5-flash",
        "config": {"max_output_tokens": 50}, "extra_headers": {"x-fake-chunks": "4"}}'

Args: ``model`` (default ``gemini-2.5-flash``), ``contents`` (default ``"say hello"``),
``config`` (a ``GenerateContentConfig`` dict, snake_case), ``extra_headers`` (sent with the
call through ``config.http_options.headers``), ``client``, ``sleep_after``. ``batch`` runs
``[{"mode", "args"}, ...]`` in one process, one JSON line per call.

Modes: ``generate`` (``models.generate_content``), ``stream``
(``models.generate_content_stream``, which asks ``?alt=sse``), ``async_generate``,
``async_stream``, ``count_tokens``, ``stream_disconnect_after N`` (read N chunks, then close).

Output (one JSON object; exit code 0 even on API errors)::

    {"mode", "ok", "content" (text without thoughts), "thoughts" (thought text),
     "function_calls": [{"name", "args"}], "finish_reason", "usage" (the last usageMetadata
     seen, in the wire's camelCase), "usages" ([per chunk]), "chunks", "model_version",
     "response_id", "total_tokens" (count_tokens), "elapsed", "genai_version",
     "error": null | {"class", "mro", "code", "status", "message", "details"}}
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import traceback
from typing import Any

from google import genai
from google.genai import errors as genai_errors


def _usage(u: Any) -> Any:
    if u is None:
        return None
    return u.model_dump(mode="json", by_alias=True, exclude_none=True)


class Result:
    def __init__(self, mode: str):
        self.d: dict[str, Any] = {
            "mode": mode, "ok": False, "content": "", "thoughts": "", "function_calls": [],
            "finish_reason": None, "usage": None, "usages": [], "chunks": 0, "model_version": None,
            "response_id": None, "elapsed": None, "error": None,
        }
        self.t0 = time.monotonic()

    def response(self, resp: Any, chunk: bool) -> None:
        d = self.d
        if chunk:
            d["chunks"] += 1
        d["model_version"] = resp.model_version or d["model_version"]
        d["response_id"] = resp.response_id or d["response_id"]
        for cand in (resp.candidates or [])[:1]:
            if cand.finish_reason is not None:
                d["finish_reason"] = str(getattr(cand.finish_reason, "value", cand.finish_reason))
            for part in (cand.content.parts if cand.content and cand.content.parts else []):
                if part.function_call is not None:
                    d["function_calls"].append({"name": part.function_call.name, "args": part.function_call.args})
                elif part.text:
                    if part.thought:
                        d["thoughts"] += part.text
                    else:
                        d["content"] += part.text
        if resp.usage_metadata is not None:
            d["usage"] = _usage(resp.usage_metadata)
            if chunk:
                d["usages"].append(d["usage"])

    def error(self, e: BaseException) -> None:
        self.d["error"] = {
            "class": type(e).__name__, "module": type(e).__module__,
            "mro": [c.__name__ for c in type(e).__mro__],
            "code": getattr(e, "code", None), "status": getattr(e, "status", None),
            "message": getattr(e, "message", None) or str(e), "details": getattr(e, "details", None),
            "traceback": traceback.format_exc(limit=6),
        }


def call_args(args: dict) -> dict:
    a = dict(args)
    a.setdefault("model", "gemini-2.5-flash")
    a.setdefault("contents", "say hello")
    headers = a.pop("extra_headers", None)
    if headers:
        cfg = dict(a.get("config") or {})
        ho = dict(cfg.get("http_options") or {})
        ho["headers"] = {**(ho.get("headers") or {}), **headers}
        cfg["http_options"] = ho
        a["config"] = cfg
    return a


def run(mode: str, n: int | None, a: dict, client_kw: dict, r: Result) -> None:
    client = genai.Client(**client_kw)
    d = r.d
    try:
        if mode == "generate":
            r.response(client.models.generate_content(**a), chunk=False)
        elif mode == "stream":
            for ch in client.models.generate_content_stream(**a):
                r.response(ch, chunk=True)
        elif mode == "stream_disconnect_after":
            it = client.models.generate_content_stream(**a)
            for ch in it:
                r.response(ch, chunk=True)
                if d["chunks"] >= (n or 0):
                    break
            it.close()
            d["disconnected_after"] = d["chunks"]
        elif mode == "count_tokens":
            d["total_tokens"] = client.models.count_tokens(**a).total_tokens
        elif mode in ("async_generate", "async_stream"):
            asyncio.run(run_async(client, mode, a, r))
        else:
            raise SystemExit(f"unknown mode {mode!r}")
        d["ok"] = True
    except genai_errors.APIError as e:
        r.error(e)
    finally:
        client.close()


async def run_async(client: Any, mode: str, a: dict, r: Result) -> None:
    if mode == "async_generate":
        r.response(await client.aio.models.generate_content(**a), chunk=False)
    else:
        async for ch in await client.aio.models.generate_content_stream(**a):
            r.response(ch, chunk=True)
    await client.aio.aclose()


def run_one(mode: str, n: int | None, args: dict) -> dict:
    if ":" in mode:
        mode, _, n_s = mode.partition(":")
        n = int(n_s)
    args = dict(args)
    client_kw = args.pop("client", None) or {}
    sleep_after = float(args.pop("sleep_after", 0) or 0)
    r = Result(mode if n is None else f"{mode}:{n}")
    try:
        run(mode, n, call_args(args), client_kw, r)
    except Exception as e:  # noqa: BLE001 - report, never crash without a JSON line
        r.error(e)
    r.d["elapsed"] = round(time.monotonic() - r.t0, 4)
    r.d["genai_version"] = genai.__version__
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
