"""Runtime plumbing shared by every notebook: profiles, parameter checks, device, seeds and paths.

Nothing here is paper-specific. Paths: the data and checkpoint caches live under `$REPRO_CACHE` (default
`<checkout>/.cache`, or `~/.cache/gs-mu-repro` for an installed copy); results of a notebook run go to
`$REPRO_RESULTS` (set by `run_all.sh` to `results/<profile>/`; default `results/interactive/`).
"""
from __future__ import annotations

import difflib
import os
import random
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

PROFILES = ("quick", "paper")


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> Any:
    """Return `value` if it is one of `choices`, else raise a ValueError naming the parameter."""
    choices = list(choices)
    if value in choices:
        return value
    close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=3)
    hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
    raise ValueError(f"{name}={value!r} is not one of {choices}.{hint}")


def check_profile(profile: str) -> str:
    """Validate the notebooks' `profile` parameter ('quick': CPU minutes; 'paper': the papers' sizes)."""
    return check_choice("profile", profile, PROFILES)


def check_range(name: str, value: float, low: float, high: float) -> float:
    """Raise a ValueError naming the parameter unless low <= value <= high."""
    if not (low <= float(value) <= high):
        raise ValueError(f"{name}={value!r} is outside [{low}, {high}].")
    return value


def get_device(device: str | torch.device | None = None) -> torch.device:
    """The requested device, or CUDA when present, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} requested but CUDA is not available; use device='cpu'.")
    return device


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a CPU torch.Generator seeded with `seed`."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def repo_root() -> Path | None:
    """The checkout this package runs from, or None when it is installed elsewhere."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "pyproject.toml").exists() and (root / "lib").is_dir() else None


def cache_dir(kind: str) -> Path:
    """Cache folder for `kind` ('data' or 'checkpoints'), created on demand."""
    check_choice("kind", kind, ("data", "checkpoints"))
    base = os.environ.get("REPRO_CACHE")
    if base is None:
        root = repo_root()
        base = root / ".cache" if root else Path.home() / ".cache" / "gs-mu-repro"
    path = Path(base) / kind
    path.mkdir(parents=True, exist_ok=True)
    return path


def results_dir() -> Path:
    """Folder where the running notebook writes claims, metrics and figures."""
    base = os.environ.get("REPRO_RESULTS")
    if base is None:
        root = repo_root() or Path.cwd()
        base = root / "results" / "interactive"
    path = Path(base)
    path.mkdir(parents=True, exist_ok=True)
    return path


def notebook_name() -> str:
    """Name of the notebook being run (set by run_all.sh), 'interactive' otherwise."""
    return os.environ.get("REPRO_NOTEBOOK", "interactive")
