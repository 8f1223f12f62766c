#!/usr/bin/env bash
# Make sure a PostgreSQL server is installed for the team-ledger tests (tests/pg, and the e2e
# tests of issue 17): Debian's `postgresql` package. Nothing is started here and no cluster is
# used: the tests run their own throwaway server (tests/pg/pgserver.py) with initdb in /tmp.
#
# Why the Debian package and not a wheel that ships the server: it is the server our users run
# (maintained, with security updates, the same major version the distribution supports), apt
# reaches it on every developer machine and in CI, and it creates the unprivileged `postgres`
# user that the tests need when they run as root (postgres refuses to run as root).
set -euo pipefail
have() { command -v pg_ctl >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null; }
if have && { [ "$(id -u)" != 0 ] || id postgres >/dev/null 2>&1; }; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "scripts/install_postgres.sh: PostgreSQL is missing: run \`sudo apt-get install postgresql\`" >&2
  exit 1
fi
echo "installing Debian's postgresql package (for the team-ledger tests)" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq postgresql >/dev/null
have || { echo "scripts/install_postgres.sh: pg_ctl not found after installing postgresql" >&2; exit 1; }
