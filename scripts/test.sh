#!/usr/bin/env bash
# Set up pouch with its test extras, the client venv (the openai, anthropic and google-genai
# SDKs cannot share a venv with mitmproxy 11) and the coding agents the end-to-end tests run
# (Claude Code and Gemini CLI from npm) and PostgreSQL (Debian's package, for the team-ledger
# tests: scripts/install_postgres.sh), then run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --test
scripts/make_client_venv.sh
scripts/make_agent_clis.sh
scripts/install_postgres.sh
exec .venv/bin/python -m pytest "$@"
