"""Commands that start things: ``pouch proxy``, ``pouch env``, ``pouch run`` and ``pouch tui``.

Trusting mitmproxy's CA is the step every user trips on, so ``pouch env`` writes one CA bundle
(the system CAs + pouch's mitmproxy CA, created on first use) and prints the variables each
runtime reads; ``pouch run -- CMD`` runs a command with them. Both set the proxy in upper and
lower case (clients differ in which they read first), and for Node, which ignores the proxy
variables before 22.21/24.5, ``NODE_USE_ENV_PROXY=1`` plus a preload (``node/preload.cjs``) that
tunnels fetch and ``https`` through the proxy. ``--wallet APP`` puts the wallet's name and kept
secret in the proxy URL, or fails before anything runs.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import ssl
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .home import resolve_home
from .where import SCRIPT

DEFAULT_LISTEN = "127.0.0.1:8080"
CA_NAME = "mitmproxy-ca-cert.pem"
BUNDLE_NAME = "ca-bundle.pem"
NODE_PRELOAD = Path(__file__).resolve().parent / "node" / "preload.cjs"
PRELOAD_TAIL = ("pouch_addon", "node", "preload.cjs")  # how a pouch preload path ends, whatever the install
# Where distributions keep their CA bundle. Not ssl's ``cafile``: that follows $SSL_CERT_FILE,
# which after `eval "$(pouch env)"` is pouch's own bundle.
SYSTEM_CA_FILES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt",
                   "/etc/ssl/ca-bundle.pem", "/etc/ssl/cert.pem", "/usr/local/etc/openssl/cert.pem")


class RunError(Exception):
    """``pouch env`` / ``pouch run`` cannot set up what was asked: nothing is printed or run."""


def confdir(home: Path) -> Path:
    return home / "mitmproxy"


def default_listen() -> str:
    """``$POUCH_LISTEN`` (like ``$POUCH_HOME``, for every command at once), else 127.0.0.1:8080."""
    return os.environ.get("POUCH_LISTEN") or DEFAULT_LISTEN


def parse_listen(text: str) -> str:
    """``HOST:PORT``, ``PORT`` (on 127.0.0.1) or ``HOST`` (port 8080) -> ``HOST:PORT``."""
    text = text.strip()
    if text.isdigit():
        host, port = "127.0.0.1", text
    elif text.startswith("[") and "]" in text:  # [::1]:8080
        end = text.index("]")
        host, port = text[:end + 1], text[end + 2:] if text[end + 1:end + 2] == ":" else "8080"
    elif ":" in text:
        host, _, port = text.rpartition(":")
    else:
        host, port = text, "8080"
    host = host or "127.0.0.1"
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--listen {text!r}: expected HOST:PORT, PORT or HOST (e.g. 127.0.0.1:8080)")
    return f"{host}:{int(port)}"


def _listen_arg(text: str) -> str:
    try:
        return parse_listen(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _user_options(extra: list[str]) -> dict[str, str | None]:
    """The mitmproxy options the user's arguments set, with their last value where one is seen:
    ``--set k=v``, ``--k v``/``--k=v``, ``--no-k``, ``-p N``."""
    out: dict[str, str | None] = {}
    for i, a in enumerate(extra):
        nxt = extra[i + 1] if i + 1 < len(extra) else None
        if a == "--set" and nxt:
            k, _, v = nxt.partition("=")
            out[k] = v
        elif a.startswith("--set="):
            k, _, v = a[6:].partition("=")
            out[k] = v
        elif a == "-p":
            out["listen_port"] = nxt
        elif a.startswith("--") and len(a) > 2:
            name, eq, v = a[2:].partition("=")
            name = name.removeprefix("no-").replace("-", "_")
            out[name] = v if eq else (nxt if nxt and not nxt.startswith("-") else None)
    return out


def mitmdump_argv(home: Path, listen: str, extra: list[str]) -> tuple[list[str], str]:
    """mitmdump with pouch's addon and safe defaults, and the address it will listen on.
    A default the user's own arguments set is left out, so theirs wins (mitmdump refuses two
    values for one option)."""
    exe = shutil.which("mitmdump", path=str(Path(sys.executable).parent)) or shutil.which("mitmdump")
    if exe is None:
        raise SystemExit("pouch: mitmdump not found; install pouch with its dependencies (pip install pouch)")
    user = _user_options(extra)
    host, _, port = listen.rpartition(":")
    host = user.get("listen_host") or host
    port = user.get("listen_port") or port
    defaults = [
        ("listen_host", ["--listen-host", host]),
        ("listen_port", ["-p", port]),
        ("confdir", ["--set", f"confdir={confdir(home)}"]),
        ("http2", ["--set", "http2=false"]),  # a per-request cut-off is only clean over HTTP/1.1 upstreams
        # connect upstream only when a request is forwarded: a call pouch refuses (402) is
        # answered even when the provider is unreachable, instead of "Connection error"
        ("connection_strategy", ["--set", "connection_strategy=lazy"]),
        ("pouch_home", ["--set", f"pouch_home={home}"]),
    ]
    argv = [exe]
    for name, args in defaults:
        if name not in user:
            argv += args
    return [*argv, "-s", str(SCRIPT), *extra], f"{host}:{port}"


def ensure_ca(home: Path) -> Path:
    """pouch's mitmproxy CA certificate, created now if the proxy has not run yet."""
    ca = confdir(home) / CA_NAME
    if not ca.exists():
        from mitmproxy.certs import CertStore

        confdir(home).mkdir(mode=0o700, parents=True, exist_ok=True)
        CertStore.from_store(confdir(home), "mitmproxy", 2048)
    return ca


