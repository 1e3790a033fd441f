"""Re-execute notebooks in place (quick profile) so their committed outputs are current, and sync them.

Usage: .venv/bin/python scripts/refresh_notebooks.py [PATTERN ...]   (default: every notebook)

Syncing writes the set-up cell from pyproject.toml's repository URL (the one place it lives) and strips
volatile metadata, so nbval compares only what matters. Claims and figures go to a temporary folder.
"""
from __future__ import annotations

import fnmatch
import os
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import nbformat
from nbclient import NotebookClient

ROOT = Path(__file__).resolve().parent.parent
SETUP_MARK = "# repro-setup"


def repo_url() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["urls"]["Repository"]


def setup_source() -> str:
    return (f"{SETUP_MARK}: installs the package when it is missing (Colab); a no-op in a checkout or on Binder.\n"
            "import importlib.util, subprocess, sys\n"
            "from typing import Optional  # for the parameters' types (papermill reads Optional[X], not X | None)\n"
            'if importlib.util.find_spec("gsmu") is None:\n'
            f'    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "git+{repo_url()}"], check=True)')


def sync(nb) -> None:
    """Rewrite the set-up cell and drop volatile metadata."""
    for cell in nb.cells:
        if cell.cell_type == "code" and cell.source.startswith(SETUP_MARK):
            cell.source = setup_source()
        cell.metadata.pop("execution", None)
        cell.metadata.pop("papermill", None)
    for key in ("papermill", "widgets"):
        nb.metadata.pop(key, None)


def refresh(path: Path, results: Path) -> float:
    nb = nbformat.read(path, as_version=4)
    sync(nb)
    os.environ["REPRO_RESULTS"], os.environ["REPRO_NOTEBOOK"] = str(results), path.stem
    start = time.time()
    NotebookClient(nb, timeout=3600, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}).execute()
    sync(nb)
    nbformat.write(nb, path)
    return time.time() - start


def main(patterns: list[str]) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # the same thread count as ./run_tests.sh
    os.environ.setdefault("TQDM_DISABLE", "1")  # no progress-bar fragments in committed outputs
    books = sorted((ROOT / "notebooks").glob("*.ipynb"))
    if patterns:
        books = [b for b in books if any(fnmatch.fnmatch(b.name, f"*{p}*") for p in patterns)]
    with tempfile.TemporaryDirectory() as results:
        for book in books:
            print(f"{book.name}: {refresh(book, Path(results)):.0f} s", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
