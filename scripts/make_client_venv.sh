#!/usr/bin/env bash
# Create the separate "client" virtualenv used by the end-to-end tests, with the real SDKs
# that users run: openai, anthropic and google-genai, each pinned to an exact version.
#
# The openai SDK (built on httpx2) cannot share a venv with mitmproxy 11.0.2
# (pip reports a dependency conflict), so e2e tests run real client programs
# (tests/e2e/clients/*.py) with this venv's python in subprocesses.
#
# Usage: scripts/make_client_venv.sh [DIR]     (default: <repo>/.venv-clients)
# Env:   PYTHON   base interpreter (default: python3.11, else python3)
#        OPENAI_SPEC / ANTHROPIC_SPEC / GENAI_SPEC  pip requirement for each SDK
#        (defaults: the pins below)
# Idempotent: creates DIR only when it has no python, and installs only the SDKs whose
# pinned version is not importable there yet (an older venv with openai alone gets the others).
set -euo pipefail

OPENAI_PIN="3.63.0"
ANTHROPIC_PIN="2.17.0"
GENAI_PIN="3.6.1"

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
dir="${1:-$repo/.venv-clients}"
openai_spec="${OPENAI_SPEC:-openai==$OPENAI_PIN}"
anthropic_spec="${ANTHROPIC_SPEC:-anthropic==$ANTHROPIC_PIN}"
genai_spec="${GENAI_SPEC:-google-genai==$GENAI_PIN}"

py="${PYTHON:-}"
if [[ -z "$py" ]]; then
    if command -v python3.11 >/dev/null 2>&1; then py=python3.11; else py=python3; fi
fi

if [[ ! -x "$dir/bin/python" ]]; then
    echo "creating client venv in $dir with $py" >&2
    "$py" -m venv "$dir"
    "$dir/bin/python" -m pip install --quiet --upgrade pip >/dev/null 2>&1 || true
fi

has() {  # MODULE DIST SPEC -> 0 when DIST is importable at the version SPEC pins (any, if unpinned)
    "$dir/bin/python" - "$1" "$2" "$3" <<'PY' >/dev/null 2>&1
import importlib, importlib.metadata as md, sys
mod, dist, spec = sys.argv[1:]
importlib.import_module(mod)
if "==" in spec and md.version(dist) != spec.split("==", 1)[1].strip():
    sys.exit(1)
PY
}

want=()
has openai openai "$openai_spec" || want+=("$openai_spec")
has anthropic anthropic "$anthropic_spec" || want+=("$anthropic_spec")
has google.genai google-genai "$genai_spec" || want+=("$genai_spec")
if ((${#want[@]})); then
    echo "installing ${want[*]} into $dir" >&2
    "$dir/bin/python" -m pip install --quiet "${want[@]}"
fi
"$dir/bin/python" -c 'import sys, openai, anthropic, google.genai as g
print("client venv ready:", sys.prefix, "(openai", openai.__version__ + ", anthropic", anthropic.__version__ + ", google-genai", g.__version__ + ")")'