def system_ca_file(home: Path | None = None) -> Path | None:
    """The system's CA bundle: OpenSSL's compiled-in file, else a known distribution path;
    never a file in the pouch home (so the bundle is never built from itself)."""
    candidates = (ssl.get_default_verify_paths().openssl_cafile, *SYSTEM_CA_FILES)
    for candidate in candidates:
        if not candidate or not Path(candidate).is_file():
            continue
        real = Path(candidate).resolve()
        if home is not None and real.parent == home.resolve():
            continue
        return real
    return None


def bundle_text(system_pem: str | None, ca_pem: str) -> str:
    """The bundle's content: the system CAs, then pouch's CA; the same inputs give the same bytes."""
    parts = [system_pem] if system_pem and system_pem.strip() else []
    parts.append(ca_pem)
    return "\n".join(p.strip("\n") for p in parts) + "\n"


def write_atomically(path: Path, content: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:  # 0600, like everything in the pouch home
            f.write(content)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def ca_bundle(home: Path) -> Path:
    """System CAs + pouch's CA in one file, for runtimes that take a single bundle. Rebuilt from
    those two sources only, so running it again (even with $SSL_CERT_FILE at the bundle) gives
    the same file."""
    ca = ensure_ca(home)
    bundle = home / BUNDLE_NAME
    system = system_ca_file(home)
    content = bundle_text(system.read_text() if system else None, ca.read_text())
    if not bundle.exists() or bundle.read_text() != content:
        write_atomically(bundle, content)
    return bundle


def proxy_url(listen: str, wallet: str | None = None, secret: str | None = None) -> str:
    """The proxy URL; with a wallet, its name and secret (``-`` for a wallet without one) as
    proxy credentials, which is how the proxy charges the wallet."""
    if wallet is None:
        return f"http://{listen}"
    return f"http://{quote(wallet, safe='')}:{quote(secret or '-', safe='')}@{listen}"


def _node_quote(token: str) -> str:
    """One NODE_OPTIONS token (Node splits on spaces and honours double quotes and backslashes)."""
    if token and not any(c in token for c in ' \t"\\'):
        return token
    return '"' + token.replace("\\", "\\\\").replace('"', '\\"') + '"'


def node_options(existing: str | None, preload: Path = NODE_PRELOAD) -> str:
    """``--require <pouch's preload>`` first, then the user's own options, without any pouch
    preload already there (so a repeated `eval "$(pouch env)"` does not stack them)."""
    try:
        tokens = shlex.split(existing or "")
    except ValueError:
        tokens = (existing or "").split()
    kept: list[str] = []
    skip = False
    for i, tok in enumerate(tokens):
        if skip:
            skip = False
            continue
        if tok in ("--require", "-r") and i + 1 < len(tokens) and Path(tokens[i + 1]).parts[-3:] == PRELOAD_TAIL:
            skip = True
            continue
        if tok.startswith("--require=") and Path(tok.split("=", 1)[1]).parts[-3:] == PRELOAD_TAIL:
            continue
        kept.append(tok)
    return " ".join(["--require", _node_quote(str(preload)), *map(_node_quote, kept)])


def wallet_credentials(home: Path, wallet: str) -> str | None:
    """The secret to name ``wallet`` with (None: the wallet has none), or RunError saying why
    it cannot be used: no such wallet, or one whose secret this home does not hold."""
    from .budget import Ledger
    from .vault import hash_virtual_key
    from . import wallet_secrets

    w = Ledger(home).snapshot().wallets.get(wallet)
    if w is None:
        raise RunError(f"no wallet {wallet!r} in {home} (see `pouch wallet list`; create it with "
                       f"`pouch wallet add {wallet} --budget USD`)")
    if w.secret_hash is None:
        return None
    try:
        secret = wallet_secrets.load(home).get(wallet)
    except wallet_secrets.SecretsError as exc:
        raise RunError(str(exc)) from None
    if secret is None or hash_virtual_key(secret) != w.secret_hash:
        raise RunError(f"wallet {wallet!r} requires a proxy secret and {home / wallet_secrets.SECRETS_FILE} "
                       f"does not hold {'it' if secret is None else 'the current one'}; issue a new one with "
                       f"`pouch wallet set {wallet} --secret`")
    return secret


#: NO_PROXY entries that would send local model servers around pouch
LOOPBACK_NO_PROXY = frozenset({"localhost", ".localhost", "127.0.0.1", "::1", "[::1]", "127.0.0.0/8", "::1/128",
                               "0.0.0.0"})


def no_proxy_without_loopback(environ: Mapping[str, str]) -> dict[str, str]:
    """``NO_PROXY``/``no_proxy`` without their loopback entries, when they had any (else nothing
    to set): a local model server reached around the proxy would be neither metered nor paused."""
    out: dict[str, str] = {}
    for name in ("NO_PROXY", "no_proxy"):
        value = environ.get(name)
        if value is None:
            continue
        kept = [e for e in (x.strip() for x in value.split(",")) if e and e.lower() not in LOOPBACK_NO_PROXY]
        if len(kept) != len([x for x in value.split(",") if x.strip()]):
            out[name] = ",".join(kept)
    return out


def proxy_env(home: Path, listen: str, *, wallet: str | None = None,
              environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The variables `pouch env` prints and `pouch run` sets, given the current environment."""
    environ = os.environ if environ is None else environ
    secret = wallet_credentials(home, wallet) if wallet is not None else None
    url = proxy_url(listen, wallet, secret)
    bundle = str(ca_bundle(home))
    # plain http too: local model servers (Ollama, llama.cpp, ...) are metered through the proxy
    env = {"HTTPS_PROXY": url, "https_proxy": url, "HTTP_PROXY": url, "http_proxy": url}
    env.update(no_proxy_without_loopback(environ))
    env.update({
        "SSL_CERT_FILE": bundle,
        "REQUESTS_CA_BUNDLE": bundle,
        "CURL_CA_BUNDLE": bundle,
        "NODE_EXTRA_CA_CERTS": str(ensure_ca(home)),
        "NODE_USE_ENV_PROXY": "1",
        "NODE_OPTIONS": node_options(environ.get("NODE_OPTIONS")),
    })
    return env


def cmd_proxy(args: argparse.Namespace) -> None:
    home = resolve_home(args.home)
    extra = shlex.split(os.environ.get("POUCH_PROXY_ARGS", "")) + list(getattr(args, "mitm_args", []))
    from .mock import expand_flag
    extra = expand_flag(extra)  # --mock: pouch answers LLM calls itself
    argv, listen = mitmdump_argv(home, args.listen, extra)
    from .presence import Presence, write_presence
    import time
    # the pid stays the same across exec: `pouch run` and `pouch status` see a proxy starting
    write_presence(home, Presence(os.getpid(), "starting", listen, time.time()))
    print(f"pouch: starting the proxy on http://{listen}, ledger {home} (it says when it listens); "
          f"point apps at it with `pouch run -- CMD` or `eval \"$(pouch env)\"`", file=sys.stderr)
    sys.stderr.flush()
    os.execv(argv[0], argv)


def _env_for(args: argparse.Namespace) -> dict[str, str]:
    try:
        return proxy_env(resolve_home(args.home), args.listen, wallet=args.wallet)
    except RunError as exc:
        raise SystemExit(f"pouch {args.command}: {exc}") from None


def require_proxy(args: argparse.Namespace) -> None:
    """``pouch run`` refuses to start the command when no proxy answers at --listen (waiting a
    while for one that is starting) or when its certificates are not signed by this home's CA."""
    if getattr(args, "no_check", False):
        return
    from .doctor import proxy_problem

    home = resolve_home(args.home)
    problem = proxy_problem(home, args.listen, confdir(home) / CA_NAME, wait=60.0)
    if problem:
        raise SystemExit(f"pouch run: not started: {problem} (`pouch doctor` checks everything)")


def cmd_doctor(args: argparse.Namespace) -> None:
    from .doctor import failed, gather, render
    from .home import home_path

    checks = gather(home_path(args.home), args.listen, os.environ)
    print(render(checks))
    if failed(checks):
        raise SystemExit(1)


def cmd_env(args: argparse.Namespace) -> None:
    env = _env_for(args)
    for key, value in env.items():
        if args.shell == "fish":
            print(f"set -gx {key} {shlex.quote(value)};")
        else:
            print(f"export {key}={shlex.quote(value)}")


def cmd_run(args: argparse.Namespace) -> None:
    command = [a for a in args.command_args if a != "--"] if args.command_args[:1] == ["--"] else args.command_args
    if not command:
        raise SystemExit("pouch run: give a command, e.g. `pouch run -- python agent.py`")
    require_proxy(args)  # first: a proxy still starting creates the CA that proxy_env hands out
    env = {**os.environ, **_env_for(args)}
    try:
        os.execvpe(command[0], command, env)
    except FileNotFoundError:
        raise SystemExit(f"pouch run: command not found: {command[0]}") from None


def cmd_tui(args: argparse.Namespace) -> None:
    try:
        from pouch_tui.app import run
    except ImportError as exc:  # pragma: no cover
        raise SystemExit(f"pouch tui: the TUI is not available ({exc})") from None
    run(home=args.home)


def add_commands(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("proxy", parents=[common], help="start the proxy (mitmdump with pouch and safe defaults)",
                       usage="pouch proxy [--home DIR] [--listen HOST:PORT] [mitmdump options ...]",
                       description="Start mitmdump with pouch. Every other option is passed to mitmdump and wins "
                                   "over pouch's defaults, e.g. `pouch proxy -p 9090 --set "
                                   "pouch_route=api.openai.com=127.0.0.1:9443`; `$POUCH_PROXY_ARGS` adds options "
                                   "to every start. An option mitmproxy does not know stops the proxy.")
    p.add_argument("--listen", default=default_listen(), type=_listen_arg, metavar="HOST:PORT",
                   help=f"HOST:PORT, PORT (on 127.0.0.1) or HOST (default $POUCH_LISTEN, else {DEFAULT_LISTEN})")
    p.set_defaults(func=cmd_proxy)

    p = sub.add_parser("env", parents=[common], help="print shell lines that route apps through pouch")
    p.add_argument("--listen", default=default_listen(), type=_listen_arg, metavar="HOST:PORT", help="the proxy's address")
    p.add_argument("--shell", choices=["sh", "fish"], default="sh")
    p.add_argument("--wallet", metavar="APP", help="charge the app's calls to this wallet (its name and kept "
                                                   "secret go in the proxy URL); fails if it cannot")
    p.set_defaults(func=cmd_env)

    p = sub.add_parser("run", parents=[common], help="run a command with its LLM traffic through pouch")
    p.add_argument("--listen", default=default_listen(), type=_listen_arg, metavar="HOST:PORT", help="the proxy's address")
    p.add_argument("--wallet", metavar="APP", help="charge the command's calls to this wallet; if it does not "
                                                   "exist or its secret is not kept here, nothing is run")
    p.add_argument("--no-check", action="store_true",
                   help="start the command even when no proxy of this --home answers at --listen")
    p.add_argument("command_args", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("doctor", parents=[common], help="check the proxy, its CA, trust, environment, ledger and vault")
    p.add_argument("--listen", default=default_listen(), type=_listen_arg, metavar="HOST:PORT", help="the proxy's address")
    p.set_defaults(func=cmd_doctor)

    p = sub.add_parser("tui", parents=[common], help="open the live terminal dashboard")
    p.set_defaults(func=cmd_tui)
