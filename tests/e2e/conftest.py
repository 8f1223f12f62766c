"""Fixtures for the end-to-end tests; the harness API is documented in ``harness.py``.

- ``client_python`` (session): the client venv's python; created on first use with
  ``scripts/make_client_venv.sh`` (``POUCH_CLIENT_VENV`` overrides the location). If it cannot
  be created the test FAILS with the script's output (it is never skipped).
- ``e2e_certs`` (session): throwaway CA + leaf (``certs.py``).
- ``e2e`` (function): a :class:`harness.Harness` in the test's ``tmp_path``; all processes
  are killed on teardown, and when the test fails the report gets a section "e2e logs"
  with mitmdump's and the fake's output and the last client runs.
- ``fake`` (function): a started fake OpenAI (``e2e.start_fake()``).
- ``bare_proxy`` (function): bare mitmdump + redirect addon, no pouch (``e2e.start_proxy(pouch=False)``).
- ``anthropic_fake`` / ``gemini_fake`` (function): a started fake api.anthropic.com /
  generativelanguage.googleapis.com (``e2e.start_anthropic()`` / ``e2e.start_gemini()``); a proxy
  started after them routes their hosts to them.
- ``agent_clis`` (session): the directory with Claude Code and Gemini CLI, installed on first use
  with ``scripts/make_agent_clis.sh`` (``POUCH_AGENT_CLIS`` overrides the location); FAILS with
  the script's output when they cannot be installed (never skipped).

Every test collected under ``tests/e2e/`` gets the ``e2e`` marker automatically.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import harness as _harness  # noqa: E402
from certs import make_certs  # noqa: E402


def pytest_collection_modifyitems(config, items):  # noqa: ANN001
    for item in items:
        try:
            under = Path(str(item.fspath)).resolve().is_relative_to(HERE)
        except (OSError, ValueError):
            under = False
        if under:
            item.add_marker(pytest.mark.e2e)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):  # noqa: ANN001
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        h = getattr(item, "funcargs", {}).get("e2e")
        if isinstance(h, _harness.Harness):
            try:
                rep.sections.append(("e2e logs", h.logs()))
            except Exception as e:  # noqa: BLE001
                rep.sections.append(("e2e logs", f"<could not collect logs: {e!r}>"))


@pytest.fixture(scope="session")
def client_python() -> Path:
    try:
        return _harness.ensure_client_venv()
    except _harness.HarnessError as e:
        pytest.fail(str(e), pytrace=False)


@pytest.fixture(scope="session")
def e2e_certs(tmp_path_factory):  # noqa: ANN001
    return make_certs(tmp_path_factory.mktemp("e2e-certs"))


@pytest.fixture
def e2e(tmp_path, e2e_certs, client_python):  # noqa: ANN001
    h = _harness.Harness(tmp_path, certs=e2e_certs, client_python=client_python)
    try:
        yield h
    finally:
        h.stop()


@pytest.fixture
def fake(e2e):  # noqa: ANN001
    return e2e.start_fake()


@pytest.fixture
def bare_proxy(e2e, fake):  # noqa: ANN001
    return e2e.start_proxy(pouch=False, fake=fake)


@pytest.fixture
def anthropic_fake(e2e):  # noqa: ANN001
    return e2e.start_anthropic()


@pytest.fixture
def gemini_fake(e2e):  # noqa: ANN001
    return e2e.start_gemini()


@pytest.fixture(scope="session")
def agent_clis() -> Path:
    try:
        return _harness.ensure_agent_clis()
    except _harness.HarnessError as e:
        pytest.fail(str(e), pytrace=False)
