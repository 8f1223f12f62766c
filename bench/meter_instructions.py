"""Instructions per chunk of the stream meters under callgrind: ``meter_bench.py``'s streams, a
figure the machine's load does not move (its µs figures do, on a shared 2-CPU VM).

For each provider's 50-chunk stream (``meter_bench``: one event per chunk), a fresh Python runs
``feed`` + ``finish`` over N fresh meters, under ``valgrind --tool=callgrind``; the count of a
run with 0 meters (start-up, imports, the price table) is subtracted, so what is left is the
meters' own work per chunk (their construction included, 1/50 of it per chunk). ``--tree DIR``
measures another source tree too (e.g. main, ``git archive``'d), in the same run.

    .venv/bin/python bench/meter_instructions.py [--streams N] [--apis chat,anthropic,gemini] [--tree DIR]

Needs ``valgrind``. About 20 s per (tree, api) pair.
"""

from __future__ import annotations

import argparse
import glob
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

RUN = """
import os, sys
tree, api, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
sys.path.insert(0, os.path.join(tree, "bench")); sys.path.insert(0, tree)
import meter_bench as mb
from pouch_addon.pricing import PriceTable
price = PriceTable.load().resolve(mb.PROVIDER_MODELS.get(api, mb.MODEL))
chunks = {"chat": mb.chat_stream, "anthropic": mb.anthropic_stream, "gemini": mb.gemini_stream,
          "responses": mb.responses_stream}[api](50)
m = mb.new_meter(api, price); mb.run_meter(m, chunks)  # warm-up: the tokenizer's lazy state
for _ in range(n):
    m = mb.new_meter(api, price); mb.run_meter(m, chunks)
"""


def count(tree: Path, api: str, n: int, work: Path) -> int:
    out = work / f"cg.{os.getpid()}.{api}.{n}"
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", sys.executable, "-c", RUN,
                    str(tree), api, str(n)], check=True, capture_output=True, cwd=tree)
    total = 0
    for f in glob.glob(f"{out}*"):
        with open(f, errors="replace") as fh:
            for line in fh:
                if line.startswith(("totals:", "summary:")):
                    total = max(total, int(line.split()[1]))
    return total


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--streams", type=int, default=200)
    ap.add_argument("--apis", default="chat,anthropic,gemini")
    ap.add_argument("--tree", metavar="DIR")
    a = ap.parse_args()
    trees = [("this", REPO)] + ([("tree", Path(a.tree).resolve())] if a.tree else [])
    work = Path(tempfile.mkdtemp(prefix="meter-instructions-"))
    got: dict[tuple[str, str], float] = {}
    for api in a.apis.split(","):
        for name, tree in trees:
            per_chunk = (count(tree, api, a.streams, work) - count(tree, api, 0, work)) / (a.streams * 50)
            got[(name, api)] = per_chunk
            print(f"{name:<5} {api:<10} {per_chunk:9.0f} instructions per chunk", flush=True)
    for name, _ in trees:
        if (name, "chat") in got:
            for api in ("anthropic", "gemini"):
                if (name, api) in got:
                    print(f"RATIO meter instructions {api}/chat ({name}) = {got[(name, api)] / got[(name, 'chat')]:.2f} "
                          "(target <= 1.2)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
