#!/usr/bin/env bash
# Create the separate "client" virtualenv used by the end-to-end tests.
#
# The openai SDK (built on httpx2) cannot share a venv with mitmproxy 11.0.2
# (pip reports a dependency conflict), so e2e tests run real client programs
# (tests/e2e/clients/*.py: the openai, anthropic and google-genai SDKs) with this venv's
# python in subprocesses.
#
# Usage: scripts/make_client_venv.sh [DIR]     (default: <repo>/.venv-clients)
# Env:   PYTHON   base interpreter (default: python3.11, else python3)
#        OPENAI_SPEC  a pip requirement for the openai SDK instead of the pin (another version)
# The SDKs (and litellm, used as a client library) and their dependencies are pinned in tests/e2e/clients/requirements.txt. Needs the
# package index the first time. Idempotent: creates DIR only when it has no python, and installs
# only when one of the SDKs is not importable there at its pinned version.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
dir="${1:-$repo/.venv-clients}"
reqs="$repo/tests/e2e/clients/requirements.txt"

py="${PYTHON:-}"
if [[ -z "$py" ]]; then
    if command -v python3.11 >/dev/null 2>&1; then py=python3.11; else py=python3; fi
fi

if [[ ! -x "$dir/bin/python" ]]; then
    echo "creating client venv in $dir with $py" >&2
    "$py" -m venv "$dir"
    "$dir/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
fi

pin() { sed -n "s/^$1==//p" "$reqs"; }
has() {  # MODULE DIST VERSION -> 0 when DIST is importable at VERSION
    "$dir/bin/python" - "$1" "$2" "$3" <<'PY' >/dev/null 2>&1
import importlib, importlib.metadata as md, sys
mod, dist, version = sys.argv[1:]
importlib.import_module(mod)
sys.exit(0 if md.version(dist) == version else 1)
PY
}

has_dist() {  # DIST VERSION -> 0 when DIST is installed at VERSION (without importing it: litellm is slow to import)
    "$dir/bin/python" - "$1" "$2" <<'PY' >/dev/null 2>&1
import importlib.metadata as md, sys
sys.exit(0 if md.version(sys.argv[1]) == sys.argv[2] else 1)
PY
}

if [[ -n "${OPENAI_SPEC:-}" ]]; then
    "$dir/bin/python" -m pip install --quiet "$OPENAI_SPEC"
elif ! has openai openai "$(pin openai)" || ! has anthropic anthropic "$(pin anthropic)" \
        || ! has google.genai google-genai "$(pin google-genai)" || ! has_dist litellm "$(pin litellm)"; then
    echo "installing the pinned client SDKs ($reqs) into $dir" >&2
    "$dir/bin/python" -m pip install --quiet -r "$reqs"
fi
"$dir/bin/python" -c 'import sys, openai, anthropic, google.genai as g
print("client venv ready:", sys.prefix, "(openai", openai.__version__ + ", anthropic", anthropic.__version__ + ", google-genai", g.__version__ + ")")'
