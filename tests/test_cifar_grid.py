"""Tests of scripts/cifar_grid.py (the VGG depth × width grid in one process): its budgets and its summary."""
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from gsmu.gs.profiles import PAPER_EPOCH

SPEC = importlib.util.spec_from_file_location("cifar_grid", Path(__file__).parents[1] / "scripts" / "cifar_grid.py")
grid = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(grid)


def test_budgets_keep_the_authors_recipe_and_shorten_only_the_epochs():
    paper, short = grid.config("D32", "paper"), grid.config("D32", "4/2")
    assert (paper.arch, paper.width, paper.epochs, paper.steps) == ("D", 32, 30, 50 * PAPER_EPOCH)
    assert (short.epochs, short.steps) == (4, 2 * PAPER_EPOCH)
    assert {k: v for k, v in vars(short).items() if k not in ("epochs", "steps")} == \
           {k: v for k, v in vars(paper).items() if k not in ("epochs", "steps")}
    assert grid.PAPER_DROP["A8"] == 50.8 and set(grid.PAPER_DROP) <= set(grid.ORDER)


def test_estimate_grows_with_the_budget():
    times = {"A8": {"train": 0.005, "slingshot": 0.02, "fixed": 1.0}}
    estimates = [grid.estimate(times, b, 50_000) for b in grid.BUDGETS]
    assert estimates == sorted(estimates, reverse=True)
    assert estimates[0] == pytest.approx(30 * 782 * 0.005 + 50 * 782 * 0.02 + 51 / 2 + 4)


def row(point: str, drop: float, ssim_after: float, seed: int = 0, budget: str = "2/1") -> dict:
    return {"point": point, "arch": point[0], "width": int(point[1:]), "budget": budget, "seed": seed,
            "accuracy": {"before": 0.7, "after": 0.7 - drop / 100}, "auroc": {"before": 0.9, "after": 0.8},
            "ssim": {"before": 0.0, "after": ssim_after}, "acc_drop_points": drop, "best_step": 782,
            "seconds": {"train": 1.0, "slingshot": 2.0, "evaluate": 0.5},
            "fvs_after": np.full((8, 3, 2, 2), ssim_after).tolist()}


def test_summary_of_a_grid_whose_damage_falls_with_width(tmp_path):
    points = ["A8", "A16", "B8", "B16"]
    # two seeds per point: drops d ± 1 (mean d, sd sqrt(2)), FV-SSIM width/16
    lines = [{"header": {"device": "cpu"}}] + [row(p, 40 / int(p[1:]) + (p[0] == "B") + (1 if s else -1),
                                                   int(p[1:]) / 16, seed=s) for s in (0, 1) for p in points]
    source = tmp_path / "g.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    trend = grid.summarize([str(source)], tmp_path / "out")
    # by hand, on the means: width ranks (1.5, 3.5, 1.5, 3.5), drop ranks (3, 1, 4, 2) -> -2/sqrt(5)
    assert trend["spearman_acc_drop_vs_width"] == pytest.approx(-2 / np.sqrt(5))
    assert trend["spearman_ssim_after_vs_width"] > 0 and trend["points"] == 4 and trend["seeds_per_point"] == [2]
    saved = json.loads((tmp_path / "out" / "grid.json").read_text())
    assert [r["point"] for r in saved["rows"]][:2] == ["A8", "A8"] and "fvs_after" not in saved["rows"][0]
    fvs = np.load(tmp_path / "out" / "fvs.npz")
    assert fvs["fvs"].shape == (8, 8, 3, 2, 2) and fvs["fvs"][2].max() == 255  # A16: SSIM 1 -> pixel 1.0
    table = (tmp_path / "out" / "table.md").read_text()
    assert "| A8 | 2 | 70.00 ± 0.00 | 5.00 ± 1.41 | 50.8 |" in table
    assert (tmp_path / "out" / "grid.png").stat().st_size > 0 and (tmp_path / "out" / "fvs_after.png").exists()


def test_summary_refuses_rows_of_mixed_budgets(tmp_path):
    source = tmp_path / "g.jsonl"
    source.write_text(json.dumps(row("A8", 1, 0.5)) + "\n" + json.dumps(row("A16", 1, 0.5, budget="4/2")) + "\n")
    with pytest.raises(ValueError, match="one budget"):
        grid.summarize([str(source)], tmp_path / "out")


def test_audit_roc_ranks_the_manipulated_unit_against_every_clean_unit():
    rows = [row("A8", 1, 0.5), row("A16", 1, 0.5), row("B8", 1, 0.5)]
    clean = [[0.5 + u for u in range(10)], [1.0] * 10, [2.0] * 9 + [12.0]]  # one clean unit above the threshold
    after = [[1.0] * 3 + [40.0] + [1.0] * 6, [1.0] * 3 + [5.0] + [11.0] * 6, [3.0] * 10]
    for r, b, a in zip(rows, clean, after):
        r["audit"] = {"before": b, "after": a}
    rows.append({**row("B16", 1, 0.5), "audit": {"error": "units [2]: ..."}})
    roc = grid.audit_roc(rows)
    # Mann-Whitney by hand: 40 beats all 30 clean ratios; 5.0 beats 0.5..4.5 (5), the ten 1.0s and the nine 2.0s;
    # 3.0 beats 0.5..2.5 (3), the ten 1.0s and the nine 2.0s
    wins = 30 + (5 + 10 + 9) + (3 + 10 + 9)
    assert roc["auroc"] == pytest.approx(wins / 90)
    assert roc["detected"] == pytest.approx(1 / 3) and roc["clean_fpr"] == pytest.approx(1 / 30)
    assert roc["other_units_flagged"] == {"A8": [], "A16": [4, 5, 6, 7, 8, 9], "B8": []}
    assert roc["errors"] == ["B16"] and roc["models"] == 3
    fig = grid.audit_figure(rows, roc)  # one column of dots per audited model, and the ROC
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["A8", "A16", "B8"] and len(fig.axes) == 2
    assert grid.audit_roc([row("A8", 1, 0.5)]) is None  # rows from before the audit: no ROC
