"""Tolerance check of the numbers the notebooks produced in this very test run.

nbval re-executes every notebook first (`./run_tests.sh` passes `notebooks` before `tests`) and compares
only outputs that do not depend on last-bit arithmetic; the notebooks' claims land in `$REPRO_RESULTS`.
Here each claim's value (seed 0) must fall inside the band of `tests/reference/quick.json`, which
`scripts/make_reference.py` derives from a multi-seed run of the main job plus the claims of a test run under
other arithmetic (`ATEN_CPU_CAPABILITY=default`: another CPU's rounding moves chaotic results as much as a
new seed does): a 99% prediction interval for one new draw, `mean ± t(0.995, n−1)·sd·√(1 + 1/n)`, widened by 2% of the largest |value| (+1e-6) so that
claims the seed does not move still tolerate another CPU's rounding. A changed result, a claim that
disappeared, or one without a reference fails. A notebook whose quick grid sweeps a setting besides the seed
(notebook 07: MNIST and CIFAR-10) also runs that setting here, seed 0, through the main job's runner.
"""
import itertools
import json
import math
import os
from pathlib import Path

import pytest

from gsmu import experiments, runner

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = json.loads((ROOT / "tests" / "reference" / "quick.json").read_text())


def grid_settings(stem: str) -> list[dict]:
    """The settings of `stem`'s quick grid other than its defaults (e.g. notebook 07's dataset=cifar10): nbval
    runs every notebook at its defaults only, so `recorded` runs these too (seed 0), through the main job's runner."""
    grid = experiments.grid(stem, "quick")
    names = [n for n in grid if n not in {"seed", "profile", *experiments.splits(stem)}]
    if not names:
        return []
    defaults = runner.declared_defaults(ROOT / "notebooks" / f"{stem}.ipynb")
    combos = [dict(zip(names, values)) for values in itertools.product(*(grid[n] for n in names))]
    return [c for c in combos if runner.claim_id_suffix(c, names, defaults)]


def run_setting(stem: str, setting: dict, out: Path) -> dict[str, dict]:
    """Seed 0 of one grid setting, executed as the main job executes it (one thread unless the test run was given
    more); its claims under the ids the main job gives them."""
    book = ROOT / "notebooks" / f"{stem}.ipynb"
    info = runner.run_job({"notebook": str(book), "out": str(out), "force": True,
                           "parameters": {"profile": "quick", "seed": 0, **setting},
                           "env": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}})
    assert info["status"] == "passed", f"{stem} {setting}: {info['error']} (executed notebook in {out})"
    suffix = runner.claim_id_suffix(setting, list(setting), runner.declared_defaults(book))
    return {cid + suffix: {**row, "id": cid + suffix} for path in sorted((out / "claims").glob("*.json"))
            for cid, row in json.loads(path.read_text()).items()}


@pytest.fixture(scope="module")
def recorded(request, tmp_path_factory) -> tuple[set[str], dict[str, dict]]:
    """(notebooks executed in this session, claim rows they recorded, by id), the rows of their other grid
    settings included (also written to `$REPRO_RESULTS/claims/grid_settings.json`, as extra draws for
    scripts/make_reference.py)."""
    ran = {Path(str(item.fspath)).stem for item in request.session.items if str(item.fspath).endswith(".ipynb")}
    if not ran:
        pytest.skip("no notebook ran in this session: ./run_tests.sh runs them before this file")
    rows: dict[str, dict] = {}
    claims_dir = Path(os.environ.get("REPRO_RESULTS", "results/interactive")) / "claims"
    for path in sorted(claims_dir.glob("*.json")):
        if path.name != "grid_settings.json":
            rows.update(json.loads(path.read_text()))
    extra: dict[str, dict] = {}
    for stem in sorted(ran):
        for setting in grid_settings(stem):
            extra.update(run_setting(stem, setting, tmp_path_factory.mktemp(stem) / "job"))
    if extra:
        claims_dir.mkdir(parents=True, exist_ok=True)
        (claims_dir / "grid_settings.json").write_text(json.dumps(extra, indent=1) + "\n")
    return ran, {**rows, **extra}


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
