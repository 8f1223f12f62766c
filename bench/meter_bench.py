"""In-process cost of metering a streamed response: ``StreamMeter.feed`` + ``finish`` per chunk.

Every upstream chunk of a metered SSE stream goes through ``StreamMeter.feed`` on mitmproxy's
event loop, so its cost adds directly to the proxy's per-chunk CPU. This bench feeds realistic
streams to a fresh meter and reports microseconds per chunk (median over repetitions), next to
a baseline measured in the same run on the same bytes: splitting each chunk on ``\\n\\n`` (with
a carried-over tail) and ``json.loads`` of every ``data`` payload -- the minimum any meter that
reads the JSON must do.

Streams (what gpt-4o-mini sends when pouch injected ``include_usage``: ``"usage":null`` in
every chunk, a usage-only chunk with ``choices: []`` at the end, hidden from the client):

- ``chat 50`` / ``chat 500``: Chat Completions, one event per chunk (role chunk, content
  deltas, finish chunk, usage chunk, ``[DONE]``);
- ``chat 500 multi``: the same 500-event stream cut at random points into chunks of about
  three events (events split across chunks, several per chunk);
- ``chat 50 gzip``: ``chat 50`` gzipped chunk by chunk (a provider that compresses its SSE
  anyway): the meter decodes it (``content_encoding``), the baseline decodes with one zlib
  decompressor before splitting;
- ``responses 50``: a Responses API stream (``response.created`` ... ``response.output_text
  .delta`` x 42 ... ``response.completed`` with usage), ``event:`` + ``data:`` per event, one
  event per chunk;
- ``anthropic 50``: a Messages stream from claude-sonnet-4-5 (``message_start``, text deltas,
  ``message_delta`` with cumulative usage, ``message_stop``), ``event:`` + ``data:``, one event
  per chunk; ``gemini 50``: a ``streamGenerateContent?alt=sse`` stream from gemini-2.5-flash, each
  chunk a whole response with running ``usageMetadata``. Their meters are the provider modules'
  (``providers/anthropic.py``, ``providers/gemini.py``); the issue's target is a per-event cost
  within 1.2x of OpenAI chat's, printed as ``RATIO meter <provider>/chat``.

The reservation is large, so nothing is cut off and the tokeniser does not run during the
stream (it runs when the count is read). Also printed for information, not in the ratios: the
constructor's cost per stream and the cost of reading ``output_tokens_counted`` at the end (the
lazy tiktoken pass over the whole output, which settlement does once per stream).

With ``--profile`` the meter is run under cProfile on ``chat 500`` and the top functions are
printed. Each ratio is printed as ``RATIO meter <api>/baseline = x.xx``.

    .venv/bin/python bench/meter_bench.py [--quick] [--profile] [--reps N]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import json
import pstats
import random
import statistics
import time
import zlib
from decimal import Decimal

import pouch_addon
from pouch_addon.metering import StreamMeter
from pouch_addon.pricing import PriceTable
from pouch_addon.providers import anthropic, gemini

MODEL = "gpt-4o-mini"
WORDS = (" the", " quick", " brown", " fox", " jumps", " over", " a", " lazy", " dog", ",",
         " and", " then", " it", " runs", " away", ".", " Hello", " world", "!", " caf\u00e9",
         " \u4f60\u597d", " 42", "\n\n", " **bold**")


def _dumps(obj: dict) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def chat_stream(n_chunks: int) -> list[bytes]:
    """``n_chunks`` chunks of one event each: role, content x (n-4), finish, usage, [DONE]."""
    def chunk(choices: list, usage=None) -> bytes:
        return b"data: " + _dumps({
            "id": "chatcmpl-BnTz6yqY2D1tMZ6pQd4bS3KJb1x", "object": "chat.completion.chunk",
            "created": 1750000000, "model": "gpt-4o-mini-2024-07-18", "service_tier": "default",
            "system_fingerprint": "fp_34a54ae93c", "choices": choices, "usage": usage}) + b"\n\n"

    out = [chunk([{"index": 0, "delta": {"role": "assistant", "content": "", "refusal": None},
                   "logprobs": None, "finish_reason": None}])]
    for k in range(n_chunks - 4):
        out.append(chunk([{"index": 0, "delta": {"content": WORDS[k % len(WORDS)]},
                           "logprobs": None, "finish_reason": None}]))
    out.append(chunk([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}]))
    out.append(chunk([], {"prompt_tokens": 25, "completion_tokens": n_chunks - 4, "total_tokens": 21 + n_chunks,
                          "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                          "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                                        "accepted_prediction_tokens": 0,
                                                        "rejected_prediction_tokens": 0}}))
    out.append(b"data: [DONE]\n\n")
    return out


def responses_stream(n_chunks: int) -> list[bytes]:
    """``n_chunks`` events, one per chunk, as the Responses API streams a plain text answer."""
    seq = iter(range(10**6))
    n_deltas = n_chunks - 8
    text = "".join(WORDS[k % len(WORDS)] for k in range(n_deltas))
    usage = {"input_tokens": 25, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": n_deltas,
             "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 25 + n_deltas}

    def resp(status: str, output: list, usage_val) -> dict:
        return {"id": "resp_67ccd2bed1ec8190b14f964abc054267", "object": "response", "created_at": 1750000000,
                "status": status, "background": False, "error": None, "incomplete_details": None,
                "instructions": None, "max_output_tokens": None, "model": "gpt-4o-mini-2024-07-18",
                "output": output, "parallel_tool_calls": True, "previous_response_id": None,
                "reasoning": {"effort": None, "summary": None}, "service_tier": "default", "store": True,
                "temperature": 1.0, "text": {"format": {"type": "text"}}, "tool_choice": "auto",
                "tools": [], "top_p": 1.0, "truncation": "disabled", "usage": usage_val, "user": None,
                "metadata": {}}

    def ev(typ: str, **fields) -> bytes:
        return (b"event: " + typ.encode() + b"\ndata: "
                + _dumps({"type": typ, "sequence_number": next(seq), **fields}) + b"\n\n")

    mid = "msg_67ccd2bf17f0819081ff3bb2cf6508e6"
    part = {"type": "output_text", "text": text, "annotations": [], "logprobs": []}
    item = {"id": mid, "type": "message", "status": "completed", "role": "assistant", "content": [part]}
    out = [ev("response.created", response=resp("in_progress", [], None)),
           ev("response.in_progress", response=resp("in_progress", [], None)),
           ev("response.output_item.added", output_index=0,
              item={"id": mid, "type": "message", "status": "in_progress", "role": "assistant", "content": []}),
           ev("response.content_part.added", item_id=mid, output_index=0, content_index=0,
              part={"type": "output_text", "text": "", "annotations": [], "logprobs": []})]
    for k in range(n_deltas):
        out.append(ev("response.output_text.delta", item_id=mid, output_index=0, content_index=0,
                      delta=WORDS[k % len(WORDS)], logprobs=[]))
    out += [ev("response.output_text.done", item_id=mid, output_index=0, content_index=0, text=text, logprobs=[]),
            ev("response.content_part.done", item_id=mid, output_index=0, content_index=0, part=part),
            ev("response.output_item.done", output_index=0, item=item),
            ev("response.completed", response=resp("completed", [item], usage))]
    assert len(out) == n_chunks
    return out


def anthropic_stream(n_chunks: int) -> list[bytes]:
    """message_start, content_block_start, (n-5) text deltas, content_block_stop, message_delta, message_stop."""
    def ev(typ: str, **fields) -> bytes:
        return b"event: " + typ.encode() + b"\ndata: " + _dumps({"type": typ, **fields}) + b"\n\n"
    out = [ev("message_start", message={"id": "msg_01", "type": "message", "role": "assistant", "content": [],
                                        "model": "claude-sonnet-4-5-20250929", "stop_reason": None,
                                        "usage": {"input_tokens": 25, "cache_creation_input_tokens": 0,
                                                  "cache_read_input_tokens": 0, "output_tokens": 1}}),
           ev("content_block_start", index=0, content_block={"type": "text", "text": ""})]
    for i in range(n_chunks - 5):
        out.append(ev("content_block_delta", index=0, delta={"type": "text_delta", "text": WORDS[i % len(WORDS)]}))
    out.append(ev("content_block_stop", index=0))
    out.append(ev("message_delta", delta={"stop_reason": "end_turn", "stop_sequence": None},
                  usage={"output_tokens": n_chunks - 5}))
    out.append(ev("message_stop"))
    return out


def gemini_stream(n_chunks: int) -> list[bytes]:
    """``n_chunks`` SSE events, each a GenerateContentResponse with a running usageMetadata."""
    out = []
    for i in range(n_chunks):
        cand = {"content": {"parts": [{"text": WORDS[i % len(WORDS)]}], "role": "model"}, "index": 0}
        if i == n_chunks - 1:
            cand["finishReason"] = "STOP"
        out.append(b"data: " + _dumps({"candidates": [cand], "usageMetadata": {
            "promptTokenCount": 25, "candidatesTokenCount": i + 1, "totalTokenCount": 26 + i},
            "modelVersion": "gemini-2.5-flash", "responseId": "resp-1"}) + b"\r\n\r\n")
    return out


PROVIDER_MODELS = {"anthropic": "claude-sonnet-4-5", "gemini": "gemini-2.5-flash"}


def resplit(chunks: list[bytes], events_per_chunk: float, seed: int) -> list[bytes]:
    """The same bytes cut at random points into chunks of about ``events_per_chunk`` events."""
    data = b"".join(chunks)
    rng = random.Random(seed)
    mean = len(data) / len(chunks) * events_per_chunk
    cuts, pos = [], 0
    while True:
        pos += max(1, int(rng.uniform(0.2, 1.8) * mean))
        if pos >= len(data):
            break
        cuts.append(pos)
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in zip(bounds, bounds[1:])]


# -- the two measured workloads ------------------------------------------------------------------

def new_meter(api: str, price, encoding: str | None = None) -> StreamMeter:
    if api == "anthropic":
        return anthropic.AnthropicStreamMeter(price, PROVIDER_MODELS[api], 25, Decimal("1"))
    if api == "gemini":
        return gemini.GeminiStreamMeter(price, PROVIDER_MODELS[api], 25, Decimal("1"))
    return StreamMeter(api, price, MODEL, 25, Decimal("1"), hide_usage_chunk=api == "chat", tier=None,
                       content_encoding=encoding)


def gzip_chunks(chunks: list[bytes]) -> list[bytes]:
    """Each chunk gzipped and flushed (``Z_SYNC_FLUSH``), as a server compressing an SSE stream
    sends it; the gzip trailer rides with the last chunk."""
    z = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    out = [z.compress(c) + z.flush(zlib.Z_SYNC_FLUSH) for c in chunks]
    out[-1] += z.flush()
    return out


def run_baseline_gzip(chunks: list[bytes]) -> int:
    """The baseline after decoding every chunk with one ``zlib`` decompressor."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    return run_baseline([d.decompress(c) for c in chunks])


