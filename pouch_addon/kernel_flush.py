"""An ``fdatasync`` handed to the kernel: Linux AIO's ``IOCB_CMD_FDSYNC``, reaped without a thread.

Why (issue 16/20): the ledger's overlapped flush ran in a Python thread. Waking it, and its two
turns of the GIL around the ``fdatasync``, came right when the event loop sent the admitted
request (each wake-up a thread switch and a GIL hand-off on a busy proxy). Submitted with
``io_submit``, the flush runs in a kernel worker (Linux >= 4.18 queues AIO fsync to a workqueue);
no Python thread wakes for it, and whoever next needs to know it finished asks the kernel
(:meth:`KernelFlush.reap`, a non-blocking ``io_getevents``; :meth:`KernelFlush.wait` blocks).

Raw system calls through ctypes (no libaio). The calls that never block (``io_submit`` of a
flush, ``io_getevents`` with a zero timeout) keep the GIL (``ctypes.PyDLL``: a released GIL is
a hand-off to any thread waiting for it); the blocking wait releases it. Where any of it is
missing (not Linux x86-64/arm64/riscv64, seccomp, ``ENOSYS``, a file system without fsync for
AIO) :func:`open_kernel_flush` returns None or :meth:`KernelFlush.submit` raises ``OSError``, and
the caller flushes as before (its thread).
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
import sys

IOCB_CMD_FDSYNC = 3
#: how many flushes may be in the kernel at once (a full queue: ``submit`` raises EAGAIN)
DEPTH = 32

# syscall numbers: x86-64's table, and the generic one of arm64, riscv64, loongarch64
_NUMBERS = {
    "x86_64": (206, 207, 209, 208),  # io_setup, io_destroy, io_submit, io_getevents
    "amd64": (206, 207, 209, 208),
    "aarch64": (0, 1, 2, 4),
    "arm64": (0, 1, 2, 4),
    "riscv64": (0, 1, 2, 4),
    "loongarch64": (0, 1, 2, 4),
}


class _Iocb(ctypes.Structure):
    """``struct iocb`` (little-endian layout: ``aio_key`` before ``aio_rw_flags``)."""
    _fields_ = [
        ("aio_data", ctypes.c_uint64), ("aio_key", ctypes.c_uint32), ("aio_rw_flags", ctypes.c_int32),
        ("aio_lio_opcode", ctypes.c_uint16), ("aio_reqprio", ctypes.c_int16), ("aio_fildes", ctypes.c_uint32),
        ("aio_buf", ctypes.c_uint64), ("aio_nbytes", ctypes.c_uint64), ("aio_offset", ctypes.c_int64),
        ("aio_reserved2", ctypes.c_uint64), ("aio_flags", ctypes.c_uint32), ("aio_resfd", ctypes.c_uint32),
    ]


class _Event(ctypes.Structure):
    """``struct io_event``."""
    _fields_ = [("data", ctypes.c_uint64), ("obj", ctypes.c_uint64), ("res", ctypes.c_int64),
                ("res2", ctypes.c_int64)]


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def _syscalls() -> tuple[tuple[int, int, int, int], ctypes._CFuncPtr, ctypes._CFuncPtr] | None:
    numbers = _NUMBERS.get(platform.machine().lower())
    if not sys.platform.startswith("linux") or numbers is None or sys.byteorder != "little":
        return None
    try:
        keep = ctypes.PyDLL(None, use_errno=True).syscall  # keeps the GIL
        release = ctypes.CDLL(None, use_errno=True).syscall  # releases it
    except (OSError, AttributeError):
        return None
    for fn in (keep, release):
        fn.restype = ctypes.c_long
    return numbers, keep, release


class KernelFlush:
    """One AIO context: :meth:`submit` flushes of file descriptors tagged with a number, and
    :meth:`reap` / :meth:`wait` for the ``(tag, result)`` of those finished (result 0, or
    ``-errno``). Not thread-safe: the caller serialises submissions, and reaping (one reaper at a
    time; a submission may run while another thread waits)."""

    def __init__(self, depth: int = DEPTH) -> None:
        found = _syscalls()
        if found is None:
            raise OSError(errno.ENOSYS, "Linux AIO is not available on this platform")
        (self._nr_setup, self._nr_destroy, self._nr_submit, self._nr_getevents), self._keep, self._release = found
        ctx = ctypes.c_ulong(0)
        if self._keep(ctypes.c_long(self._nr_setup), ctypes.c_long(depth), ctypes.byref(ctx)) < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"io_setup: {os.strerror(err)}")
        self._ctx = ctx.value
        self.depth = depth
        self.submitted = 0  # each counter written by one side only (see the class docstring)
        self.reaped = 0
        self._iocb = _Iocb()
        self._iocb.aio_lio_opcode = IOCB_CMD_FDSYNC
        self._iocbs = (ctypes.POINTER(_Iocb) * 1)(ctypes.pointer(self._iocb))
        self._events = (_Event * depth)()
        self._zero = _Timespec(0, 0)

    @property
    def in_flight(self) -> int:
        """Flushes submitted and not reaped yet."""
        return self.submitted - self.reaped

    def submit(self, fd: int, tag: int) -> None:
        """Start an ``fdatasync`` of ``fd`` in the kernel (returns at once); ``OSError`` when it
        was refused (``EINVAL``: the file system has no fsync for AIO; ``EAGAIN``: queue full)."""
        if self._ctx is None:
            raise OSError(errno.EBADF, "the kernel flush context is closed")
        if self.in_flight >= self.depth:
            raise OSError(errno.EAGAIN, "too many flushes in the kernel")
        iocb = self._iocb
        iocb.aio_data = tag
        iocb.aio_fildes = fd
        n = self._keep(ctypes.c_long(self._nr_submit), ctypes.c_ulong(self._ctx), ctypes.c_long(1), self._iocbs)
        if n != 1:
            err = ctypes.get_errno() if n < 0 else errno.EAGAIN
            raise OSError(err, f"io_submit: {os.strerror(err)}")
        self.submitted += 1

    def reap(self) -> list[tuple[int, int]]:
        """The flushes that finished since the last call, without waiting."""
        return self._getevents(0, ctypes.byref(self._zero), self._keep)

    def wait(self, timeout: float) -> list[tuple[int, int]]:
        """At least one finished flush, or none after ``timeout`` seconds (the GIL released)."""
        if not self.in_flight:
            return []
        ts = _Timespec(int(timeout), int((timeout % 1) * 1e9))
        return self._getevents(1, ctypes.byref(ts), self._release)

    def _getevents(self, least: int, timeout, call) -> list[tuple[int, int]]:
        if not self.in_flight or self._ctx is None:
            return []
        while True:
            n = call(ctypes.c_long(self._nr_getevents), ctypes.c_ulong(self._ctx), ctypes.c_long(least),
                     ctypes.c_long(self.depth), self._events, timeout)
            if n >= 0:
                break
            err = ctypes.get_errno()
            if err != errno.EINTR:
                raise OSError(err, f"io_getevents: {os.strerror(err)}")
        self.reaped += n
        return [(self._events[i].data, self._events[i].res) for i in range(n)]

    def close(self) -> None:
        """Destroy the context (the kernel finishes the flushes in it first)."""
        ctx, self._ctx = self._ctx, None
        if ctx is not None:
            self._release(ctypes.c_long(self._nr_destroy), ctypes.c_ulong(ctx))

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # pragma: no cover - interpreter shutdown
            pass


def open_kernel_flush(depth: int = DEPTH) -> KernelFlush | None:
    """A :class:`KernelFlush`, or None where Linux AIO is not available (then flush in a thread)."""
    try:
        return KernelFlush(depth)
    except OSError:
        return None
