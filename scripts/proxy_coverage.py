"""Which runtimes each way of pointing an app at pouch really covers (the README's table).

Starts the e2e pieces (a real mitmdump with pouch, the fake api.openai.com over TLS; loopback
only), then makes one chat call with each client under each environment and prints a Markdown
table. A call counts as budgeted only when pouch settled it (ledger) and the fake saw it; a
client that ignores the proxy fails at the DNS lookup of api.openai.com (there is no network).

    .venv/bin/python scripts/proxy_coverage.py --py-clients /tmp/pyclients/bin/python

``--py-clients``: a python with httpx, requests and aiohttp (e.g. a scratch venv; the README's
table was measured with ``pip install httpx==0.29.0 requests==2.34.2 aiohttp==3.14.5``). The openai
SDKs come from the e2e client venv ($POUCH_CLIENT_VENV) and the npm package the e2e tests
install into .cache/. Go's column needs ``go`` on PATH; missing tools are reported, not guessed.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from decimal import Decimal as D
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "tests" / "e2e")]

from harness import Harness, HarnessError, ensure_client_venv, wait_until  # noqa: E402
from pouch_addon import runtime  # noqa: E402
from pouch_addon.budget import Ledger  # noqa: E402

URL = "https://api.openai.com/v1/chat/completions"
HEADERS = {"x-fake-prompt-tokens": "10", "x-fake-chunks": "2", "authorization": "Bearer sk-test",
           "content-type": "application/json"}
BODY = {"model": "gpt-4o-mini", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
NODE_MODULES = REPO / ".cache" / "node-openai-6.49.0" / "node_modules"
NODE_APP = REPO / "tests" / "e2e" / "clients" / "node_app.mjs"

PY = f"""
import json, sys
url, headers, body = {URL!r}, {HEADERS!r}, {BODY!r}
lib = sys.argv[1]
if lib == "httpx":
    import httpx; r = httpx.post(url, headers=headers, json=body); print(r.status_code)
elif lib == "requests":
    import requests; r = requests.post(url, headers=headers, json=body); print(r.status_code)
else:
    import asyncio, aiohttp
    async def main():
        async with aiohttp.ClientSession(trust_env=lib == "aiohttp-trust-env") as s:
            async with s.post(url, headers=headers, json=body) as r:
                print(r.status)
    asyncio.run(main())
"""

GO = f"""package main

import ("fmt"; "net/http"; "os"; "strings")

