"""A streamed call's body rewrite (stream_options added) for a small and a 100 KB body: main's way
(apply the rewrite to the parsed body and re-serialise it, in a worker thread, as the gate did for
bodies above 2 KiB) against the insertion into the client's bytes on the loop (``plan.rewrite_bytes``).
Prints the wall time and the loop thread's CPU, medians of 300.

    .venv/bin/python bench/rewrite_bench.py
"""
import asyncio, json, time, statistics, copy
from mitmproxy import http
from pouch_addon.plan import apply_rewrites, parse_body, rewrite_bytes
from pouch_addon.addons.gate import set_body
RW = {"stream_options": {"include_usage": True}}
async def main():
    for size in (3000, 100_000):
        raw = json.dumps({"model":"gpt-4o-mini","stream":True,"messages":[{"role":"user","content":"word " * (size // 5)}]}).encode()
        body = parse_body(raw)
        old, new, oldcpu, newcpu = [], [], [], []
        for i in range(300):
            r = http.Request.make("POST", "https://api.openai.com/v1/chat/completions", raw, {"content-type": "application/json"})
            b = copy.deepcopy(body)
            t, c = time.perf_counter(), time.thread_time()
            def f():
                apply_rewrites(b, RW); set_body(r, b)
            await asyncio.to_thread(f)   # main: the re-serialisation in a worker thread
            old.append(time.perf_counter() - t); oldcpu.append(time.thread_time() - c)
            r = http.Request.make("POST", "https://api.openai.com/v1/chat/completions", raw, {"content-type": "application/json"})
            t, c = time.perf_counter(), time.thread_time()
            r.content = rewrite_bytes(r.raw_content, body, RW)   # this: inline insertion
            new.append(time.perf_counter() - t); newcpu.append(time.thread_time() - c)
        print(f"{len(raw)} bytes: to_thread re-serialise wall p50 {statistics.median(old)*1e6:.0f} us (loop cpu {statistics.median(oldcpu)*1e6:.0f}) -> inline insertion wall p50 {statistics.median(new)*1e6:.0f} us (loop cpu {statistics.median(newcpu)*1e6:.0f})")
asyncio.run(main())
