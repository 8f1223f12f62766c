"""The mock provider's answers (``pouch proxy --mock``): pouch replies to an admitted LLM call
itself, in the right shape for its provider and API, without forwarding it. Pure.

Used for demos, the CI of the user's own apps, and trying pouch without an account or a key:
the budget gate runs as for a real call (so a 402 looks exactly as it will), then
:func:`reply` builds the response: OpenAI chat, responses, legacy completions and embeddings,
Anthropic messages, Gemini generateContent (SSE with ``alt=sse``, else a JSON array), and the
local servers' native Ollama shapes; streamed or not, as the request asked. The text is
``length`` words, each counted as one token, never more than the request's output cap; the
input is pouch's own estimate of the request. Those counts are reported as the usage, the
same numbers the ledger records (the call itself is settled at $0, status ``mock``).
"""

from __future__ import annotations

import base64
import json
import struct
import time
from dataclasses import dataclass
from typing import Any

from .pricing import Usage

_WORDS = ("pouch", "keeps", "every", "call", "inside", "its", "budget", "and", "this", "answer", "is", "a",
          "mock", "so", "no", "key", "was", "needed", "the", "proxy", "wrote", "it", "itself")
EMBEDDING_DIMENSIONS = 8


@dataclass(frozen=True)
class MockReply:
    status: int
    content_type: str
    body: bytes
    usage: Usage


def words(n: int) -> list[str]:
    """``n`` words of the mock text (the first capitalised, each one token)."""
    out = [_WORDS[i % len(_WORDS)] for i in range(n)]
    if out:
        out[0] = out[0].capitalize()
    return out


def output_length(length: int, cap: int) -> int:
    """The words to answer with: ``length``, never above the request's output cap (0: none)."""
    return max(1, min(length, cap)) if cap > 0 else max(1, length)


def _sse(events: list[tuple[str | None, Any]]) -> bytes:
    out = []
    for name, data in events:
        text = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
        out.append((f"event: {name}\n" if name else "") + f"data: {text}\n\n")
    return "".join(out).encode()


def _vector(i: int) -> list[float]:
    return [round(((i + 1) * (k + 3) % 17) / 17 - 0.5, 6) for k in range(EMBEDDING_DIMENSIONS)]


def _embedding_inputs(body: dict[str, Any]) -> int:
    value = body.get("input")
    if isinstance(value, list) and value and not all(isinstance(v, int) for v in value):
        return len(value)
    return 1


def reply(provider: str, api: str, body: dict[str, Any], *, model: str, stream: bool, input_tokens: int,
          output_cap: int, length: int, client_wants_usage: bool = False, sse: bool = True,
          now: float | None = None) -> MockReply:
    """The mock answer to an admitted call (``api`` as the provider module's plan names it)."""
    now = time.time() if now is None else now
    created = int(now)
    if api in ("embeddings", "ollama_embed"):
        return _embeddings(api, body, model, input_tokens)
    n = output_length(length, output_cap)
    ws = words(n)
    pieces = [w if i == 0 else " " + w for i, w in enumerate(ws)]
    text = "".join(pieces) + "."
    pieces[-1] += "."
    usage = Usage(input_tokens=input_tokens, output_tokens=n)
    stop = "length" if output_cap and n >= output_cap and length > output_cap else "stop"
    if provider == "anthropic":
        return _anthropic(model, pieces, text, usage, stream, stop)
    if provider == "gemini":
        return _gemini(model, pieces, text, usage, stream, sse, stop)
    if api in ("ollama_chat", "ollama_generate", "llamacpp_completion"):
        return _ollama(api, model, pieces, text, usage, stream, stop, now)
    if api == "responses":
        return _responses(model, pieces, text, usage, stream, created, stop)
    return _chat(api, model, pieces, text, usage, stream, created, stop, client_wants_usage)


def _json(obj: Any, usage: Usage, ctype: str = "application/json") -> MockReply:
    return MockReply(200, ctype, json.dumps(obj, separators=(",", ":")).encode(), usage)


