"""The main job behind `run_all.sh`: every notebook's grid of parameter sets as jobs on Dask distributed.

A job is one papermill execution of one notebook with one parameter set: the profile plus one combination
of the notebook's grid (`gsmu.experiments.grid(stem, profile)`; seeds {0, 1, 2} by default). Its outputs
(the executed notebook, figures, `claims/`, `metrics/`, the kernel's log) go to
`results/<profile>/runs/<notebook>/<key>/`, where the key hashes the notebook's cell sources, the
parameters, the git commit and the data digests (the pinned checksums of `gsmu.base.data`). A job runs in
a private staging folder that is renamed into place when it ends, its `job.json` (parameters, status,
seconds) written last: a folder with a complete `job.json` is a finished job, anything else is incomplete.
A job whose `job.json` says "passed" is skipped on the next run (resume after Ctrl-C or a crash;
`--force` reruns).

The engine is Dask distributed: by default a `LocalCluster` with one single-threaded worker process per
core (`--workers N`); `--scheduler tcp://HOST:PORT` uses a running cluster; `--cluster slurm` starts
dask-jobqueue's `SLURMCluster` from the dask configuration (`jobqueue.slurm` in ~/.config/dask/*.yaml,
or the file given with `--cluster-config`). Jobs are submitted with `retries=1` and a priority in
critical-path order: the notebook with the longest chain of work behind it (its own `Experiment.SECONDS`
plus the notebooks that `NEEDS` its cached models) starts first, so the workers stay busy until the end.
A job whose notebook raises fails alone; a kernel or worker that dies is retried on another worker. The
run ends with a table, and exits 1 naming the failed jobs and their executed notebooks.

The summary (`summary.json`, validated by `schemas/summary.schema.json`, and `summary.md`) is rebuilt from
what exists on disk under `runs/`, never from a list kept by an earlier run: the per-seed claim rows of
every passed job of the current grid are aggregated with `gsmu.base.claims.aggregate`.
"""
from __future__ import annotations

import argparse
import ast
import fnmatch
import hashlib
import itertools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from .base.claims import aggregate, as_dict, markdown_tables, read_json
from .base.runtime import PROFILES, atomic_write, repo_root

PACKAGES = ("torch", "torchvision", "numpy", "scipy", "scikit-learn", "torchmetrics", "papermill", "nbval",
            "dask", "distributed")
JOB_FILE = "job.json"


# --- jobs ---------------------------------------------------------------------------------------------------
@dataclass
class Job:
    """One notebook with one parameter set; `out` is its folder results/<profile>/runs/<notebook>/<key>."""
    notebook: Path
    parameters: dict
    key: str
    out: Path
    order: int  # position of the notebook in start order (longest chain first), then of the parameter set
    env: dict = field(default_factory=dict)

    @property
    def stem(self) -> str:
        return self.notebook.stem

    @property
    def name(self) -> str:
        shown = ", ".join(f"{k}={v}" for k, v in self.parameters.items() if k != "profile")
        return f"{self.stem}[{shown}]"

    def spec(self, force: bool) -> dict:
        """What a worker needs (plain data: it travels to other machines)."""
        return {"notebook": str(self.notebook), "parameters": self.parameters, "key": self.key,
                "out": str(self.out), "force": force, "env": self.env}


def find_notebooks(folder: Path, only: str | None = None) -> list[Path]:
    """Notebooks under `folder` in execution order (file name), optionally those matching `only` (glob or substring)."""
    if not folder.is_dir():
        raise ValueError(f"--notebooks {folder}: no such folder.")
    books = sorted(p for p in folder.glob("*.ipynb") if not p.name.startswith("."))
    if only is not None:
        if not only.strip():
            raise ValueError("--only '' is empty: give a notebook name pattern (e.g. --only 02 or --only 'slingshot*').")
        pattern = only if any(c in only for c in "*?[") else f"*{only}*"
        books = [p for p in books if fnmatch.fnmatch(p.name, pattern)]
    return books


def notebook_digest(book: Path) -> str:
    """SHA-256 of a notebook's cell types and sources (not its outputs: refreshing them changes no result)."""
    cells = json.loads(book.read_text()).get("cells", [])
    h = hashlib.sha256()
    for cell in cells:
        source = cell.get("source", "")
        h.update(cell.get("cell_type", "").encode() + b"\0" + ("".join(source) if isinstance(source, list)
                                                             else source).encode() + b"\0")
    return h.hexdigest()