def run_meter(meter: StreamMeter, chunks: list[bytes]) -> int:
    feed = meter.feed
    n = 0
    for chunk in chunks:
        for piece in feed(chunk):
            n += len(piece)
    for piece in meter.finish():
        n += len(piece)
    return n


def run_baseline(chunks: list[bytes]) -> int:
    """Split on blank lines (keeping the unfinished tail) and json.loads each data payload."""
    loads = json.loads
    tail = b""
    n = 0
    for chunk in chunks:
        if tail:
            chunk = tail + chunk
        parts = chunk.replace(b"\r\n", b"\n").split(b"\n\n")
        tail = parts.pop()
        for part in parts:
            i = part.find(b"data: ")
            if i >= 0:
                payload = part[i + 6:]
                if payload != b"[DONE]":
                    loads(payload)
                    n += 1
    return n


def measure(name: str, api: str, chunks: list[bytes], price, reps: int,
            plain: list[bytes] | None = None) -> tuple[float, float]:
    """Median µs per chunk of (meter, baseline); A/B interleaved per repetition. With ``plain``,
    ``chunks`` are its gzipped form: the meter decodes them, the baseline too."""
    encoding = "gzip" if plain is not None else None
    baseline = run_baseline_gzip if plain is not None else run_baseline
    plain = plain or chunks
    expected_out = len(b"".join(plain))
    meter_ns, base_ns, ctor_ns, count_ns = [], [], [], []
    gc.collect()
    gc.disable()
    try:
        for _ in range(reps):
            t0 = time.perf_counter_ns()
            baseline(chunks)
            t1 = time.perf_counter_ns()
            base_ns.append(t1 - t0)
            t0 = time.perf_counter_ns()
            m = new_meter(api, price, encoding)
            t1 = time.perf_counter_ns()
            out = run_meter(m, chunks)
            t2 = time.perf_counter_ns()
            m.output_tokens_counted
            t3 = time.perf_counter_ns()
            ctor_ns.append(t1 - t0)
            meter_ns.append(t2 - t1)
            count_ns.append(t3 - t2)
    finally:
        gc.enable()
    assert not m.cut and m.done and m.parse_errors == 0, (m.cut, m.done, m.parse_errors)
    if api == "chat":  # the usage chunk and every '"usage":null' are taken back out
        expected_out = len(b"".join(plain).replace(b',"usage":null', b"")) - len(chunks_usage(plain))
    assert out == expected_out, (out, expected_out)
    n = len(chunks)
    meter_us = statistics.median(meter_ns) / n / 1e3
    base_us = statistics.median(base_ns) / n / 1e3
    print(f"{name:<18} {n:>5} chunks  meter {meter_us:7.2f} µs/chunk  baseline {base_us:6.2f} µs/chunk  "
          f"x{meter_us / base_us:5.2f}   | ctor {statistics.median(ctor_ns) / 1e3:6.1f} µs/stream, "
          f"count at end {statistics.median(count_ns) / n / 1e3:6.2f} µs/chunk")
    return meter_us, base_us


