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
    root = Path(__file__).resolve().parents[3]  # <checkout>/lib/gsmu/base/runtime.py
    return root if (root / "pyproject.toml").exists() and (root / "lib" / "gsmu").is_dir() else None


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


_KERNEL_NAMES = {"In", "Out", "get_ipython", "exit", "quit", "open"}


def _type_ok(value: Any, annotation: Any) -> bool:
    """Whether `value` fits a parameter annotation (int, float, str, bool, X | None, list[X], tuple[X, ...])."""
    import types
    import typing
    if annotation is Any:
        return True
    if annotation is None or annotation is type(None):
        return value is None
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(annotation))
    if origin in (list, tuple):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return isinstance(value, (list, tuple)) and all(_type_ok(v, args[0]) for v in value) if args else \
            isinstance(value, (list, tuple))
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, annotation)


def check_parameters(namespace: dict, *, ranges: dict[str, tuple[float, float]] | None = None,
                     choices: dict[str, Iterable[Any]] | None = None,
                     nonempty: Iterable[str] = ()) -> None:
    """Validate a notebook's parameters: every name, type, range and choice, before any long work starts.

    The declared parameters are the annotated assignments of the notebook's `parameters` cell
    (`alpha: float = 0.8  # ...`), which land in the namespace's `__annotations__`. A name that papermill
    injected but the notebook does not declare (a typo) is rejected with a did-you-mean; a value of the
    wrong type, outside `ranges[name]` (inclusive) or not in `choices[name]` is rejected naming the
    parameter; list parameters named in `nonempty` must not be empty. Always checks `profile` and `seed`.
    """
    declared = dict(namespace.get("__annotations__", {}))
    if not declared:
        raise RuntimeError("check_parameters found no annotated parameters: declare them in the parameters cell "
                           "as `name: type = value  # what it is`.")
    # Call it first thing after the parameters cell: every other plain value in the namespace then came
    # from papermill's injected-parameters cell.
    names = {k for k, v in namespace.items() if not k.startswith("_") and k not in _KERNEL_NAMES
             and not callable(v) and type(v).__name__ != "module"}
    unknown = sorted(names - set(declared))
    if unknown:
        bad = unknown[0]
        close = difflib.get_close_matches(bad, declared, n=3)
        hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
        raise NameError(f"parameter {bad!r} is not a parameter of this notebook.{hint} "
                        f"Its parameters: {', '.join(declared)}.")
    for name, annotation in declared.items():
        value = namespace[name]
        if not _type_ok(value, annotation):
            shown = getattr(annotation, "__name__", str(annotation))
            raise TypeError(f"parameter {name}={value!r} must be of type {shown}, not {type(value).__name__}.")
    checks = {"profile": PROFILES, **(choices or {})}
    for name, allowed in checks.items():
        if name in declared:
            value = namespace[name]
            for v in (value if isinstance(value, (list, tuple)) else [value]):
                check_choice(name, v, allowed)
    rng = {"seed": (0, 2**31 - 1), **(ranges or {})}
    for name, (low, high) in rng.items():
        if name in declared and namespace[name] is not None:
            for v in (namespace[name] if isinstance(namespace[name], (list, tuple)) else [namespace[name]]):
                if not (low <= v <= high):
                    raise ValueError(f"parameter {name}={v!r} is outside [{low}, {high}].")
    for name in nonempty:
        if not namespace[name]:
            raise ValueError(f"parameter {name} must not be empty.")
