"""Claims: rule evaluation, per-seed rows, aggregation over seeds, the summary schema, parameter checks."""
import json
import multiprocessing as mp
import statistics
from pathlib import Path

import jsonschema
import pytest

from gsmu.base import claims, runtime
from gsmu.base.claims import ClaimSpec, Paper

ROOT = Path(__file__).resolve().parent.parent
SPEC = ClaimSpec(id="t.acc", kind="paper", what="accuracy", paper=Paper(0.9, "a paper, Table 1"), unit="",
                 rule="mean >= paper - 0.05", data="test data")


@pytest.fixture
def results(tmp_path, monkeypatch):
    monkeypatch.setenv("REPRO_RESULTS", str(tmp_path))
    monkeypatch.setenv("REPRO_NOTEBOOK", "nb")
    return tmp_path


def _stats(*values):
    return claims.Stats.of(list(values), list(range(len(values))))


def test_rules_evaluate_against_an_independent_computation():
    s = _stats(0.25, 0.5, 0.75)  # exact in binary: mean is exactly 0.5
    assert claims.evaluate_rule("mean >= 0.5", s, None) is True
    assert claims.evaluate_rule("mean > 0.5", s, None) is False
    assert claims.evaluate_rule("abs(mean - paper) <= 0.1", s, 0.55)
    assert not claims.evaluate_rule("abs(mean - paper) <= 0.1", s, 0.75)
    assert claims.evaluate_rule("min >= 0.25 and max <= 0.75 and n == 3", s, None)
    assert claims.evaluate_rule("0.4 < mean < 0.6 or sd > 10", s, None)
    assert claims.evaluate_rule("-mean * 2 + 1 == 0", s, None)
    assert s.sd == pytest.approx(statistics.stdev([0.25, 0.5, 0.75]))
    assert claims.evaluate_rule("paper >= 0", s, "a statement") is False  # a text paper value is not a number


@pytest.mark.parametrize("rule", ["__import__('os')", "mean.real > 0", "open('x')", "mean >=", "lambda: 1", "x > 1"])
def test_malformed_or_unsafe_rules_are_refused(rule):
    with pytest.raises(ValueError, match="rule"):
        claims.evaluate_rule(rule, _stats(1.0), None)


def test_spec_validation_names_the_problem():
    with pytest.raises(ValueError, match="kind='papr'"):
        ClaimSpec("a.b", "papr", "w", Paper(1, "src"), "", "mean > 0", "d")
    with pytest.raises(ValueError, match="needs a source"):
        ClaimSpec("a.b", "paper", "w", Paper(1, " "), "", "mean > 0", "d")
    with pytest.raises(ValueError, match="paper's value"):
        ClaimSpec("a.b", "paper", "w", Paper(None, "src"), "", "mean > 0", "d")
    with pytest.raises(ValueError, match="not allowed"):
        ClaimSpec("a.b", "sanity", "w", Paper(None, "src"), "", "mean > foo()", "d")


def test_record_writes_one_row_per_seed_and_aggregate_summarizes(results, capsys):
    rows = []
    for seed, value in enumerate([0.80, 0.88, 0.90]):
        rows.append(claims.record(SPEC, value, seed=seed, profile="quick"))
    assert "holds (seed 1)" in capsys.readouterr().out
    stored = json.loads((results / "claims" / "nb.json").read_text())
    assert stored["t.acc"]["seed"] == 2  # one file holds the latest row per id; the runner keeps one file per job
    (claim,) = claims.aggregate(rows)
    assert claim.ours.values == [0.80, 0.88, 0.90] and claim.ours.n == 3
    assert claim.ours.mean == pytest.approx(0.86)
    assert claim.holds is True  # 0.86 >= 0.85
    assert claim.holds_seeds == 2  # 0.80 fails alone
    with pytest.raises(TypeError, match="must be a number"):
        claims.record(SPEC, "0.9", seed=0, profile="quick")
    nan = claims.record(SPEC, float("nan"), seed=3, profile="quick")
    assert nan["holds"] is False and claims.aggregate(rows + [nan])[0].holds is False


def test_aggregated_claims_validate_against_the_schema(results):
    rows = [claims.record(SPEC, v, seed=s, profile="quick") for s, v in enumerate([0.9, 0.91, 0.92])]
    schema = json.loads((ROOT / "schemas" / "summary.schema.json").read_text())
    summary = {"profile": "quick", "commit": "abc", "started": "now", "seconds": 1.0, "versions": {},
               "hardware": {}, "jobs": [], "claims": [claims.as_dict(c) for c in claims.aggregate(rows)]}
    jsonschema.validate(json.loads(json.dumps(summary)), schema)
    summary["claims"][0]["kind"] = "other"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(summary, schema)
    table = claims.markdown_tables(claims.aggregate(rows))
    assert "### Paper claims" in table and "(3 of 3 seeds)" in table and "Sanity" not in table


def _writer(path, worker):
    for i in range(20):
        claims.atomic_update(Path(path), f"{worker}.{i}", {"worker": worker, "i": i})


def test_parallel_writers_lose_nothing(tmp_path):
    path = tmp_path / "claims.json"
    procs = [mp.get_context("spawn").Process(target=_writer, args=(str(path), w)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert all(p.exitcode == 0 for p in procs)
    assert len(json.loads(path.read_text())) == 80


def _ns(**values):
    return {"__annotations__": {"profile": str, "seed": int, "alpha": float, "steps": list[int], "name": str | None},
            "profile": "quick", "seed": 0, "alpha": 0.5, "steps": [1, 2], "name": None, **values}


@pytest.mark.parametrize("values, error, match", [
    ({"alpah": 0.3}, NameError, "'alpah' is not a parameter.*Did you mean 'alpha'"),
    ({"seed": 1.5}, TypeError, "seed=1.5 must be of type int"),
    ({"seed": True}, TypeError, "seed=True must be of type int"),
    ({"seed": -1}, ValueError, "seed=-1 is outside"),
    ({"alpha": 2.0}, ValueError, "alpha=2.0 is outside"),
    ({"alpha": None}, TypeError, "alpha=None must be of type float"),
    ({"steps": [1, "2"]}, TypeError, "steps="),
    ({"steps": []}, ValueError, "steps must not be empty"),
    ({"profile": "quik"}, ValueError, "Did you mean 'quick'"),
    ({"name": "b"}, ValueError, "name='b' is not one of"),
])
def test_check_parameters_names_the_parameter(values, error, match):
    with pytest.raises(error, match=match):
        runtime.check_parameters(_ns(**values), ranges={"alpha": (0, 1)}, choices={"name": ("a", None)},
                                 nonempty=["steps"])


def test_check_parameters_accepts_valid_values():
    runtime.check_parameters(_ns(alpha=1, name="a"), ranges={"alpha": (0, 1)}, choices={"name": ("a", None)},
                             nonempty=["steps"])


def test_parse_index_list_against_an_explicit_expansion():
    assert runtime.parse_index_list("0-3, 7,2") == sorted({0, 1, 2, 3, 7, 2})
    assert runtime.parse_index_list("10-12") == list(range(10, 13))
    for bad in ("-1", "a", "3-1", "1-", "", "1--3", "1,,2"):
        with pytest.raises(ValueError, match="not a non-negative index"):
            runtime.parse_index_list(bad)