def declared_parameters(book: Path) -> set[str]:
    """Names of the parameters a notebook's `parameters` cell declares (papermill's own reading of it)."""
    import papermill as pm
    return set(pm.inspect_notebook(str(book)))


def declared_defaults(book: Path) -> dict[str, object]:
    """The default values of a notebook's parameters (those written as Python literals; papermill's reading)."""
    import papermill as pm
    out = {}
    for name, info in pm.inspect_notebook(str(book)).items():
        try:
            out[name] = ast.literal_eval(info["default"])
        except (ValueError, SyntaxError):
            continue  # not a literal: it never equals a grid value
    return out


def data_digest() -> str:
    """SHA-256 over the pinned checksums of every data file (`gsmu.base.data.SOURCES`) and, where the data
    module names a mirror with a SHA256SUMS file, that file."""
    from .base import data
    h = hashlib.sha256()
    for src in sorted(data.SOURCES.values(), key=lambda s: s.file):
        h.update(f"{src.file} {src.sha256}\n".encode())
    mirror = getattr(data, "mirror_dir", None)
    try:
        sums = Path(mirror()) / "SHA256SUMS" if callable(mirror) else None
    except Exception:  # no mirror configured
        sums = None
    if sums is not None and sums.is_file():
        h.update(sums.read_bytes())
    return h.hexdigest()