def _chat(api: str, model: str, pieces: list[str], text: str, usage: Usage, stream: bool, created: int,
          stop: str, client_wants_usage: bool) -> MockReply:
    oai_usage = {"prompt_tokens": usage.input_tokens, "completion_tokens": usage.output_tokens,
                 "total_tokens": usage.input_tokens + usage.output_tokens}
    legacy = api == "completions"
    rid = "cmpl-pouchmock" if legacy else "chatcmpl-pouchmock"
    if not stream:
        if legacy:
            choice: dict[str, Any] = {"index": 0, "text": text, "logprobs": None, "finish_reason": stop}
        else:
            choice = {"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                      "logprobs": None, "finish_reason": stop}
        return _json({"id": rid, "object": "text_completion" if legacy else "chat.completion", "created": created,
                      "model": model, "choices": [choice], "usage": oai_usage}, usage)
    obj = "text_completion" if legacy else "chat.completion.chunk"

    def chunk(delta: Any, finish: str | None) -> dict[str, Any]:
        c: dict[str, Any] = ({"index": 0, "text": delta, "logprobs": None, "finish_reason": finish} if legacy
                             else {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish})
        return {"id": rid, "object": obj, "created": created, "model": model, "choices": [c]}

    events: list[tuple[str | None, Any]] = []
    if not legacy:
        events.append((None, chunk({"role": "assistant", "content": ""}, None)))
    for p in pieces:
        events.append((None, chunk(p if legacy else {"content": p}, None)))
    events.append((None, chunk("" if legacy else {}, stop)))
    if client_wants_usage:
        events.append((None, {"id": rid, "object": obj, "created": created, "model": model, "choices": [],
                              "usage": oai_usage}))
    events.append((None, "[DONE]"))
    return MockReply(200, "text/event-stream", _sse(events), usage)


def _responses(model: str, pieces: list[str], text: str, usage: Usage, stream: bool, created: int,
               stop: str) -> MockReply:
    item_id, rid = "msg_pouchmock", "resp_pouchmock"
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    item = {"type": "message", "id": item_id, "status": "completed", "role": "assistant", "content": [part]}
    r_usage = {"input_tokens": usage.input_tokens, "input_tokens_details": {"cached_tokens": 0},
               "output_tokens": usage.output_tokens, "output_tokens_details": {"reasoning_tokens": 0},
               "total_tokens": usage.input_tokens + usage.output_tokens}
    incomplete = stop == "length"
    full = {"id": rid, "object": "response", "created_at": created, "status": "incomplete" if incomplete else "completed",
            "incomplete_details": {"reason": "max_output_tokens"} if incomplete else None, "error": None,
            "model": model, "output": [item], "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
            "usage": r_usage}
    if not stream:
        return _json(full, usage)
    start = {**full, "status": "in_progress", "output": [], "usage": None, "incomplete_details": None}
    seq = iter(range(10**9))

    def ev(kind: str, **fields: Any) -> tuple[str, dict[str, Any]]:
        return kind, {"type": kind, "sequence_number": next(seq), **fields}

    events = [ev("response.created", response=start), ev("response.in_progress", response=start),
              ev("response.output_item.added", output_index=0,
                 item={**item, "status": "in_progress", "content": []}),
              ev("response.content_part.added", item_id=item_id, output_index=0, content_index=0,
                 part={**part, "text": ""})]
    for p in pieces:
        events.append(ev("response.output_text.delta", item_id=item_id, output_index=0, content_index=0, delta=p,
                         logprobs=[]))
    events += [ev("response.output_text.done", item_id=item_id, output_index=0, content_index=0, text=text,
                  logprobs=[]),
               ev("response.content_part.done", item_id=item_id, output_index=0, content_index=0, part=part),
               ev("response.output_item.done", output_index=0, item=item),
               ev("response.incomplete" if incomplete else "response.completed", response=full)]
    return MockReply(200, "text/event-stream", _sse(list(events)), usage)


def _embeddings(api: str, body: dict[str, Any], model: str, input_tokens: int) -> MockReply:
    usage = Usage(input_tokens=input_tokens)
    n = _embedding_inputs(body)
    if api == "ollama_embed":
        return _json({"model": model, "embeddings": [_vector(i) for i in range(n)],
                      "prompt_eval_count": input_tokens}, usage)
    b64 = body.get("encoding_format") == "base64"
    data = []
    for i in range(n):
        vec: Any = _vector(i)
        if b64:
            vec = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode()
        data.append({"object": "embedding", "index": i, "embedding": vec})
    return _json({"object": "list", "data": data, "model": model,
                  "usage": {"prompt_tokens": input_tokens, "total_tokens": input_tokens}}, usage)


def _anthropic(model: str, pieces: list[str], text: str, usage: Usage, stream: bool, stop: str) -> MockReply:
    stop_reason = "max_tokens" if stop == "length" else "end_turn"
    a_usage = {"input_tokens": usage.input_tokens, "cache_creation_input_tokens": 0, "cache_read_input_tokens": 0,
               "output_tokens": usage.output_tokens}
    msg = {"id": "msg_pouchmock", "type": "message", "role": "assistant", "model": model,
           "content": [{"type": "text", "text": text}], "stop_reason": stop_reason, "stop_sequence": None,
           "usage": a_usage}
    if not stream:
        return _json(msg, usage)
    start = {**msg, "content": [], "stop_reason": None, "usage": {**a_usage, "output_tokens": 1}}
    events: list[tuple[str | None, Any]] = [
        ("message_start", {"type": "message_start", "message": start}),
        ("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}}),
        ("ping", {"type": "ping"}),
    ]
    for p in pieces:
        events.append(("content_block_delta", {"type": "content_block_delta", "index": 0,
                                               "delta": {"type": "text_delta", "text": p}}))
    events += [("content_block_stop", {"type": "content_block_stop", "index": 0}),
               ("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": None},
                                  "usage": {"output_tokens": usage.output_tokens}}),
               ("message_stop", {"type": "message_stop"})]
    return MockReply(200, "text/event-stream", _sse(events), usage)


