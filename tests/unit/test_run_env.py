"""`pouch env` and `pouch run`: the variables they set, the CA bundle, and wallets (subprocesses, a temp home)."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from decimal import Decimal as D
from pathlib import Path

import pytest

from pouch_addon.budget import Ledger

CERT_BEGIN = "-----BEGIN CERTIFICATE-----"
PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "NODE_OPTIONS", "NODE_USE_ENV_PROXY",
              "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS", "SSL_CERT_DIR")


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in PROXY_VARS}
    env["POUCH_HOME"] = str(home)
    env.update(extra)
    return env


def pouch(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pouch_addon.cli", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def exports(out: str) -> dict[str, str]:
    """The variables of `pouch env`'s sh output, as a shell would set them."""
    values = {}
    for line in out.splitlines():
        assert line.startswith("export "), line
        key, _, value = line.removeprefix("export ").partition("=")
        [values[key]] = shlex.split(value)
    return values


def evaluated(env: dict[str, str], *args: str) -> dict[str, str]:
    """The environment after `eval "$(pouch env ARGS)"` in a real shell started with ``env``."""
    script = f'eval "$({shlex.join([sys.executable, "-m", "pouch_addon.cli", "env", *args])})" && env -0'
    r = subprocess.run(["bash", "-c", script], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    return dict(item.split("=", 1) for item in r.stdout.split("\0") if "=" in item)


def test_repeated_eval_does_not_grow_the_ca_bundle(tmp_path):
    env = clean_env(tmp_path)
    counts = []
    for _ in range(3):
        env = evaluated(env)
        bundle = Path(env["SSL_CERT_FILE"])
        counts.append(bundle.read_text().count(CERT_BEGIN))
    assert counts[0] == counts[1] == counts[2]
    ca = (tmp_path / "mitmproxy" / "mitmproxy-ca-cert.pem").read_text().strip()
    assert bundle.read_text().count(ca) == 1
    assert not list(tmp_path.glob("*.tmp"))  # written atomically, nothing left behind


def test_the_bundle_is_the_system_cas_plus_pouchs_ca_whatever_ssl_cert_file_says(tmp_path):
    other = tmp_path / "other.pem"
    other.write_text("not a CA file\n")  # must not end up in the bundle
    first = exports(pouch(clean_env(tmp_path / "h"), "env").stdout)["SSL_CERT_FILE"]
    content = Path(first).read_text()
    again = exports(pouch(clean_env(tmp_path / "h", SSL_CERT_FILE=str(other)), "env").stdout)["SSL_CERT_FILE"]
    assert again == first and Path(again).read_text() == content


def test_env_sets_both_cases_and_the_node_variables(tmp_path):
    out = exports(pouch(clean_env(tmp_path), "env", "--listen", "127.0.0.1:9999").stdout)
    assert out["HTTPS_PROXY"] == out["https_proxy"] == "http://127.0.0.1:9999"
    # plain http too: local model servers (Ollama on http://localhost:11434) are metered at $0
    assert out["HTTP_PROXY"] == out["http_proxy"] == "http://127.0.0.1:9999"
    assert "NO_PROXY" not in out and "no_proxy" not in out
    assert out["NODE_USE_ENV_PROXY"] == "1"
    preload = shlex.split(out["NODE_OPTIONS"])
    assert preload[0] == "--require" and Path(preload[1]).name == "preload.cjs" and Path(preload[1]).is_file()
    assert out["NODE_EXTRA_CA_CERTS"].endswith("mitmproxy-ca-cert.pem")


def test_an_http_proxy_already_set_is_pointed_at_pouch_too(tmp_path):
    env = clean_env(tmp_path, http_proxy="http://corporate:3128")
    out = exports(pouch(env, "env", "--listen", "127.0.0.1:9999").stdout)
    assert out["HTTP_PROXY"] == out["http_proxy"] == "http://127.0.0.1:9999"


def test_env_takes_loopback_out_of_no_proxy_so_local_models_are_metered(tmp_path):
    env = clean_env(tmp_path, NO_PROXY="localhost,127.0.0.1,internal.example,::1", no_proxy="localhost")
    out = exports(pouch(env, "env", "--listen", "127.0.0.1:9999").stdout)
    assert out["NO_PROXY"] == "internal.example" and out["no_proxy"] == ""
    assert out["HTTP_PROXY"] == "http://127.0.0.1:9999"


def test_node_options_keep_the_users_own_and_do_not_repeat_the_preload(tmp_path):
    env = clean_env(tmp_path, NODE_OPTIONS="--max-old-space-size=256")
    for _ in range(3):
        env = evaluated(env)
    opts = shlex.split(env["NODE_OPTIONS"])
    assert opts.count("--require") == 1 and "--max-old-space-size=256" in opts


def test_env_and_run_for_a_wallet_with_a_secret(tmp_path):
    env = clean_env(tmp_path)
    assert pouch(env, "budget", "set", "1").returncode == 0
    r = pouch(env, "wallet", "add", "notebook", "--budget", "1", "--secret")
    secret = r.stdout.split("(shown once): ")[1].split()[0]
    url = f"http://notebook:{secret}@127.0.0.1:8080"
    after = evaluated({**env, "https_proxy": "http://127.0.0.1:8080", "http_proxy": "http://127.0.0.1:8080"},
                      "--wallet", "notebook")
    assert after["HTTPS_PROXY"] == after["https_proxy"] == after["HTTP_PROXY"] == after["http_proxy"] == url
    r = pouch(env, "run", "--no-check", "--wallet", "notebook", "--", sys.executable, "-c",
              "import os; print(os.environ['https_proxy'], os.environ['HTTPS_PROXY'])")
    assert r.returncode == 0 and r.stdout.split() == [url, url]
    assert secret not in (tmp_path / "state.json").read_text()
    assert oct((tmp_path / "wallet-secrets.json").stat().st_mode & 0o777) == "0o600"


def test_a_wallet_without_a_secret_is_named_as_a_label(tmp_path):
    env = clean_env(tmp_path)
    Ledger(tmp_path).add_wallet("batch", D(1))
    out = exports(pouch(env, "env", "--wallet", "batch").stdout)
    assert out["HTTPS_PROXY"] == out["https_proxy"] == "http://batch:-@127.0.0.1:8080"


@pytest.mark.parametrize("setup,message", [
    ("none", "no wallet 'ghost'"),
    ("hash-only", "wallet 'ghost' requires a proxy secret"),
    ("stale", "wallet 'ghost' requires a proxy secret"),
])
def test_a_named_wallet_that_cannot_be_used_fails_loudly_and_runs_nothing(tmp_path, setup, message):
    env = clean_env(tmp_path)
    if setup != "none":
        Ledger(tmp_path).add_wallet("ghost", D(1), secret_hash="0" * 64)  # e.g. made before secrets were kept
    if setup == "stale":
        (tmp_path / "wallet-secrets.json").write_text('{"ghost": "not-the-secret"}')
    r = pouch(env, "env", "--wallet", "ghost")
    assert r.returncode != 0 and message in r.stderr and "export" not in r.stdout
    marker = tmp_path / "ran"
    r = pouch(env, "run", "--no-check", "--wallet", "ghost", "--", sys.executable, "-c", f"open({str(marker)!r}, 'w')")
    assert r.returncode != 0 and message in r.stderr
    assert not marker.exists()


def test_a_new_secret_replaces_the_kept_one_and_no_secret_or_rm_forgets_it(tmp_path):
    env = clean_env(tmp_path)
    first = pouch(env, "wallet", "add", "app", "--budget", "1", "--secret").stdout.split("(shown once): ")[1].split()[0]
    second = pouch(env, "wallet", "set", "app", "--secret").stdout.split("(shown once): ")[1].split()[0]
    assert first != second
    assert exports(pouch(env, "env", "--wallet", "app").stdout)["HTTPS_PROXY"] == f"http://app:{second}@127.0.0.1:8080"
    assert pouch(env, "wallet", "set", "app", "--no-secret").returncode == 0
    assert second not in (tmp_path / "wallet-secrets.json").read_text()
    assert exports(pouch(env, "env", "--wallet", "app").stdout)["HTTPS_PROXY"] == "http://app:-@127.0.0.1:8080"
    pouch(env, "wallet", "set", "app", "--secret")
    assert pouch(env, "wallet", "rm", "app").returncode == 0
    assert "app" not in (tmp_path / "wallet-secrets.json").read_text()


def test_node_options_quote_paths_with_spaces_and_drop_any_older_pouch_preload():
    from pouch_addon.runtime import node_options

    got = node_options('--require /old/site/pouch_addon/node/preload.cjs --inspect "--title=a b"',
                       Path("/opt/my apps/pouch_addon/node/preload.cjs"))
    assert got == '--require "/opt/my apps/pouch_addon/node/preload.cjs" --inspect "--title=a b"'
    assert node_options(None, Path("/p/node/preload.cjs")) == "--require /p/node/preload.cjs"
    # a preload of the user's own that merely has the same file name stays
    assert node_options("-r /app/node/preload.cjs", Path("/p/pouch_addon/node/preload.cjs")) == \
        "--require /p/pouch_addon/node/preload.cjs -r /app/node/preload.cjs"


def test_proxy_url_quotes_the_wallet_credentials():
    from pouch_addon.runtime import proxy_url

    assert proxy_url("127.0.0.1:8080") == "http://127.0.0.1:8080"
    assert proxy_url("127.0.0.1:8080", "a@b", "x/y:z") == "http://a%40b:x%2Fy%3Az@127.0.0.1:8080"
    assert proxy_url("127.0.0.1:8080", "app", None) == "http://app:-@127.0.0.1:8080"


def test_bundle_text_is_the_system_pem_then_pouchs_ca():
    from pouch_addon.runtime import bundle_text

    assert bundle_text("A\n\n", "B\n") == "A\nB\n" == bundle_text("A", "B")
    assert bundle_text(None, "B") == bundle_text("  \n", "B") == "B\n"
