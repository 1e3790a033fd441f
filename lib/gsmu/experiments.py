"""Every notebook's experiment settings, from both papers' sides: the main job's view of what to sweep."""
from __future__ import annotations

from .base.profiles import Experiment
from .gs.profiles import NOTEBOOKS as GS_NOTEBOOKS
from .mu.profiles import NOTEBOOKS as MU_NOTEBOOKS

NOTEBOOKS: dict[str, type[Experiment]] = {**GS_NOTEBOOKS, **MU_NOTEBOOKS}


def grid(notebook: str, profile: str) -> dict[str, list]:
    """Parameter values to sweep for `notebook` (its file stem) in `profile`; seeds {0, 1, 2} by default."""
    cls = NOTEBOOKS.get(notebook, Experiment)
    return cls.grid(profile)


def splits(notebook: str) -> tuple[str, ...]:
    """Grid parameters of `notebook` that spread one result's work over jobs (they do not split claim ids)."""
    return NOTEBOOKS.get(notebook, Experiment).SPLITS


def critical_path(notebooks: list[str], profile: str) -> dict[str, float]:
    """Seconds of work that must follow the start of each notebook's job: its own `SECONDS` plus the longest
    chain of notebooks that `NEEDS` it. The main job starts the longest chains first (critical-path order)."""
    def cls(stem: str) -> type[Experiment]:
        return NOTEBOOKS.get(stem, Experiment)

    out: dict[str, float] = {}

    def visit(stem: str) -> float:
        if stem not in out:
            after = [visit(d) for d in notebooks if stem in cls(d).NEEDS and d != stem]
            out[stem] = cls(stem).SECONDS.get(profile, 0.0) + max(after, default=0.0)
        return out[stem]

    for stem in notebooks:
        visit(stem)
    return out
