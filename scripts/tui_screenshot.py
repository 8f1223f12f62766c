"""Write the README's screenshot of ``pouch tui``: docs/tui.svg, the TUI's own SVG export.

It shows the realistic ledger of the TUI tests (``tests/tui/conftest.py``: three apps, dated and
fine-tuned model names, spends far below a cent, one stream in flight) at a fixed clock, so the
picture only changes when the TUI does. Needs the test extras (``scripts/setup.sh --test``)::

    .venv/bin/python scripts/tui_screenshot.py [OUT.svg] [--size 120x28]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.tui.conftest import fixed_now, loaded, write_realistic  # noqa: E402

from pouch_tui.app import PouchApp  # noqa: E402


async def shoot(out: Path, width: int, height: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cwd = os.getcwd()
        os.chdir(tmp)  # the header shows the home as given: a short relative path
        try:
            home = Path("pouch-home")
            write_realistic(home)
            app = PouchApp(home, poll_interval=0.05, now=fixed_now)
            async with app.run_test(size=(width, height)) as pilot:
                await loaded(pilot)
                svg = app.export_screenshot(title="pouch tui")
        finally:
            os.chdir(cwd)
    out.write_text(svg, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", default=str(ROOT / "docs" / "tui.svg"))
    parser.add_argument("--size", default="120x28", help="COLUMNSxROWS (default 120x28)")
    args = parser.parse_args()
    width, height = (int(n) for n in args.size.lower().split("x"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    asyncio.run(shoot(out, width, height))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
