#!/usr/bin/env bash
# Create the separate "client" virtualenv used by the end-to-end tests.
#
# The openai SDK (built on httpx2) cannot share a venv with mitmproxy 11.0.2
# (pip reports a dependency conflict), so e2e tests run real client programs
# (tests/e2e/clients/*.py) with this venv's python in subprocesses.
#
# Usage: scripts/make_client_venv.sh [DIR]     (default: <repo>/.venv-clients)
# Env:   PYTHON   base interpreter (default: python3.11, else python3)
#        OPENAI_SPEC  pip requirement for the SDK (default: "openai")
# Idempotent: does nothing if DIR/bin/python can already `import openai`.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
dir="${1:-$repo/.venv-clients}"
spec="${OPENAI_SPEC:-openai}"

if [[ -x "$dir/bin/python" ]] && "$dir/bin/python" -c 'import openai' >/dev/null 2>&1; then
    echo "client venv ready: $dir (openai $("$dir/bin/python" -c 'import openai; print(openai.__version__)'))"
    exit 0
fi

py="${PYTHON:-}"
if [[ -z "$py" ]]; then
    if command -v python3.11 >/dev/null 2>&1; then py=python3.11; else py=python3; fi
fi

echo "creating client venv in $dir with $py" >&2
"$py" -m venv "$dir"
"$dir/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
"$dir/bin/python" -m pip install --quiet "$spec"
"$dir/bin/python" -c 'import openai, sys; print("client venv ready:", sys.prefix, "(openai", openai.__version__ + ")")'
