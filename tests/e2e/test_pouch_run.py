"""`pouch run` and `eval "$(pouch env)"` with real apps: Node (the `openai` npm SDK, fetch, https)
and the Python SDK, through a real mitmdump with pouch and the fake provider.

The Node SDK is installed from the npm registry at a pinned version into ``.cache/`` (git-ignored),
once; this needs the network the first time (``npm install``).
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from decimal import Decimal as D
from pathlib import Path

import pytest

from harness import REPO, wait_until
from pouch_addon.budget import Ledger

OPENAI_NPM = "6.49.0"  # the last openai major that runs on Node 20 (7.x needs Node >= 22)
NODE_APP = Path(__file__).resolve().parent / "clients" / "node_app.mjs"
POUCH = [sys.executable, "-m", "pouch_addon.cli"]
FAKE = {"x-fake-prompt-tokens": "10", "x-fake-chunks": "2"}
CHAT_COST = D(10) * D("0.15") / 10**6 + D(2) * D("0.6") / 10**6  # gpt-4o-mini, 10 in / 2 out
SCRUB = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "SSL_CERT_FILE", "CURL_CA_BUNDLE",
         "REQUESTS_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "NODE_OPTIONS", "NODE_USE_ENV_PROXY")


@pytest.fixture(scope="session")
def node_modules() -> Path:
    """node_modules holding the pinned `openai` npm package (installed once into .cache/)."""
    node, npm = shutil.which("node"), shutil.which("npm")
    if not node or not npm:
        pytest.fail("these tests need node and npm on PATH", pytrace=False)
    prefix = REPO / ".cache" / f"node-openai-{OPENAI_NPM}"
    pkg = prefix / "node_modules" / "openai" / "package.json"
    if not pkg.exists() or json.loads(pkg.read_text())["version"] != OPENAI_NPM:
        prefix.mkdir(parents=True, exist_ok=True)
        r = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--no-save", "--prefix", str(prefix),
                            f"openai@{OPENAI_NPM}"], capture_output=True, text=True, timeout=600)
        if r.returncode != 0 or not pkg.exists():
            pytest.fail(f"npm install openai@{OPENAI_NPM} failed (rc={r.returncode}):\n{r.stdout[-2000:]}\n"
                        f"{r.stderr[-3000:]}", pytrace=False)
    return prefix / "node_modules"


def started(e2e, home: Path, budget: D):
    """A pouch proxy on ``home`` whose CA is the one `pouch env` hands out for that home."""
    Ledger(home).set_budget(budget)
    proxy = e2e.start_proxy(home, {})
    (home / "mitmproxy").mkdir(mode=0o700, exist_ok=True)
    shutil.copy(proxy.ca, home / "mitmproxy" / "mitmproxy-ca-cert.pem")
    return proxy


def app_env(e2e, proxy, home: Path, node_modules: Path | None = None) -> dict[str, str]:
    """An app's environment before pouch touches it: no proxy, no CA settings."""
    env = {k: v for k, v in e2e.client_env(proxy).items() if k not in SCRUB}
    env["POUCH_HOME"] = str(home)
    if node_modules is not None:
        env["POUCH_TEST_NODE_MODULES"] = str(node_modules)
    return env


