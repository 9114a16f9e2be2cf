#!/usr/bin/env bash
# A longer fuzzing campaign than CI's: the peer-answer parsers (hypothesis, random seed, EXAMPLES per
# test) and real workers against the emulator's hostile-peer mode (ROWS rows, HOSTILE_P of the answers
# hostile). Prints hypothesis' statistics (examples tried per test) and the hostile answers sent.
#
#   bench/fuzz_answers.sh [EXAMPLES] [ROWS]        (defaults: 20000 examples per test, 2000 rows)
#
# Needs the test setup (scripts/test.sh) and a PostgreSQL (GXSUBMIT_TEST_DATABASE_URL).
set -euo pipefail
cd "$(dirname "$0")/.."
py=${PYTHON:-.venv/bin/python}
examples=${1:-20000}
rows=${2:-2000}
GXSUBMIT_FUZZ_EXAMPLES="$examples" GXSUBMIT_FUZZ_RANDOM=1 "$py" -m pytest -q -p no:cacheprovider \
    --hypothesis-show-statistics tests/unit/test_hostile_answers.py
GXSUBMIT_HOSTILE_ROWS="$rows" GXSUBMIT_HOSTILE_P="${HOSTILE_P:-0.5}" "$py" -m pytest -q -s -p no:cacheprovider \
    tests/acceptance/test_hostile_peer.py
