"""Start N streaming chat calls at once with the async openai SDK; print one JSON summary.

Usage: python concurrent_streams.py N --json-args '{"model": ..., "max_tokens": ..., "extra_headers": {...}}'
Configured by the environment like any app (HTTPS_PROXY, SSL_CERT_FILE, OPENAI_API_KEY).
"""

import argparse
import asyncio
import json

import openai


async def one(client: openai.AsyncOpenAI, args: dict) -> dict:
    content = ""
    try:
        stream = await client.chat.completions.create(
            stream=True, messages=[{"role": "user", "content": "count for me please"}], **args)
        async for chunk in stream:
            for choice in chunk.choices:
                content += choice.delta.content or ""
        return {"ok": True, "content": content}
    except openai.APIStatusError as exc:
        return {"ok": False, "status_code": exc.status_code, "code": getattr(exc, "code", None), "content": content}
    except openai.APIError as exc:
        return {"ok": False, "status_code": None, "code": getattr(exc, "code", None),
                "message": str(exc), "content": content}


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int)
    ap.add_argument("--json-args", default="{}")
    ns = ap.parse_args()
    args = json.loads(ns.json_args)
    async with openai.AsyncOpenAI(max_retries=0) as client:
        results = await asyncio.gather(*(one(client, args) for _ in range(ns.n)))
    print(json.dumps({"results": results}))


if __name__ == "__main__":
    asyncio.run(main())
