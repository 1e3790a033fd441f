"""Build the static results site (Sphinx + myst-nb) from the executed notebooks of the last run.

Sources, per notebook stem of notebooks/: the executed notebook of the latest passed seed-0 job under
results/<profile>/runs/<stem>/*/ (the run's `job.json` says passed), otherwise the committed notebook
(its stored outputs). The landing page holds the claims tables of results/<profile>/summary.json (one row
per claim: paper / extension / sanity; mean ± sd over seeds; holds) and one figure per paper; a second page
holds the paper-profile reference results (results/paper/summary.json) when such a run exists.
Notebooks are not executed here (myst-nb `nb_execution_mode = "off"`).

Usage: python scripts/build_site.py [--profile quick] [--results DIR] [--notebooks DIR] [--out DIR]
(`scripts/build_site.sh` runs it with the project's virtual environment).
"""
from __future__ import annotations

import argparse
import base64
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# one figure per paper on the landing page: (paper, notebook stem, index of the PNG output in that notebook)
PAPER_FIGURES = (("Gradient Slingshots (Bareeva et al., NeurIPS 2025)", "02_slingshot_manipulation", 1),
                 ("Machine Unlearning of Features and Labels (Warnecke et al., NDSS 2023)", "06_unlearning_certified", 0))


def latest_executed(runs: Path, stem: str) -> Path | None:
    """The executed notebook of the most recently started passed job of `stem` with seed 0 (or any seed)."""
    found = []
    for job in (runs / stem).glob("*/job.json"):
        try:
            info = json.loads(job.read_text())
        except (OSError, ValueError):
            continue
        book = job.parent / f"{stem}.ipynb"
        if info.get("status") == "passed" and book.is_file():
            seed0 = (info.get("parameters") or {}).get("seed", 0) == 0
            found.append((seed0, info.get("started") or "", book))
    return max(found)[2] if found else None


def claims_markdown(summary_file: Path) -> tuple[str, int]:
    """The claims tables of a summary.json (gsmu.base.claims.markdown_tables) and the number of claims."""
    sys.path.insert(0, str(ROOT / "lib"))
    from gsmu.base.claims import Claim, markdown_tables
    summary = json.loads(summary_file.read_text())
    claims = [Claim.from_dict(c) for c in summary.get("claims", [])]
    hw = summary.get("hardware", {})
    head = (f"Profile `{summary.get('profile')}`, commit `{str(summary.get('commit', ''))[:12]}`, run started "
            f"{summary.get('started')}, {summary.get('seconds', 0):.0f} s"
            + (f" on {hw.get('cpu', '')} ({hw.get('cores', '?')} cores)" if hw else "")
            + (f", GPU {hw['gpu']}" if hw.get("gpu") else "") + ".")
    return head + "\n\n" + (markdown_tables(claims) if claims else "_No claims recorded._") + "\n", len(claims)


def first_png(book: Path, index: int) -> bytes | None:
    nb = json.loads(book.read_text())
    pngs = [o["data"]["image/png"] for c in nb["cells"] if c["cell_type"] == "code"
            for o in c.get("outputs", []) if "image/png" in o.get("data", {})]
    if not pngs:
        return None
    data = pngs[min(index, len(pngs) - 1)]
    return base64.b64decode("".join(data) if isinstance(data, list) else data)


def stage(profile: str, results: Path, notebooks: Path, src: Path) -> dict:
    """Write the Sphinx source tree into `src`; returns what went in (for the log and the tests)."""
    if src.exists():
        shutil.rmtree(src)
    (src / "notebooks").mkdir(parents=True)
    (src / "_static").mkdir()
    used = {}
    for book in sorted(notebooks.glob("[0-9]*.ipynb")):
        executed = latest_executed(results / "runs", book.stem)
        chosen = executed or book
        shutil.copy(chosen, src / "notebooks" / book.name)
        used[book.stem] = str(chosen.relative_to(ROOT) if chosen.is_relative_to(ROOT) else chosen)
    if not used:
        raise SystemExit(f"no notebooks (NN_*.ipynb) in {notebooks}")
    summary = results / "summary.json"
    if summary.is_file():
        claims, n_claims = claims_markdown(summary)
    else:
        shown = summary.relative_to(ROOT) if summary.is_relative_to(ROOT) else summary.name
        claims, n_claims = (f"_No run of profile `{profile}` found ({shown} is missing): run "
                            f"`./run_all.sh --profile {profile}` first. The notebook pages show the committed "
                            f"outputs._\n"), 0
    figures = []
    for paper, stem, index in PAPER_FIGURES:
        png = first_png(src / "notebooks" / f"{stem}.ipynb", index) if stem in used else None
        if png:
            (src / "_static" / f"{stem}.png").write_bytes(png)
            figures.append(f"### {paper}\n\n```{{figure}} _static/{stem}.png\n:alt: {paper}: {stem}\n:width: 90%\n\n"
                           f"From notebook [{stem}](notebooks/{stem}.ipynb).\n```\n")
    source_line = ("executed notebooks of the last run" if any("results" in v for v in used.values())
                   else "committed notebooks (no executed run found)")
    index = f"""# Gradient Slingshots & Machine Unlearning — reproduction results

Results of the reproduction package for *Manipulating Feature Visualizations with Gradient Slingshots*
(Bareeva et al., NeurIPS 2025) and *Machine Unlearning of Features and Labels* (Warnecke et al., NDSS 2023).
Pages below are the {source_line}.

## Claims

{claims}
## One figure per paper

{''.join(figures) or '_No figures found._'}

```{{toctree}}
:maxdepth: 1
:caption: Notebooks
:glob:

notebooks/*
```

```{{toctree}}
:maxdepth: 1
:caption: Reference

reference
```
"""
    (src / "index.md").write_text(index)
    paper = ROOT / "results" / "paper" / "summary.json"
    if paper.is_file() and paper.resolve() != summary.resolve():
        body, _ = claims_markdown(paper)
    elif paper.is_file():
        body = "The landing page shows the paper-profile run.\n"
    else:
        body = ("_No paper-profile run found (results/paper/summary.json). Run `./run_all.sh --profile paper` on "
                "a GPU machine; its claims tables then appear here._\n")
    (src / "reference.md").write_text(f"# Paper-profile reference results\n\n{body}")
    shutil.copy(ROOT / "site" / "conf.py", src / "conf.py")
    return {"notebooks": used, "claims": n_claims, "figures": len(figures)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--profile", default="quick", choices=("quick", "paper"))
    p.add_argument("--results", help="results folder (default results/<profile>)")
    p.add_argument("--notebooks", default=str(ROOT / "notebooks"), help="folder of the notebooks (default notebooks/)")
    p.add_argument("--out", default=str(ROOT / "build" / "site"), help="output folder (default build/site)")
    args = p.parse_args(argv)
    results = Path(args.results) if args.results else ROOT / "results" / args.profile
    out = Path(args.out).resolve()
    src = out.parent / (out.name + "-src")
    info = stage(args.profile, results.resolve(), Path(args.notebooks).resolve(), src)
    cmd = [sys.executable, "-m", "sphinx", "-b", "html", "-q", "-W", "--keep-going", "-E", str(src), str(out)]
    code = subprocess.call(cmd)
    if code == 0:
        print(json.dumps(info, indent=1))
        print(f"site: {out / 'index.html'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
