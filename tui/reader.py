"""Lock-free reads of the ledger's history files for the dashboard (called from the watcher thread).

``Ledger.history()`` reads whole day partitions; the dashboard only needs the newest few
hundred entries for its table, so :func:`read_recent` reads partitions *backwards* in blocks and
stops as soon as it has enough — the cost does not depend on how much history exists.
:class:`PartitionFollower` reads each partition once and then only what was appended since.

Both stop at the point the state file says history was applied (``history_file`` /
``history_size``): lines beyond it are a write-ahead record whose settle has not happened
(or never will), exactly as ``Ledger.history`` treats them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pouch_addon.budget import partition_for

BLOCK = 64 * 1024


def partitions(history_dir: Path) -> list[str]:
    try:
        return sorted(p.name for p in history_dir.glob("*.jsonl"))
    except OSError:
        return []


def applied_partitions(history_dir: Path, history_file: str | None) -> list[str]:
    """Partition names up to the applied one, oldest first (none if nothing was applied)."""
    if history_file is None:
        return []
    return [n for n in partitions(history_dir) if n <= history_file]


def _reversed_lines(path: Path, end: int | None) -> Iterator[bytes]:
    """Complete lines of ``path`` up to byte ``end``, last first, read in blocks from the end."""
    try:
        fh = open(path, "rb")
    except FileNotFoundError:
        return
    with fh:
        size = os.fstat(fh.fileno()).st_size
        pos = size if end is None else min(end, size)
        pending = b""  # the start of a line whose beginning is in a block not read yet
        before_last_newline = False  # text after the last newline is torn (a writer died mid-append)
        while pos > 0:
            n = min(BLOCK, pos)
            pos -= n
            fh.seek(pos)
            parts = (fh.read(n) + pending).split(b"\n")
            pending = parts[0]
            body = parts[1:]
            if not before_last_newline:
                if not body:
                    continue
                body = body[:-1]
                before_last_newline = True
            for line in reversed(body):
                if line:
                    yield line
        if pending and before_last_newline:
            yield pending


def read_recent(
    history_dir: Path, history_file: str | None, history_size: int, *, limit: int,
    kinds: Iterable[str] | None = ("settle", "block"),
) -> tuple[list[dict[str, Any]], bool]:
    """The newest ``limit`` applied entries (newest first) and whether the history holds more."""
    wanted = set(kinds) if kinds else None
    out: list[dict[str, Any]] = []
    for name in reversed(applied_partitions(history_dir, history_file)):
        end = history_size if name == history_file else None
        for raw in _reversed_lines(history_dir / name, end):
            try:
                entry = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(entry, dict):
                continue
            if wanted is None or entry.get("kind") in wanted:
                if len(out) >= limit:
                    return out, True
                out.append(entry)
    return out, False


class PartitionFollower:
    """Reads applied history entries since ``since`` once, then only what was appended.

    History is append-only and is only ever appended to the newest partition, so a
    per-partition byte offset is all the state needed.
    """

    def __init__(self, history_dir: Path, since: float) -> None:
        self.dir = history_dir
        self.first = partition_for(since)
        self.offsets: dict[str, int] = {}

    def read_some(
        self, history_file: str | None, history_size: int, max_bytes: int = 1 << 20
    ) -> tuple[list[dict[str, Any]], bool]:
        """New applied entries (oldest first), at most about ``max_bytes`` of them, and whether
        everything up to the applied point has now been read."""
        out: list[dict[str, Any]] = []
        budget = max_bytes
        for name in applied_partitions(self.dir, history_file):
            if name < self.first:
                continue
            start = self.offsets.get(name, 0)
            path = self.dir / name
            if name == history_file:
                end = history_size
            else:
                try:
                    end = path.stat().st_size
                except FileNotFoundError:
                    continue
            if end <= start:
                continue
            if budget <= 0:
                return out, False
            with open(path, "rb") as fh:
                fh.seek(start)
                data = fh.read(min(end - start, budget))
                cut = data.rfind(b"\n") + 1  # only complete lines
                if cut == 0 and len(data) < end - start:  # a line longer than the budget: read it whole
                    data += fh.read(end - start - len(data))
                    cut = data.rfind(b"\n") + 1
            truncated = len(data) < end - start  # stopped by the budget, not at the end
            if cut == 0:
                continue  # only a torn tail: nothing complete to read
            self.offsets[name] = start + cut
            budget -= cut
            for raw in data[:cut].split(b"\n"):
                if not raw:
                    continue
                try:
                    entry = json.loads(raw)
                except ValueError:
                    continue
                if isinstance(entry, dict):
                    out.append(entry)
            if truncated:
                return out, False
        return out, True
