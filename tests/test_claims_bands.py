"""Tolerance check of the numbers the notebooks produced in this very test run.

nbval re-executes every notebook first (`./run_tests.sh` passes `notebooks` before `tests`) and compares
only outputs that do not depend on last-bit arithmetic; the notebooks' claims land in `$REPRO_RESULTS`.
Here each claim's value (seed 0) must fall inside the band of `tests/reference/quick.json`, which
`scripts/make_reference.py` derives from a multi-seed run of the main job plus the claims of a test run under
other arithmetic (`ATEN_CPU_CAPABILITY=default`: another CPU's rounding moves chaotic results as much as a
new seed does): a 99% prediction interval for one new draw, `mean ± t(0.995, n−1)·sd·√(1 + 1/n)`, widened by 2% of the largest |value| (+1e-6) so that
claims the seed does not move still tolerate another CPU's rounding. A changed result, a claim that
disappeared, or one without a reference fails.
"""
import json
import math
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = json.loads((ROOT / "tests" / "reference" / "quick.json").read_text())


@pytest.fixture(scope="module")
def recorded(request) -> tuple[set[str], dict[str, dict]]:
    """(notebooks executed in this session, claim rows they recorded, by id)."""
    ran = {Path(str(item.fspath)).stem for item in request.session.items if str(item.fspath).endswith(".ipynb")}
    if not ran:
        pytest.skip("no notebook ran in this session: ./run_tests.sh runs them before this file")
    rows: dict[str, dict] = {}
    for path in sorted(Path(os.environ.get("REPRO_RESULTS", "results/interactive")).glob("claims/*.json")):
        rows.update(json.loads(path.read_text()))
    return ran, rows


@pytest.mark.parametrize("cid", sorted(REFERENCE["claims"]))
def test_claim_within_reference_band(cid, recorded):
    ran, rows = recorded
    ref = REFERENCE["claims"][cid]
    if ref["notebook"] not in ran:
        pytest.skip(f"{ref['notebook']} did not run in this session")
    assert cid in rows, f"{ref['notebook']} ran but did not record {cid}"
    value = rows[cid]["value"]
    if math.isnan(value) or "low" not in ref:
        assert math.isnan(value) and ref["nan_allowed"], f"{cid} = {value} but the reference values were {ref['values']}"
        return
    assert ref["low"] <= value <= ref["high"], (
        f"{cid} = {value:.6g} is outside its reference band [{ref['low']:.6g}, {ref['high']:.6g}] "
        f"(reference mean {ref['mean']:.6g} ± {ref['sd']:.3g} over seeds {ref['seeds']}); if the change is "
        f"intended, rerun the main job and scripts/make_reference.py")


def test_every_recorded_claim_has_a_reference(recorded):
    _, rows = recorded
    missing = sorted(set(rows) - set(REFERENCE["claims"]))
    assert not missing, f"claims without a reference band: {missing}; run scripts/make_reference.py"
