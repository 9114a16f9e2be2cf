#!/usr/bin/env bash
# mypy (settings in setup.cfg): the package, then the tests, one directory per run.
# pytest puts each test directory on sys.path (test modules import their neighbours and the helpers
# in tests/ by bare name), so each directory is its own import root; several hold a conftest.py,
# which is why they cannot share one run. Every run is made; the exit status is 1 if any failed.
set -uo pipefail
cd "$(dirname "$0")/.."
MYPY=${MYPY:-.venv/bin/mypy}
rc=0
"$MYPY" gxsubmit || rc=1
MYPYPATH=tests "$MYPY" tests/*.py || rc=1
for dir in tests/*/; do
  dir=${dir%/}
  compgen -G "$dir/*.py" >/dev/null || continue  # tests/node: JavaScript only
  MYPYPATH="tests:$dir" "$MYPY" "$dir" || rc=1
done
exit "$rc"
