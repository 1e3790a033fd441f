"""Benchmark (run on demand): the main job's sweep on Dask with 1 vs 2 workers, and the cost per job.

`python bench/sweep.py [--only '0[56]_*'] [--workers 1 2] [--noop-jobs 8]`

1. Wall time of the quick grid of the notebooks matching `--only` (default: notebooks 05 and 06 with seeds
   {0, 1, 2}, six jobs — a representative subset: the whole quick grid takes tens of minutes per setting)
   through `python -m gsmu.runner` with each worker count. Every setting starts from an empty checkpoint
   cache (the data cache is shared), so each trains what a fresh clone trains; results go to a temporary
   folder. Prints the times and the speed-up.
2. Cost per job: `--noop-jobs` jobs of a notebook that does nothing (only its parameters cell), submitted
   one after the other to a LocalCluster with one worker. For each: the round trip seen by the client,
   the worker-side time of the job (kernel start, papermill, kernel shutdown, job.json) and the cells'
   time. Dask's scheduling overhead = round trip − worker-side time; the fixed cost of a job = worker-side
   time − cells' time. Prints the medians.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent


def sweep(only: str, workers: int, data_cache: Path) -> tuple[float, int, int]:
    """Run the grid of `only` with `workers` workers into a fresh results folder and checkpoint cache."""
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        cache = Path(tmp) / "cache"
        cache.mkdir()
        (cache / "data").symlink_to(data_cache)
        env = {**os.environ, "REPRO_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
        t0 = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "gsmu.runner", "--only", only, "--workers", str(workers),
                               "--results", str(Path(tmp) / "results")], env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n", file=sys.stderr)
        from gsmu.runner import find_notebooks
        chosen = {b.stem for b in find_notebooks(ROOT / "notebooks", only)}
        jobs = [j for j in json.loads((Path(tmp) / "results" / "summary.json").read_text())["jobs"]
                if j["notebook"] in chosen]  # the summary also lists the notebooks not selected
        return wall, sum(j["status"] == "passed" for j in jobs), len(jobs)


def noop_overhead(n: int) -> dict[str, float]:
    """Medians over `n` no-op jobs: client round trip, worker-side time, cells' time (seconds)."""
    from distributed import Client, LocalCluster

    from gsmu import runner
    with tempfile.TemporaryDirectory(prefix="bench-noop-") as tmp:
        nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                              "language": "python"}})
        cell = nbformat.v4.new_code_cell('profile: str = "quick"  # unused\nseed: int = 0  # unused')
        cell.metadata["tags"] = ["parameters"]
        nb.cells = [cell]
        book = Path(tmp) / "noop.ipynb"
        nbformat.write(nb, book)
        rows = []
        with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, \
                Client(cluster) as client:
            for i in range(n + 1):  # the first job warms the worker up (imports): not counted
                job = runner.Job(book, {"profile": "quick", "seed": i}, f"noop{i}", Path(tmp) / "runs" / f"noop{i}", i)
                t0 = time.perf_counter()
                info = client.submit(runner.run_job, job.spec(force=True), pure=False).result()
                rows.append((time.perf_counter() - t0, info["seconds"], info["cells_seconds"]))
        rows = rows[1:]
    med = lambda k: statistics.median(r[k] for r in rows)  # noqa: E731
    return {"round_trip": med(0), "worker_side": med(1), "cells": med(2),
            "scheduling": statistics.median(r[0] - r[1] for r in rows),
            "fixed_per_job": statistics.median(r[1] - r[2] for r in rows)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default="0[56]_*", help="notebooks whose quick grid is timed (glob or substring)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to compare")
    parser.add_argument("--noop-jobs", type=int, default=8, help="no-op jobs for the per-job overhead (0: skip)")
    parser.add_argument("--skip-sweep", action="store_true", help="only measure the per-job overhead")
    args = parser.parse_args()
    if any(w < 1 for w in args.workers) or args.noop_jobs < 0:
        parser.error("--workers must be >= 1 and --noop-jobs >= 0")
    from gsmu.base.runtime import cache_dir
    print(f"CPU cores: {os.cpu_count()}, load average before: {os.getloadavg()[0]:.1f}")
    if not args.skip_sweep:
        times = {}
        for w in args.workers:
            wall, passed, total = sweep(args.only, w, cache_dir("data"))
            times[w] = wall
            print(f"--only {args.only!r}: {total} jobs ({passed} passed) with {w} worker(s): {wall:.1f} s "
                  f"(load average now {os.getloadavg()[0]:.1f})", flush=True)
        base = times[args.workers[0]]
        for w in args.workers[1:]:
            print(f"speed-up {args.workers[0]} -> {w} workers: {base / times[w]:.2f}x")
    if args.noop_jobs:
        o = noop_overhead(args.noop_jobs)
        print(f"no-op job (median of {args.noop_jobs}): round trip {o['round_trip']:.2f} s = Dask scheduling "
              f"{o['scheduling']:.3f} s + on the worker {o['worker_side']:.2f} s (kernel start/stop and papermill "
              f"{o['fixed_per_job']:.2f} s + cells {o['cells']:.3f} s)")


if __name__ == "__main__":
    main()
