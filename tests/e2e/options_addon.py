"""Test-only mitmproxy addon: change options of a running mitmdump, as mitmweb's or mitmproxy's
option editors do (mitmdump has no such interface of its own).

    mitmdump -s options_addon.py --set options_file=/tmp/x/set

Every 50 ms it looks for ``options_file``; when the file exists it holds ``NAME=VALUE`` lines:
they are applied with ``ctx.options.update`` (so addons see ``configure`` as for any runtime
change), the file is removed, and ``options_file.done`` is written with ``ok`` or the error.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from mitmproxy import ctx


class OptionsFile:
    def __init__(self) -> None:
        self._task: asyncio.Task | None = None

    def load(self, loader) -> None:
        loader.add_option("options_file", str, "", "A file of NAME=VALUE lines to apply as option changes.")

    def running(self) -> None:
        if ctx.options.options_file:
            self._task = asyncio.get_running_loop().create_task(self._watch(Path(ctx.options.options_file)))

    async def _watch(self, path: Path) -> None:
        done = path.with_name(path.name + ".done")
        while True:
            await asyncio.sleep(0.05)
            try:
                text = path.read_text()
            except FileNotFoundError:
                continue
            os.remove(path)
            changes = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
            try:
                ctx.options.update(**changes)
            except Exception as exc:  # reported to the test through the done file
                done.write_text(f"error: {exc}")
            else:
                done.write_text("ok")

    def done(self) -> None:
        if self._task is not None:
            self._task.cancel()


addons = [OptionsFile()]
