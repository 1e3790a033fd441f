#!/usr/bin/env bash
# The test command: unit tests of lib/, then nbval re-executes every notebook (quick profile) and
# compares its outputs with the committed ones (floats truncated by tests/nbval_sanitize.cfg).
# Extra arguments go to pytest (e.g. ./run_tests.sh tests/ to skip the notebooks).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
# One CPU thread unless told otherwise: results are then bit-identical run to run (nbval compares them),
# and torch with 2 threads on a busy 2-core machine was measured 16x slower.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export REPRO_RESULTS="${REPRO_RESULTS:-$(mktemp -d)}"   # keep test runs out of results/
if [ $# -eq 0 ]; then set -- tests notebooks; fi
exec .venv/bin/python -m pytest --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg \
    --durations=15 "$@"
