"""Perform ONE chat call with litellm used as a client library and print ONE JSON line.

Runs in the client venv, configured by the environment like any app (``HTTPS_PROXY``,
``SSL_CERT_FILE``, the provider's key variable, e.g. ``DEEPSEEK_API_KEY``,
``OPENROUTER_API_KEY``). ``LITELLM_LOCAL_MODEL_COST_MAP=True`` keeps litellm offline.

Usage::

    python litellm_client.py --json-args '{"model": "deepseek/deepseek-chat", "stream": true, "max_tokens": 20}'

Output: {"ok", "content", "chunks", "usage", "model", "error"}.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import litellm  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json-args", default="{}")
    args = json.loads(ap.parse_args().json_args)
    args.setdefault("messages", [{"role": "user", "content": "say hello"}])
    out: dict = {"ok": False, "content": "", "chunks": 0, "usage": None, "model": None, "error": None}
    try:
        if args.get("stream"):
            for chunk in litellm.completion(**args):
                out["chunks"] += 1
                out["model"] = chunk.model or out["model"]
                for choice in chunk.choices:
                    out["content"] += choice.delta.content or ""
                usage = getattr(chunk, "usage", None)
                if usage is not None:
                    out["usage"] = usage.model_dump() if hasattr(usage, "model_dump") else dict(usage)
        else:
            resp = litellm.completion(**args)
            out["content"] = resp.choices[0].message.content
            out["model"] = resp.model
            out["usage"] = resp.usage.model_dump() if resp.usage is not None else None
        out["ok"] = True
    except Exception as exc:  # noqa: BLE001 - report any failure as data
        out["error"] = {"class": type(exc).__name__, "message": str(exc)[:2000],
                        "status_code": getattr(exc, "status_code", None)}
    print(json.dumps(out, default=repr), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
