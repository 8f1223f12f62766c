#!/usr/bin/env bash
# Set up pouch with its test extras and the client venv (the openai SDK cannot share a venv
# with mitmproxy 11), then run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
scripts/make_client_venv.sh
exec .venv/bin/python -m pytest "$@"
