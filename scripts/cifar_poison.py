"""Notebook 07's label-poisoning repair on CIFAR-10 with the authors' CNN, in one process (MU paper §6.3).

For a GPU machine that lacks the notebook stack (papermill, Dask): per seed, flips a share of each class's
labels s → 9 − s in the first `--n-train` images of the 40k training split (`--budget` 0.2 of 40k = 8,000
flips; the authors flip 10,000 of 50,000), trains the clean and the poisoned CNN (`models.AuthorsCifarCNN`,
6 × 128 conv + BatchNorm, Adam lr 1e-3 batch 64 with a linear decay, `--epochs` instead of the authors' 100),
and repairs the poisoned one with every method of notebook 07 (`gsmu.mu.poison`): first-order (τ chosen on
validation data) and its iterative variant (τ chosen again), second-order Gauss-Newton CG on the head (damping
chosen on validation data as a share of the head's largest eigenvalue) and its iterative variant, both with the
authors' `LabelPoisoning.iterative_steps` steps, second-order on the whole model (`whole_steps` steps), fine-tuning,
SISA and retraining. One
JSON line per finished seed goes to `--out`, so a run stopped early keeps what it did.
`--summarize` turns such files into a folder: rows.json, table.md (per method: mean ± sd over seeds of the
percent restored, the accuracy and the cost in full-model pass equivalents, beside the paper's numbers) and
restored.png.
Usage: python scripts/cifar_poison.py --out poison.jsonl [--seeds 0,1,2] [--epochs 10] [--n-train 40000]
       python scripts/cifar_poison.py --summarize poison.jsonl --into FOLDER
"""
from __future__ import annotations

import argparse
import json
import textwrap
import time
from pathlib import Path

import torch

from gsmu.base.runtime import get_device, seed_everything
from gsmu.mu import poison
from gsmu.mu.profiles import LabelPoisoning

# MU paper §6.3 (CIFAR-10, 10,000 flipped labels): accuracies and percent of the gap restored
PAPER = {"clean": 0.879, "poisoned": 0.738, "first-order": 21.7, "second-order": 31.9, "retraining_s": 1230,
         "second_order_s": 85}
DAMPING_SHARES = (1e-3, 3e-3, 1e-2, 3e-2)  # dampings tried, as shares of the head's largest GN eigenvalue


def repair(sc: poison.Scenario, cfg: LabelPoisoning, seed: int, sisa: bool, device: torch.device) -> list[dict]:
    """Every method's row on one scenario, in notebook 07's order; hyper-parameters chosen on validation data.
    H of the head from 2000 rows (notebook 07's); the whole model's from `cfg.whole_rows` rows and at most
    `cfg.whole_iterations` CG iterations (each of its products costs a double backward through every conv)."""
    rows_h = min(2000, len(sc.x))
    rows, (first_it, second_it) = [], poison.iterative_labels(cfg.iterative_steps)
    first = poison.first_order_sweep(sc, list(cfg.taus), device=device).best()[1]
    rows.append(first)
    rows.append(poison.sweep(sc, "first-order", "tau", list(cfg.taus), label=first_it,
                             steps=cfg.iterative_steps, device=device).best()[1])
    lam = poison.curvature_scale(sc, subset="head", hessian_rows=rows_h, seed=seed)
    gn = dict(curvature="gauss-newton", max_iter=50, hessian_rows=rows_h, seed=seed)
    head = poison.sweep(sc, "second-order", "damping", [s * lam for s in DAMPING_SHARES],
                        label="second-order CG (head)", subset="head", device=device, **gn).best()[1]
    rows.append(head)
    rows.append(poison.run_method(sc, "second-order", label=second_it,
                                  subset="head", damping=head["damping"], steps=cfg.iterative_steps, device=device,
                                  **gn)[1])
    rows.append(poison.run_method(sc, "second-order", label=poison.whole_model_label(cfg.whole_steps),
                                  damping=head["damping"], steps=cfg.whole_steps, device=device,
                                  **{**gn, "hessian_rows": min(cfg.whole_rows, len(sc.x)), "max_iter": cfg.whole_iterations})[1])
    rows.append(poison.sweep(sc, "fine-tuning", "lr", list(cfg.fine_tune_lrs), seed=seed, device=device).best()[1])
    if sisa:
        ensemble = poison.sisa_ensemble(sc, 5, device=device)
        rows.append(poison.run_method(sc, "sisa", label="SISA (5 shards)", sisa=ensemble, device=device)[1])
    retrain = poison.run_method(sc, "retraining", cached=True, device=device)[1]
    retrain["seconds"] = poison.retraining_seconds(sc, repeats=3, device=device)
    rows.append(retrain)
    for row in rows:
        row["lambda_max_head"] = lam
    return rows


