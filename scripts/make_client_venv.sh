#!/usr/bin/env bash
# Create the separate "client" virtualenv used by the end-to-end tests.
#
# The openai SDK (built on httpx2) cannot share a venv with mitmproxy 11.0.2
# (pip reports a dependency conflict), so e2e tests run real client programs
# (tests/e2e/clients/*.py) with this venv's python in subprocesses.
#
# Usage: scripts/make_client_venv.sh [DIR]     (default: <repo>/.venv-clients)
# Env:   PYTHON   base interpreter (default: python3.11, else python3)
#        OPENAI_SPEC  pip requirement for the SDK (default: the pinned tests/e2e/clients/requirements.txt)
# Needs the package index the first time. Idempotent: does nothing if DIR/bin/python already
# imports the pinned openai version.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
dir="${1:-$repo/.venv-clients}"
reqs="$repo/tests/e2e/clients/requirements.txt"
pinned="$(sed -n 's/^openai==//p' "$reqs")"

have=""
[[ -x "$dir/bin/python" ]] && have="$("$dir/bin/python" -c 'import openai; print(openai.__version__)' 2>/dev/null || true)"
if [[ -n "$have" && ( -n "${OPENAI_SPEC:-}" || "$have" == "$pinned" ) ]]; then
    echo "client venv ready: $dir (openai $have)"
    exit 0
fi

py="${PYTHON:-}"
if [[ -z "$py" ]]; then
    if command -v python3.11 >/dev/null 2>&1; then py=python3.11; else py=python3; fi
fi

echo "creating client venv in $dir with $py" >&2
"$py" -m venv "$dir"
"$dir/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
if [[ -n "${OPENAI_SPEC:-}" ]]; then
    "$dir/bin/python" -m pip install --quiet "$OPENAI_SPEC"
else
    "$dir/bin/python" -m pip install --quiet -r "$reqs"
fi
"$dir/bin/python" -c 'import openai, sys; print("client venv ready:", sys.prefix, "(openai", openai.__version__ + ")")'
