"""End-to-end harness: real mitmdump, fake providers and real clients, loopback only.

Pieces (all started as subprocesses in their own process group, killed on ``stop()``):

- **fake OpenAI** (``fake_openai.py``): TLS on 127.0.0.1:<random>, certificate for
  ``api.openai.com`` / ``other.test`` / ``localhost`` / ``127.0.0.1`` signed by a throwaway CA
  (``certs.py``). Request headers (``x-fake-chunks``, ``x-fake-prompt-tokens``,
  ``x-fake-cached-tokens``, ``x-fake-reasoning-tokens``, ``x-fake-delay-ms``,
  ``x-fake-die-after``, ``x-fake-status``, ``x-fake-ignore-cap``, ``x-fake-service-tier``)
  steer it; its module docstring has the exact token rules. It logs everything to JSONL.
- **fake Anthropic** (``fake_anthropic.py``) and **fake Gemini** (``fake_gemini.py``): the same
  kind of server for api.anthropic.com (Messages, SSE) and generativelanguage.googleapis.com
  (generateContent, streamGenerateContent with and without ``alt=sse``), with the same control
  header names where they apply and the same log format (so ``Fake``'s helpers read them too);
  their docstrings have the usage rules. The leaf certificate names all three hosts. Any number
  of fakes run at once, each on its own port; a proxy routes each provider host to the latest
  fake of its kind.
- **proxy**: ``mitmdump`` with either the pouch addon (``pouch=True``) or, for a bare
  baseline, only the test redirect addon (``pouch=False``, plus ``stream_large_bodies=1``).
  Its own CA lives in ``<workdir>/proxyN/mitmconf``, never ``~/.mitmproxy``.
- **clients**: the openai, anthropic and google-genai SDKs in a separate venv
  (``scripts/make_client_venv.sh``, pinned) driven by ``clients/sdk_client.py``,
  ``clients/anthropic_client.py`` and ``clients/genai_client.py`` (one JSON line out each), and
  ``curl``; all configured purely by the environment from ``client_env()`` (``HTTPS_PROXY``,
  ``SSL_CERT_FILE``/``CURL_CA_BUNDLE``/``NODE_EXTRA_CA_CERTS`` = mitmproxy CA,
  ``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``, ``GEMINI_API_KEY``), as an unmodified app would be.
- **coding agents**: Claude Code (``claude -p``) and Gemini CLI (``gemini -p``) from npm
  (``scripts/make_agent_clis.sh``, pinned, into ``.agent-clis/`` or ``$POUCH_AGENT_CLIS``), run by
  ``run_claude``/``run_gemini`` with ``agent_env()``: ``client_env()`` plus a private ``HOME``
  and the switches that keep them offline. Hosts they contact, seen through the proxy:
  Claude Code only api.anthropic.com (with ``CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1``:
  ``GET /api/claude_code/settings``, ``GET /api/claude_code/policy_limits`` (404 tolerated),
  ``POST /v1/messages?beta=true``; without it also ``/api/eval/...``,
  ``/api/claude_cli/bootstrap``, ``/api/claude_code_penguin_mode``, ``/api/directory/server-urls``,
  ``/api/claude_code/organizations/metrics_enabled``, ``/api/event_logging/v2/batch``, all on
  api.anthropic.com). Gemini CLI only generativelanguage.googleapis.com with the settings
  ``write_gemini_settings`` writes (a JSON-mode ``generateContent`` for its model router, then
  ``streamGenerateContent?alt=sse``); without them also play.googleapis.com (usage statistics).

Fixtures (``tests/e2e/conftest.py``)
------------------------------------
``e2e``       a fresh :class:`Harness` per test (work dir = the test's ``tmp_path``);
              stopped on teardown; on failure, the tails of all logs are attached to the
              report as the section "e2e logs".
``fake``      ``e2e.start_fake()``.
``bare_proxy`` ``e2e.start_proxy(pouch=False)`` (uses ``fake``).
``client_python`` (session) path of the client venv's python (created lazily; fails loudly).
``e2e_certs`` (session) the throwaway :class:`certs.Certs`.
``anthropic_fake`` / ``gemini_fake``  ``e2e.start_anthropic()`` / ``e2e.start_gemini()``.
``agent_clis`` (session) the Claude Code + Gemini CLI directory (installed lazily; fails loudly).

Example (a firewall test)::

    import pytest
    pytestmark = pytest.mark.e2e

    def test_stream_is_settled(e2e, fake, tmp_path):
        home = tmp_path / "home"                      # pouch_home
        proxy = e2e.start_proxy(home, {"pouch_budget": "1.00"})     # pouch=True by default
        env = e2e.client_env(proxy)
        r = e2e.run_sdk("chat_stream", {"model": "gpt-4o-mini", "max_tokens": 50,
                                        "extra_headers": {"x-fake-chunks": "5",
                                                          "x-fake-prompt-tokens": "100"}}, env)
        assert r["ok"] and r["content"] == fake_text(5)
        req = fake.requests("/v1/chat/completions")[-1]
        assert req["headers"]["host"] == "api.openai.com"
        assert req["body"]["stream_options"] == {"include_usage": True}   # injected by pouch
        assert not r["any_empty_choices"]                                  # ...and hidden again
        c = e2e.run_curl("https://api.openai.com/v1/chat/completions", env=env,
                         json_body={"model": "gpt-4o-mini", "messages": [...]})
        assert c.status == 402 and c.json()["error"]["code"] == ...

API summary
-----------
``Harness(workdir, certs=None, client_python=None)``
``.start_fake(timeout=10, *, kind="openai") -> Fake`` (kind "openai" | "anthropic" | "gemini";
    also ``.start_anthropic()``, ``.start_gemini()``, ``.latest_fake(kind)``; ``.fake`` is the
    latest fake OpenAI): ``.port``, ``.kind``, ``.host``, ``.log_path``, ``.entries(ev=None)``,
    ``.requests(path=None)``, ``.connections()``, ``.responses()``,
    ``.wait_for(pred_or_ev, timeout=5)``, ``.tail()``.
``.start_proxy(home=None, sets=None, pouch=True, *, fake=None, allow_hosts=None,
    extra_args=(), redirect=None, stream_large_bodies=None, fakes=None) -> Proxy``: ``.port``,
    ``.url``, ``.confdir``, ``.ca`` (mitmproxy CA pem), ``.cmd``, ``.routes`` (host -> Fake),
    ``.alive()``, ``.stdout()``, ``.stderr()``, ``.stop()``. ``sets`` is a dict
    (``{"opt": value}``; bools become true/false) or a list of ``"opt=value"`` strings.
    ``fake`` is the fake OpenAI (default the latest; one is started only when no fake runs at
    all), ``fakes`` the other providers' fakes (default the latest of each kind started).
    ``pouch=True`` adds ``-s <pouch mitm_entry> --set pouch_home=<home>`` and one
    ``--set pouch_route=<host>=127.0.0.1:<port>`` per routed fake; ``redirect`` (default
    ``["other.test"]`` with pouch, ``["api.openai.com", "other.test"]`` without) is routed to
    the fake OpenAI by ``redirect_addon.py``, and without pouch so is each other fake's host.
``.client_env(proxy=None, *, ca=None, api_key="sk-test-pouch-e2e", extra=None,
    anthropic_key="sk-ant-test-pouch-e2e", gemini_key="gm-test-pouch-e2e") -> dict``
``.run_sdk(mode, args=None, env=None, *, timeout=60, script=SDK_CLIENT) -> dict`` (the JSON
    line of ``clients/sdk_client.py``; see its docstring for modes and fields)
``.run_anthropic(mode, args=None, env=None)`` / ``.run_genai(...)`` -> dict (the same for
    ``clients/anthropic_client.py`` / ``clients/genai_client.py``)
``.run_sdk_batch([(mode, args), ...], env=None, *, script=SDK_CLIENT) -> list[dict]`` (one
    process, faster; ``script=ANTHROPIC_CLIENT`` / ``GENAI_CLIENT`` for the others)
``.start_sdk(mode, args=None, env=None, *, script=SDK_CLIENT) -> ClientProc`` (background;
    ``.result(timeout)``)
``.agent_env(proxy=None, *, home=None, extra=None, **client_env_kw) -> dict``
``.run_claude(prompt, env=None, *, args=(), timeout=120, cwd=None) -> AgentResult`` (``claude -p``)
``.run_gemini(prompt, env=None, *, args=(), timeout=120, cwd=None) -> AgentResult`` (``gemini -p``):
    ``.rc``, ``.stdout``, ``.stderr``, ``.cmd``, ``.home``, ``.json()``.
``.run_curl(url, *, env=None, method=None, headers=None, json_body=None, data=None,
    cacert=None, stream=True, extra_args=(), timeout=30) -> CurlResult``: ``.rc``,
    ``.status``, ``.headers`` (final response, lower-case), ``.body`` (bytes), ``.text``,
    ``.json()``, ``.sse_data()`` (list of ``data:`` payloads), ``.issuer``, ``.stderr``.
``.stop()``; ``.logs()`` (tails of every log, for failure reports).
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
FAKE_SCRIPT = HERE / "fake_openai.py"
FAKE_SCRIPTS = {"openai": FAKE_SCRIPT, "anthropic": HERE / "fake_anthropic.py", "gemini": HERE / "fake_gemini.py",
                "compat": HERE / "fake_compat.py"}
# The provider host each kind of fake stands for (the proxy routes it there).
PROVIDER_HOSTS = {"openai": "api.openai.com", "anthropic": "api.anthropic.com",
                  "gemini": "generativelanguage.googleapis.com", "compat": "openrouter.ai"}
# More hosts a kind of fake answers as (``fake_compat.py``: by the Host header)
EXTRA_HOSTS = {"compat": ("api.deepseek.com", "api.groq.com", "api.mistral.ai", "pouchtest.openai.azure.com",
                           "pouchtest.cognitiveservices.azure.com")}
REDIRECT_SCRIPT = HERE / "redirect_addon.py"
SDK_CLIENT = HERE / "clients" / "sdk_client.py"
ANTHROPIC_CLIENT = HERE / "clients" / "anthropic_client.py"
GENAI_CLIENT = HERE / "clients" / "genai_client.py"
MAKE_CLIENT_VENV = REPO / "scripts" / "make_client_venv.sh"
DEFAULT_CLIENT_VENV = REPO / ".venv-clients"
MAKE_AGENT_CLIS = REPO / "scripts" / "make_agent_clis.sh"
DEFAULT_AGENT_CLIS = REPO / ".agent-clis"
# The modules the client venv must import (make_client_venv.sh installs what is missing).
CLIENT_MODULES = ("openai", "anthropic", "google.genai")
LOOPBACK = "127.0.0.1"

if str(HERE) not in sys.path:  # so ``import certs`` works however this module was imported
    sys.path.insert(0, str(HERE))

# Environment variables that would let the host's settings leak into a client.
_SCRUB = (
    "SSL_CERT_DIR", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE",
    "NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy",
    "HTTPS_PROXY", "https_proxy",
    "OPENAI_BASE_URL", "OPENAI_API_BASE", "OPENAI_ORG_ID", "OPENAI_PROJECT_ID", "OPENAI_API_KEY",
    "OPENAI_LOG", "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME",
    "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL", "ANTHROPIC_MODEL", "ANTHROPIC_LOG",
    "CLAUDE_CONFIG_DIR", "CLAUDE_CODE_USE_BEDROCK", "CLAUDE_CODE_USE_VERTEX",
    "GEMINI_API_KEY", "GOOGLE_API_KEY", "GOOGLE_GEMINI_BASE_URL", "GOOGLE_GENAI_USE_VERTEXAI",
    "GOOGLE_CLOUD_PROJECT", "GOOGLE_CLOUD_LOCATION", "GOOGLE_APPLICATION_CREDENTIALS", "GEMINI_MODEL",
    "GOOGLE_GENAI_API_VERSION", "GEMINI_API_KEY_AUTH_MECHANISM", "GEMINI_CLI_CUSTOM_HEADERS",
    "ANTHROPIC_CUSTOM_HEADERS",
    "NODE_EXTRA_CA_CERTS", "NODE_OPTIONS", "NODE_TLS_REJECT_UNAUTHORIZED",
)


class HarnessError(RuntimeError):
    pass


# --------------------------------------------------------------------------- helpers

def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = LOOPBACK, timeout: float = 0.2) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.05,
               alive: Callable[[], bool] | None = None, on_fail: Callable[[], str] | None = None) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if alive is not None and not alive():
            raise HarnessError(f"process died while waiting for {what}\n" + (on_fail() if on_fail else ""))
        if time.monotonic() > deadline:
            raise HarnessError(f"timed out after {timeout}s waiting for {what}\n" + (on_fail() if on_fail else ""))
        time.sleep(interval)


def tail(path: Path, max_bytes: int = 6000) -> str:
    try:
        data = path.read_bytes()
    except OSError:
        return f"<{path}: missing>"
    if len(data) > max_bytes:
        data = b"...\n" + data[-max_bytes:]
    return data.decode("utf-8", "replace")


def mitmdump_path() -> str:
    env = os.environ.get("POUCH_MITMDUMP")
    if env:
        return env
    cand = Path(sys.executable).parent / "mitmdump"
    if cand.exists():
        return str(cand)
    found = shutil.which("mitmdump")
    if not found:
        raise HarnessError("mitmdump not found (set POUCH_MITMDUMP)")
    return found


def pouch_entry_script(python: str | None = None) -> str:
    """Path of ``pouch_addon/mitm_entry.py``, asked from the interpreter that runs mitmdump."""
    py = python or sys.executable
    r = subprocess.run([py, "-c", "import pouch_addon.mitm_entry as m; print(m.__file__)"],
                       cwd=REPO, capture_output=True, text=True, env=_proxy_env())
    if r.returncode != 0:
        raise HarnessError(f"cannot import pouch_addon.mitm_entry:\n{r.stderr[-3000:]}")
    return r.stdout.strip().splitlines()[-1]


def _proxy_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    env["PYTHONPATH"] = str(REPO)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def ensure_client_venv(venv: str | Path | None = None) -> Path:
    """Return the client venv's python, creating the venv with the script if needed.

    Raises HarnessError (never skips) with the script's output when that fails."""
    d = Path(venv or os.environ.get("POUCH_CLIENT_VENV") or DEFAULT_CLIENT_VENV)
    py = d / "bin" / "python"
    if py.exists():
        ok = subprocess.run([str(py), "-c", "import " + ", ".join(CLIENT_MODULES)],
                            capture_output=True).returncode == 0
        if ok:
            return py
    r = subprocess.run(["bash", str(MAKE_CLIENT_VENV), str(d)], capture_output=True, text=True, timeout=900)
    if r.returncode != 0 or not py.exists():
        raise HarnessError(
            f"could not create the e2e client venv at {d} with {MAKE_CLIENT_VENV} "
            f"(rc={r.returncode}); the openai, anthropic and google-genai SDKs must be installable "
            f"from the package index.\n"
            f"--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-5000:]}")
    return py


