"""The test server itself: it runs, on loopback, and demands the password over TCP."""

import subprocess

from pgserver import PASSWORD, USER


def test_server_answers_on_loopback_with_password(pg_server, pg_url):
    db = pg_url.rsplit("/", 1)[1]
    assert pg_server.psql("select 1", db) == "1"
    psql = str(pg_server.bin / "psql")
    # TCP without the password is refused (scram-sha-256), with it accepted
    bad = subprocess.run([psql, "-X", "-w", "-h", "127.0.0.1", "-p", str(pg_server.port), "-U", USER, "-d", db,
                          "-c", "select 1"], capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"})
    assert bad.returncode != 0 and "password" in bad.stderr
    good = subprocess.run([psql, "-X", "-w", "-A", "-t", "-h", "127.0.0.1", "-p", str(pg_server.port), "-U", USER,
                           "-d", db, "-c", "select 2"], capture_output=True, text=True,
                          env={"PATH": "/usr/bin:/bin", "PGPASSWORD": PASSWORD})
    assert good.returncode == 0 and good.stdout.strip() == "2"
