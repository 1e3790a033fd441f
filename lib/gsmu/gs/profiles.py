"""The Gradient Slingshots experiments' settings per profile (quick: CPU minutes; paper: the paper's sizes).

One `Experiment` dataclass per notebook; `NOTEBOOKS` maps each notebook to it so the main job finds the
notebook's sweep grid (`Experiment.GRID`).
"""
from __future__ import annotations

from ..base.profiles import Experiment

NOTEBOOKS: dict[str, type[Experiment]] = {}