def ensure_agent_clis(directory: str | Path | None = None) -> Path:
    """Return the directory holding ``node_modules/.bin/claude`` and ``.../gemini``, installing
    them with ``scripts/make_agent_clis.sh`` (pinned versions, idempotent) when one is missing.

    ``POUCH_AGENT_CLIS`` overrides the location. Raises HarnessError with the script's output."""
    d = Path(directory or os.environ.get("POUCH_AGENT_CLIS") or DEFAULT_AGENT_CLIS)
    bins = [d / "node_modules" / ".bin" / b for b in ("claude", "gemini")]
    if all(b.exists() for b in bins):
        return d
    r = subprocess.run(["bash", str(MAKE_AGENT_CLIS), str(d)], capture_output=True, text=True, timeout=1200)
    if r.returncode != 0 or not all(b.exists() for b in bins):
        raise HarnessError(
            f"could not install Claude Code and Gemini CLI into {d} with {MAKE_AGENT_CLIS} "
            f"(rc={r.returncode}); both must be installable from the npm registry.\n"
            f"--- stdout\n{r.stdout[-3000:]}\n--- stderr\n{r.stderr[-5000:]}")
    return d


# --------------------------------------------------------------------------- processes

_LIVE: "set[Proc]" = set()


@atexit.register
def _kill_leftovers() -> None:
    """Last resort if a test run is interrupted before fixture teardown."""
    for proc in list(_LIVE):
        proc.stop(timeout=1.0)


