"""The /proc fast path of client-process attribution, against real sockets and processes.

Each test starts a listening socket here (the "proxy") and a Python subprocess that connects
to it, then checks that the lookup names that subprocess exactly as psutil would.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from pouch_addon import localproc
from pouch_addon.addons import identity
from pouch_addon.addons.identity import _local_process_psutil, app_label, local_process

pytestmark = pytest.mark.skipif(not localproc.available(), reason="needs Linux /proc")

CHILD = """
import socket, sys
host, port, n, bind = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
family = socket.AF_INET6 if ":" in host else socket.AF_INET
socks = []
for _ in range(n):
    s = socket.socket(family)
    if bind:
        s.bind((bind, 0))
    s.connect((host, port))
    socks.append(s)
print(*[s.getsockname()[1] for s in socks], flush=True)
sys.stdin.read()  # hold the connections until the test closes our stdin
"""


@contextmanager
def connected_child(host: str = "127.0.0.1", n: int = 1, listen: str | None = None,
                    bind: str = "") -> Iterator[tuple[subprocess.Popen, list[int], int]]:
    """A subprocess with ``n`` connections to ``host`` (from ``bind``), held open, to a listener
    here on ``listen`` (default ``host``): (child, its ports, listen port)."""
    listen = host if listen is None else listen
    srv = socket.socket(socket.AF_INET6 if ":" in listen else socket.AF_INET)
    if listen == "::":
        srv.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)  # dual stack
    srv.bind((listen, 0))
    srv.listen()
    port = srv.getsockname()[1]
    child = subprocess.Popen([sys.executable, "-c", CHILD, host, str(port), str(n), bind],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    accepted = []
    try:
        ports = [int(p) for p in child.stdout.readline().split()]
        assert len(ports) == n, "the child could not connect"
        accepted = [srv.accept()[0] for _ in range(n)]
        yield child, ports, port
    finally:
        for conn in accepted:
            conn.close()
        child.stdin.close()
        try:
            child.wait(timeout=5)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        srv.close()


def expected(pid: int) -> tuple[int, str]:
    return pid, app_label(os.path.basename(os.readlink(f"/proc/{pid}/exe")))


@pytest.fixture
def no_psutil(monkeypatch) -> None:
    """Prove the fast path answered: the psutil implementation must not be reached."""
    def boom(*_: object) -> None:
        raise AssertionError("psutil fallback used")
    monkeypatch.setattr(identity, "_local_process_psutil", boom)


@pytest.fixture(autouse=True)
def fresh_cache() -> Iterator[None]:
    with localproc._recent_lock:
        localproc._recent.clear()
    yield


def test_finds_the_subprocess_behind_an_ipv4_loopback_port(no_psutil):
    with connected_child() as (child, (client_port,), port):
        assert local_process(client_port, port) == expected(child.pid)
        assert "python" in local_process(client_port, port)[1]


def test_finds_the_subprocess_behind_an_ipv6_loopback_port(no_psutil):
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with connected_child("::1") as (child, (client_port,), port):
        assert local_process(client_port, port) == expected(child.pid)


def test_finds_a_v4_mapped_ipv6_client(no_psutil):
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            probe.bind(("::", 0))
    except OSError:
        pytest.skip("no dual-stack IPv6 here")
    with connected_child("::ffff:127.0.0.1", listen="::") as (child, (client_port,), port):
        assert local_process(client_port, port) == expected(child.pid)


def test_other_loopback_addresses_are_found_in_the_proc_tables(no_psutil):
    """127.0.0.2 is not one of the addresses netlink is asked about: the /proc/net scan finds it."""
    with connected_child("127.0.0.1", bind="127.0.0.2") as (child, (client_port,), port):
        assert list(localproc.diag_inodes(client_port, port)) == []
        assert len(list(localproc.socket_inodes(client_port, port))) == 1
        assert local_process(client_port, port) == expected(child.pid)


def test_netlink_and_the_proc_tables_agree_on_the_socket():
    with connected_child() as (child, (client_port,), port):
        via_netlink = list(localproc.diag_inodes(client_port, port))
        assert len(via_netlink) == 1 and via_netlink == list(localproc.socket_inodes(client_port, port))
        assert list(localproc.diag_inodes(port, 0)) == []  # the listener on that port is not a connection


def test_none_when_nothing_matches(no_psutil):
    with connected_child() as (child, (client_port,), port):
        assert local_process(port, client_port) is None  # the "proxy" end: ours, never attributed
        assert local_process(client_port, port + 1 if port < 65535 else port - 1) is None
    assert local_process(client_port, port) is None  # the connection is closed now


def test_our_own_connections_are_never_attributed(no_psutil):
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port = srv.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)) as me:
            conn, _ = srv.accept()
            with conn:
                assert local_process(me.getsockname()[1], port) is None


def test_a_second_connection_from_the_same_process_hits_the_pid_cache(no_psutil, monkeypatch):
    with connected_child(n=2) as (child, (first, second), port):
        assert local_process(first, port) == expected(child.pid)
        assert localproc._recent[0] == child.pid
        scanned: list[int] = []
        real = localproc._holds
        monkeypatch.setattr(localproc, "_holds", lambda pid, target: scanned.append(pid) or real(pid, target))
        assert local_process(second, port) == expected(child.pid)
        assert scanned == [child.pid]  # only the cached pid's fds were read, not all of /proc


def test_a_stale_cached_pid_falls_through_to_the_full_scan(no_psutil):
    with connected_child() as (old, (old_port,), old_listen):
        assert local_process(old_port, old_listen) == expected(old.pid)
    with connected_child() as (child, (client_port,), port):
        assert local_process(client_port, port) == expected(child.pid)
        assert localproc._recent[:2] == [child.pid, old.pid]


def test_same_answer_as_psutil():
    with connected_child(n=2) as (child, ports, port):
        for client_port in ports:
            assert local_process(client_port, port) == _local_process_psutil(client_port, port) == expected(child.pid)
        assert local_process(port, ports[0]) is _local_process_psutil(port, ports[0]) is None


def test_concurrent_lookups_from_threads_agree(no_psutil):
    with connected_child(n=4) as (child, ports, port):
        results: list[tuple[int, str] | None] = []
        lock = threading.Lock()

        def look(client_port: int) -> None:
            for _ in range(20):
                found = local_process(client_port, port)
                with lock:
                    results.append(found)

        threads = [threading.Thread(target=look, args=(p,)) for p in ports * 2]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [expected(child.pid)] * len(results) and len(results) == 160
        assert len(localproc._recent) <= localproc.CACHE_SIZE


def test_falls_back_to_psutil_when_the_fast_path_breaks(monkeypatch):
    def broken(*_: object) -> None:
        raise RuntimeError("odd /proc")
    monkeypatch.setattr(localproc, "find", broken)
    with connected_child() as (child, (client_port,), port):
        assert local_process(client_port, port) == expected(child.pid)


def test_loopback_addresses_as_the_kernel_prints_them():
    if sys.byteorder != "little":
        pytest.skip("hex fixtures are little-endian")
    loop: Callable[[str], bool] = lambda h: localproc._is_loopback(h.encode())
    assert loop("0100007F") and loop("0200007F")  # 127.0.0.1, 127.0.0.2
    assert not loop("0101A8C0") and not loop("00000000")  # 192.168.1.1, 0.0.0.0
    assert loop("00000000000000000000000001000000")  # ::1
    assert loop("0000000000000000FFFF00000100007F")  # ::ffff:127.0.0.1
    assert not loop("0000000000000000FFFF00000101A8C0")  # ::ffff:192.168.1.1
    assert not loop("00000000000000000000000000000000")  # ::


def test_process_name_matches_psutil_for_this_process():
    import psutil

    proc = psutil.Process(os.getpid())
    assert localproc.process_name(os.getpid()) == (os.path.basename(proc.exe()) or proc.name())
    assert localproc.process_name(2 ** 22 + 1) is None  # above pid_max: no such process