def _gemini(model: str, pieces: list[str], text: str, usage: Usage, stream: bool, sse: bool, stop: str) -> MockReply:
    finish = "MAX_TOKENS" if stop == "length" else "STOP"

    def chunk(t: str, last: bool) -> dict[str, Any]:
        cand: dict[str, Any] = {"content": {"parts": [{"text": t}], "role": "model"}, "index": 0}
        if last:
            cand["finishReason"] = finish
        meta: dict[str, Any] = {"promptTokenCount": usage.input_tokens, "totalTokenCount": usage.input_tokens}
        if last:
            meta.update(candidatesTokenCount=usage.output_tokens,
                        totalTokenCount=usage.input_tokens + usage.output_tokens)
        return {"candidates": [cand], "usageMetadata": meta, "modelVersion": model, "responseId": "pouchmock"}

    if not stream:
        return _json(chunk(text, True), usage)
    chunks = [chunk(p, i == len(pieces) - 1) for i, p in enumerate(pieces)]
    if sse:
        return MockReply(200, "text/event-stream", "".join(
            f"data: {json.dumps(c, separators=(',', ':'))}\r\n\r\n" for c in chunks).encode(), usage)
    return MockReply(200, "application/json", ("[" + ",\r\n".join(json.dumps(c) for c in chunks) + "]").encode(), usage)


def _ollama(api: str, model: str, pieces: list[str], text: str, usage: Usage, stream: bool, stop: str,
            now: float) -> MockReply:
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
    final = {"done": True, "done_reason": "length" if stop == "length" else "stop", "total_duration": 0,
             "load_duration": 0, "prompt_eval_count": usage.input_tokens, "prompt_eval_duration": 0,
             "eval_count": usage.output_tokens, "eval_duration": 0}
    if api == "llamacpp_completion":
        timings = {"prompt_n": usage.input_tokens, "predicted_n": usage.output_tokens}
        if not stream:
            return _json({"content": text, "model": model, "stop": True, "timings": timings}, usage)
        events = [(None, {"content": p, "stop": False}) for p in pieces]
        events.append((None, {"content": "", "stop": True, "model": model, "timings": timings}))
        return MockReply(200, "text/event-stream", _sse(events), usage)

    def line(t: str, done: bool) -> dict[str, Any]:
        out: dict[str, Any] = {"model": model, "created_at": stamp}
        if api == "ollama_chat":
            out["message"] = {"role": "assistant", "content": t}
        else:
            out["response"] = t
        if done:
            out.update(final)
        else:
            out["done"] = False
        return out

    if not stream:
        return _json(line(text, True), usage)
    lines = [line(p, False) for p in pieces] + [line("", True)]
    return MockReply(200, "application/x-ndjson",
                     "".join(json.dumps(x, separators=(",", ":")) + "\n" for x in lines).encode(), usage)


def expand_flag(argv: list[str]) -> list[str]:
    """``pouch proxy --mock`` -> ``--set pouch_mock=true`` for mitmdump."""
    out: list[str] = []
    for a in argv:
        out += ["--set", "pouch_mock=true"] if a == "--mock" else [a]
    return out
