#!/usr/bin/env bash
# The main job: executes every notebook headlessly with papermill into results/<profile>/ and writes
# summary.json / summary.md.   Usage: ./run_all.sh [--profile quick|paper] [--only PATTERN]
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
# One CPU thread unless told otherwise: results are then bit-identical run to run (nbval compares them),
# and torch with 2 threads on a busy 2-core machine was measured 16x slower.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec .venv/bin/python -m gsmu.base.runner "$@"
