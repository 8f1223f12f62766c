"""``pouch doctor``: is everything in place for an app's calls to be budgeted, and if not, what
to do. Also the check ``pouch run`` makes before it starts a command.

The checks are pure functions of facts gathered beforehand (:class:`Check` results, unit-tested);
``gather`` and the probes do the I/O: a TCP connect, a TLS handshake through the proxy's
CONNECT to an LLM host (whose certificate must be issued by the CA in pouch's confdir, the one
``pouch env``/``pouch run`` make apps trust), and Python, curl and Node run with the
environment ``pouch env`` prints.
"""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

PROBE_HOST = "api.openai.com"
ENV_KEYS = ("HTTPS_PROXY", "https_proxy", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS")


@dataclass(frozen=True)
class Check:
    name: str
    status: str  # "ok" | "warn" | "fail"
    detail: str
    fix: str = ""


@dataclass(frozen=True)
class Probe:
    """What a TLS handshake through the proxy's CONNECT found."""

    answering: bool  # something accepted a TCP connection at the address
    connect_status: str | None = None  # the CONNECT response's status line
    cert_der: bytes | None = None  # the certificate the proxy presented for PROBE_HOST
    error: str | None = None


# -- pure checks ----------------------------------------------------------------------------------------
def check_proxy(listen: str, probe: Probe, presence_listen: str | None, presence_pid: int | None) -> Check:
    if not probe.answering:
        fix = "start it: `pouch proxy` (or scripts/run.sh) in another terminal, or give the address it uses with --listen"
        if presence_listen and presence_listen != listen:
            fix = f"the proxy of this ledger listens on {presence_listen}: use `--listen {presence_listen}`"
        return Check("proxy", "fail", f"nothing answers at {listen}", fix)
    if probe.cert_der is None:
        return Check("proxy", "fail", f"{listen} answers but is not a working proxy for {PROBE_HOST} "
                     f"({probe.connect_status or probe.error or 'no TLS'})",
                     "check that the address is pouch's proxy (`pouch status` shows where it listens)")
    if presence_listen is None:
        return Check("proxy", "warn", f"a proxy answers at {listen}, but no proxy of this ledger is running",
                     "the proxy at that address may use another --home: start `pouch proxy` with this one")
    return Check("proxy", "ok", f"answering at {listen} (pid {presence_pid}, serving this ledger)")


def check_ca(probe: Probe, issued_by_ours: bool | None, ca_path: Path, issuer: str | None) -> Check:
    if probe.cert_der is None:
        return Check("proxy CA", "warn", "not checked (no TLS handshake through the proxy)")
    if issued_by_ours:
        return Check("proxy CA", "ok", f"the proxy's certificate for {PROBE_HOST} is issued by {ca_path}")
    return Check("proxy CA", "fail",
                 f"the proxy's certificate for {PROBE_HOST} is issued by {issuer or 'another CA'}, not by pouch's "
                 f"CA {ca_path}: apps trusting `pouch env` would fail with a certificate error",
                 "the proxy runs with another --home or confdir: restart it with this --home, or run this "
                 "command with the --home the proxy uses")


def check_env(environ: Mapping[str, str], expected: Mapping[str, str]) -> Check:
    """Does this shell route apps through pouch, as ``pouch env`` would set it?"""
    present = {k: environ[k] for k in ENV_KEYS if environ.get(k)}
    fix = 'eval "$(pouch env)" in this shell, or start apps with `pouch run -- CMD`'
    if not (present.get("HTTPS_PROXY") or present.get("https_proxy")):
        return Check("environment", "warn", "HTTPS_PROXY is not set in this shell: apps started here go straight "
                                            "to the provider, unbudgeted", fix)
    wrong = [f"{k}={present.get(k, '<unset>')} (pouch env: {v})" for k, v in expected.items()
             if k in ENV_KEYS and present.get(k) != v]
    no_proxy = environ.get("NO_PROXY", "") + "," + environ.get("no_proxy", "")
    if PROBE_HOST in no_proxy or "*" in [x.strip() for x in no_proxy.split(",")]:
        wrong.append(f"NO_PROXY includes {PROBE_HOST}: its calls bypass pouch")
    if wrong:
        return Check("environment", "fail", "; ".join(wrong), fix)
    return Check("environment", "ok", "this shell routes apps through pouch (as `pouch env` sets it)")


def check_trust(runtime: str, result: str | None, detail: str) -> Check:
    """``result``: "ok", "untrusted", "error" or None (runtime not installed)."""
    if result is None:
        return Check(f"trust: {runtime}", "warn", f"{runtime} not found, not checked")
    if result == "ok":
        return Check(f"trust: {runtime}", "ok", f"{runtime} trusts the proxy with `pouch env`'s settings")
    if result == "untrusted":
        return Check(f"trust: {runtime}", "fail", f"{runtime} does not trust the proxy's certificate: {detail}",
                     "use the variables `pouch env` prints (CA bundle with pouch's CA) and the same --home as the proxy")
    return Check(f"trust: {runtime}", "fail", f"{runtime} could not reach {PROBE_HOST} through the proxy: {detail}",
                 "start the proxy, and check --listen")


def check_ledger(home: Path | str, exists: bool, problems: list[str], budget_unset: bool, paused: bool, *,
                 team: bool = False) -> list[Check]:
    """``home``: the local ledger's directory, or (``team``) the team ledger's URL without its password."""
    if team and problems:
        return [Check("ledger", "fail", f"team ledger {home}: " + "; ".join(problems[:3]),
                      "check the URL and that the database is up (`pouch ledger init` creates the schema); "
                      "`pouch ledger verify` shows what does not add up")]
    if not exists:
        return [Check("ledger", "fail", f"no ledger at {home}", "create one: `pouch budget set AMOUNT`")]
    if problems:
        return [Check("ledger", "fail", f"{home}: " + "; ".join(problems[:3]),
                      "see `pouch ledger verify`; `pouch ledger restore` puts back the last good copy")]
    out = [Check("ledger", "ok", f"team ledger {home} is reachable and consistent" if team else f"{home} is consistent")]
    if budget_unset:
        out.append(Check("budget", "fail", "no budget set: every LLM call is refused (402)", "`pouch budget set AMOUNT`"))
    if paused:
        out.append(Check("budget", "warn", "paused: every LLM call is refused (402)", "`pouch resume`"))
    return out


def check_vault(exists: bool, has_keyfile: bool, passphrase_set: bool, error: str | None) -> Check:
    if not exists:
        return Check("vault", "ok", "no vault (apps send their own provider keys)")
    if error:
        return Check("vault", "fail", f"the vault cannot be opened: {error}",
                     "check $POUCH_VAULT_PASSPHRASE (or vault.key); `pouch key list` shows what it holds")
    if not has_keyfile and not passphrase_set:
        return Check("vault", "warn", "the vault needs a passphrase and POUCH_VAULT_PASSPHRASE is not set here",
                     "start the proxy with POUCH_VAULT_PASSPHRASE set, or virtual keys get 503")
    return Check("vault", "ok", "the vault opens")


def failed(checks: list[Check]) -> bool:
    return any(c.status == "fail" for c in checks)


def render(checks: list[Check]) -> str:
    lines = []
    for c in checks:
        lines.append(f"{c.status.upper():<5} {c.name:<16} {c.detail}")
        if c.fix and c.status != "ok":
            lines.append(f"{'':<5} {'':<16} fix: {c.fix}")
    return "\n".join(lines)


# -- probes (I/O) ---------------------------------------------------------------------------------------
def split_listen(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)


def probe_proxy(listen: str, host: str = PROBE_HOST, timeout: float = 5.0) -> Probe:
    """CONNECT to ``host`` through the proxy and take the certificate it presents (not verified:
    we only want to know who issued it)."""
    addr = split_listen(listen)
    try:
        sock = socket.create_connection(addr, timeout=timeout)
    except OSError as exc:
        return Probe(False, error=str(exc))
    try:
        sock.sendall(f"CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head and len(head) < 65536:
            chunk = sock.recv(4096)
            if not chunk:
                break
            head += chunk
        status = head.split(b"\r\n", 1)[0].decode("latin-1")
        if " 200" not in status:
            return Probe(True, status or "no answer to CONNECT")
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        with ctx.wrap_socket(sock, server_hostname=host) as tls:
            return Probe(True, status, tls.getpeercert(binary_form=True))
    except (OSError, ssl.SSLError) as exc:
        return Probe(True, error=str(exc))
    finally:
        sock.close()


def issued_by(cert_der: bytes, ca_pem: bytes) -> tuple[bool, str]:
    """Whether ``ca_pem`` signed ``cert_der``, and the certificate's issuer."""
    from cryptography import x509

    cert = x509.load_der_x509_certificate(cert_der)
    ca = x509.load_pem_x509_certificate(ca_pem)
    try:
        cert.verify_directly_issued_by(ca)
        return True, cert.issuer.rfc4514_string()
    except (ValueError, TypeError, Exception):  # noqa: BLE001 - InvalidSignature and friends
        return False, cert.issuer.rfc4514_string()


def proxy_problem(home: Path, listen: str, ca_path: Path, *, wait: float = 0.0) -> str | None:
    """Why ``pouch run`` must not start the command (None: the proxy answers with pouch's CA).
    ``wait``: how long to wait for a proxy that is starting (``pouch proxy &`` just before)."""
    from .presence import read_presence

    deadline = time.monotonic() + wait
    grace = time.monotonic() + min(wait, 3.0)  # `pouch proxy &` may not have written proxy.json yet
    while True:
        probe = probe_proxy(listen)
        if probe.answering:
            break
        presence = read_presence(home)
        starting = presence is not None and presence.listen == listen
        if time.monotonic() >= (deadline if starting else grace):
            c = check_proxy(listen, probe, presence.listen if presence else None, presence.pid if presence else None)
            return f"{c.detail}, so the command would not reach its LLM provider through pouch; {c.fix}"
        time.sleep(0.2)
    if probe.cert_der is None:
        c = check_proxy(listen, probe, None, None)
        return f"{c.detail}; {c.fix}"
    if not ca_path.exists():
        return (f"pouch's CA {ca_path} does not exist, so the proxy at {listen} is not this ledger's; "
                "start `pouch proxy` with this --home")
    ours, issuer = issued_by(probe.cert_der, ca_path.read_bytes())
    if not ours:
        c = check_ca(probe, False, ca_path, issuer)
        return f"{c.detail}; {c.fix}"
    return None


NODE_PROBE = r"""
const net = require('net'), tls = require('tls');
const [host, port, target] = process.argv.slice(1);
const s = net.connect(+port, host, () => s.write(`CONNECT ${target}:443 HTTP/1.1\r\nHost: ${target}:443\r\n\r\n`));
s.once('data', d => {
  if (!/^HTTP\/1\.[01] 200/.test(d.toString())) { console.log('CONNECT: ' + d.toString().split('\r\n')[0]); process.exit(3); }
  const t = tls.connect({socket: s, servername: target}, () => { t.destroy(); process.exit(0); });
  t.on('error', e => { console.log(e.code || e.message); process.exit(2); });
});
s.on('error', e => { console.log(e.message); process.exit(4); });
"""

PY_PROBE = r"""
import http.client, ssl, sys
host, port, target = sys.argv[1], int(sys.argv[2]), sys.argv[3]
c = http.client.HTTPSConnection(host, port, timeout=10, context=ssl.create_default_context())
c.set_tunnel(target, 443)
try:
    c.connect()
except ssl.SSLCertVerificationError as e:
    print(e.verify_message or e); sys.exit(2)
except OSError as e:
    print(e); sys.exit(4)
"""


def trust_probes(listen: str, env: Mapping[str, str]) -> list[Check]:
    """Python, curl and Node, each run with ``env`` (``pouch env``'s variables), through the proxy."""
    host, port = split_listen(listen)
    full = {**os.environ, **env}
    out = []
    runs = [("python", [sys.executable, "-c", PY_PROBE, host, str(port), PROBE_HOST], {2}),
            ("curl", ["curl", "-sS", "-o", "/dev/null", "--max-time", "10", f"https://{PROBE_HOST}/v1/models"], {35, 51, 60, 77}),
            ("node", ["node", "-e", NODE_PROBE, host, str(port), PROBE_HOST], {2})]
    for name, cmd, untrusted in runs:
        if shutil.which(cmd[0]) is None:
            out.append(check_trust(name, None, ""))
            continue
        try:
            r = subprocess.run(cmd, env=full, capture_output=True, text=True, timeout=20)
        except subprocess.TimeoutExpired:
            out.append(check_trust(name, "error", "timed out"))
            continue
        detail = (r.stdout + r.stderr).strip().splitlines()[-1:] or [f"exit {r.returncode}"]
        result = "ok" if r.returncode == 0 else "untrusted" if r.returncode in untrusted else "error"
        out.append(check_trust(name, result, detail[0][:200]))
    return out


def gather(home: Path, listen: str, environ: Mapping[str, str]) -> list[Check]:
    """Every check, in the order a user fixes things."""
    from .budget import Ledger, LedgerCorrupt
    from .home import ledger_exists
    from .presence import read_presence
    from .runtime import CA_NAME, confdir, proxy_env

    from .ledger_postgres import LedgerUnavailable, PostgresLedger, ledger_url, redact_url

    checks: list[Check] = []
    problems: list[str] = []
    unset = paused = False
    try:
        url = ledger_url(environ.get("POUCH_LEDGER"))
    except LedgerUnavailable as exc:
        url, problems = environ.get("POUCH_LEDGER", ""), [str(exc)]
    if url:  # the team ledger (``--ledger`` / $POUCH_LEDGER): the database is the ledger
        if not problems:
            try:
                with PostgresLedger(url, home) as team:
                    problems = team.verify()
                    st = team.status()
                    unset, paused = st.budget == 0 and st.spent == 0, st.paused
            except Exception as exc:  # unreachable, no schema, a bad password: the check says which
                problems = [str(exc)]
        checks += check_ledger(redact_url(url), True, problems, unset, paused, team=True)
    else:
        exists = ledger_exists(home)
        if exists:
            try:
                ledger = Ledger(home)
                problems = ledger.verify()
                st = ledger.status()
                unset, paused = st.budget == 0 and st.spent == 0, st.paused
            except (LedgerCorrupt, OSError, ValueError) as exc:
                problems = [str(exc)]
        checks += check_ledger(home, exists, problems, unset, paused)

    presence = read_presence(home)
    probe = probe_proxy(listen)
    checks.append(check_proxy(listen, probe, presence.listen if presence else None, presence.pid if presence else None))
    ca_path = confdir(home) / CA_NAME
    ours, issuer = (None, None)
    if probe.cert_der is not None and ca_path.exists():
        ours, issuer = issued_by(probe.cert_der, ca_path.read_bytes())
    elif probe.cert_der is not None:
        ours = False
    checks.append(check_ca(probe, ours, ca_path, issuer))

    if ca_path.exists():
        expected = proxy_env(home, listen)
        checks.append(check_env(environ, expected))
        if probe.cert_der is not None:
            checks += trust_probes(listen, expected)
    else:
        checks.append(Check("environment", "fail", f"pouch's CA {ca_path} does not exist yet",
                            "start the proxy once with this --home (`pouch proxy`), then `eval \"$(pouch env)\"`"))

    from .admin import KEYFILE, PASSPHRASE_ENV, VAULT_FILE
    vault_error = None
    vault_exists, has_keyfile = (home / VAULT_FILE).exists(), (home / KEYFILE).exists()
    passphrase = environ.get(PASSPHRASE_ENV)
    if vault_exists and (has_keyfile or passphrase):
        from .vault import Vault, VaultError
        try:
            Vault.open(home / VAULT_FILE, None if has_keyfile else passphrase, home / KEYFILE if has_keyfile else None)
        except (VaultError, OSError, ValueError) as exc:
            vault_error = str(exc)
    checks.append(check_vault(vault_exists, has_keyfile, bool(passphrase), vault_error))
    return checks