def git_commit(root: Path | None) -> str:
    """The checkout's commit ($REPRO_COMMIT overrides it, e.g. for an installed copy); 'unknown' without git."""
    if os.environ.get("REPRO_COMMIT"):
        return os.environ["REPRO_COMMIT"]
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root or Path.cwd(), capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def job_key(notebook: str, parameters: dict, commit: str, data: str) -> str:
    """Short hash of the notebook's content digest, the parameters, the commit and the data digest."""
    blob = json.dumps({"notebook": notebook, "parameters": parameters, "commit": commit, "data": data},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def parse_grid(items: list[str] | None) -> dict[str, list]:
    """`--grid seed=0,1,2 --grid alpha=0.5,0.9` -> {"seed": [0, 1, 2], "alpha": [0.5, 0.9]} (Python literals,
    else strings)."""
    out: dict[str, list] = {}
    for item in items or []:
        name, sep, values = item.partition("=")
        name = name.strip()
        if not sep or not name.isidentifier() or not values.strip():
            raise ValueError(f"--grid {item!r}: write NAME=V1,V2,... (e.g. --grid seed=0,1,2).")
        if name == "profile":
            raise ValueError("--grid profile=...: choose the profile with --profile.")
        parsed = []
        for text in values.split(","):
            text = text.strip()
            if not text:
                raise ValueError(f"--grid {item!r}: empty value in the list.")
            low = text.lower()
            if low in ("true", "false", "none"):
                text = {"true": "True", "false": "False", "none": "None"}[low]
            try:
                parsed.append(ast.literal_eval(text))
            except (ValueError, SyntaxError):
                parsed.append(text)
        out[name] = parsed
    return out


def plan(books: list[Path], profile: str, results: Path, grid_override: dict[str, list],
         commit: str, data: str, env: dict | None = None) -> list[Job]:
    """Every job of `books`' grids (with `grid_override` replacing the named parameters' values)."""
    from .experiments import critical_path, grid
    stems = [b.stem for b in books]
    chain = critical_path(stems, profile)
    # Longest chain first; ties keep file order (a later notebook may load an earlier one's cached model).
    rank = {stem: r for r, stem in enumerate(sorted(stems, key=lambda s: (-chain[s], stems.index(s))))}
    jobs = []
    for book in books:
        i = rank[book.stem]
        g = {**grid(book.stem, profile), **grid_override}
        digest = notebook_digest(book)
        names = list(g)
        for j, values in enumerate(itertools.product(*(g[n] for n in names))):
            params = {"profile": profile, **dict(zip(names, values))}
            key = job_key(digest, params, commit, data)
            jobs.append(Job(book, params, key, results / "runs" / book.stem / key, order=i * 10_000 + j,
                            env=dict(env or {})))
    return jobs


def read_job(folder: Path) -> dict | None:
    """A job folder's job.json, or None when it is missing or unreadable (the job is then incomplete)."""
    try:
        info = json.loads((folder / JOB_FILE).read_text())
        return info if isinstance(info, dict) and info.get("status") in ("passed", "failed") else None
    except (OSError, ValueError):
        return None


# --- on a worker ----------------------------------------------------------------------------------------------
class KernelDied(RuntimeError):
    """The kernel or the machinery around it failed (not the notebook's code): worth a retry elsewhere."""


def _finish(staging: Path, out: Path) -> None:
    """Move the finished staging folder to `out` (replacing an earlier attempt's folder)."""
    old = None
    if out.exists():
        old = out.with_name(f".{out.name}.old-{uuid.uuid4().hex[:8]}")
        out.rename(old)
    staging.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def run_job(spec: dict) -> dict:
    """Execute one job (on a Dask worker): papermill in a fresh kernel, outputs into a staging folder that is
    renamed to the job's folder at the end, job.json written last. Returns the job.json content.

    A notebook that raises gives status "failed" (its executed notebook shows the error); a kernel that dies
    or cannot start raises `KernelDied` after writing the failure, so Dask retries the job once.
    """
    import papermill as pm
    from jupyter_client.manager import KernelManager
    from papermill.exceptions import PapermillExecutionError

    book, out = Path(spec["notebook"]), Path(spec["out"])
    done = read_job(out)
    if done and done["status"] == "passed" and not spec["force"]:
        return {**done, "skipped": True}
    staging = out.with_name(f".{out.name}.attempt-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    staging.mkdir(parents=True)
    env = {**os.environ, "REPRO_RESULTS": str(staging), "REPRO_NOTEBOOK": book.stem, "TQDM_DISABLE": "1",
           "OMP_NUM_THREADS": "1", "PYDEVD_DISABLE_FILE_VALIDATION": "1", **spec.get("env", {})}
    # Dask's nanny exports MALLOC_TRIM_THRESHOLD_ to its workers (distributed.nanny.pre-spawn-environ) for its own
    # memory reporting. Inherited by the kernel, it switches off glibc's dynamic mmap threshold, so every large
    # tensor is mmapped and page-faulted afresh: on the 2-core CPU a CNN step ran 1.5x and notebook 00's training
    # 1.9x slower (56 s vs 29 s). The kernel is a process of its own; the worker keeps the setting.
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    # IPC transport (unix sockets in a private folder): no network ports, and no "running over TCP without
    # encryption" warning from the kernel.
    sockets = tempfile.mkdtemp(prefix="gsmu-k")
    km = KernelManager(kernel_name="python3", transport="ipc", ip=os.path.join(sockets, "k"))
    info = {"notebook": book.stem, "key": out.name, "parameters": spec["parameters"], "status": "failed",
            "seconds": None, "cells_seconds": None, "executed": f"{book.stem}/{out.name}/{book.name}",
            "error": None, "host": platform.node(), "pid": os.getpid(),
            "started": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    start, retry = time.time(), None
    nb = None
    try:
        with open(staging / "kernel.log", "w") as log:
            km.start_kernel(env=env, cwd=str(book.parent), stdout=log, stderr=log)
            try:
                nb = pm.execute_notebook(str(book), str(staging / book.name), parameters=spec["parameters"],
                                         kernel_name="python3", km=km, progress_bar=False, log_output=False,
                                         start_timeout=300)
                info["status"] = "passed"
            finally:
                km.shutdown_kernel(now=True)
    except PapermillExecutionError as e:  # the notebook's own code raised: a real failure, no retry
        info["error"] = f"{e.ename}: {e.evalue}"[:2000]
    except Exception as e:  # the kernel died, did not start, ...: infrastructure, retried once
        info["error"] = f"{type(e).__name__}: {str(e).strip()[:2000]}"
        retry = e
    finally:
        shutil.rmtree(sockets, ignore_errors=True)
    info["seconds"] = round(time.time() - start, 3)
    if nb is None and (staging / book.name).exists():
        try:
            import nbformat
            nb = nbformat.read(staging / book.name, 4)
        except Exception:
            nb = None
    if nb is not None:
        info["cells_seconds"] = round(sum(float(c.metadata.get("papermill", {}).get("duration") or 0)
                                          for c in nb.cells), 3)
    atomic_write(staging / JOB_FILE, json.dumps(info, indent=1))  # last: marks the folder complete
    _finish(staging, out)
    if retry is not None:
        raise KernelDied(f"{book.stem} {spec['parameters']}: {info['error']}") from retry
    return info


# --- the summary, rebuilt from disk -----------------------------------------------------------------------------
def hardware() -> dict:
    """CPU model, core count, GPU (if any), threads per job."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = None
    try:
        import torch
        if torch.cuda.is_available():
            gpu = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    except Exception:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "gpu": gpu, "machine": platform.machine(),
            "system": platform.system(), "omp_threads_per_job": int(os.environ.get("OMP_NUM_THREADS", "1"))}


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def _varying(stem: str, group: list[Job]) -> list[str]:
    """The parameters whose values differ between `stem`'s jobs, besides profile, seed and the notebook's
    `SPLITS` (which only spread one result's work over jobs): each value of these is a setting of its own."""
    from .experiments import splits
    fixed = {"profile", "seed", *splits(stem)}
    return [n for n in group[0].parameters if n not in fixed
            and len({json.dumps(j.parameters[n], default=str) for j in group}) > 1]


def claim_id_suffix(parameters: dict, varying: list[str], defaults: dict[str, object]) -> str:
    """For grids that sweep more than seeds: '.alpha_0_5' so claims of different settings stay apart. A job
    at the notebook's own defaults (`defaults`, `declared_defaults`) in every varying parameter keeps the plain
    ids: adding a setting to a grid (e.g. CIFAR-10 beside MNIST) does not rename the default's claims."""
    if all(n in defaults and json.dumps(parameters[n], default=str) == json.dumps(defaults[n], default=str)
           for n in varying):
        return ""
    parts = []
    for name in varying:
        value = "".join(c if c.isalnum() else "_" for c in str(parameters[name]).lower())
        parts.append(f"{name.lower()}_{value}".strip("_"))
    return "".join(f".{p}" for p in parts)


def build_summary(results: Path, jobs: list[Job], profile: str, commit: str, started: str, seconds: float,
                  workers: str) -> tuple[dict, list[str]]:
    """The summary of the current grid `jobs` from what is on disk; also a list of problems found."""
    problems: list[str] = []
    rows_claims, rows_metrics, table = [], [], []
    by_notebook: dict[str, list[Job]] = {}
    for job in jobs:
        by_notebook.setdefault(job.stem, []).append(job)
    for stem, group in by_notebook.items():
        varying = _varying(stem, group)
        defaults = declared_defaults(group[0].notebook) if varying else {}
        for job in group:
            info = read_job(job.out)
            row = {"notebook": stem, "key": job.key, "parameters": job.parameters, "status": "incomplete",
                   "seconds": None, "executed": None, "error": None}
            if info is None:
                row["error"] = "not run" if not job.out.exists() else "no complete job.json (interrupted?)"
                if job.out.exists():
                    problems.append(f"{job.name}: {row['error']} in {job.out}")
            else:
                row.update(status=info["status"], seconds=info.get("seconds"), error=info.get("error"),
                           executed=str((job.out / job.notebook.name).relative_to(results)))
            if row["status"] == "passed":
                suffix = claim_id_suffix(job.parameters, varying, defaults)
                try:  # all of a job's rows or none of them
                    claims_here, metrics_here = [], []
                    for path in sorted((job.out / "claims").glob("*.json")):
                        for claim in read_json(path).values():
                            claims_here.append({**claim, "id": claim["id"] + suffix})
                    for path in sorted((job.out / "metrics").glob("*.json")):
                        metrics_here.append({"notebook": stem, "key": job.key, "parameters": job.parameters,
                                             **read_json(path)})
                    rows_claims += claims_here
                    rows_metrics += metrics_here
                except (ValueError, KeyError, AttributeError, TypeError) as e:
                    problems.append(f"{job.name}: unreadable claims/metrics ({e}); counted as incomplete — "
                                    f"rerun it with --force --only {stem}")
                    row.update(status="incomplete", error=f"corrupt claims/metrics: {e}"[:500])
            table.append(row)
    claims = []
    try:
        claims = aggregate(rows_claims)
    except (KeyError, TypeError, ValueError) as e:
        problems.append(f"claims could not be aggregated: {e}")
    summary = {"profile": profile, "commit": commit, "started": started, "seconds": round(seconds, 1),
               "versions": _versions(), "hardware": {**hardware(), "workers": workers},
               "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
               "jobs": table, "claims": [as_dict(c) for c in claims], "metrics": rows_metrics}
    return summary, problems


def _fmt_params(params: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items() if k != "profile") or "—"


def summary_markdown(summary: dict, claims_md: str) -> str:
    hw = summary["hardware"]
    jobs = summary["jobs"]
    counts = {s: sum(j["status"] == s for j in jobs) for s in ("passed", "failed", "incomplete")}
    lines = [f"# Results — profile `{summary['profile']}`", "",
             f"Commit `{summary['commit'][:12]}`, run started {summary['started']}, summary written "
             f"{summary['date']}, {summary['seconds']:.0f} s.", "",
             f"Hardware: {hw['cpu']} ({hw['cores']} cores), GPU: {hw['gpu'] or 'none'}, "
             f"{hw['omp_threads_per_job']} thread(s) per job, workers: {hw['workers']}.", "",
             "Versions: " + ", ".join(f"{k} {v}" for k, v in summary["versions"].items()), "",
             f"Jobs: {counts['passed']} passed, {counts['failed']} failed, {counts['incomplete']} incomplete "
             f"(of {len(jobs)}).", "",
             "| notebook | parameters | status | seconds | executed notebook |", "|---|---|---|---|---|"]
    for j in jobs:
        secs = f"{j['seconds']:.0f}" if isinstance(j["seconds"], (int, float)) else "—"
        status = j["status"] if j["status"] == "passed" else f"**{j['status']}**"
        lines.append(f"| {j['notebook']} | {_fmt_params(j['parameters'])} | {status} | {secs} | "
                     f"{j['executed'] or '—'} |")
    lines += ["", "## Claims", "", claims_md or "(no claims recorded)", ""]
    return "\n".join(lines)


def write_summary(results: Path, summary: dict) -> str:
    """Write summary.json and summary.md atomically; return the claims tables (markdown)."""
    from .base.claims import Claim
    claims_md = markdown_tables([Claim.from_dict(c) for c in summary["claims"]])
    atomic_write(results / "summary.json", json.dumps(summary, indent=1, default=str))
    atomic_write(results / "summary.md", summary_markdown(summary, claims_md))
    return claims_md


# --- the engine -------------------------------------------------------------------------------------------------
def slurm_cluster(config_file: str | None = None):
    """dask-jobqueue's SLURMCluster configured by the dask config (`jobqueue: slurm:` in ~/.config/dask/*.yaml)
    and, on top, by `config_file` (the same YAML layout); no worker job is submitted yet."""
    import dask
    import yaml
    if config_file:
        dask.config.update(dask.config.config, yaml.safe_load(Path(config_file).read_text()) or {}, priority="new")
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise SystemExit("--cluster slurm needs dask-jobqueue: pip install dask-jobqueue") from None
    return SLURMCluster()


def _start_client(args):
    """A dask.distributed Client for the chosen engine, and a description of it."""
    from distributed import Client, LocalCluster
    if args.scheduler:
        return Client(args.scheduler, timeout="30s"), None, f"scheduler {args.scheduler}"
    if args.cluster == "slurm":
        cluster = slurm_cluster(args.cluster_config)
        cluster.scale(args.workers or 1)
        return Client(cluster), cluster, f"Slurm, {args.workers or 1} worker job(s)"
    n = args.workers or os.cpu_count() or 1
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0")
    return Client(cluster), cluster, f"LocalCluster, {n} single-threaded worker(s)"


def _dashboard(client) -> str:
    try:
        import bokeh  # noqa: F401 — the dashboard needs it
        return f"dashboard: {client.dashboard_link}"
    except ImportError:
        return "dashboard: not served (install bokeh to get it)"


def execute(jobs: list[Job], args, engine: list[str]) -> dict[str, dict]:
    """Submit the jobs not done yet; return {key: outcome} for the ones this run submitted."""
    from distributed import as_completed
    from tqdm import tqdm
    client, cluster, what = _start_client(args)
    engine.append(what)
    outcomes: dict[str, dict] = {}
    try:
        print(f"[run] {what}; {_dashboard(client)}", flush=True)
        futures = {}
        for job in jobs:
            fut = client.submit(run_job, job.spec(args.force), key=f"job-{job.stem}-{job.key}", pure=False,
                                retries=1, priority=-job.order)
            futures[fut] = job
        bar = tqdm(total=len(futures), unit="job", desc="jobs", dynamic_ncols=True, disable=None,
                   file=sys.stdout)
        for done, fut in enumerate(as_completed(futures), 1):
            job = futures[fut]
            try:
                info = fut.result()
                outcomes[job.key] = info
            except Exception as e:  # retries used up, the worker died twice, ...
                outcomes[job.key] = {"status": "failed", "error": f"{type(e).__name__}: {e}"[:2000]}
                if read_job(job.out) is None:  # nobody wrote the failure down: the driver does
                    job.out.mkdir(parents=True, exist_ok=True)
                    atomic_write(job.out / JOB_FILE, json.dumps(
                        {"notebook": job.stem, "key": job.key, "parameters": job.parameters, "status": "failed",
                         "seconds": None, "executed": None, "error": outcomes[job.key]["error"]}, indent=1))
            bar.update(1)
            o = outcomes[job.key]
            bar.set_postfix_str(f"{job.name} {o['status']}")
            if bar.disable:  # not a terminal (a log file, CI): one line per finished job instead of the bar
                print(f"[run] {done}/{len(futures)} {job.name} {o['status']} in {o.get('seconds') or 0:.0f} s",
                      flush=True)
            if o["status"] != "passed":
                bar.write(f"[run] FAILED {job.name}: {o.get('error')}")
        bar.close()
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return outcomes


def _clean_staging(jobs: list[Job]) -> None:
    """Remove staging folders of attempts that never finished (a killed worker's)."""
    for folder in {job.out.parent for job in jobs}:
        if folder.is_dir():
            for p in folder.glob(".*.attempt-*"):
                shutil.rmtree(p, ignore_errors=True)


# --- the command line ---------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(prog="run_all.sh", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick", choices=PROFILES,
                        help="quick: CPU, minutes, real data at reduced size (default); paper: the papers' sizes (GPU)")
    parser.add_argument("--only", default=None, help="run only notebooks whose file name matches (glob or substring)")
    parser.add_argument("--notebooks", default=None, help="folder of notebooks (default: notebooks/)")
    parser.add_argument("--results", default=None, help="output folder (default: results/<profile>/)")
    parser.add_argument("--grid", action="append", metavar="NAME=V1,V2",
                        help="replace a parameter's values in every selected notebook's grid (repeatable)")
    parser.add_argument("--workers", type=int, default=None,
                        help="worker processes of the local cluster (default: one per core) or Slurm worker jobs")
    parser.add_argument("--scheduler", default=None, metavar="tcp://HOST:PORT", help="use a running Dask scheduler")
    parser.add_argument("--cluster", choices=("local", "slurm"), default="local",
                        help="local (default) or slurm (dask-jobqueue's SLURMCluster, see --cluster-config)")
    parser.add_argument("--cluster-config", default=None, metavar="FILE",
                        help="YAML with a dask config (jobqueue: slurm: cores, memory, queue, ...) for --cluster slurm")
    parser.add_argument("--force", action="store_true", help="rerun jobs that already passed")
    parser.add_argument("--summary-only", action="store_true", help="run nothing; rebuild the summary from disk")
    parser.add_argument("--readme", action="store_true", help="print the claims tables (to paste into README.md)")
    args = parser.parse_args(argv)
    if args.workers is not None and args.workers < 1:
        parser.error(f"--workers {args.workers}: give at least 1.")
    if args.scheduler is not None:
        if "://" not in args.scheduler or not args.scheduler.split("://", 1)[1]:
            parser.error(f"--scheduler {args.scheduler!r}: give an address such as tcp://127.0.0.1:8786.")
        if args.workers is not None or args.cluster != "local":
            parser.error("--scheduler uses a running cluster: drop --workers/--cluster (its workers are its own).")
    if args.cluster_config is not None:
        if args.cluster != "slurm":
            parser.error("--cluster-config is for --cluster slurm.")
        if not Path(args.cluster_config).is_file():
            parser.error(f"--cluster-config {args.cluster_config}: no such file.")
    try:
        args.grid_override = parse_grid(args.grid)
        root = repo_root() or Path.cwd()
        args.folder = (Path(args.notebooks) if args.notebooks else root / "notebooks").resolve()
        args.books = find_notebooks(args.folder, args.only)
    except ValueError as e:
        parser.error(str(e))
    if not args.books:
        parser.error(f"no notebook in {args.folder} matches --only {args.only!r}.")
    args.results_dir = (Path(args.results) if args.results else root / "results" / args.profile).resolve()
    if args.results_dir.exists() and not args.results_dir.is_dir():
        parser.error(f"--results {args.results_dir} is a file, not a folder.")
    return args, root


def main(argv: list[str] | None = None) -> int:
    args, root = parse_args(argv)
    results = args.results_dir
    commit, data = git_commit(root), data_digest()
    env = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
    jobs = plan(args.books, args.profile, results, args.grid_override, commit, data, env)
    # the summary covers every notebook of the folder, also those not selected by --only this time
    all_books = find_notebooks(args.folder)
    # Notebooks not selected are summarized with their own grids: a --grid override reaches them only for the
    # parameters they declare (e.g. notebook 02's slingshot_lr is not a parameter of notebook 00).
    everything = []
    for book in all_books:
        if book in args.books:
            everything += [j for j in jobs if j.notebook == book]
        else:
            declared = declared_parameters(book)
            override = {k: v for k, v in args.grid_override.items() if k in declared}
            everything += plan([book], args.profile, results, override, commit, data, env)
    started, t0 = datetime.now(timezone.utc).isoformat(timespec="seconds"), time.time()

    todo = [j for j in jobs if args.force or (read_job(j.out) or {}).get("status") != "passed"]
    print(f"[run] profile {args.profile}, commit {commit[:12]}: {len(jobs)} job(s) in {len(args.books)} "
          f"notebook(s), {len(jobs) - len(todo)} already passed (skipped), {len(todo)} to run -> {results}"
          + (" (--summary-only: nothing runs)" if args.summary_only else ""), flush=True)
    outcomes, engine, code = {}, [], 0
    if todo and not args.summary_only:
        results.mkdir(parents=True, exist_ok=True)
        try:
            outcomes = execute(todo, args, engine)
        except KeyboardInterrupt:
            print("\n[run] interrupted: finished jobs are kept; rerun the same command to resume.",
                  file=sys.stderr, flush=True)
            code = 130
        _clean_staging(todo)
    summary, problems = build_summary(results, everything, args.profile, commit, started, time.time() - t0,
                                      engine[0] if engine else "none")
    results.mkdir(parents=True, exist_ok=True)
    claims_md = write_summary(results, summary)
    for p in problems:
        print(f"[summary] {p}", file=sys.stderr)

    ran = {j.key: j for j in todo if j.key in outcomes}
    if ran:
        print(f"\n{'job':<52} {'status':<8} {'seconds':>8}")
        for key, job in ran.items():
            o = outcomes[key]
            secs = o.get("seconds")
            print(f"{job.name:<52} {o['status']:<8} {secs if secs is not None else '—':>8}")
    held = sum(c["holds"] for c in summary["claims"])
    print(f"\nclaims: {held} of {len(summary['claims'])} hold; summary: {results / 'summary.md'}")
    if args.readme:
        print("\n" + claims_md)
    failed = [j for j in jobs if (read_job(j.out) or {}).get("status") == "failed"]
    for job in failed:
        info = read_job(job.out) or {}
        print(f"FAILED {job.name}: {info.get('error')}\n  see {job.out / job.notebook.name}", file=sys.stderr)
    if code:
        return code
    incomplete = [j for j in jobs if read_job(j.out) is None]
    if incomplete and not args.summary_only:
        for job in incomplete:
            print(f"INCOMPLETE {job.name}: {job.out}", file=sys.stderr)
    return 1 if failed or (incomplete and not args.summary_only) else 0


if __name__ == "__main__":
    sys.exit(main())