def chunks_usage(chunks: list[bytes]) -> bytes:
    """The hidden usage-only event of a chat stream (pouch drops it)."""
    data = b"".join(chunks)
    start = data.rfind(b"data: ", 0, data.rfind(b"data: [DONE]"))
    return data[start:data.index(b"\n\n", start) + 2]


def profile(price, chunks: list[bytes], reps: int) -> None:
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(reps):
        run_meter(new_meter("chat", price), chunks)
    prof.disable()
    print(f"\n-- cProfile: chat 500 x {reps} (feed + finish) --")
    pstats.Stats(prof).sort_stats("tottime").print_stats(15)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (~5 s)")
    ap.add_argument("--reps", type=int, default=None, help="repetitions per stream (default 200, quick 40)")
    ap.add_argument("--profile", action="store_true", help="also profile the meter with cProfile")
    args = ap.parse_args()
    reps = args.reps or (40 if args.quick else 200)
    price = PriceTable.load().resolve(MODEL)
    print(f"pouch_addon from {pouch_addon.__file__}; {reps} repetitions, medians")

    chat50, chat500 = chat_stream(50), chat_stream(500)
    multi = resplit(chat500, 3.0, seed=7)
    resp50 = responses_stream(50)
    anth50, gem50 = anthropic_stream(50), gemini_stream(50)
    prices = {"anthropic": PriceTable.load().resolve(PROVIDER_MODELS["anthropic"]),
              "gemini": PriceTable.load().resolve(PROVIDER_MODELS["gemini"])}
    # warm-up: tiktoken encoding load, caches
    for api, chunks in (("chat", chat50), ("responses", resp50), ("anthropic", anth50), ("gemini", gem50)):
        m = new_meter(api, prices.get(api, price))
        run_meter(m, chunks)
        m.output_tokens_counted

    results = {
        "chat 50": measure("chat 50", "chat", chat50, price, reps),
        "chat 500": measure("chat 500", "chat", chat500, price, max(reps // 5, 10)),
        "chat 500 multi": measure("chat 500 multi", "chat", multi, price, max(reps // 5, 10)),
        "responses 50": measure("responses 50", "responses", resp50, price, reps),
        "anthropic 50": measure("anthropic 50", "anthropic", anth50, prices["anthropic"], reps),
        "gemini 50": measure("gemini 50", "gemini", gem50, prices["gemini"], reps),
        "chat 50 gzip": measure("chat 50 gzip", "chat", gzip_chunks(chat50), price, reps, plain=chat50),
    }
    if args.profile:
        profile(price, chat500, max(reps // 10, 5))

    m_chat, b_chat = results["chat 50"]
    m_resp, b_resp = results["responses 50"]
    print(f"RATIO meter chat/baseline = {m_chat / b_chat:.2f}  ({m_chat:.2f} vs {b_chat:.2f} µs/chunk, chat 50)")
    print(f"RATIO meter responses/baseline = {m_resp / b_resp:.2f}  ({m_resp:.2f} vs {b_resp:.2f} µs/chunk, "
          "responses 50)")
    for provider in ("anthropic", "gemini"):
        m_p, b_p = results[f"{provider} 50"]
        print(f"RATIO meter {provider}/baseline = {m_p / b_p:.2f}  ({m_p:.2f} vs {b_p:.2f} µs/event, {provider} 50)")
        print(f"RATIO meter {provider}/chat = {m_p / m_chat:.2f}  (per event, one event per chunk in both; "
              "target <= 1.2)")
    m_gz, b_gz = results["chat 50 gzip"]
    print(f"RATIO meter chat gzip/baseline = {m_gz / b_gz:.2f}  ({m_gz:.2f} vs {b_gz:.2f} µs/chunk, chat 50 gzip)")


if __name__ == "__main__":
    main()