func main() {{
	req, _ := http.NewRequest("POST", "{URL}", strings.NewReader(`{json.dumps(BODY)}`))
	for k, v := range map[string]string{json.dumps(HEADERS)} {{ req.Header.Set(k, v) }}
	r, err := http.DefaultClient.Do(req)
	if err != nil {{ fmt.Println(err); os.Exit(1) }}
	fmt.Println(r.StatusCode)
}}
"""


def clients(py: str | None, sdk_py: Path, work: Path) -> dict[str, list[str] | str]:
    """label -> command, or the reason it cannot run here."""
    out: dict[str, list[str] | str] = {}
    (work / "client.py").write_text(PY)
    for lib in ("httpx", "requests", "aiohttp", "aiohttp-trust-env"):
        label = {"aiohttp": "Python aiohttp (default session)",
                 "aiohttp-trust-env": "Python aiohttp (`trust_env=True`)"}.get(lib, f"Python {lib}")
        out[label] = [py, str(work / "client.py"), lib] if py else "no --py-clients python"
    sdk = REPO / "tests" / "e2e" / "clients" / "sdk_client.py"
    out["Python openai SDK"] = [str(sdk_py), str(sdk), "chat", "--json-args",
                                json.dumps({"max_tokens": 5, "extra_headers": HEADERS, "client": {"max_retries": 0}})]
    node_ok = shutil.which("node") and NODE_MODULES.exists()
    for mode, label in (("fetch", "fetch"), ("https", "`https` module"), ("sdk", "openai npm SDK 6.49.0")):
        version = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip() if node_ok else ""
        out[f"Node {version} {label}"] = (["node", str(NODE_APP), mode, json.dumps({"headers": HEADERS})] if node_ok
                                          else "node or .cache/node-openai-6.49.0 missing (run tests/e2e/test_pouch_run.py)")
    out["curl"] = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", *sum(
        (["-H", f"{k}: {v}"] for k, v in HEADERS.items()), []), "--data", json.dumps(BODY), URL]
    if shutil.which("go"):
        (work / "main.go").write_text(GO)
        version = subprocess.run(["go", "version"], capture_output=True, text=True).stdout.split()[2]
        out[f"Go {version.removeprefix('go')} net/http"] = ["go", "run", str(work / "main.go")]
    else:
        out["Go net/http"] = "go not on PATH"
    return out


def attempt(cmd: list[str], env: dict[str, str], home: Path, fake, wallet: str | None) -> str:
    before_ledger = len(Ledger(home).history(kinds=("settle",)))
    before_fake = len(fake.requests("/v1/chat/completions"))
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    reached = len(fake.requests("/v1/chat/completions")) > before_fake
    try:  # the proxy settles after the client has its answer
        settled = wait_until(lambda: (h := Ledger(home).history(kinds=("settle",))) and len(h) > before_ledger and h,
                             10 if reached else 1, "settle")
    except HarnessError:
        settled = []
    if settled and reached:
        charged = settled[0].get("wallet")
        if wallet is None:
            return "budgeted"
        return "budgeted, charged to the wallet" if charged == wallet else f"budgeted, but charged to `{charged}`"
    if reached:
        return "REACHED THE PROVIDER UNBUDGETED"
    text = (r.stdout + r.stderr).lower()
    for needle, what in (("getaddrinfo", "ignored the proxy (DNS lookup of api.openai.com)"),
                         ("enotfound", "ignored the proxy (DNS lookup of api.openai.com)"),
                         ("eai_again", "ignored the proxy (DNS lookup of api.openai.com)"),
                         ("name or service not known", "ignored the proxy (DNS lookup of api.openai.com)"),
                         ("temporary failure in name resolution", "ignored the proxy (DNS lookup of api.openai.com)"),
                         ("no such host", "ignored the proxy (DNS lookup of api.openai.com)"),
                         ("could not resolve host", "ignored the proxy (DNS lookup of api.openai.com)"),
                         ("certificate", "TLS: pouch's CA not trusted"),
                         ("connection error", "connection error (no proxy used)")):
        if needle in text:
            return what
    return f"failed: {(r.stdout + r.stderr).strip()[-160:]!r}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--py-clients", help="a python with httpx, requests and aiohttp")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="pouch-coverage-"))
    h = Harness(work, client_python=ensure_client_venv())
    try:
        fake = h.start_fake()
        home = work / "home"
        Ledger(home).set_budget(D(1))
        Ledger(home).add_wallet("app", D(1))
        proxy = h.start_proxy(home, {})
        (home / "mitmproxy").mkdir(mode=0o700, exist_ok=True)
        shutil.copy(proxy.ca, home / "mitmproxy" / "mitmproxy-ca-cert.pem")
        base = {k: v for k, v in h.client_env(proxy).items()
                if k not in ("HTTPS_PROXY", "https_proxy", "SSL_CERT_FILE", "CURL_CA_BUNDLE")}
        base.update(OPENAI_API_KEY="sk-test", POUCH_TEST_NODE_MODULES=str(NODE_MODULES),
                    GOCACHE=str(work / "gocache"), GOPATH=str(work / "gopath"), GOFLAGS="-mod=mod")
        listen = f"127.0.0.1:{proxy.port}"
        now = runtime.proxy_env(home, listen, environ=base)
        old = {k: now[k] for k in ("HTTPS_PROXY", "https_proxy", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE",
                                   "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS")}
        wallet = runtime.proxy_env(home, listen, wallet="app", environ=base)
        columns = [("HTTPS_PROXY + CA bundle only", old, None), ("`pouch run` / `pouch env`", now, None),
                   ("`pouch run --wallet app`", wallet, "app")]
        print("| client | " + " | ".join(c[0] for c in columns) + " |")
        print("|---" * (len(columns) + 1) + "|")
        for label, cmd in clients(args.py_clients, h.client_python, work).items():
            if isinstance(cmd, str):
                print(f"| {label} | " + " | ".join(f"not measured: {cmd}" for _ in columns) + " |")
                continue
            cells = [attempt(cmd, {**base, **env}, home, fake, w) for _, env, w in columns]
            print(f"| {label} | " + " | ".join(cells) + " |", flush=True)
    finally:
        h.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
