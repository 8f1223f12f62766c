"""Which local process owns a loopback TCP connection, read straight from the Linux kernel.

``psutil.net_connections()`` answers the same question by reading every socket table and
every fd of every process: ~11 ms per call here, far more on a desktop with hundreds of
processes, and the proxy asks once per client connection. This module does only the work one
answer needs:

1. find the client's socket (local port = client port, remote port = proxy port, both ends on
   loopback) and take its inode. First an exact lookup through netlink ``sock_diag`` (what
   ``ss`` uses; unprivileged) for the usual addresses, ``127.0.0.1`` and ``::1``: a hash
   lookup in the kernel, ~25 µs with the round trip. Only if that finds nothing, ``/proc/net/tcp`` then
   ``/proc/net/tcp6``, read in chunks and stopping at the first match. Those files are not
   cheap even when nearly empty: the kernel walks every bucket of its TCP hash (sized from
   RAM: 262,144 buckets, ~4 ms per file on a 24 GB machine);
2. find the process holding ``socket:[inode]``: first among the few pids found recently (a
   client usually opens many connections from one process), then by walking
   ``/proc/[0-9]*/fd``, newest pids first, stopping at the first hit;
3. name it the way ``psutil`` would (``basename(Process.exe()) or Process.name()``).

Linux only: :func:`available` says whether ``/proc`` has what this needs; callers keep a
portable fallback. Processes vanish and fds of other users are unreadable while we look:
both are skipped, as ``psutil`` does.
"""

from __future__ import annotations

import functools
import ipaddress
import itertools
import os
import re
import socket
import struct
import sys
import threading
from collections.abc import Iterator

PROC = "/proc"
TCP_TABLES = ("net/tcp", "net/tcp6")
CACHE_SIZE = 8
_CHUNK = 1 << 16
_GONE = (PermissionError, FileNotFoundError, ProcessLookupError, NotADirectoryError)

# netlink sock_diag (linux/sock_diag.h, linux/inet_diag.h)
_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST = 1
_NLMSG_HDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
_NOCOOKIE = 0xFFFFFFFF
_TCP_LISTEN = 10
_DIAG_CANDIDATES = (  # (family, packed loopback address) for both ends, likeliest first
    (socket.AF_INET, socket.inet_pton(socket.AF_INET, "127.0.0.1")),
    (socket.AF_INET6, socket.inet_pton(socket.AF_INET6, "::1")),
)

_recent: list[int] = []  # most recent first; guarded by _recent_lock
_recent_lock = threading.Lock()


@functools.cache
def available() -> bool:
    """Whether this system exposes the ``/proc`` files the fast path reads (Linux; asked once)."""
    return sys.platform.startswith("linux") and any(
        os.path.exists(f"{PROC}/{t}") for t in TCP_TABLES)


def _row(client_port: int, proxy_port: int) -> re.Pattern[bytes]:
    """A socket-table row ``sl: LOCAL:PORT REMOTE:PORT st tx:rx tr:when retr uid timeout inode``."""
    return re.compile(rb": ([0-9A-F]{8}|[0-9A-F]{32}):%04X ([0-9A-F]{8}|[0-9A-F]{32}):%04X (?:\S+ +){6}(\d+)"
                      % (client_port, proxy_port))


def _is_loopback(hex_addr: bytes) -> bool:
    """Whether an address as the kernel prints it (32-bit words in host order) is loopback,
    including IPv4-mapped ``::ffff:127.x`` in the IPv6 table."""
    raw = bytes.fromhex(hex_addr.decode())
    packed = b"".join(int.from_bytes(raw[i:i + 4], sys.byteorder).to_bytes(4, "big") for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(packed)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _diag_request(family: int, addr: bytes, client_port: int, proxy_port: int) -> bytes:
    """An exact ``SOCK_DIAG_BY_FAMILY`` lookup of the TCP socket ``addr:client_port -> addr:proxy_port``."""
    req = (struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, 0xFFFFFFFF)  # inet_diag_req_v2
           + struct.pack("!HH", client_port, proxy_port) + addr.ljust(16, b"\0") + addr.ljust(16, b"\0")
           + struct.pack("=III", 0, _NOCOOKIE, _NOCOOKIE))  # any interface, no cookie check
    return _NLMSG_HDR.pack(_NLMSG_HDR.size + len(req), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST, 1, 0) + req


def _diag_inode(reply: bytes, client_port: int, proxy_port: int) -> int | None:
    """The inode in an ``inet_diag_msg`` reply, if it is the connection asked for.

    The kernel answers a miss with an error message, and may answer with a *listener* on
    the client port (its lookup falls back to listeners): both are None."""
    if len(reply) < _NLMSG_HDR.size + 72 or _NLMSG_HDR.unpack_from(reply)[1] != _SOCK_DIAG_BY_FAMILY:
        return None
    state = reply[_NLMSG_HDR.size + 1]
    sport, dport = struct.unpack_from("!HH", reply, _NLMSG_HDR.size + 4)
    inode = struct.unpack_from("=I", reply, _NLMSG_HDR.size + 68)[0]
    if state == _TCP_LISTEN or (sport, dport) != (client_port, proxy_port):
        return None
    return inode or None


