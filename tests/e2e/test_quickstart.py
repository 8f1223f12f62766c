"""The README's quick start, run AS WRITTEN in a fresh clone with a fresh POUCH_HOME, must end
with the app's call budgeted (issue 14: a pasted quick start once left the app unproxied).

What the test supplies, none of which the block itself needs or mentions:

- ``my_agent.py`` (the user's app: one openai SDK call) and ``python`` on PATH with the SDK
  (the e2e client venv);
- the fake provider instead of api.openai.com, through ``$POUCH_PROXY_ARGS`` (extra mitmdump
  options every ``pouch proxy`` takes: ``pouch_route`` and the fake's CA for upstream TLS), and
  a free port through ``$POUCH_LISTEN`` (so parallel runs do not fight over 8080);
- no network: the clone's ``.venv`` is seeded offline before the block runs (a venv whose
  dependencies come from this checkout's ``.venv`` and whose editable install points at the
  clone), stamped as ``scripts/setup.sh`` stamps an install, and ``PIP_NO_INDEX=1`` makes any
  pip download fail. So the block's ``scripts/setup.sh`` is run for real and must see an
  up-to-date install and do nothing (issue 14 item 10), as it would on a user's second run.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
from decimal import Decimal as D
from pathlib import Path

from harness import REPO, free_port
from pouch_addon.budget import Ledger

MARKER = "<!-- quickstart:"

AGENT = '''
from openai import OpenAI
r = OpenAI().chat.completions.create(model="gpt-4o-mini", max_tokens=5,
    messages=[{"role": "user", "content": "hi"}],
    extra_headers={"x-fake-prompt-tokens": "10", "x-fake-chunks": "2"})
print("AGENT-OK", r.choices[0].message.content)
'''

SCRUB = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy", "NO_PROXY", "no_proxy",
         "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "NODE_EXTRA_CA_CERTS",
         "VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "POUCH_HOME", "POUCH_LISTEN", "POUCH_PROXY_ARGS",
         "OPENAI_BASE_URL", "OPENAI_API_KEY")


def quickstart_block(readme: str) -> str:
    """The ```sh block right after the quickstart marker."""
    at = readme.index(MARKER)
    m = re.compile(r"```sh\n(.*?)```", re.S).search(readme, at)
    assert m is not None, "no ```sh block after the quickstart marker"
    return m.group(1)


def fresh_clone(dest: Path) -> Path:
    """``git clone`` of this checkout, plus its uncommitted changes (so the test checks the code
    and README being worked on, not only the last commit)."""
    subprocess.run(["git", "clone", "-q", str(REPO), str(dest)], check=True)
    changed = subprocess.run(["git", "-C", str(REPO), "ls-files", "-m", "-o", "--exclude-standard"],
                             capture_output=True, text=True, check=True).stdout.split()
    deleted = set(subprocess.run(["git", "-C", str(REPO), "ls-files", "-d"], capture_output=True, text=True,
                                 check=True).stdout.split())
    for rel in changed:
        src, dst = REPO / rel, dest / rel
        if rel in deleted or not src.is_file():
            dst.unlink(missing_ok=True)
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dst)
    return dest


def seed_venv(clone: Path) -> None:
    """An offline stand-in for the first `scripts/setup.sh` (see the module docstring)."""
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(clone / ".venv")], check=True)
    ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    site = clone / ".venv" / "lib" / ver / "site-packages"
    ours = Path(sysconfig.get_paths()["purelib"])
    (site / "_pouch_test_deps.pth").write_text(f"{ours}\n")
    for f in ours.glob("__editable__*pouch*"):
        text = f.read_text().replace(str(REPO), str(clone)) if f.is_file() else None
        (site / f.name).write_text(text)
    for d in ours.glob("pouch-*.dist-info"):
        shutil.copytree(d, site / d.name)
    py = clone / ".venv" / "bin" / "python"
    pouch = clone / ".venv" / "bin" / "pouch"
    pouch.write_text(f"#!{py}\nimport sys\nfrom pouch_addon.cli import main\nsys.exit(main())\n")
    pouch.chmod(0o755)
    mitmdump = Path(sys.executable).parent / "mitmdump"  # a console script of this checkout's venv
    lines = mitmdump.read_text().splitlines(keepends=True)
    (clone / ".venv" / "bin" / "mitmdump").write_text(f"#!{py}\n" + "".join(lines[1:]))
    (clone / ".venv" / "bin" / "mitmdump").chmod(0o755)
    digest = hashlib.sha256((clone / "pyproject.toml").read_bytes()).hexdigest()
    (clone / ".venv" / ".pouch-setup").write_text(digest + "\n")


def test_readme_quick_start_as_written(tmp_path, fake, e2e_certs, client_python):
    readme = (REPO / "README.md").read_text()
    block = quickstart_block(readme)
    assert "pouch run" in block and "python my_agent.py" in block
    clone = fresh_clone(tmp_path / "pouch")
    assert quickstart_block((clone / "README.md").read_text()) == block
    seed_venv(clone)
    (clone / "my_agent.py").write_text(AGENT)
    home = tmp_path / "home"  # does not exist: the block's first pouch command creates it
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in SCRUB}
    env.update({
        "PATH": f"{Path(client_python).parent}{os.pathsep}{env.get('PATH', '')}",
        "POUCH_HOME": str(home),
        "POUCH_LISTEN": f"127.0.0.1:{port}",
        "POUCH_PROXY_ARGS": f"--set pouch_route=api.openai.com=127.0.0.1:{fake.port} "
                            f"--set ssl_verify_upstream_trusted_ca={e2e_certs.ca_cert}",
        "OPENAI_API_KEY": "sk-test-quickstart",
        "PIP_NO_INDEX": "1",
        "PYTHON": getattr(sys, "_base_executable", sys.executable),
    })
    log = tmp_path / "quickstart.out"  # a file: the proxy the block leaves running keeps its stdout open
    with open(log, "wb") as f:
        proc = subprocess.Popen(["bash", "-e", "-c", block], cwd=clone, env=env, stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        proc.wait(timeout=240)
        out = log.read_text(errors="replace")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)  # the block leaves its proxy running, as a user's shell would
        except ProcessLookupError:
            pass
    assert proc.returncode == 0, out
    assert "AGENT-OK" in out, out
    assert "setting up .venv" not in out, out  # setup.sh saw the stamped install and did nothing
    assert f"serving this ledger on http://127.0.0.1:{port}" in out, out
    st = Ledger(home).status()
    assert st.budget == D(5) and st.requests == 1
    assert st.spent == D(10) * D("0.15") / 10**6 + D(2) * D("0.6") / 10**6  # the fake's usage, priced exactly
    assert len(fake.requests("/v1/chat/completions")) == 1
