"""The compact BPE table (pouch_addon/compact_bpe.py) against tiktoken's encoding (issue 16 §4).

Prints, for each shipped encoding:
- resident memory added by building each table (fresh subprocess per table, VmRSS after the
  build and a heap trim);
- the build time, and the longest the asyncio event loop waited (a 1 ms timer's worst lateness)
  while the table was built in a worker thread (``asyncio.to_thread``, as the proxy does);
- microseconds per count of typical SSE chunk texts (7-9 bytes) and of a ~300-byte paragraph,
  and per ``StreamTokenCounter.feed`` of such chunks, on each table.

``--probe`` instead compares the compact table with tiktoken at every code point (several
contexts each; ~2-3 min per encoding) and lists those where they differ without the text
being ``suspect`` (there must be none).

    .venv/bin/python bench/compact_bpe_bench.py [--probe]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

CHUNKS = ["Hello", " there", ",", " how", " are you", " doing", " today?", " The", " quick", " brown",
          " fox", " jumps", " over the", " lazy", " dog.", "\n\n", "```py", "thon\n", "def f", "(x):",
          " 日本", "語の", " 🎉", " naïve", " 12345", " co", "operation", "'s"]
PARAGRAPH = ("Pouch meters every streamed response while forwarding it: it frames the events, "
             "decodes each payload once and counts the output tokens incrementally, cutting the "
             "stream off when the running cost reaches the reservation. 42 tokens, 3.5 ms.")


def _stream_chunks() -> list[str]:
    """The README as a model would stream it: 7-9 characters per chunk (as the fake provider)."""
    import random
    text = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    rng, out, i = random.Random(9), [], 0
    while i < len(text):
        n = rng.randint(7, 9)
        out.append(text[i:i + n])
        i += n
    return out


STREAM = _stream_chunks()


def _child(kind: str, name: str) -> None:
    """In a fresh process: build one table, report RSS added, build time and loop lateness."""
    import asyncio
    import re

    from pouch_addon import tokens

    def rss_kib() -> int:
        return int(re.search(r"VmRSS:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))

    import regex  # noqa: F401  (both need it; not part of either table)
    tokens.trim_heap()
    before = rss_kib()
    build = (lambda: tokens._compact(name)) if kind == "compact" else (lambda: tokens.get_encoding(name))

    async def main() -> tuple[float, float]:
        worst = 0.0
        stop = False

        async def ticker() -> None:
            nonlocal worst
            while not stop:
                t = time.perf_counter()
                await asyncio.sleep(0.001)
                worst = max(worst, time.perf_counter() - t - 0.001)

        tick = asyncio.create_task(ticker())
        await asyncio.sleep(0.05)
        t0 = time.perf_counter()
        await asyncio.to_thread(build)
        took = time.perf_counter() - t0
        stop = True
        await tick
        return took, worst

    took, worst = asyncio.run(main())
    tokens.trim_heap()
    print(json.dumps({"rss_mib": (rss_kib() - before) / 1024, "build_s": took, "loop_wait_ms": worst * 1000}))


def _per_call_us(fn, items, repeat: int) -> float:
    t = time.perf_counter()
    for _ in range(repeat):
        for item in items:
            fn(item)
    return (time.perf_counter() - t) / (repeat * len(items)) * 1e6


def _speed(name: str) -> None:
    from pouch_addon import tokens

    compact, encoding = tokens._compact(name), tokens.get_encoding(name)
    tik = lambda text: len(encoding.encode(text, disallowed_special=()))  # noqa: E731
    def cold(text: str) -> int:  # no piece cached: the cost of text never seen
        compact._cache.clear()
        return compact.count(text)

    for label, fn, items, repeat in (("SSE chunk text (1-9 bytes)", compact.count, CHUNKS, 2000),
                                     ("300-byte paragraph", compact.count, [PARAGRAPH], 5000),
                                     ("300-byte paragraph, cold", cold, [PARAGRAPH], 2000)):
        c, t = _per_call_us(fn, items, repeat), _per_call_us(tik, items, repeat)
        print(f"  count {label:28s} compact {c:7.2f} us   tiktoken {t:7.2f} us   ratio {c / t:5.2f}")
    model = "gpt-4o-mini" if name == "o200k_base" else "gpt-4"
    for label, loaded in (("compact", {}), ("tiktoken", dict(tokens._LOADED))):
        saved = tokens._LOADED
        tokens._LOADED = loaded
        try:
            counter = tokens.StreamTokenCounter(model)
        finally:
            tokens._LOADED = saved
        compact._cache.clear()
        t0 = time.perf_counter()
        for chunk in STREAM:
            counter.feed(chunk)
        print(f"  StreamTokenCounter.feed per chunk (README in 7-9 byte chunks), {label:8s} "
              f"{(time.perf_counter() - t0) / len(STREAM) * 1e6:7.2f} us")


def _probe(name: str) -> int:
    from pouch_addon import tokens
    from pouch_addon.compact_bpe import suspect

    compact, encoding = tokens._compact(name), tokens.get_encoding(name)
    contexts = ["a%s", "%sa", "A%sa", " %s", "%s ", "1%s", "!%s", "%s's", "a%s\n"]
    differ, missed = 0, []
    for cp in range(0x110000):
        if 0xD800 <= cp < 0xE000:
            continue
        for form in contexts:
            text = form % chr(cp)
            want = [len(encoding.decode_single_token_bytes(t)) for t in encoding.encode_ordinary(text)]
            if compact.token_lengths(text) != want:
                differ += 1
                if not suspect(text):
                    missed.append(hex(cp))
                break
    print(f"  {name}: {differ} code points split differently; not suspect: {len(missed)} {missed[:20]}")
    return len(missed)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--probe", action="store_true", help="compare at every code point instead")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(*args.child)
        return 0
    import unicodedata
    names = ["o200k_base", "cl100k_base"]
    if args.probe:
        print(f"probe: Python's Unicode database {unicodedata.unidata_version}")
        return 1 if sum(_probe(name) for name in names) else 0
    for name in names:
        print(f"{name}:")
        for kind in ("compact", "tiktoken"):
            out = subprocess.run([sys.executable, __file__, "--child", kind, name], check=True,
                                 capture_output=True, text=True).stdout
            r = json.loads(out)
            print(f"  {kind:8s} table: +{r['rss_mib']:5.1f} MiB resident, built in {r['build_s']:.3f} s, "
                  f"event loop waited at most {r['loop_wait_ms']:.1f} ms")
        _speed(name)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
