"""Tests of scripts/cifar_poison.py (notebook 07's repair on CIFAR-10 in one process): every method runs in
notebook 07's order with the authors' iterative steps, and the summary's means, sds and cost ratios."""
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from gsmu.base import models
from gsmu.mu import poison
from gsmu.mu.profiles import LabelPoisoning

SPEC = importlib.util.spec_from_file_location("cifar_poison", Path(__file__).parents[1] / "scripts" / "cifar_poison.py")
script = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(script)


def test_repair_runs_every_method_with_the_authors_iterative_steps():
    # a small MNIST scenario stands in for CIFAR-10: `repair` only sees a Scenario (the CNN's head is its fc3 + out)
    x, y = poison.load_split("mnist", "train")
    x, y = x[:500], y[:500]
    y_bad, rows = poison.flip_labels(y, 0.2, generator=torch.Generator().manual_seed(0))
    cfg = LabelPoisoning.for_profile("quick", epochs=1, whole_rows=50, whole_iterations=3)
    torch.manual_seed(0)
    clean, bad = models.MnistCNN(), models.MnistCNN()
    sc = poison.Scenario("mnist", 0.2, x, y, y_bad, rows, (x[:100], y[:100]), (x[100:200], y[100:200]), cfg.recipe, 0,
                         clean, bad)
    out = script.repair(sc, cfg, seed=0, sisa=True, device="cpu")
    assert [r["method"] for r in out] == [
        "first-order", poison.iterative_labels(cfg.iterative_steps)[0], "second-order CG (head)",
        poison.iterative_labels(cfg.iterative_steps)[1], "second-order CG (whole model)", "fine-tuning",
        "SISA (5 shards)", "retraining"]
    assert out[1]["steps"] == cfg.iterative_steps == out[3]["steps"] == 10 and out[4]["steps"] == cfg.whole_steps == 1
    assert out[0]["tau"] in cfg.taus and out[1]["tau"] in cfg.taus  # each chosen on validation data
    lam = out[0]["lambda_max_head"]
    assert any(math.isclose(out[2]["damping"], s * lam) for s in script.DAMPING_SHARES)
    assert out[3]["damping"] == out[4]["damping"] == out[2]["damping"] and out[5]["lr"] in cfg.fine_tune_lrs
    assert out[-1]["seconds"] > 0 and out[-1]["passes"] == cfg.recipe["epochs"] * len(x)  # retraining: timed, counted


def run(seed: int, restored: dict[str, float], budget: float = 0.2) -> dict:
    return {"seed": seed, "budget": budget, "n_train": 1000, "flips": 200, "recipe": {"epochs": 2},
            "clean_acc": 0.8, "poisoned_acc": 0.6,
            "rows": [{"method": m, "accuracy": 0.6 + 0.2 * r / 100, "restored": r, "seconds": 1.0,
                      "passes": {"first-order": 10.0, "second-order CG (head)": 20.0, "retraining": 2000.0}[m]}
                     for m, r in restored.items()]}


def test_summary_gives_mean_sd_over_seeds_and_the_cost_ratio(tmp_path):
    lines = [{"header": {"device": "cpu"}}, run(0, {"first-order": 10, "second-order CG (head)": 30, "retraining": 100}),
             run(1, {"first-order": 12, "second-order CG (head)": 34, "retraining": 100})]
    source = tmp_path / "p.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in lines) + "\n")
    text = script.summarize([str(source)], tmp_path / "out")
    sd = np.std([10, 12], ddof=1)
    assert f"| first-order | {0.6 * 100 + 22 / 2 * 0.2:.2f} ± {0.2 * sd:.2f} | 11.00 ± {sd:.2f} | 21.7 | 10 | 200.0 |" in text
    assert "| second-order CG (head) |" in text and "| 31.9 | 20 | 100.0 |" in text
    assert (tmp_path / "out" / "restored.png").stat().st_size > 0
    assert len(json.loads((tmp_path / "out" / "rows.json").read_text())["runs"]) == 2


def test_summary_refuses_runs_of_mixed_budgets(tmp_path):
    source = tmp_path / "p.jsonl"
    source.write_text(json.dumps(run(0, {"retraining": 100})) + "\n" + json.dumps(run(1, {"retraining": 100}, 0.1)) + "\n")
    with pytest.raises(ValueError, match="one budget"):
        script.summarize([str(source)], tmp_path / "out")
