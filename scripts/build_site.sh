#!/usr/bin/env bash
# Build the static results site (Sphinx + myst-nb) from the executed notebooks of the last run into
# build/site/ (open build/site/index.html). Options: --profile quick|paper, --results DIR, --out DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! .venv/bin/python -c "import myst_nb, sphinx" 2>/dev/null; then
    .venv/bin/python -m pip install -q -e ".[site]"
fi
exec .venv/bin/python scripts/build_site.py "$@"
