"""A throwaway PostgreSQL server for the tests: ``initdb`` in a temporary directory, loopback only.

The server is Debian's ``postgresql`` package (``scripts/install_postgres.sh`` installs it when
missing; ``scripts/test.sh`` calls that). ``postgres`` refuses to run as root, so when the tests
run as root (CI does) every server command runs as the unprivileged ``postgres`` user the
package creates (``runuser -u postgres``); the data directory is made under ``/tmp`` (not under
pytest's ``/tmp/pytest-of-root``, which is 0700) and handed to that user.

The server listens on 127.0.0.1 at a free port, with its unix socket in the temporary directory
(never the system's /var/run/postgresql). Logins over TCP need the password (scram-sha-256), so
the tests exercise the password path of the URL.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

USER = "pouch"
PASSWORD = "s3cret-Pw-for-tests"  # a test server on loopback; the tests grep logs for it


class PGError(RuntimeError):
    pass


def bindir() -> Path:
    """Where pg_ctl and initdb are: on PATH, else Debian's /usr/lib/postgresql/<version>/bin."""
    found = shutil.which("pg_ctl")
    if found:
        return Path(os.path.realpath(found)).parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(d.split("/")[-2]))
    for d in reversed(dirs):
        if os.path.exists(os.path.join(d, "pg_ctl")):
            return Path(d)
    raise PGError("PostgreSQL is not installed: run scripts/install_postgres.sh (Debian: apt-get install postgresql)")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PGServer:
    """``start()`` / ``stop()`` / ``url(db)``; ``pause()`` stops it keeping the data (``start()`` again)."""

    def __init__(self) -> None:
        self.bin = bindir()
        self.as_user = "postgres" if os.geteuid() == 0 else None
        self.dir = Path(tempfile.mkdtemp(prefix="pouch-pg-"))
        self.data = self.dir / "data"
        self.port = _free_port()
        self.log = self.dir / "server.log"
        self.running = False

    def _cmd(self, *args: str) -> list[str]:
        cmd = [str(self.bin / args[0]), *args[1:]]
        return ["runuser", "-u", self.as_user, "--", *cmd] if self.as_user else cmd

    def _run(self, *args: str, timeout: float = 60) -> str:
        p = subprocess.run(self._cmd(*args), capture_output=True, text=True, timeout=timeout)
        if p.returncode != 0:
            raise PGError(f"{' '.join(args[:2])} failed ({p.returncode}): {p.stderr.strip()}\n{self.tail()}")
        return p.stdout

    def init(self) -> None:
        pwfile = self.dir / "pw"
        pwfile.write_text(PASSWORD + "\n")
        if self.as_user:
            shutil.chown(self.dir, self.as_user)
            shutil.chown(pwfile, self.as_user)
        self._run("initdb", "-D", str(self.data), "-U", USER, "--pwfile", str(pwfile), "-E", "UTF8",
                  "--auth-host=scram-sha-256", "--auth-local=trust", "--no-sync", "--locale=C")
        pwfile.unlink()
        with open(self.data / "postgresql.conf", "a") as fh:
            fh.write(f"\nlisten_addresses = '127.0.0.1'\nport = {self.port}\n"
                     f"unix_socket_directories = '{self.dir}'\nmax_connections = 200\n"
                     "log_min_messages = warning\nlog_connections = off\n")

    def start(self) -> None:
        if not self.data.exists():
            self.init()
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", "60", "start")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        if self.running:
            self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")
            self.running = False

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, db: str = "postgres", *, password: bool = True) -> str:
        pw = f":{PASSWORD}" if password else ""
        return f"postgresql://{USER}{pw}@127.0.0.1:{self.port}/{db}"

    def psql(self, sql: str, db: str = "postgres") -> str:
        p = subprocess.run([str(self.bin / "psql"), "-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", str(self.dir),
                            "-p", str(self.port), "-U", USER, "-d", db, "-c", sql],
                           capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            raise PGError(f"psql failed: {p.stderr.strip()}")
        return p.stdout.strip()

    _n = 0

    def new_database(self) -> str:
        """A fresh empty database; its URL (with the password)."""
        PGServer._n += 1
        name = f"t{os.getpid()}_{PGServer._n}_{int(time.time() * 1000) % 100000}"
        self.psql(f"CREATE DATABASE {name}")
        return self.url(name)

    def tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_text(errors="replace")[-n:]
        except OSError:
            return ""
