#!/usr/bin/env bash
# The main job: runs every notebook's grid of parameter sets (seeds {0,1,2} by default) as papermill jobs on
# Dask distributed into results/<profile>/runs/, then writes summary.json / summary.md.
# Usage: ./run_all.sh [--profile quick|paper] [--only PATTERN] [--workers N | --scheduler tcp://HOST:PORT |
#                      --cluster slurm [--cluster-config FILE]] [--grid NAME=V1,V2] [--force]   (--help: all)
set -euo pipefail
cd "$(dirname "$0")"
bash scripts/setup.sh
# One CPU thread per job unless told otherwise: results are then bit-identical run to run (nbval compares
# them), and torch with 2 threads on a busy 2-core machine was measured 16x slower. Parallelism comes from
# running one job per core.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec .venv/bin/python -m gsmu.runner "$@"