def result(r: subprocess.CompletedProcess) -> dict:
    for line in reversed(r.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError(f"no JSON result (rc={r.returncode})\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")


def pouch_run(env, proxy, *cmd: str, wallet: str | None = None) -> subprocess.CompletedProcess:
    extra = ["--wallet", wallet] if wallet else []
    return subprocess.run([*POUCH, "run", "--listen", f"127.0.0.1:{proxy.port}", *extra, "--", *cmd], env=env,
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)


def after_eval(env, proxy, *cmd: str, wallet: str | None = None) -> subprocess.CompletedProcess:
    """Run ``cmd`` in a shell after `eval "$(pouch env ...)"`, as the README says."""
    extra = ["--wallet", wallet] if wallet else []
    line = shlex.join([*POUCH, "env", "--listen", f"127.0.0.1:{proxy.port}", *extra])
    script = f'eval "$({line})" || exit 97; exec {shlex.join(cmd)}'
    return subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def node(mode: str, headers: dict | None = None) -> list[str]:
    return ["node", str(NODE_APP), mode, json.dumps({"headers": {**FAKE, **(headers or {})}})]


def settled(home: Path, n: int) -> list[dict]:
    return wait_until(lambda: (h := Ledger(home).history(kinds=("settle",))) and len(h) >= n and h, 10,
                      f"{n} settled calls")


NODE_MODES = ("sdk", "fetch", "https", "https_agent", "tls")


def test_node_sdk_fetch_and_https_under_pouch_run_are_budgeted(e2e, fake, tmp_path, node_modules):
    home = tmp_path / "home"
    proxy = started(e2e, home, D(1))
    env = app_env(e2e, proxy, home, node_modules)
    for i, mode in enumerate(NODE_MODES, start=1):
        r = result(pouch_run(env, proxy, *node(mode)))
        assert r["ok"] and r["status"] == 200, r
        assert len(fake.requests("/v1/chat/completions")) == i  # the fake saw it, through pouch
        entry = settled(home, i)[0]
        assert (entry["model"], D(entry["cost"])) == ("gpt-4o-mini", CHAT_COST)
    assert Ledger(home).status().spent == len(NODE_MODES) * CHAT_COST
    Ledger(home).set_budget(D(0))
    for mode in NODE_MODES:
        r = result(pouch_run(env, proxy, *node(mode)))
        assert r["status"] == 402 and not r["ok"], r
        assert "budget" in json.dumps(r["error"])
    assert len(fake.requests("/v1/chat/completions")) == len(NODE_MODES)  # nothing more reached the provider


def test_node_http2_under_pouch_run_goes_to_the_proxy_never_around_it(e2e, fake, tmp_path, node_modules):
    """``node:http2`` opens its TLS with ``tls.connect``, which the preload tunnels through the
    proxy. The call then fails there (the provider's fake, like ``pouch proxy`` with
    ``http2=false``, negotiates no h2), but it never leaves past the gate: before the preload
    covered ``tls.connect`` it went to api.openai.com itself (``ENOTFOUND`` on this offline machine;
    on a real one, OpenAI unbudgeted)."""
    home = tmp_path / "home"
    proxy = started(e2e, home, D(1))
    env = app_env(e2e, proxy, home, node_modules)
    r = result(pouch_run(env, proxy, *node("http2")))
    assert not r["ok"] and "ENOTFOUND" not in json.dumps(r), r
    assert fake.requests("/v1/chat/completions") == [] and Ledger(home).status().spent == 0


def test_node_fetch_after_eval_pouch_env_is_budgeted(e2e, fake, tmp_path, node_modules):
    home = tmp_path / "home"
    proxy = started(e2e, home, D(1))
    env = app_env(e2e, proxy, home, node_modules)
    r = result(after_eval(env, proxy, *node("sdk")))
    assert r["ok"], r
    assert len(fake.requests("/v1/chat/completions")) == 1
    Ledger(home).set_budget(D(0))
    r = result(after_eval(env, proxy, *node("fetch")))
    assert r["status"] == 402, r
    assert len(fake.requests("/v1/chat/completions")) == 1


def test_eval_pouch_env_wallet_charges_the_wallet_and_enforces_its_limits(e2e, fake, tmp_path, node_modules):
    home = tmp_path / "home"
    proxy = started(e2e, home, D(1))
    env = app_env(e2e, proxy, home, node_modules)
    for name, args in (("app", ["--budget", "1", "--rpm", "1"]), ("broke", ["--budget", "0"]),
                       ("nodeapp", ["--budget", "1"])):
        r = subprocess.run([*POUCH, "wallet", "add", name, *args, "--secret"], env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    sdk = [str(e2e.client_python), str(REPO / "tests" / "e2e" / "clients" / "sdk_client.py")]
    call = {"mode": "chat", "args": {"max_tokens": 5, "extra_headers": FAKE, "client": {"max_retries": 0}}}
    env["https_proxy"] = proxy.url  # left by an earlier plain `eval "$(pouch env)"`: the wallet's must win
    r = after_eval(env, proxy, *sdk, "batch", "--json-args", json.dumps([call, call]), wallet="app")
    first, second = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    assert first["ok"], first
    assert second["error"]["status_code"] == 429  # app's rpm of 1 holds
    [entry] = settled(home, 1)
    assert (entry["wallet"], entry["via"]) == ("app", "proxy_auth")
    r = json.loads(after_eval(env, proxy, *sdk, "chat", "--json-args", json.dumps(call["args"]),
                              wallet="broke").stdout)
    assert r["error"]["status_code"] == 402 and "wallet 'broke'" in r["error"]["message"]
    r = result(after_eval(env, proxy, *node("fetch"), wallet="nodeapp"))
    assert r["ok"], r
    entry = settled(home, 2)[0]
    assert (entry["wallet"], entry["via"]) == ("nodeapp", "proxy_auth")
    assert [w.name for w in Ledger(home).wallets() if w.spent] == ["app", "nodeapp"]
    assert len(fake.requests("/v1/chat/completions")) == 2


def test_pouch_run_with_an_unknown_wallet_runs_nothing(e2e, fake, tmp_path):
    home = tmp_path / "home"
    proxy = started(e2e, home, D(1))
    env = app_env(e2e, proxy, home)
    marker = tmp_path / "ran"
    r = pouch_run(env, proxy, sys.executable, "-c", f"open({str(marker)!r}, 'w')", wallet="typo")
    assert r.returncode != 0 and "no wallet 'typo'" in r.stderr
    assert not marker.exists()