def diag_inodes(client_port: int, proxy_port: int) -> Iterator[int]:
    """Inode of ``127.0.0.1:client_port -> 127.0.0.1:proxy_port`` or the same on ``::1``,
    by exact kernel lookup (a v4-mapped IPv6 client socket is found as IPv4). Yields nothing
    if netlink is unavailable (old kernel, seccomp): the /proc tables remain."""
    try:
        nl = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, _NETLINK_SOCK_DIAG)
    except OSError:
        return
    with nl:
        nl.settimeout(1.0)
        for family, addr in _DIAG_CANDIDATES:
            try:
                nl.sendto(_diag_request(family, addr, client_port, proxy_port), (0, 0))
                reply = nl.recv(8192)
            except OSError:
                return
            inode = _diag_inode(reply, client_port, proxy_port)
            if inode is not None:
                yield inode


def socket_inodes(client_port: int, proxy_port: int) -> Iterator[int]:
    """Inodes of loopback sockets ``:client_port -> :proxy_port`` in the /proc tables, lazily
    (normally one; any 127.x address, at the cost of a walk of the kernel's TCP hash).

    Raises FileNotFoundError if neither table can be read (no ``/proc``)."""
    pattern = _row(client_port, proxy_port)
    opened = False
    for table in TCP_TABLES:
        try:
            fh = open(f"{PROC}/{table}", "rb", buffering=0)
        except FileNotFoundError:  # e.g. IPv6 disabled
            continue
        opened = True
        with fh:
            tail = b""
            while chunk := fh.read(_CHUNK):
                buf = tail + chunk
                end = buf.rfind(b"\n") + 1  # only whole lines; the rest waits for the next chunk
                for m in pattern.finditer(buf, 0, end):
                    inode = int(m[3])
                    if inode and _is_loopback(m[1]) and _is_loopback(m[2]):
                        yield inode
                tail = buf[end:]
    if not opened:
        raise FileNotFoundError(f"{PROC}/net/tcp")


def _holds(pid: int, target: str) -> bool:
    """Whether process ``pid`` has an fd whose link is ``target`` (False if gone or unreadable)."""
    try:
        with os.scandir(f"{PROC}/{pid}/fd") as it:
            for entry in it:
                try:
                    if os.readlink(entry.path) == target:
                        return True
                except _GONE:
                    continue
    except _GONE:
        pass
    return False


def _remember(pid: int) -> None:
    with _recent_lock:
        if pid in _recent:
            _recent.remove(pid)
        _recent.insert(0, pid)
        del _recent[CACHE_SIZE:]


def owner(inode: int) -> int | None:
    """The pid (not ours) holding ``socket:[inode]``: recent owners first, then all of ``/proc``."""
    target = f"socket:[{inode}]"
    me = os.getpid()
    with _recent_lock:
        recent = list(_recent)
    for pid in recent:
        if pid != me and _holds(pid, target):
            _remember(pid)
            return pid
    skip = {me, *recent}
    with os.scandir(PROC) as it:
        pids = [int(e.name) for e in it if e.name.isdigit()]
    pids.sort(reverse=True)  # new processes are likelier clients than old daemons with many fds
    for pid in pids:
        if pid not in skip and _holds(pid, target):
            _remember(pid)
            return pid
    return None


def _argv0(pid: int) -> str:
    """``cmdline[0]`` split the way psutil splits it ("" if unreadable or empty)."""
    try:
        with open(f"{PROC}/{pid}/cmdline", encoding=sys.getfilesystemencoding(), errors="surrogateescape") as fh:
            data = fh.read()
    except OSError:
        return ""
    sep = "\x00" if data.endswith("\x00") else " "
    data = data.removesuffix(sep)
    parts = data.split(sep)
    if sep == "\x00" and len(parts) == 1 and " " in data:  # setproctitle-style titles
        parts = data.split(" ")
    return parts[0]


def _guess_exe(pid: int) -> str:
    """psutil's guess when ``/proc/PID/exe`` says nothing: an absolute, executable argv[0]."""
    exe = _argv0(pid)
    return exe if os.path.isabs(exe) and os.path.isfile(exe) and os.access(exe, os.X_OK) else ""


def process_name(pid: int) -> str | None:
    """The executable's base name as psutil gives it (``basename(exe()) or name()``), or None
    if the process is gone."""
    try:
        exe = os.readlink(f"{PROC}/{pid}/exe").split("\x00")[0]
        if exe.endswith(" (deleted)") and not os.path.exists(exe):
            exe = exe[:-10]
    except _GONE:  # not ours to read, a kernel thread, a zombie, or gone
        exe = ""
    if not exe:
        exe = _guess_exe(pid)
    if name := os.path.basename(exe):
        return name
    try:
        with open(f"{PROC}/{pid}/comm", encoding=sys.getfilesystemencoding(), errors="surrogateescape") as fh:
            name = fh.read().removesuffix("\n")
    except _GONE:
        return None
    if len(name) >= 15:  # the kernel truncates comm to 15 chars: psutil widens it from argv[0]
        wide = os.path.basename(_argv0(pid))
        if wide.startswith(name):
            name = wide
    return name


def find(client_port: int, proxy_port: int) -> tuple[int, str] | None:
    """``(pid, executable base name)`` of the local process whose loopback socket
    ``:client_port`` talks to ``:proxy_port``, or None if there is none we can see.

    Blocking (tens of µs to a few ms): call it off the event loop. Raises OSError if
    ``/proc`` is missing; callers fall back to a portable implementation."""
    seen: set[int] = set()
    for inode in itertools.chain(diag_inodes(client_port, proxy_port), socket_inodes(client_port, proxy_port)):
        if inode in seen:  # found by netlink, not ours to attribute: no second /proc walk
            continue
        seen.add(inode)
        pid = owner(inode)
        if pid is not None:
            name = process_name(pid)
            return None if name is None else (pid, name)
    return None
