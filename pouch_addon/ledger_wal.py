"""A write-ahead log of framed records: the append-only durable step of a ledger store.

Why: a group commit that rewrites a state file re-serialises every open reservation and pays a
rename, a link and two fsyncs. Appending one record per group commit to a log, with one
``fdatasync``, is the cheapest durable step there is; the state file then only needs to be a
snapshot written now and then (issue 16; see ``ledger_local`` and ARCHITECTURE.md).

Each record is framed as ``length (4 bytes, big-endian) | crc32 of the payload (4 bytes) |
payload``. A writer killed mid-append leaves a torn final record: a short header, a short
payload, or a payload whose checksum does not match. :meth:`RecordLog.read` returns the complete
records before it and the offset where they end; the next writer (holding the ledger lock)
cuts the tail there with :meth:`RecordLog.truncate`. Records are never rewritten in place;
compaction truncates the whole log once a snapshot covering it is durable.
"""

from __future__ import annotations

import os
import struct
import threading
import zlib
from pathlib import Path

_HEADER = struct.Struct(">II")
HEADER_SIZE = _HEADER.size
#: a record larger than this is taken as a damaged length field, not as a record to read
MAX_RECORD = 64 * 1024 * 1024


def frame(payload: bytes) -> bytes:
    """One record as it is written: length, checksum, payload."""
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def unframe(data: bytes, offset: int = 0) -> tuple[list[bytes], int]:
    """The complete, intact records of ``data`` from ``offset`` and the offset where they end.

    Reading stops at the first torn or damaged record: nothing after it is trusted (a record
    is only ever appended after every earlier one was whole)."""
    records: list[bytes] = []
    end = len(data)
    pos = offset
    while pos + HEADER_SIZE <= end:
        length, crc = _HEADER.unpack_from(data, pos)
        start = pos + HEADER_SIZE
        if length > MAX_RECORD or start + length > end:
            break
        payload = data[start:start + length]
        if zlib.crc32(payload) != crc:
            break
        records.append(payload)
        pos = start + length
    return records, pos


class RecordLog:
    """One log file: :meth:`append` a group commit's records with one write and one fdatasync."""

    def __init__(self, path: str | os.PathLike[str], *, durable: bool = True) -> None:
        self.path = Path(path)
        self._name = os.fspath(self.path)  # for os.stat without a Path conversion per commit
        self.durable = durable
        # kept open between appends (an open and a close are two more system calls per commit,
        # each a GIL hand-off on a busy proxy); O_APPEND writes at the end even after another
        # process truncated the file, and a replaced file shows as a new inode (see ``append``)
        self._fd: int | None = None
        self._ino = -1
        # held while the descriptor is flushed (``sync``, from another thread) or replaced/closed,
        # so a flush never runs on a descriptor closed (and its number reused) meanwhile
        self._fd_lock = threading.Lock()

    def stat(self) -> tuple[int, int]:
        """``(inode, size)`` of the log, ``(-1, 0)`` when there is none."""
        try:
            st = os.stat(self._name)
        except FileNotFoundError:
            return -1, 0
        return st.st_ino, st.st_size

    def append(self, payloads: list[bytes], *, durable: bool | None = None, ino: int | None = None) -> int:
        """Append ``payloads`` as records in one ``write``; return the log's new size.

        ``ino``: the log's inode as the caller saw it under the lock; the kept descriptor is
        used only while it still names that file."""
        data = b"".join(frame(p) for p in payloads)
        fd = self._fd
        if fd is None or ino is None or ino != self._ino:
            with self._fd_lock:
                self._close()
                fd = self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                self._ino = os.fstat(fd).st_ino
        try:
            os.write(fd, data)
            if self.durable if durable is None else durable:
                os.fdatasync(fd)
            return os.lseek(fd, 0, os.SEEK_CUR)  # O_APPEND left the offset at the end
        except BaseException:
            self.close()
            raise

    def sync(self) -> bool:
        """``fdatasync`` what was appended through the kept descriptor (the overlapped flush of
        ``ledger_local``; safe from another thread). False when there is no descriptor to flush."""
        with self._fd_lock:
            if self._fd is None:
                return False
            os.fdatasync(self._fd)
            return True

    def close(self) -> None:
        with self._fd_lock:
            self._close()

    def _close(self) -> None:
        fd, self._fd, self._ino = self._fd, None, -1
        if fd is not None:
            os.close(fd)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    def read(self, offset: int = 0) -> tuple[list[bytes], int, int]:
        """``(records, end, size)``: the intact records after ``offset``, where they end, and the
        file's size (``end < size`` means a torn tail follows)."""
        try:
            with open(self.path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return [], 0, 0
        records, end = unframe(data, offset)
        return records, end, len(data)

    def truncate(self, size: int = 0) -> None:
        """Cut the log to ``size`` bytes (a torn tail, or everything once a snapshot covers it)."""
        try:
            fd = os.open(self.path, os.O_WRONLY)
        except FileNotFoundError:
            return
        try:
            os.ftruncate(fd, size)
            if self.durable:
                os.fdatasync(fd)
        finally:
            os.close(fd)
