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