def run_seed(seed: int, cfg: LabelPoisoning, budget: float, sisa: bool, device: torch.device) -> dict:
    seed_everything(seed)
    start = time.perf_counter()
    sc = poison.make_scenario("cifar10", budget, n_train=cfg.n_train, n_test=cfg.n_test, recipe=cfg.recipe,
                              sizes=dict(cfg.model_sizes), seed=seed, device=device)
    trained = time.perf_counter()
    rows = repair(sc, cfg, seed, sisa, device)
    return {"seed": seed, "budget": budget, "n_train": cfg.n_train, "flips": len(sc.rows), "recipe": cfg.recipe,
            "clean_acc": sc.clean_acc, "poisoned_acc": sc.poisoned_acc, "rows": rows,
            "seconds": {"train_both": trained - start, "repair": time.perf_counter() - trained}}


def summarize(files: list[str], into: Path) -> str:
    """rows.json, table.md and restored.png for the seeds in `files` (one budget, one recipe)."""
    import matplotlib.pyplot as plt
    import numpy as np
    runs = [json.loads(line) for f in files for line in Path(f).read_text().splitlines() if line.strip()]
    headers, runs = [r["header"] for r in runs if "header" in r], [r for r in runs if "seed" in r]
    if not runs or len({(r["budget"], r["n_train"], json.dumps(r["recipe"])) for r in runs}) != 1:
        raise ValueError(f"{files}: need runs of one budget, size and recipe, found {len(runs)} runs")
    into.mkdir(parents=True, exist_ok=True)
    (into / "rows.json").write_text(json.dumps({"headers": headers, "runs": runs}, indent=1) + "\n")
    ms = lambda v: f"{np.mean(v):.2f} ± {np.std(v, ddof=1):.2f}" if len(v) > 1 else f"{v[0]:.2f}"  # noqa: E731
    methods = list(dict.fromkeys(row["method"] for r in runs for row in r["rows"]))
    value = lambda m, k: [row[k] for r in runs for row in r["rows"] if row["method"] == m]  # noqa: E731
    retrain = np.mean(value("retraining", "passes"))
    r0 = runs[0]
    lines = [f"CIFAR-10, authors' CNN, {r0['n_train']} training images, budget {r0['budget']} ({r0['flips']} flips), "
             f"{r0['recipe']['epochs']} epochs (authors 100), seeds {[r['seed'] for r in runs]}, "
             f"{headers[0]['device'] if headers else ''}", "",
             f"clean accuracy {ms([100 * r['clean_acc'] for r in runs])} % (paper {100 * PAPER['clean']:.1f}), "
             f"poisoned {ms([100 * r['poisoned_acc'] for r in runs])} % (paper {100 * PAPER['poisoned']:.1f})", "",
             "| method | test accuracy (%) | restored (%) | paper restored (%) | pass equivalents | retraining / method "
             "(passes) | seconds |", "|---|---|---|---|---|---|---|"]
    paper = {"first-order": PAPER["first-order"], "second-order CG (head)": PAPER["second-order"]}
    for m in methods:
        passes = np.mean(value(m, "passes"))
        lines.append(f"| {m} | {ms([100 * a for a in value(m, 'accuracy')])} | {ms(value(m, 'restored'))} | "
                     f"{paper.get(m, '—')} | {passes:.3g} | {retrain / passes:.1f} | {ms(value(m, 'seconds'))} |")
    text = "\n".join(lines) + "\n"
    (into / "table.md").write_text(text)
    fig, ax = plt.subplots(figsize=(9, 4))
    means = [np.mean(value(m, "restored")) for m in methods]
    sds = [np.std(value(m, "restored"), ddof=1) if len(runs) > 1 else 0 for m in methods]
    ax.barh(methods, means, xerr=sds, color="tab:blue")
    for m, p in paper.items():
        ax.plot([p], [methods.index(m)], "r|", ms=18, mew=2, label="paper" if m == "first-order" else None)
    ax.axvline(0, color="k", lw=0.8)
    ax.set(xlabel="% of the poisoning gap restored (test; mean ± sd over seeds)")
    ax.set_title(textwrap.fill(lines[0], 100), fontsize=9)
    ax.invert_yaxis()
    ax.legend()
    fig.tight_layout()
    fig.savefig(into / "restored.png", dpi=110)
    plt.close(fig)
    return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="JSON-lines file, one line per finished seed")
    parser.add_argument("--summarize", nargs="+", metavar="JSONL", help="summarize these files (no run)")
    parser.add_argument("--into", type=Path, help="with --summarize: the folder to write")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds, run one after another")
    parser.add_argument("--budget", type=float, default=0.2, help="share of each class flipped (authors: 0.2)")
    parser.add_argument("--n-train", type=int, default=40_000, help="training images (the 40k split; paper: all)")
    parser.add_argument("--epochs", type=int, default=10, help="training epochs of each CNN (authors: 100)")
    parser.add_argument("--whole-rows", type=int, default=1000, help="rows of H of the whole-model update")
    parser.add_argument("--whole-iterations", type=int, default=30, help="CG iterations of the whole-model update")
    parser.add_argument("--no-sisa", action="store_true", help="skip SISA (it trains five more CNNs per seed)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: CUDA when present)")
    args = parser.parse_args()
    if args.summarize:
        if args.into is None:
            parser.error("--summarize needs --into FOLDER")
        print(summarize(args.summarize, args.into))
        return
    if args.out is None:
        parser.error("--out is required (or --summarize)")
    if not 0 < args.budget < 0.5:
        parser.error(f"--budget {args.budget} must lie in (0, 0.5): at 0.5 the flipped pairs are ambiguous")
    cfg = LabelPoisoning.for_profile("paper").for_dataset("cifar10", n_train=args.n_train, epochs=args.epochs,
                                                          budgets=(args.budget,), main_budget=args.budget,
                                                          whole_rows=args.whole_rows,
                                                          whole_iterations=args.whole_iterations)
    device = get_device(args.device)
    header = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "n_train": args.n_train, "epochs": args.epochs, "budget": args.budget,
              "whole_rows": args.whole_rows, "whole_iterations": args.whole_iterations}
    print(json.dumps(header), flush=True)
    with open(args.out, "a") as f:
        f.write(json.dumps({"header": header}) + "\n")
    for seed in [int(s) for s in args.seeds.split(",")]:
        run = run_seed(seed, cfg, args.budget, not args.no_sisa, device)
        print(json.dumps({k: v for k, v in run.items() if k != "rows"}), flush=True)
        for row in run["rows"]:
            print(f"  {row['method']:<36} acc {100 * row['accuracy']:.2f} restored {row['restored']:7.1f} % "
                  f"passes {row['passes']:.3g} {row['seconds']:.1f} s", flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(run) + "\n")


if __name__ == "__main__":
    main()
