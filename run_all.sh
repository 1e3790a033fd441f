#!/usr/bin/env bash
# The main job: executes every notebook headlessly with papermill into results/<profile>/ and writes
# summary.json / summary.md.   Usage: ./run_all.sh [--profile quick|paper] [--only PATTERN]
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
exec .venv/bin/python -m lib.runner "$@"
