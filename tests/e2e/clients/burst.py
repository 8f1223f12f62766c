"""Start many streaming chat calls at once with the async openai SDK, each its own way; print one
JSON summary.

Usage: python burst.py --json-args '[{"args": {...}, "disconnect_after": null | N}, ...]'

Each spec's ``args`` go to ``chat.completions.create(stream=True, ...)`` (a one-message
``messages`` is added); with ``disconnect_after`` the call reads that many chunks and closes its
connection, like an app that gives up mid-stream. One ``AsyncOpenAI`` client (``max_retries=0``)
carries them all, so they share its connection pool like the calls of one busy app. Configured
by the environment like any app (HTTPS_PROXY, SSL_CERT_FILE, OPENAI_API_KEY).

Output: ``{"results": [{"ok", "status_code", "code", "message", "content", "chunks",
"disconnected"}, ...]}`` in the order of the specs.
"""

import argparse
import asyncio
import json

import openai


async def one(client: openai.AsyncOpenAI, spec: dict) -> dict:
    out = {"ok": False, "status_code": None, "code": None, "message": None, "content": "", "chunks": 0,
           "disconnected": False}
    stop = spec.get("disconnect_after")
    try:
        stream = await client.chat.completions.create(
            stream=True, messages=[{"role": "user", "content": "count for me please"}], **spec["args"])
        async for chunk in stream:
            out["chunks"] += 1
            for choice in chunk.choices:
                out["content"] += choice.delta.content or ""
            if stop is not None and out["chunks"] >= stop:
                out["disconnected"] = True
                break
        await stream.close()
        out["ok"] = True
    except openai.APIStatusError as exc:
        out.update(status_code=exc.status_code, code=getattr(exc, "code", None), message=str(exc))
    except openai.APIError as exc:
        out.update(code=getattr(exc, "code", None), message=f"{type(exc).__name__}: {exc}")
    return out


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json-args", required=True)
    specs = json.loads(ap.parse_args().json_args)
    async with openai.AsyncOpenAI(max_retries=0, timeout=60) as client:
        results = await asyncio.gather(*(one(client, s) for s in specs))
    print(json.dumps({"results": results}))


if __name__ == "__main__":
    asyncio.run(main())
