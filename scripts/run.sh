#!/usr/bin/env bash
# Set up pouch in .venv and start the proxy on 127.0.0.1:8080 with the local ledger
# (~/.pouch, or $POUCH_HOME). Extra arguments go to `pouch proxy`.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
exec .venv/bin/pouch proxy "$@"
