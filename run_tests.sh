#!/usr/bin/env bash
# The test command. nbval re-executes every notebook (quick profile, seed 0) and compares the outputs that
# do not depend on last-bit arithmetic (data facts, configurations, shapes; cells whose numbers come from
# training or optimization are tagged nbval-ignore-output); then pytest runs the unit tests of the package
# and tests/test_claims_bands.py checks every claim the notebooks just recorded against its reference band
# (tests/reference/quick.json, derived from a multi-seed run). Passes on any x86-64 CPU, 1 or 2 threads.
# Extra arguments go to pytest (e.g. ./run_tests.sh tests/ to skip the notebooks).
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
# The results site's browser test needs Chromium (Debian's package): installed here when we may (root + apt).
if ! command -v chromium > /dev/null && [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
    echo "[setup] installing chromium for the site's browser test"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } > /dev/null 2>&1 \
        || echo "[setup] could not install chromium: tests/test_site.py will skip its browser checks"
fi
# One CPU thread unless told otherwise: torch with 2 threads on a busy 2-core machine was measured 16x slower.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export TQDM_DISABLE=1                                    # no progress-bar fragments in notebook outputs
export REPRO_RESULTS="${REPRO_RESULTS:-$(mktemp -d)}"   # this run's claims, kept out of results/
if [ $# -eq 0 ]; then set -- notebooks tests; fi          # notebooks first: the band test reads their claims
exec .venv/bin/python -m pytest --nbval --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg \
    --durations=15 "$@"
