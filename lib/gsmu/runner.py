"""The main job behind `run_all.sh`: execute every notebook with papermill and write the results summary.

Notebooks run in file-name order (later ones reuse the models earlier ones cached), each with the profile
as a papermill parameter and `$REPRO_RESULTS`/`$REPRO_NOTEBOOK` set so that its claims, metrics and
figures land in `results/<profile>/`. A failing notebook does not stop the others; the run ends with a
table of what passed and failed and exits non-zero if anything failed. `summary.json` and `summary.md`
hold the profile, git commit, package versions, timings, notebook statuses and every recorded claim.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from .runtime import PROFILES

PACKAGES = ("torch", "torchvision", "numpy", "scipy", "scikit-learn", "torchmetrics", "papermill", "nbval")


def find_notebooks(folder: Path, only: str | None = None) -> list[Path]:
    """Notebooks under `folder` in execution order, optionally those whose name matches `only` (glob or substring)."""
    books = sorted(p for p in folder.glob("*.ipynb") if not p.name.startswith("."))
    if only:
        pattern = only if any(c in only for c in "*?[") else f"*{only}*"
        books = [p for p in books if fnmatch.fnmatch(p.name, pattern)]
    return books


def run_notebook(book: Path, out: Path, profile: str, results: Path) -> tuple[str, float, str]:
    """Execute one notebook with papermill; return (status, seconds, error message)."""
    import papermill as pm
    os.environ["REPRO_RESULTS"] = str(results)
    os.environ["REPRO_NOTEBOOK"] = book.stem
    for kind in ("claims", "metrics"):  # stale rows of an earlier run of this notebook must not survive
        (results / kind / f"{book.stem}.json").unlink(missing_ok=True)
    start = time.time()
    try:
        pm.execute_notebook(str(book), str(out), parameters={"profile": profile}, kernel_name="python3",
                            cwd=str(book.parent), progress_bar=False, log_output=False)
        return "passed", time.time() - start, ""
    except Exception as e:  # papermill raises PapermillExecutionError with the cell's error
        return "failed", time.time() - start, f"{type(e).__name__}: {str(e).strip().splitlines()[-1] if str(e).strip() else ''}"


def _git_commit(root: Path) -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                              text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def _versions() -> dict:
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def collect(results: Path, kind: str) -> list[dict]:
    """All rows recorded under results/<kind>/*.json (claims or metrics), in notebook order."""
    rows = []
    for path in sorted((results / kind).glob("*.json")):
        content = json.loads(path.read_text())
        rows += list(content.values()) if kind == "claims" else [{"notebook": path.stem, **content}]
    return rows


def _fmt(v) -> str:
    text = f"{v:.4g}" if isinstance(v, float) else str(v)
    return text.replace("|", "\\|")  # a bare | would split the markdown table cell


def write_summary(results: Path, summary: dict) -> None:
    """Write summary.json and summary.md (notebook table and claims table) into `results`."""
    (results / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    lines = [f"# Results — profile `{summary['profile']}`", "",
             f"commit `{summary['commit']}`, started {summary['started']}, {summary['seconds']:.0f} s; "
             + ", ".join(f"{k} {v}" for k, v in summary["versions"].items()), "",
             "| notebook | status | seconds |", "|---|---|---|"]
    lines += [f"| {n['notebook']} | {n['status']} | {n['seconds']:.0f} |" for n in summary["notebooks"]]
    lines += ["", "| claim | paper | ours | holds | notebook |", "|---|---|---|---|---|"]
    lines += [f"| `{c['id']}` — {_fmt(c['what'])} | {_fmt(c['paper'])} | {_fmt(c['ours'])} | "
              f"{'yes' if c['holds'] else '**no**'} | {c['notebook']} |" for c in summary["claims"]]
    (results / "summary.md").write_text("\n".join(lines) + "\n")


def update_readme(readme: Path, summary_md: str) -> None:
    """Replace the README's results table (between its two markers) with the tables of `summary_md`."""
    start, end = "<!-- results-table -->", "<!-- /results-table -->"
    text = readme.read_text()
    if start not in text or end not in text:
        return
    body = summary_md.split("\n", 2)[2].strip()  # drop the summary's own title line
    head, rest = text.split(start, 1)
    readme.write_text(f"{head}{start}\n{body}\n{end}{rest.split(end, 1)[1]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="run_all.sh", description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default="quick", choices=PROFILES,
                        help="quick: CPU, minutes, real data at reduced size (default); paper: the papers' sizes (GPU)")
    parser.add_argument("--only", default=None, help="run only notebooks whose file name matches (glob or substring)")
    parser.add_argument("--notebooks", default=None, help="folder of notebooks (default: notebooks/)")
    parser.add_argument("--results", default=None, help="output folder (default: results/<profile>/)")
    args = parser.parse_args(argv)

    root = Path(__file__).resolve().parents[3]
    folder = Path(args.notebooks) if args.notebooks else root / "notebooks"
    results = (Path(args.results) if args.results else root / "results" / args.profile).resolve()
    books = find_notebooks(folder, args.only)
    if not books:
        print(f"No notebook in {folder} matches --only {args.only!r}.", file=sys.stderr)
        return 2
    (results / "notebooks").mkdir(parents=True, exist_ok=True)

    started, t0 = datetime.now(timezone.utc).isoformat(timespec="seconds"), time.time()
    previous = {}
    if (results / "summary.json").exists():  # keep the statuses of notebooks not run this time
        previous = {n["notebook"]: n for n in json.loads((results / "summary.json").read_text())["notebooks"]}
    runs = []
    for i, book in enumerate(books, 1):
        out = results / "notebooks" / book.name
        print(f"[{i}/{len(books)}] {book.name} ... started {datetime.now().strftime('%H:%M:%S')}", flush=True)
        status, seconds, error = run_notebook(book, out, args.profile, results)
        print(f"[{i}/{len(books)}] {book.name} {status} in {seconds:.0f} s" + (f": {error}" if error else ""),
              flush=True)
        runs.append({"notebook": book.stem, "status": status, "seconds": round(seconds, 1),
                     "executed": str(out.relative_to(results)), "error": error})
    for r in runs:
        previous[r["notebook"]] = r
    summary = {"profile": args.profile, "commit": _git_commit(root), "started": started,
               "seconds": round(time.time() - t0, 1), "versions": _versions(),
               "notebooks": [previous[k] for k in sorted(previous)],
               "claims": collect(results, "claims"), "metrics": collect(results, "metrics")}
    write_summary(results, summary)
    if args.profile == "quick" and not args.only and not args.notebooks and not args.results:
        update_readme(root / "README.md", (results / "summary.md").read_text())

    failed = [r for r in runs if r["status"] != "passed"]
    print("\nnotebook                                   status   seconds")
    for r in runs:
        print(f"{r['notebook']:<42} {r['status']:<8} {r['seconds']:>7.0f}")
    held = sum(c["holds"] for c in summary["claims"])
    print(f"\nclaims: {held} of {len(summary['claims'])} hold; summary: {results / 'summary.md'}")
    for r in failed:
        print(f"FAILED {r['notebook']}: {r['error']}\n  see {results / r['executed']}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
