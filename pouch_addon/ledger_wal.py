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

The log is preallocated (:meth:`RecordLog.preallocate`): extended by a chunk of real zero bytes,
written and flushed once per chunk off the commit path, so that a record is written inside the
file and its ``fdatasync`` flushes data only (a file that grows makes every flush write its size
and extents too: about a third more per commit, measured in ``bench/floor.py``). A zero header is
the end of the log: no record is empty, and a record's length is never 0. Anything but zeros
after the end (a torn record, or a later record a power loss kept while an earlier one was lost)
is a torn tail, cut by the next writer.
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
#: the log is extended by this many zero bytes when less than ``PREALLOCATE_LOW`` are left after
#: its last record (one write and one flush per chunk; a chunk holds some hundreds of group commits)
PREALLOCATE_CHUNK = 256 * 1024
PREALLOCATE_LOW = 64 * 1024
_ZEROS = bytes(PREALLOCATE_CHUNK)
_NO_RECORD = bytes(4)  # a length field of a preallocated region


def frame(payload: bytes) -> bytes:
    """One record as it is written: length, checksum, payload (never empty: a zero length field
    is the end of the log)."""
    if not payload:
        raise ValueError("a log record is never empty")
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def unframe(data: bytes, offset: int = 0) -> tuple[list[bytes], int]:
    """The complete, intact records of ``data`` from ``offset`` and the offset where they end.

    Reading stops at the first torn or damaged record, or at a zero length field (the start of
    the preallocated zeros): nothing after it is trusted (a record is only ever appended after
    every earlier one was whole)."""
    records: list[bytes] = []
    end = len(data)
    pos = offset
    while pos + HEADER_SIZE <= end:
        length, crc = _HEADER.unpack_from(data, pos)
        start = pos + HEADER_SIZE
        if not length or length > MAX_RECORD or start + length > end:
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
        # each a GIL hand-off on a busy proxy); a replaced file shows as a new inode (see ``append``)
        self._fd: int | None = None
        self._ino = -1
        #: the file's size as this object last saw or made it (the kept descriptor's file): a commit
        #: that found nothing changed reads it instead of a ``stat`` (see ``ledger_local._begin``)
        self.size = 0
        # held while the descriptor is flushed (``sync``, from another thread) or replaced/closed,
        # so a flush never runs on a descriptor closed (and its number reused) meanwhile
        self._fd_lock = threading.Lock()

    @property
    def ino(self) -> int:
        """The inode of the file the kept descriptor names (-1: none open)."""
        return self._ino

    def stat(self) -> tuple[int, int]:
        """``(inode, size)`` of the log, ``(-1, 0)`` when there is none (the size counts the
        preallocated zeros: see :meth:`appended` for whether records were added)."""
        try:
            st = os.stat(self._name)
        except FileNotFoundError:
            return -1, 0
        if st.st_ino == self._ino:
            self.size = st.st_size  # another process may have extended it
        return st.st_ino, st.st_size

    def _open(self, ino: int | None) -> int:
        fd = self._fd
        if fd is None or ino is None or ino != self._ino:
            with self._fd_lock:
                self._close()
                fd = self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
                st = os.fstat(fd)
                self._ino, self.size = st.st_ino, st.st_size
        return fd

    def follows(self, end: int, ino: int) -> bool | None:
        """Whether anything follows ``end`` in the log, read through the kept descriptor when it
        names inode ``ino`` (one ``pread``, no ``stat``: the caller knows from elsewhere that the file
        at the path is still that one); None when no descriptor is kept for ``ino``."""
        fd = self._fd
        if fd is None or ino != self._ino:
            return None
        head = os.pread(fd, 4, end)
        return bool(head) and head != _NO_RECORD

    def appended(self, end: int, ino: int, size: int) -> bool:
        """Whether anything follows ``end`` in the log of inode ``ino`` and ``size`` (as the caller
        just saw them under the lock): a record another process appended, or a torn tail. One
        read of a length field instead of a size (a preallocated log does not grow per record)."""
        if size <= end:
            return False
        if ino != self._ino or self._fd is None:
            return True  # not the file the kept descriptor names: take it as changed
        return os.pread(self._fd, 4, end) != _NO_RECORD

    def append(self, payloads: list[bytes], *, durable: bool | None = None, ino: int | None = None,
               end: int | None = None) -> int:
        """Write ``payloads`` as records in one ``write`` at ``end`` (the end of the log's records,
        as the caller read it under the lock; by default read here); return the new end.

        ``ino``: the log's inode as the caller saw it under the lock; the kept descriptor is
        used only while it still names that file."""
        data = frame(payloads[0]) if len(payloads) == 1 else b"".join(frame(p) for p in payloads)
        if end is None:
            end = self.read()[1]
        fd = self._open(ino)
        try:
            os.pwrite(fd, data, end)
            if self.durable if durable is None else durable:
                os.fdatasync(fd)
            end += len(data)
            if end > self.size:
                self.size = end
            return end
        except BaseException:
            self.close()
            raise

    def preallocate(self, end: int, *, ino: int | None = None) -> bool:
        """Extend the log by ``PREALLOCATE_CHUNK`` zero bytes when fewer than ``PREALLOCATE_LOW``
        follow ``end`` (the records' end); True when it did. Not flushed here: the next record's
        flush writes them and the new size (once per chunk). The caller holds the ledger lock:
        the zeros go after the file's current size, never over a record."""
        fd = self._open(ino)
        try:
            size = self.size = os.fstat(fd).st_size
            if size - end >= PREALLOCATE_LOW:
                return False
            os.pwrite(fd, _ZEROS, size)
            self.size = size + len(_ZEROS)
            return True
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
        """``(records, end, size)``: the intact records after ``offset``, where they end, and where
        the file's content ends (``end < size`` means a torn tail follows; preallocated zeros after
        ``end`` are not content)."""
        try:
            with open(self.path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return [], 0, 0
        records, end = unframe(data, offset)
        size = len(data)
        if end < size and data.count(0, end) == size - end:
            size = end  # only the preallocated zeros follow
        return records, end, size

    def truncate(self, size: int = 0, *, durable: bool | None = None) -> None:
        """Cut the log to ``size`` bytes (a torn tail, or everything once a snapshot covers it;
        ``durable=False``: not flushed here)."""
        try:
            fd = os.open(self.path, os.O_WRONLY)
        except FileNotFoundError:
            return
        try:
            os.ftruncate(fd, size)
            self.size = size
            if self.durable if durable is None else durable:
                os.fdatasync(fd)
        finally:
            os.close(fd)


def mark(path: str | os.PathLike[str]) -> tuple[int, int, int, int] | None:
    """``(inode, size, mtime ns, content end)`` of a log, None when there is none: what a poller
    (the TUI, ``pouch history --follow``) compares to see a commit. The size of a preallocated log
    does not move per record and its mtime may not either (a coarse clock tick), so the offset
    after its last non-zero byte is part of the mark."""
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            data = fh.read()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns, len(data.rstrip(b"\0"))
