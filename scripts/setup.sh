#!/usr/bin/env bash
# Create (or update) the project's venv in .venv and install pouch into it.
# Usage: scripts/setup.sh [--test]   (--test also installs the test extras)
#
# The first run needs the package index (pip downloads mitmproxy and the other dependencies,
# about 20 s). Later runs do nothing while pyproject.toml is unchanged: the install is stamped
# with pyproject.toml's SHA-256 in .venv/.pouch-setup (.venv/.pouch-setup-test for --test).
# pip's output goes to .venv/pip-install.log and is shown only when the install fails.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
extras=""
stamp=.venv/.pouch-setup
if [ "${1:-}" = "--test" ]; then
  extras="[test]"
  stamp=.venv/.pouch-setup-test
fi
want="$("$PYTHON" -c 'import hashlib,sys; print(hashlib.sha256(open("pyproject.toml","rb").read()).hexdigest())')"
if [ -x .venv/bin/pouch ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0  # installed and up to date
fi
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip >/dev/null 2>&1 || true
fi
echo "setting up .venv: pip install -e .${extras} (the first time this downloads the dependencies)" >&2
if ! .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extras}" >.venv/pip-install.log 2>&1; then
  cat .venv/pip-install.log >&2
  echo "scripts/setup.sh: pip install failed (log above, kept in .venv/pip-install.log)" >&2
  exit 1
fi
echo "$want" >"$stamp"
[ -n "$extras" ] && echo "$want" >.venv/.pouch-setup  # the test extras include the plain install
exit 0
