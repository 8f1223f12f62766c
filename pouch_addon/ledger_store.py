"""Persistence for the ledger: one small state snapshot plus day-partitioned history.

Group commits of the proxy's committer append to the write-ahead log instead (``ledger_wal``,
see ``Ledger._commit_log``); the state file is then a snapshot of the state as of log record
``lsn``, written every few hundred records or every second, and the rules below apply to it.

Why this shape: TinyDB's default storage rewrites the whole file on every write, so a ledger
holding its history in one document gets slower with every request. Here the hot state
(budget, spent, open reservations) is a small TinyDB document replaced atomically, and every
settled request is *appended* to ``history/YYYY-MM-DD.jsonl``. Reserve and settle therefore
cost the same at a million history entries as at a thousand.

Crash safety:
- the state file is written to a temp file, fsynced and renamed over the old one, so a reader
  or a process killed at any instant sees either the old or the new file, never a torn one;
  the previous version is kept as ``state.json.bak`` (a hard link, no copy);
- a history line is the write-ahead record of a settle: it is appended and fsynced *before*
  the state file moves. The state remembers how far the history was applied
  (``history_file``/``history_size``); a complete line beyond that point is replayed on the
  next transaction, a torn one is cut off (its settle never happened, the reservation is
  still open and is recovered by the orphan rule).
- cross-process atomicity: every transaction holds an exclusive ``fcntl.flock`` on
  ``ledger.lock`` plus the process's own lock, and re-reads the state inside it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tinydb import Storage

STATE_FILE = "state.json"
BACKUP_SUFFIX = ".bak"
LOCK_FILE = "ledger.lock"
HISTORY_DIR = "history"
WAL_FILE = "ledger.wal"
FORMAT = 1
#: a folder mtime younger than this may still change within its clock tick (see partitions)
_RACY_NS = 1_000_000_000


class LedgerCorrupt(RuntimeError):
    """The ledger on disk cannot be trusted; nothing was changed and the user is told how out."""


# the file is {"format":1,"sha256":"<64 hex>","tables":<canonical JSON>}: one serialisation per write
_PREFIX = b'{"format":%d,"sha256":"' % FORMAT
_MIDDLE = b'","tables":'
_DIGEST_END = len(_PREFIX) + 64
_TABLES_AT = _DIGEST_END + len(_MIDDLE)


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _not_serialisable(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


#: the C encoder ``json.dumps(sort_keys=True, separators=(",", ":"))`` builds per call, built once:
#: a group commit serialises a few small documents, and constructing a ``JSONEncoder`` and its C
#: encoder for each cost as much as encoding them (no circular check: ledger documents are trees)
_encode = (json.encoder.c_make_encoder(None, _not_serialisable, json.encoder.encode_basestring_ascii, None,
                                       ":", ",", True, False, True)
           if json.encoder.c_make_encoder is not None else None)


def canonical_json(value: Any) -> bytes:
    """The one serialisation the state file's checksum covers: sorted keys, no spaces (exactly
    ``json.dumps(value, sort_keys=True, separators=(",", ":")).encode()``)."""
    if _encode is None:  # pragma: no cover - a Python without the _json accelerator
        return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()
    return "".join(_encode(value, 0)).encode()


#: this process's id, for temporary file names (``os.getpid`` is a system call each time)
_pid = os.getpid()


def _new_pid() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_new_pid)


def _link(src: Path, dst: Path) -> None:
    """Hard-link ``src`` as ``dst``, replacing a ``dst`` left behind by a killed writer."""
    try:
        os.link(src, dst)
    except FileExistsError:
        os.unlink(dst)
        os.link(src, dst)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def corrupt_message(path: Path, reason: str) -> str:
    backup = path.with_name(path.name + BACKUP_SUFFIX)
    way_out = (
        f"The last good copy is {backup}; restore it with `pouch ledger restore`"
        if backup.exists()
        else "No backup copy exists; move the file away to start a new ledger"
    )
    return (
        f"pouch ledger file {path} cannot be read: {reason}. Nothing was changed. {way_out} "
        "(history in the history/ folder is kept either way)."
    )


class AtomicJSONStorage(Storage):
    """A TinyDB storage that replaces its file atomically and detects hand edits.

    The file holds ``{"format": 1, "sha256": ..., "tables": {...}}``; ``read()`` returns the
    tables (TinyDB's view) after checking the checksum, so a truncated, hand-edited or garbled
    file raises :class:`LedgerCorrupt` instead of being read as an empty ledger.
    """

    def __init__(self, path: str | os.PathLike[str], *, durable: bool = True) -> None:
        self.path = Path(path)
        self._name = os.fspath(self.path)  # for os.stat without a Path conversion per commit
        self.durable = durable
        # the last tables read or written, keyed by the file's identity: every write replaces the
        # file (a new inode), so an unchanged key means unchanged content and the parse is skipped
        self._seen: tuple[tuple[int, int, int, int], dict[str, dict[str, Any]]] | None = None

    def read(self) -> dict[str, dict[str, Any]] | None:
        """The tables; callers must not mutate them (they may be shared with other threads)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return None
        try:
            key = _identity(os.fstat(fd))
            seen = self._seen
            if seen is not None and seen[0] == key:
                return seen[1]
            with os.fdopen(os.dup(fd), "rb") as fh:
                raw = fh.read()
        finally:
            os.close(fd)
        tables = self._parse(raw)
        self._seen = (key, tables)
        return tables

    def _parse(self, raw: bytes) -> dict[str, dict[str, Any]]:
        # fast path: the layout write() produces, checked without re-serialising the tables
        if raw.startswith(_PREFIX) and raw[_DIGEST_END:_TABLES_AT] == _MIDDLE and raw.endswith(b"}"):
            canonical = raw[_TABLES_AT:-1]
            if hashlib.sha256(canonical).hexdigest().encode() != raw[len(_PREFIX):_DIGEST_END]:
                raise LedgerCorrupt(
                    corrupt_message(self.path, "its checksum does not match (edited by hand or damaged)"))
            try:
                return json.loads(canonical)
            except ValueError as exc:  # pragma: no cover - a matching checksum over invalid JSON
                raise LedgerCorrupt(corrupt_message(self.path, f"not a pouch ledger ({exc})")) from None
        try:
            doc = json.loads(raw)
            tables = doc["tables"]
            digest = doc["sha256"]
            fmt = doc["format"]
        except (ValueError, KeyError, TypeError) as exc:
            raise LedgerCorrupt(corrupt_message(self.path, f"not a pouch ledger ({exc})")) from None
        if fmt != FORMAT:
            raise LedgerCorrupt(corrupt_message(self.path, f"unknown format {fmt!r}"))
        if hashlib.sha256(canonical_json(tables)).hexdigest() != digest:
            raise LedgerCorrupt(
                corrupt_message(self.path, "its checksum does not match (edited by hand or damaged)")
            )
        return tables

    def write(self, data: dict[str, dict[str, Any]], *, durable: bool | None = None) -> None:
        self._write(canonical_json(data), data, durable)

    def write_canonical(self, canonical: bytes, *, durable: bool | None = None) -> tuple[int, int, int, int]:
        """Write tables already serialised by :func:`canonical_json` (the next read parses them);
        returns the new file's :meth:`identity`."""
        return self._write(canonical, None, durable)

    def _write(self, canonical: bytes, data: dict[str, dict[str, Any]] | None,
               durable: bool | None) -> tuple[int, int, int, int]:
        durable = self.durable if durable is None else durable
        payload = b"".join((_PREFIX, hashlib.sha256(canonical).hexdigest().encode(), _MIDDLE, canonical, b"}"))
        tmp = self.path.with_name(f".{self.path.name}.{_pid}.{threading.get_ident()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, payload)
            if durable:
                os.fsync(fd)
            key = _identity(os.fstat(fd))
        finally:
            os.close(fd)
        # keep the previous (already verified) version as the last good copy
        link_tmp = tmp.with_suffix(".bak.tmp")
        try:
            _link(self.path, link_tmp)
        except FileNotFoundError:  # the first write: nothing to keep
            pass
        else:
            os.replace(link_tmp, self.path.with_name(self.path.name + BACKUP_SUFFIX))
        os.replace(tmp, self.path)
        self._seen = (key, data) if data is not None else None
        if durable:
            _fsync_dir(self.path.parent)
        return key

    def identity(self) -> tuple[int, int, int, int] | None:
        """The state file's (device, inode, size, mtime): changes whenever any process writes it."""
        try:
            return _identity(os.stat(self._name))
        except FileNotFoundError:
            return None

    def close(self) -> None:  # nothing held open between calls
        pass


class HistoryLog:
    """Append-only, day-partitioned JSON-lines history (the write-ahead log of settles)."""

    def __init__(self, directory: Path, *, durable: bool = True) -> None:
        self.dir = directory
        self._dirname = os.fspath(directory)
        self.durable = durable
        self.dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._listing: tuple[int, tuple[str, ...]] | None = None  # (folder mtime, partitions)
        self._fd: int | None = None  # the partition appended to last, kept open (``append_bytes``)
        self._fd_name: str | None = None
        self._fd_pid = 0

    def path(self, name: str) -> Path:
        return self.dir / name

    def partitions(self) -> list[str]:
        """Partition file names, oldest first (names sort by date).

        Every transaction asks (for history written ahead of a state that never landed), so
        the listing is reused while the folder's mtime is unchanged: adding or removing a file
        changes it. As in git's "racy" check, a listing is only reused once the mtime is
        older than the clock's coarse granularity, since two changes within one tick of it
        can leave it equal."""
        return list(self._names())

    def _names(self) -> tuple[str, ...]:
        try:
            mtime = os.stat(self._dirname).st_mtime_ns
        except FileNotFoundError:
            return ()
        cached = self._listing
        if cached is not None and cached[0] == mtime:
            return cached[1]
        names = tuple(sorted(n for n in os.listdir(self.dir) if n.endswith(".jsonl") and not n.startswith(".")))
        if time.time_ns() - mtime > _RACY_NS:
            self._listing = (mtime, names)
        return names

    def newest(self) -> str | None:
        """The newest partition's name (None: none): :meth:`partitions` without copying the listing
        (every group commit asks; the listing grows by a partition a day)."""
        names = self._names()
        return names[-1] if names else None

    def append(self, name: str, lines: list[dict[str, Any]], *, durable: bool | None = None) -> int:
        """Append entries to partition ``name`` in one write and one fsync; return its new size.

        ``durable=False`` (a commit whose write-ahead log record is the durable step) skips the
        fsync; the snapshot that later drops that record calls :meth:`sync` first."""
        return self.append_bytes(name, b"".join(canonical_json(line) + b"\n" for line in lines), durable=durable)

    def kept_size(self, name: str) -> int | None:
        """The size of partition ``name`` through the descriptor kept open for it (one ``fstat``, no
        path lookup); None when none is kept for it, or its file was removed or replaced since."""
        fd = self._fd
        if fd is None or self._fd_name != name or self._fd_pid != _pid:
            return None
        st = os.fstat(fd)
        return st.st_size if st.st_nlink else None

    def append_bytes(self, name: str, data: bytes, *, durable: bool | None = None,
                     start: int | None = None) -> int:
        """Append ``data`` to partition ``name`` in one write; return its new size.

        ``start``: the partition's size as the caller read it with :meth:`kept_size` under the
        ledger lock (nobody else writes meanwhile): the new size is known without an ``fstat``.

        The partition written last stays open between appends (an open and a close per group
        commit are two system calls); O_APPEND writes at the end even after a truncation, and a
        file removed or replaced meanwhile (its inode has no links left) is opened again and
        written anew, so nothing lands in a file nobody reads."""
        for _attempt in range(2):
            fd = self._fd if self._fd_name == name and self._fd_pid == _pid else None
            kept = fd is not None
            if fd is None:
                self._close()
                fd = os.open(self.path(name), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
                self._fd, self._fd_name, self._fd_pid = fd, name, _pid
            sync = self.durable if durable is None else durable
            try:
                os.write(fd, data)
                if start is not None and kept and not sync:
                    return start + len(data)
                if sync:
                    os.fsync(fd)
                st = os.fstat(fd)
            except BaseException:
                self._close()
                raise
            if st.st_nlink:
                return st.st_size
            self._close()  # removed or replaced since it was opened: write to the file there now
        raise OSError(f"history partition {self.path(name)} was removed while being written")

    def _close(self) -> None:
        fd, self._fd, self._fd_name = self._fd, None, None
        if fd is not None and self._fd_pid == _pid:
            try:
                os.close(fd)
            except OSError:
                pass

    def __del__(self) -> None:
        try:
            self._close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass

    def sync(self, name: str) -> None:
        """fsync partition ``name`` (appended without one since the last snapshot)."""
        if not self.durable:
            return
        try:
            fd = os.open(self.path(name), os.O_RDONLY)
        except FileNotFoundError:
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def size(self, name: str) -> int:
        try:
            return os.stat(f"{self._dirname}/{name}").st_size
        except FileNotFoundError:
            return 0

    def tail_from(self, name: str, offset: int) -> tuple[list[dict[str, Any]], int]:
        """Complete entries after ``offset`` and the offset where the last complete one ends.

        A trailing partial line (a writer killed mid-append) is not returned; the caller
        truncates it with :meth:`truncate`.
        """
        with open(self.path(name), "rb") as fh:
            fh.seek(offset)
            data = fh.read()
        entries: list[dict[str, Any]] = []
        end = offset
        for raw in data.splitlines(keepends=True):
            if not raw.endswith(b"\n"):
                break
            try:
                entries.append(json.loads(raw))
            except ValueError:
                break
            end += len(raw)
        return entries, end

    def truncate(self, name: str, size: int) -> None:
        with open(self.path(name), "r+b") as fh:
            fh.truncate(size)
            if self.durable:
                os.fsync(fh.fileno())

    def read_partition(self, name: str, limit_size: int | None = None) -> list[dict[str, Any]]:
        """All complete entries of one partition (up to ``limit_size`` bytes), oldest first."""
        try:
            with open(self.path(name), "rb") as fh:
                data = fh.read() if limit_size is None else fh.read(limit_size)
        except FileNotFoundError:
            return []
        out = []
        for raw in data.splitlines(keepends=True):
            if raw.endswith(b"\n"):
                with contextlib.suppress(ValueError):
                    out.append(json.loads(raw))
        return out


class FileLock:
    """Process-local lock + ``flock`` on a lock file: one writer across threads and processes.

    The lock file's descriptor stays open between transactions (an open and a close per group
    commit are two system calls, each a GIL hand-off on a busy proxy); a forked child opens its
    own, since an ``flock`` belongs to the open file, which parent and child would share. (So
    ``ledger.lock`` must not be deleted while pouch processes run: a process that opened the
    new file would not exclude one still holding the old.)"""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._name = os.fspath(path)
        self.thread_lock = threading.Lock()
        self._fd: int | None = None
        self._fd_pid = 0  # the process that opened ``_fd``

    def acquire_file(self, *, blocking: bool = True) -> bool:
        """Take the cross-process half; the caller already holds :attr:`thread_lock`. Without
        ``blocking``, False when another holder has it."""
        fd = self._fd
        if fd is None or self._fd_pid != _pid:
            fd = os.open(self._name, os.O_RDWR | os.O_CREAT, 0o600)
            self._fd, self._fd_pid = fd, _pid  # a parent's descriptor in a child is left alone
        try:
            fcntl.flock(fd, fcntl.LOCK_EX if blocking else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def release_file(self) -> None:
        fd = self._fd
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)

    @contextlib.contextmanager
    def hold_file(self) -> Iterator[None]:
        """The cross-process half; the caller already holds :attr:`thread_lock`."""
        self.acquire_file()
        try:
            yield
        finally:
            self.release_file()

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        with self.thread_lock, self.hold_file():
            yield

    def __del__(self) -> None:
        fd = self._fd
        try:
            if fd is not None and self._fd_pid == _pid:
                os.close(fd)
        except Exception:  # pragma: no cover - interpreter shutdown
            pass
