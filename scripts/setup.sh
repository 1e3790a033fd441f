#!/usr/bin/env bash
# Set-up shared by ./run_all.sh and ./run_tests.sh: creates .venv on first use, installs the pinned
# dependencies and this package (again only when pyproject.toml changed), and fetches the offline data
# (a no-op once the data cache holds verified copies). A second call takes seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
    echo "[setup] creating .venv (first use; installing torch takes a few minutes)"
    python3 -m venv .venv
fi
stamp=.venv/.repro-installed
want=$(sha256sum pyproject.toml | cut -c1-64)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "[setup] installing pinned dependencies into .venv"
    # pip's notes about missing local index folders are noise here; real errors still stop the script.
    # runtime pins plus the extras the two commands need: run (papermill, Dask), test (pytest, nbval), site
    .venv/bin/python -m pip install -q -e ".[run,test,site]" 2> >(grep -v "^WARNING: Location" >&2)
    echo "$want" > "$stamp"
fi
.venv/bin/python -m gsmu.base.data > /dev/null
