"""Two calls on ONE openai client (one keep-alive connection): a stream, then a plain call.

Usage: python two_calls_one_client.py --first '{...stream kwargs...}' --second '{...kwargs...}'
Prints {"first": {...}, "second": {...}} with ok/content/error for each.
"""

import argparse
import json

import openai


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--first", required=True)
    ap.add_argument("--second", required=True)
    ns = ap.parse_args()
    client = openai.OpenAI(max_retries=0)
    out = {}
    content = ""
    try:
        for chunk in client.chat.completions.create(stream=True, **json.loads(ns.first)):
            for choice in chunk.choices:
                content += choice.delta.content or ""
        out["first"] = {"ok": True, "content": content}
    except openai.APIError as exc:
        out["first"] = {"ok": False, "content": content, "error": str(exc)}
    try:
        r = client.chat.completions.create(**json.loads(ns.second))
        out["second"] = {"ok": True, "content": r.choices[0].message.content}
    except openai.APIError as exc:
        out["second"] = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
