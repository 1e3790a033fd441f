"""scripts/make_reference.py: the bands the claim test checks against, and --merge (one notebook's bands
replaced, the others kept). Oracle for the band: the t quantile and the formula in its docstring, by hand."""
import importlib.util
import json
import math
from pathlib import Path

from scipy import stats

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("make_reference", ROOT / "scripts" / "make_reference.py")
make_reference = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_reference)


def _summary(notebook, claims, commit):
    return {"profile": "quick", "commit": commit, "hardware": {"cpu": "test"},
            "claims": [{"id": cid, "notebook": notebook, "ours": {"values": values, "seeds": [0, 1, 2], "n": 3}}
                       for cid, values in claims.items()]}


def test_band_is_the_prediction_interval_widened_by_two_percent():
    values = [1.0, 2.0, 4.0]
    mean, sd = 7 / 3, math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2 + (4 - 7 / 3) ** 2) / 2)
    half = stats.t.ppf(0.995, 2) * sd * math.sqrt(1 + 1 / 3) + 0.02 * 4.0 + 1e-6
    assert make_reference.band(values) == (mean, sd, mean - half, mean + half)


def test_merge_replaces_one_notebooks_bands_and_keeps_the_rest(tmp_path):
    out, first, second = tmp_path / "ref.json", tmp_path / "all.json", tmp_path / "b.json"
    first.write_text(json.dumps({"profile": "quick", "commit": "c0", "hardware": None, "claims":
                                 _summary("A", {"a.1": [1, 2, 3]}, "c0")["claims"]
                                 + _summary("B", {"b.old": [5, 5, 6], "b.1": [0, 1, 0]}, "c0")["claims"]
                                 + _summary("C", {"c.1": [9, 9, 9]}, "c0")["claims"]}))
    make_reference.main(first, out, {})
    before = json.loads(out.read_text())
    second.write_text(json.dumps(_summary("B", {"b.1": [10, 11, 12], "b.new": [1, 1, 2]}, "c1")))
    make_reference.main(second, out, {}, merge=True)
    after = json.loads(out.read_text())
    assert list(after["claims"]) == ["a.1", "b.1", "b.new", "c.1"]  # b.old gone, B's claims where B's were
    assert after["claims"]["a.1"] == before["claims"]["a.1"] and after["claims"]["c.1"] == before["claims"]["c.1"]
    assert after["claims"]["b.1"]["values"] == [10, 11, 12]
    assert after["commit"] == "c0" and after["updates"][0]["notebooks"] == ["B"]
    assert after["updates"][0]["commit"] == "c1"


def test_extra_draws_come_from_a_claims_file_or_a_whole_claims_folder(tmp_path):
    """A test run leaves the notebooks' claims and the grid settings' (grid_settings.json) side by side: the folder
    form reads both, so a CIFAR-10 claim of notebook 07 gets its extra draw like an MNIST one."""
    summary, out = tmp_path / "s.json", tmp_path / "ref.json"
    summary.write_text(json.dumps(_summary("N", {"n.a": [1, 2, 3], "n.a.dataset_cifar10": [4, 5, 6]}, "c")))
    claims = tmp_path / "claims"
    claims.mkdir()
    (claims / "interactive.json").write_text(json.dumps({"n.a": {"value": 2.5, "seed": 0}}))
    (claims / "grid_settings.json").write_text(json.dumps({"n.a.dataset_cifar10": {"value": 4.5, "seed": 0}}))
    make_reference.main(summary, out, {"ATEN default": claims})
    ref = json.loads(out.read_text())["claims"]
    assert ref["n.a"]["values"] == [1, 2, 3, 2.5] and ref["n.a.dataset_cifar10"]["values"] == [4, 5, 6, 4.5]
    make_reference.main(summary, out, {"ATEN default": claims / "interactive.json"})  # one file: that file only
    assert json.loads(out.read_text())["claims"]["n.a.dataset_cifar10"]["values"] == [4, 5, 6]
