"""Commands that start things: ``pouch proxy``, ``pouch env``, ``pouch run`` and ``pouch tui``.

Trusting mitmproxy's CA is the step every user trips on, so ``pouch env`` writes one CA bundle
(the system CAs + pouch's mitmproxy CA, created on first use) and prints the variables each
runtime reads; ``pouch run -- CMD`` runs a command with them.
"""

from __future__ import annotations

import argparse
import os
import shlex
import shutil
import ssl
import sys
from pathlib import Path
from typing import Any

from .home import resolve_home
from .where import SCRIPT

DEFAULT_LISTEN = "127.0.0.1:8080"
CA_NAME = "mitmproxy-ca-cert.pem"


def confdir(home: Path) -> Path:
    return home / "mitmproxy"


def mitmdump_argv(home: Path, listen: str, extra: list[str]) -> list[str]:
    """mitmdump with pouch's addon and safe defaults; the user's own options come last and win."""
    exe = shutil.which("mitmdump", path=str(Path(sys.executable).parent)) or shutil.which("mitmdump")
    if exe is None:
        raise SystemExit("pouch: mitmdump not found; install pouch with its dependencies (pip install pouch)")
    host, _, port = listen.rpartition(":")
    return [
        exe, "--listen-host", host or "127.0.0.1", "-p", port,
        "--set", f"confdir={confdir(home)}",
        "--set", "http2=false",  # a per-request cut-off is only clean over HTTP/1.1 upstreams
        "--set", f"pouch_home={home}",
        "-s", str(SCRIPT),
        *extra,
    ]


def ensure_ca(home: Path) -> Path:
    """pouch's mitmproxy CA certificate, created now if the proxy has not run yet."""
    ca = confdir(home) / CA_NAME
    if not ca.exists():
        from mitmproxy.certs import CertStore

        confdir(home).mkdir(mode=0o700, parents=True, exist_ok=True)
        CertStore.from_store(confdir(home), "mitmproxy", 2048)
    return ca


def system_ca_file() -> Path | None:
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile, "/etc/ssl/certs/ca-certificates.crt", "/etc/ssl/cert.pem"):
        if candidate and Path(candidate).is_file():
            return Path(candidate)
    return None


def ca_bundle(home: Path) -> Path:
    """System CAs + pouch's CA in one file, for runtimes that take a single bundle."""
    ca = ensure_ca(home)
    bundle = home / "ca-bundle.pem"
    system = system_ca_file()
    parts = [system.read_text()] if system else []
    parts.append(ca.read_text())
    content = "\n".join(p.rstrip("\n") for p in parts) + "\n"
    if not bundle.exists() or bundle.read_text() != content:
        tmp = bundle.with_suffix(".tmp")
        tmp.write_text(content)
        os.replace(tmp, bundle)
    return bundle


def proxy_env(home: Path, listen: str) -> dict[str, str]:
    bundle = str(ca_bundle(home))
    url = f"http://{listen}"
    return {
        "HTTPS_PROXY": url,
        "https_proxy": url,
        "SSL_CERT_FILE": bundle,
        "REQUESTS_CA_BUNDLE": bundle,
        "CURL_CA_BUNDLE": bundle,
        "NODE_EXTRA_CA_CERTS": str(ensure_ca(home)),
    }


def cmd_proxy(args: argparse.Namespace) -> None:
    home = resolve_home(args.home)
    argv = mitmdump_argv(home, args.listen, [a for a in args.mitm_args if a != "--"])
    print(f"pouch: proxy on http://{args.listen}, ledger {home}; point apps at it with `eval \"$(pouch env)\"`",
          file=sys.stderr)
    os.execv(argv[0], argv)


def cmd_env(args: argparse.Namespace) -> None:
    env = proxy_env(resolve_home(args.home), args.listen)
    for key, value in env.items():
        if args.shell == "fish":
            print(f"set -gx {key} {shlex.quote(value)};")
        else:
            print(f"export {key}={shlex.quote(value)}")


def cmd_run(args: argparse.Namespace) -> None:
    command = [a for a in args.command_args if a != "--"] if args.command_args[:1] == ["--"] else args.command_args
    if not command:
        raise SystemExit("pouch run: give a command, e.g. `pouch run -- python agent.py`")
    env = {**os.environ, **proxy_env(resolve_home(args.home), args.listen)}
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
                       description="Start mitmdump with pouch. Anything after the options is passed to mitmdump, "
                                   "e.g. `pouch proxy -- --set pouch_route=api.openai.com=127.0.0.1:9443`.")
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT", help=f"default {DEFAULT_LISTEN}")
    p.add_argument("mitm_args", nargs=argparse.REMAINDER, help="mitmdump options")
    p.set_defaults(func=cmd_proxy)

    p = sub.add_parser("env", parents=[common], help="print shell lines that route apps through pouch")
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT", help="the proxy's address")
    p.add_argument("--shell", choices=["sh", "fish"], default="sh")
    p.set_defaults(func=cmd_env)

    p = sub.add_parser("run", parents=[common], help="run a command with its LLM traffic through pouch")
    p.add_argument("--listen", default=DEFAULT_LISTEN, metavar="HOST:PORT", help="the proxy's address")
    p.add_argument("command_args", nargs=argparse.REMAINDER, metavar="-- CMD ...")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("tui", parents=[common], help="open the live terminal dashboard")
    p.set_defaults(func=cmd_tui)
