"""Claims: one comparison between a number of ours and one of the papers, recorded where it is computed.

Each notebook calls `record_claim` once per claim; the rows land in
`$REPRO_RESULTS/claims/<notebook>.json` and `run_all.sh` gathers them into `summary.json`/`summary.md`.
`record_metrics` stores other per-notebook numbers the same way.
"""
from __future__ import annotations

import json
import math
from typing import Any

from .runtime import notebook_name, results_dir


def _fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, (int, float)):
        return f"{value:.3g}" if math.isfinite(value) else str(value)
    return str(value)


def _upsert(kind: str, key: str, row: dict) -> None:
    path = results_dir() / kind / f"{notebook_name()}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = json.loads(path.read_text()) if path.exists() else {}
    rows[key] = row
    path.write_text(json.dumps(rows, indent=1, default=float))


def record_claim(id: str, what: str, paper: Any, ours: Any, holds: bool) -> dict:
    """Record one claim and print a one-line verdict.

    `paper` is the papers' number or a short text ("≤ 1 point"); `ours` our measured number;
    `holds` whether our number supports the papers' statement (decided in the notebook, in plain sight).
    """
    if not isinstance(holds, bool):
        holds = bool(holds)
    if isinstance(ours, float) and not math.isfinite(ours):
        holds = False
    row = {"id": id, "what": what, "paper": paper, "ours": ours, "holds": holds,
           "notebook": notebook_name()}
    _upsert("claims", id, row)
    mark = "holds" if holds else "DOES NOT HOLD"
    print(f"[claim] {id}: ours {_fmt(ours)} | paper {_fmt(paper)} -> {mark}")
    return row


def record_metrics(**metrics: Any) -> None:
    """Store named numbers of the running notebook (merged into its metrics file)."""
    for key, value in metrics.items():
        _upsert("metrics", key, value)