class Proc:
    """A subprocess in its own process group, with stdout/stderr in files."""

    def __init__(self, name: str, cmd: Sequence[str], workdir: Path, env: Mapping[str, str] | None = None,
                 cwd: Path | None = None):
        self.name = name
        self.cmd = [str(c) for c in cmd]
        workdir.mkdir(parents=True, exist_ok=True)
        self.stdout_path = workdir / f"{name}.stdout"
        self.stderr_path = workdir / f"{name}.stderr"
        self._out = open(self.stdout_path, "wb")
        self._err = open(self.stderr_path, "wb")
        self.popen = subprocess.Popen(self.cmd, stdout=self._out, stderr=self._err, stdin=subprocess.DEVNULL,
                                      env=dict(env) if env is not None else None, cwd=cwd,
                                      start_new_session=True)
        _LIVE.add(self)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 5.0) -> int | None:
        if self.popen.poll() is None:
            for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(self.popen.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.popen.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        else:  # leader gone; make sure no child of its group is left behind
            try:
                os.killpg(self.popen.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        _LIVE.discard(self)
        for f in (self._out, self._err):
            try:
                f.close()
            except OSError:
                pass
        return self.popen.returncode

    def stdout(self) -> str:
        return self.stdout_path.read_text("utf-8", "replace") if self.stdout_path.exists() else ""

    def stderr(self) -> str:
        return self.stderr_path.read_text("utf-8", "replace") if self.stderr_path.exists() else ""

    def describe(self) -> str:
        rc = self.popen.poll()
        return (f"=== {self.name} (pid {self.pid}, {'running' if rc is None else f'rc={rc}'})\n"
                f"$ {' '.join(self.cmd)}\n--- stdout\n{tail(self.stdout_path)}\n--- stderr\n{tail(self.stderr_path)}")


@dataclass
class Fake:
    proc: Proc
    port: int
    log_path: Path
    kind: str = "openai"    # "openai" | "anthropic" | "gemini" (which fake script runs)

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def host(self) -> str:
        """The provider host this fake stands for (api.openai.com, api.anthropic.com, ...)."""
        return PROVIDER_HOSTS[self.kind]

    def entries(self, ev: str | None = None) -> list[dict]:
        out = []
        try:
            lines = self.log_path.read_text("utf-8").splitlines()
        except FileNotFoundError:
            return []
        for line in lines:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line being written right now
            if ev is None or rec.get("ev") == ev:
                out.append(rec)
        return out

    def requests(self, path: str | None = None) -> list[dict]:
        """``request`` log entries, optionally only those whose path (without query) == path."""
        return [r for r in self.entries("request") if path is None or r["path"].split("?", 1)[0] == path]

    def connections(self) -> list[dict]:
        return self.entries("conn_open")

    def responses(self) -> list[dict]:
        return self.entries("response")

    def events_for(self, req: int) -> list[dict]:
        return [e for e in self.entries() if e.get("req") == req]

    def wait_for(self, pred: str | Callable[[dict], bool], timeout: float = 5.0) -> dict:
        """Wait for a log entry; ``pred`` is an ``ev`` name or a predicate on an entry."""
        fn = (lambda e: e.get("ev") == pred) if isinstance(pred, str) else pred
        return wait_until(lambda: next((e for e in self.entries() if fn(e)), None), timeout,
                          f"fake log entry {pred!r}", on_fail=self.tail)

    def tail(self) -> str:
        return f"--- fake log {self.log_path}\n{tail(self.log_path, 8000)}"


@dataclass
class Proxy:
    proc: Proc
    port: int
    confdir: Path
    pouch: bool
    home: Path | None
    fake: Fake
    routes: dict[str, Fake] = field(default_factory=dict)   # provider host -> the fake it is sent to

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def ca(self) -> Path:
        return self.confdir / "mitmproxy-ca-cert.pem"

    @property
    def cmd(self) -> list[str]:
        return self.proc.cmd

    def alive(self) -> bool:
        return self.proc.alive()

    def stdout(self) -> str:
        return self.proc.stdout()

    def stderr(self) -> str:
        return self.proc.stderr()

    def stop(self) -> int | None:
        return self.proc.stop()


@dataclass
class CurlResult:
    rc: int
    status: int | None
    headers: dict[str, str]
    body: bytes
    stderr: str
    meta: dict = field(default_factory=dict)
    cmd: list[str] = field(default_factory=list)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.body)

    def sse_data(self) -> list[str]:
        """The ``data:`` payloads of an SSE body, in order (``[DONE]`` included)."""
        out = []
        for line in self.text.replace("\r\n", "\n").split("\n"):
            if line.startswith("data:"):
                out.append(line[5:].lstrip(" "))
        return out

    @property
    def issuer(self) -> str | None:
        """The server certificate's issuer line from ``curl -v`` (e.g. "CN=mitmproxy; O=mitmproxy")."""
        for line in self.stderr.splitlines():
            s = line.strip().lstrip("*").strip()
            if s.startswith("issuer:"):
                return s[len("issuer:"):].strip()
        return None


@dataclass
class AgentResult:
    """One run of a coding agent CLI (``Harness.run_claude`` / ``run_gemini``)."""
    rc: int | None
    stdout: str
    stderr: str
    cmd: list[str]
    home: Path

    def json(self) -> Any:
        """stdout as JSON (for ``--output-format json``)."""
        return json.loads(self.stdout)


class ClientProc:
    """A background ``sdk_client.py`` run (see ``Harness.start_sdk``)."""

    def __init__(self, proc: subprocess.Popen, name: str, record: dict):
        self.popen = proc
        self.name = name
        self._record = record

    def result(self, timeout: float = 60) -> dict:
        try:
            out, err = self.popen.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _killpg(self.popen)
            out, err = self.popen.communicate()
            self._record.update(stdout=out, stderr=err, rc="timeout")
            raise HarnessError(f"{self.name} timed out after {timeout}s\n--- stderr\n{err[-4000:]}")
        self._record.update(stdout=out, stderr=err, rc=self.popen.returncode)
        return _parse_client_output(self.name, out, err, self.popen.returncode)


def _killpg(p: subprocess.Popen) -> None:
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _parse_client_output(name: str, out: str, err: str, rc: int | None) -> dict:
    for line in reversed(out.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                break
    raise HarnessError(f"{name} printed no JSON result (rc={rc})\n--- stdout\n{out[-3000:]}\n--- stderr\n{err[-5000:]}")


# --------------------------------------------------------------------------- the harness

class Harness:
    def __init__(self, workdir: str | Path, certs: Any = None, client_python: str | Path | None = None):
        from certs import make_certs  # local module next to this file

        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.certs = certs or make_certs(self.workdir / "certs")
        self._client_python = Path(client_python) if client_python else None
        self._agent_clis: Path | None = None
        self.procs: list[Proc] = []
        self.fakes: list[Fake] = []
        self.proxies: list[Proxy] = []
        self.client_runs: list[dict] = []
        self._bg_clients: list[subprocess.Popen] = []
        self._lock = threading.Lock()
        self._n = 0

    # ---- bookkeeping
    def _name(self, base: str) -> str:
        with self._lock:
            self._n += 1
            return f"{base}{self._n}"

    @property
    def client_python(self) -> Path:
        if self._client_python is None:
            self._client_python = ensure_client_venv()
        return self._client_python

    # ---- fake upstream
    def start_fake(self, timeout: float = 10.0, *, kind: str = "openai") -> Fake:
        """Start a fake provider: ``kind`` "openai" (fake_openai.py), "anthropic" or "gemini".
        Any number may run at once, each on its own port; ``start_proxy`` routes each provider
        host to the latest fake of its kind."""
        if kind not in FAKE_SCRIPTS:
            raise HarnessError(f"unknown fake kind {kind!r} (want one of {sorted(FAKE_SCRIPTS)})")
        name = self._name("fake" if kind == "openai" else f"fake_{kind}")
        d = self.workdir / name
        d.mkdir(parents=True, exist_ok=True)
        log = d / "fake.jsonl"
        ready = d / "port"
        proc = Proc(name, [sys.executable, FAKE_SCRIPTS[kind], "--port", "0", "--cert", self.certs.leaf_cert,
                           "--key", self.certs.leaf_key, "--log", log, "--ready-file", ready],
                    d, env=_proxy_env())
        self.procs.append(proc)
        wait_until(lambda: ready.exists() and ready.read_text().strip(), timeout, f"{name} ready file",
                   alive=proc.alive, on_fail=proc.describe)
        port = int(ready.read_text().strip())
        wait_until(lambda: port_open(port), timeout, f"{name} port {port}", alive=proc.alive, on_fail=proc.describe)
        fake = Fake(proc, port, log, kind)
        self.fakes.append(fake)
        return fake

    def start_anthropic(self, timeout: float = 10.0) -> Fake:
        """A fake api.anthropic.com (``fake_anthropic.py``)."""
        return self.start_fake(timeout, kind="anthropic")

    def start_gemini(self, timeout: float = 10.0) -> Fake:
        """A fake generativelanguage.googleapis.com (``fake_gemini.py``)."""
        return self.start_fake(timeout, kind="gemini")

    def latest_fake(self, kind: str) -> Fake | None:
        return next((f for f in reversed(self.fakes) if f.kind == kind), None)

    @property
    def fake(self) -> Fake:
        """The latest fake OpenAI (started here when there is none)."""
        return self.latest_fake("openai") or self.start_fake()

    # ---- proxy
    def start_proxy(self, home: str | Path | None = None, sets: Mapping[str, Any] | Iterable[str] | None = None,
                    pouch: bool = True, *, fake: Fake | None = None,
                    allow_hosts: str | Sequence[str] | None = None, extra_args: Sequence[str] = (),
                    redirect: Sequence[str] | None = None, stream_large_bodies: str | None = None,
                    quiet: bool = True, timeout: float = 30.0, fakes: Sequence[Fake] | None = None) -> Proxy:
        """``fake`` is the fake OpenAI (default: the latest one; one is started when no fake of
        any kind runs yet). ``fakes``: the other providers' fakes to route (default: the latest
        fake of each other kind started on this harness). Each fake's provider host is routed
        to it: with pouch by ``pouch_route``, without by the redirect addon."""
        if fake is None:
            fake = self.latest_fake("openai")
            if fake is None and not self.fakes:
                fake = self.start_fake()
        others = list(fakes) if fakes is not None else [
            f for f in (self.latest_fake(k) for k in FAKE_SCRIPTS if k != "openai") if f is not None]
        routes: dict[str, Fake] = {fake.host: fake} if fake is not None else {}
        for f in others:
            routes[f.host] = f
            for h in EXTRA_HOSTS.get(f.kind, ()):
                routes[h] = f
        if not routes:
            raise HarnessError("start_proxy: no fake to route to")
        name = self._name("proxy")
        d = self.workdir / name
        confdir = d / "mitmconf"
        confdir.mkdir(parents=True, exist_ok=True)
        route = f"{LOOPBACK}:{fake.port}" if fake is not None else None
        if pouch:
            home_p = Path(home) if home is not None else d / "pouch_home"
            home_p.mkdir(parents=True, exist_ok=True)
        else:
            home_p = Path(home) if home is not None else None
        if redirect is None:
            redirect = ["other.test"] if pouch else ["api.openai.com", "other.test"]
        redirect_map = [f"{h}={route}" for h in redirect] if route is not None else []
        if not pouch:  # the other providers' hosts, each to its own fake
            redirect_map += [f"{h}={f.address}" for h, f in routes.items() if f.kind != "openai"]

        set_args: list[str] = []
        if isinstance(sets, Mapping):
            for k, v in sets.items():
                v = ("true" if v else "false") if isinstance(v, bool) else v
                set_args += ["--set", f"{k}={v}"]
        elif sets is not None:
            for s in sets:
                set_args += ["--set", str(s)]

        last_err: Exception | None = None
        for _attempt in range(3):
            port = free_port()
            cmd: list[str] = [mitmdump_path(), "--listen-host", LOOPBACK, "-p", str(port)]
            if quiet:
                cmd.append("-q")
            cmd += ["--set", f"confdir={confdir}",
                    "--set", f"ssl_verify_upstream_trusted_ca={self.certs.ca_cert}"]
            if pouch:
                cmd += ["-s", pouch_entry_script(), "--set", f"pouch_home={home_p}"]
                for h, f in routes.items():
                    cmd += ["--set", f"pouch_route={h}={f.address}"]
            if redirect_map:
                cmd += ["-s", str(REDIRECT_SCRIPT), "--set", "redirect_map=" + ",".join(redirect_map)]
            sl = stream_large_bodies if stream_large_bodies is not None else (None if pouch else "1")
            if sl is not None:
                cmd += ["--set", f"stream_large_bodies={sl}"]
            if allow_hosts:
                for pat in ([allow_hosts] if isinstance(allow_hosts, str) else allow_hosts):
                    cmd += ["--allow-hosts", pat]
            cmd += set_args + [str(a) for a in extra_args]
            proc = Proc(name, cmd, d, env=_proxy_env(), cwd=d)
            self.procs.append(proc)
            proxy = Proxy(proc, port, confdir, pouch, home_p, fake or next(iter(routes.values())), routes)
            try:
                wait_until(lambda: proxy.ca.exists() and port_open(port), timeout,
                           f"{name} (mitmdump) on port {port} and its CA", alive=proc.alive,
                           on_fail=proc.describe)
            except HarnessError as e:
                last_err = e
                proc.stop()
                if "address already in use" in proc.stderr().lower():
                    continue
                raise
            self.proxies.append(proxy)
            return proxy
        raise HarnessError(f"could not start mitmdump: {last_err}")

    # ---- clients
    def client_env(self, proxy: Proxy | None = None, *, ca: str | Path | None = None,
                   api_key: str = "sk-test-pouch-e2e", extra: Mapping[str, str] | None = None,
                   anthropic_key: str = "sk-ant-test-pouch-e2e",
                   gemini_key: str = "gm-test-pouch-e2e") -> dict[str, str]:
        """Environment for a client going through ``proxy`` and trusting only ``ca``
        (default: the proxy's mitmproxy CA). Host-wide CA/proxy/key settings are removed.
        Sets ``OPENAI_API_KEY``, ``ANTHROPIC_API_KEY``, ``GEMINI_API_KEY`` (the one google-genai
        and Gemini CLI read; ``GOOGLE_API_KEY`` is left unset since it would win) and, for node
        clients, ``NODE_EXTRA_CA_CERTS`` = the trusted CA."""
        proxy = proxy or (self.proxies[-1] if self.proxies else None)
        env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
        if proxy is not None:
            env["HTTPS_PROXY"] = env["https_proxy"] = proxy.url
        trust = str(ca or (proxy.ca if proxy is not None else self.certs.ca_cert))
        env["SSL_CERT_FILE"] = trust
        env["CURL_CA_BUNDLE"] = trust
        env["NODE_EXTRA_CA_CERTS"] = trust
        env["OPENAI_API_KEY"] = api_key
        env["ANTHROPIC_API_KEY"] = anthropic_key
        env["GEMINI_API_KEY"] = gemini_key
        env["PYTHONUNBUFFERED"] = "1"
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.update(extra or {})
        return env

    def _sdk_cmd(self, mode: str, args: Mapping[str, Any] | None, script: Path = SDK_CLIENT) -> list[str]:
        return [str(self.client_python), str(script), mode, "--json-args", json.dumps(args or {})]

    def run_sdk(self, mode: str, args: Mapping[str, Any] | None = None, env: Mapping[str, str] | None = None,
                *, timeout: float = 60.0, script: Path = SDK_CLIENT) -> dict:
        """Run one SDK call in the client venv; returns sdk_client.py's JSON result.
        API errors do not raise: look at ``result["ok"]`` / ``result["error"]``.
        ``script``: another client program with the same protocol (``ANTHROPIC_CLIENT``, ``GENAI_CLIENT``)."""
        env = dict(env) if env is not None else self.client_env()
        cmd = self._sdk_cmd(mode, args, script)
        rec: dict[str, Any] = {"kind": "sdk", "mode": mode, "args": args, "cmd": cmd}
        self.client_runs.append(rec)
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                             start_new_session=True, stdin=subprocess.DEVNULL)
        res = ClientProc(p, f"{Path(script).stem} {mode}", rec).result(timeout)
        rec["result"] = res
        return res

    def run_anthropic(self, mode: str, args: Mapping[str, Any] | None = None,
                      env: Mapping[str, str] | None = None, *, timeout: float = 60.0) -> dict:
        """One anthropic-SDK call (``clients/anthropic_client.py``; its docstring has modes and fields)."""
        return self.run_sdk(mode, args, env, timeout=timeout, script=ANTHROPIC_CLIENT)

    def run_genai(self, mode: str, args: Mapping[str, Any] | None = None,
                  env: Mapping[str, str] | None = None, *, timeout: float = 60.0) -> dict:
        """One google-genai call (``clients/genai_client.py``; its docstring has modes and fields)."""
        return self.run_sdk(mode, args, env, timeout=timeout, script=GENAI_CLIENT)

    def run_sdk_batch(self, calls: Sequence[tuple[str, Mapping[str, Any] | None]],
                      env: Mapping[str, str] | None = None, *, timeout: float = 120.0,
                      script: Path = SDK_CLIENT, parallel: bool = False) -> list[dict]:
        """Several SDK calls, sequentially, in ONE client process (saves ~1 s of ``import openai``
        per call). Each call builds a fresh ``OpenAI()`` client. Returns one result per call.
        ``script`` as in ``run_sdk``; ``parallel`` (Anthropic and Gemini clients): all at once."""
        env = dict(env) if env is not None else self.client_env()
        spec = [{"mode": m, "args": dict(a or {})} for m, a in calls]
        cmd = [str(self.client_python), str(script), "parallel" if parallel else "batch", "--json-args", json.dumps(spec)]
        rec: dict[str, Any] = {"kind": "sdk-batch", "calls": spec, "cmd": cmd[:3]}
        self.client_runs.append(rec)
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                             start_new_session=True, stdin=subprocess.DEVNULL)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _killpg(p)
            out, err = p.communicate()
            rec.update(stdout=out, stderr=err, rc="timeout")
            raise HarnessError(f"sdk batch timed out after {timeout}s\n--- stderr\n{err[-4000:]}")
        rec.update(stdout=out, stderr=err, rc=p.returncode)
        results = []
        for line in out.splitlines():
            line = line.strip()
            if line.startswith("{"):
                results.append(json.loads(line))
        if len(results) != len(spec):
            raise HarnessError(f"sdk batch printed {len(results)} results for {len(spec)} calls (rc={p.returncode})"
                               f"\n--- stdout\n{out[-3000:]}\n--- stderr\n{err[-5000:]}")
        rec["result"] = results
        return results

    def start_sdk(self, mode: str, args: Mapping[str, Any] | None = None,
                  env: Mapping[str, str] | None = None, *, script: Path = SDK_CLIENT) -> ClientProc:
        """Start an SDK call in the background (e.g. concurrent streams); ``.result()`` joins it."""
        env = dict(env) if env is not None else self.client_env()
        cmd = self._sdk_cmd(mode, args, script)
        rec: dict[str, Any] = {"kind": "sdk-bg", "mode": mode, "args": args, "cmd": cmd}
        self.client_runs.append(rec)
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                             start_new_session=True, stdin=subprocess.DEVNULL)
        self._bg_clients.append(p)
        return ClientProc(p, f"{Path(script).stem} {mode} (bg)", rec)

    def run_curl(self, url: str, *, env: Mapping[str, str] | None = None, method: str | None = None,
                 headers: Mapping[str, str] | None = None, json_body: Any = None, data: str | bytes | None = None,
                 cacert: str | Path | None = None, stream: bool = True, extra_args: Sequence[str] = (),
                 timeout: float = 30.0) -> CurlResult:
        """Run ``curl -v`` (through ``HTTPS_PROXY`` from ``env``, default ``client_env()``).
        ``cacert`` overrides the trusted CA (default: ``CURL_CA_BUNDLE`` from env = mitmproxy CA)."""
        env = dict(env) if env is not None else self.client_env()
        d = self.workdir / self._name("curl")
        d.mkdir(parents=True, exist_ok=True)
        body_f, hdr_f = d / "body", d / "headers"
        cmd = ["curl", "-v", "-sS", "--max-time", str(int(timeout)), "-o", str(body_f), "-D", str(hdr_f),
               "-w", "%{json}", "--capath", str(d)]  # --capath: no system CA directory, only cacert
        if stream:
            cmd.append("-N")
        # curl ignores CURL_CA_BUNDLE once --capath is given, so pass the bundle explicitly.
        cacert = cacert if cacert is not None else env.get("CURL_CA_BUNDLE")
        if cacert is not None:
            cmd += ["--cacert", str(cacert)]
        if method:
            cmd += ["-X", method]
        hdrs = dict(headers or {})
        if json_body is not None:
            data = json.dumps(json_body)
            hdrs.setdefault("content-type", "application/json")
        for k, v in hdrs.items():
            cmd += ["-H", f"{k}: {v}"]
        if data is not None:
            data_f = d / "request-body"
            data_f.write_bytes(data.encode() if isinstance(data, str) else data)
            cmd += ["--data-binary", f"@{data_f}"]
        cmd += [str(a) for a in extra_args]
        cmd.append(url)
        rec: dict[str, Any] = {"kind": "curl", "cmd": cmd}
        self.client_runs.append(rec)
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout + 10,
                           stdin=subprocess.DEVNULL)
        try:
            meta = json.loads(r.stdout) if r.stdout.strip() else {}
        except ValueError:
            meta = {"raw": r.stdout}
        status, resp_headers = _parse_header_dump(hdr_f)
        if meta.get("http_code") is not None:  # curl's own view of the final response (0 = none)
            status = int(meta["http_code"]) or None
        body = body_f.read_bytes() if body_f.exists() else b""
        res = CurlResult(rc=r.returncode, status=status, headers=resp_headers, body=body, stderr=r.stderr,
                         meta=meta, cmd=cmd)
        rec.update(rc=r.returncode, status=status, stderr=r.stderr, body=body[:2000])
        return res

    # ---- coding agents (node CLIs from scripts/make_agent_clis.sh)
    @property
    def agent_clis(self) -> Path:
        if self._agent_clis is None:
            self._agent_clis = ensure_agent_clis()
        return self._agent_clis

    def agent_env(self, proxy: Proxy | None = None, *, home: str | Path | None = None,
                  extra: Mapping[str, str] | None = None, **client_env_kw: Any) -> dict[str, str]:
        """``client_env()`` plus what the agents need to run offline in a private home:
        ``HOME`` (and XDG dirs) = ``home`` (default a fresh dir under the work dir), Claude Code's
        switches for non-essential traffic, auto-update, telemetry and error reporting, and
        Gemini CLI's for telemetry and update checks (see ``write_gemini_settings``)."""
        env = self.client_env(proxy, **client_env_kw)
        h = Path(home) if home is not None else self.workdir / self._name("agent_home")
        h.mkdir(parents=True, exist_ok=True)
        env.update({
            "HOME": str(h), "XDG_CONFIG_HOME": str(h / ".config"), "XDG_CACHE_HOME": str(h / ".cache"),
            "XDG_DATA_HOME": str(h / ".local" / "share"), "XDG_STATE_HOME": str(h / ".local" / "state"),
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_AUTOUPDATER": "1",
            "DISABLE_TELEMETRY": "1", "DISABLE_ERROR_REPORTING": "1", "DISABLE_BUG_COMMAND": "1",
            "CLAUDE_CODE_DISABLE_TERMINAL_TITLE": "1", "CI": "1", "NO_COLOR": "1", "TERM": "dumb",
            "GEMINI_TELEMETRY_ENABLED": "false", "GEMINI_CLI_TRUST_WORKSPACE": "true", "GEMINI_CLI_NO_RELAUNCH": "true", "NO_BROWSER": "true",
        })
        write_gemini_settings(h)
        env.update(extra or {})
        return env

    def _run_agent(self, name: str, binary: str, args: Sequence[str], env: Mapping[str, str] | None,
                   timeout: float, cwd: Path | None) -> AgentResult:
        env = dict(env) if env is not None else self.agent_env()
        home = Path(env.get("HOME", str(self.workdir)))
        cmd = [str(self.agent_clis / "node_modules" / ".bin" / binary), *args]
        wd = cwd or (self.workdir / self._name(f"{name}_cwd"))
        wd.mkdir(parents=True, exist_ok=True)
        rec: dict[str, Any] = {"kind": name, "cmd": cmd}
        self.client_runs.append(rec)
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=wd,
                             start_new_session=True, stdin=subprocess.DEVNULL)
        try:
            out, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            _killpg(p)
            out, err = p.communicate()
            rec.update(stdout=out, stderr=err, rc="timeout")
            raise HarnessError(f"{name} timed out after {timeout}s\n--- stdout\n{out[-3000:]}\n"
                               f"--- stderr\n{err[-4000:]}")
        rec.update(stdout=out, stderr=err, rc=p.returncode)
        return AgentResult(p.returncode, out, err, cmd, home)

    def run_claude(self, prompt: str, env: Mapping[str, str] | None = None, *, args: Sequence[str] = (),
                   timeout: float = 120.0, cwd: Path | None = None) -> AgentResult:
        """``claude -p PROMPT [args]`` (Claude Code, API-key mode) with ``agent_env()`` by default.
        ``args`` e.g. ``("--output-format", "json")`` or ``("--model", "claude-sonnet-4-5")``."""
        return self._run_agent("claude", "claude", ["-p", prompt, *args], env, timeout, cwd)

    def run_gemini(self, prompt: str, env: Mapping[str, str] | None = None, *, args: Sequence[str] = (),
                   timeout: float = 120.0, cwd: Path | None = None) -> AgentResult:
        """``gemini -p PROMPT [args]`` (Gemini CLI, ``GEMINI_API_KEY`` auth) with ``agent_env()``."""
        return self._run_agent("gemini", "gemini", ["-p", prompt, *args], env, timeout, cwd)

    def run_cli(self, home: str | Path, *args: str, stdin: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        """``pouch --home HOME ARGS`` with pouch's own python; ``check``: fail on a non-zero exit."""
        cmd = [sys.executable, "-m", "pouch_addon.cli", *args, "--home", str(home)]
        r = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=60,
                           env={**_proxy_env(), "POUCH_VAULT_PASSPHRASE": ""})
        self.client_runs.append({"kind": "cli", "cmd": cmd, "stdout": r.stdout, "stderr": r.stderr, "rc": r.returncode})
        if check and r.returncode != 0:
            raise HarnessError(f"pouch {' '.join(args)} failed ({r.returncode}): {r.stderr[-2000:]}")
        return r

    # ---- teardown / diagnostics
    def stop(self) -> None:
        for p in self._bg_clients:
            if p.poll() is None:
                _killpg(p)
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    pass
        for proc in reversed(self.procs):
            proc.stop()

    def logs(self) -> str:
        parts = [f"e2e work dir: {self.workdir}"]
        for proc in self.procs:
            parts.append(proc.describe())
        for fake in self.fakes:
            parts.append(fake.tail())
        for rec in self.client_runs[-6:]:
            r = {k: v for k, v in rec.items() if k not in ("stderr",) and not (k == "stdout" and "result" in rec)}
            parts.append(f"=== client run {json.dumps(r, default=repr)[:3000]}\n--- stderr\n"
                         f"{str(rec.get('stderr', ''))[-3000:]}")
        return "\n".join(parts)

    def __enter__(self) -> "Harness":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def write_gemini_settings(home: Path) -> Path:
    """``~/.gemini/settings.json`` for an offline Gemini CLI: API-key auth chosen (no prompt),
    no usage statistics, telemetry, update checks or IDE integration."""
    d = home / ".gemini"
    d.mkdir(parents=True, exist_ok=True)
    p = d / "settings.json"
    p.write_text(json.dumps(GEMINI_SETTINGS, indent=2))
    return p


GEMINI_SETTINGS: dict[str, Any] = {
    "security": {"auth": {"selectedType": "gemini-api-key"}},
    "privacy": {"usageStatisticsEnabled": False},
    "telemetry": {"enabled": False},
    "general": {"disableAutoUpdate": True, "disableUpdateNag": True, "enableAutoUpdate": False,
                "enableAutoUpdateNotification": False},
    "ide": {"enabled": False},
}


def _parse_header_dump(path: Path) -> tuple[int | None, dict[str, str]]:
    """Status and headers of the *last* response in a ``curl -D`` dump (skips CONNECT and 1xx)."""
    if not path.exists():
        return None, {}
    blocks = [b for b in path.read_text("latin-1").replace("\r\n", "\n").split("\n\n") if b.strip()]
    status, headers = None, {}
    for b in blocks:
        lines = b.strip().split("\n")
        if not lines[0].startswith("HTTP/"):
            continue
        try:
            code = int(lines[0].split()[1])
        except (IndexError, ValueError):
            continue
        if 100 <= code < 200 or "connection established" in lines[0].lower():
            continue
        h: dict[str, str] = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            h[k.strip().lower()] = v.strip()
        status, headers = code, h
    return status, headers
