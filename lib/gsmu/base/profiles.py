"""Profiles: each experiment's quick and paper settings, defined once (one config per profile, as nanoGPT).

An experiment subclasses `Experiment` (a frozen dataclass) and lists its settings per profile in
`PROFILES`; `for_profile("quick", lr=1e-3)` builds the config, applying the notebook's overrides and
rejecting unknown names. `GRID` lists the parameter values the main job sweeps for that notebook, per
profile (seeds at least: every paper claim comes from several seeds); each combination is one job.
`SECONDS` (a job's rough one-thread duration per profile) and `NEEDS` (the notebooks whose cached models it
loads) let the main job start the longest chains of work first, so the workers do not idle at the end.
`SPLITS` names grid parameters that only spread one result's work over jobs.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from typing import Any, ClassVar

from .runtime import check_profile


@dataclass(frozen=True)
class Experiment:
    """Base class of an experiment's settings. Subclasses add typed fields and fill PROFILES and GRID."""
    PROFILES: ClassVar[dict[str, dict[str, Any]]] = {}
    GRID: ClassVar[dict[str, dict[str, list]]] = {"quick": {"seed": [0, 1, 2]}, "paper": {"seed": [0, 1, 2]}}
    SECONDS: ClassVar[dict[str, float]] = {"quick": 60.0, "paper": 600.0}  # one job, one thread, roughly
    NEEDS: ClassVar[tuple[str, ...]] = ()  # notebooks (file stems) that train the models this one loads
    # Grid parameters that split one result's work over several jobs (e.g. one α each, filling the cache for the
    # job that records the claims) instead of naming another setting: they do not split the claims' ids.
    SPLITS: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def for_profile(cls, profile: str, **overrides: Any) -> "Experiment":
        """The settings of `profile`, with `overrides` (a notebook's parameters) applied."""
        check_profile(profile)
        fields = {f.name for f in dataclasses.fields(cls)}
        for name in overrides:
            if name not in fields:
                close = difflib.get_close_matches(name, fields, n=3)
                hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
                raise ValueError(f"{cls.__name__} has no setting {name!r}.{hint}")
        return cls(**{**cls.PROFILES.get(profile, {}), **overrides})

    @classmethod
    def grid(cls, profile: str) -> dict[str, list]:
        """Parameter values the main job sweeps for this experiment's notebook in `profile`."""
        return dict(cls.GRID[check_profile(profile)])
