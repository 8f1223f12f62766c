"""Fixtures for the tests against a real PostgreSQL (``pgserver.py``); never skipped.

- ``pg_server`` (session): one server for the session, started with ``initdb`` in /tmp.
- ``pg_url`` (function): a fresh empty database on it, as a ``postgresql://`` URL with password.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from pgserver import PGError, PGServer  # noqa: E402


@pytest.fixture(scope="session")
def pg_server():
    try:
        server = PGServer()
        server.start()
    except PGError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield server
    finally:
        server.destroy()


@pytest.fixture
def pg_url(pg_server) -> str:
    return pg_server.new_database()
