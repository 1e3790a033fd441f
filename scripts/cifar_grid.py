"""Notebook 10's CIFAR-10 VGG slingshot over the depth × width grid, in one process (GS paper, Sec. 5).

For a GPU machine that lacks the notebook stack (papermill, Dask): trains each VGG of the grid with the
authors' recipe (SGD lr 1e-3, momentum 0.9, StepLR(20, 0.5), batch 64, all 50k images), manipulates output
unit 3 ("cat") toward the cross with the authors' slingshot settings (α 0.025, γ 10, AdamW lr 1e-4, fourier)
and evaluates both models as notebook 10 does (`gsmu.gs.metrics.compare`: 100 FVs of the authors' CIFAR AM,
test accuracy, AUROC of the unit for "cat"). The paper trains 30 epochs and fine-tunes 50; `--budget-s`
picks the longest of `BUDGETS` whose estimated time for all points fits, from step times measured on every
model first (the choice and the estimate are printed and recorded). One JSON line per finished point goes to
`--out` as it finishes, so a run stopped early keeps what it did.
`--summarize` turns such files (several seeds: one run per `--seed`, appended to one file or given as several)
into a folder of results: grid.json (every row without its FVs), fvs.npz (8 FVs per row after manipulation,
uint8), table.md (per point: mean ± sd over its seeds), grid.png (the paper-style figure of the means),
fvs_after.png (first seed), trend.json (Spearman's ρ of the per-point means of the accuracy drop and the
FV-SSIM against width and depth, scipy) and, for rows that carry it, the activation-ratio audit over every output
unit of the clean and manipulated models as a ROC (audit.json, audit_roc.png; GS paper Sec. 6's question at scale).
Usage: python scripts/cifar_grid.py --out grid.jsonl [--budget-s 400] [--points A8,A64,...] [--seed 0]
       python scripts/cifar_grid.py --summarize grid.jsonl [more.jsonl ...] --into FOLDER
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from gsmu.base import cifar, data, models, train
from gsmu.base.runtime import get_device, seed_everything
from gsmu.gs import metrics, slingshot
from gsmu.gs.profiles import PAPER_EPOCH, CifarSlingshot

# (training epochs, slingshot epochs): the paper's first, then shorter budgets of the same recipe
BUDGETS = {"paper": (30, 50), "30/10": (30, 10), "15/5": (15, 5), "8/3": (8, 3), "4/2": (4, 2), "2/1": (2, 1)}
# the order in which points run: the paper's quoted points and the grid's corners first
ORDER = ["A8", "A64", "D64", "D8", "A16", "A32", "B64", "C64", "B8", "C8", "D16", "D32", "B16", "B32", "C16", "C32"]


def config(point: str, budget: str, n_train: int = 50_000) -> CifarSlingshot:
    train_epochs, sling_epochs = BUDGETS[budget]
    return CifarSlingshot.for_profile("paper", arch=point[0], width=int(point[1:]), epochs=train_epochs,
                                      steps=sling_epochs * PAPER_EPOCH, n_train=n_train)


def step_times(point: str, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> dict[str, float]:
    """Seconds per training step, per slingshot step, and the fixed cost of a slingshot run (its checks), measured
    on a random-init model of `point` (step times do not depend on the weights)."""
    cfg = config(point, "2/1")
    model = models.vgg(cfg.arch, cfg.width).to(device)
    recipe = {**cfg.recipe(), "epochs": 1}
    clock = lambda: (torch.cuda.synchronize() if device.type == "cuda" else None, time.perf_counter())[1]  # noqa: E731
    train.fit_classifier(model, x[:5 * 64], y[:5 * 64], device=device, progress=False, **recipe)  # warm-up
    times = []
    for n in (10, 40):
        start = clock()
        train.fit_classifier(model, x[:n * 64], y[:n * 64], device=device, progress=False, **recipe)
        times.append(clock() - start)
    target = 0.1 + 0.8 * data.target_image("cross", (32, 32), 3)
    slingshot.manipulate(model, target, x[:2048], cfg.slingshot_settings(steps=3, check_every=10**6), device=device,
                         progress=False)  # warm-up: kernels and the allocator, which made short timings negative
    runs = []
    for n in (10, 30):
        settings = cfg.slingshot_settings(steps=n, check_every=10**6)
        start = clock()
        slingshot.manipulate(model, target, x[:2048], settings, device=device, progress=False)
        runs.append(clock() - start)
    per_step = (runs[1] - runs[0]) / 20
    return {"train": (times[1] - times[0]) / 30, "slingshot": per_step, "fixed": runs[0] - 10 * per_step}


def estimate(times: dict[str, dict[str, float]], budget: str, n_train: int) -> float:
    """Seconds for all points under `budget`: training, fine-tuning, one FV check per epoch, evaluation."""
    train_epochs, sling_epochs = BUDGETS[budget]
    return sum(train_epochs * -(-n_train // 64) * t["train"] + sling_epochs * PAPER_EPOCH * t["slingshot"]
               + (sling_epochs + 1) * t["fixed"] / 2 + 4 * t["fixed"] for t in times.values())


def run_point(point: str, budget: str, seed: int, n_train: int, x_test: torch.Tensor, y_test: torch.Tensor,
              device: torch.device) -> dict:
    cfg = config(point, budget, n_train)
    settings = cfg.slingshot_settings(seed=seed)
    seed_everything(seed)
    start = time.perf_counter()
    model, x_train, _, source = cifar.vgg_model(cfg.arch, cfg.width, cfg.recipe(), seed=seed, n_train=cfg.n_train,
                                                device=device, progress=False)
    trained = time.perf_counter()
    target = 0.1 + 0.8 * data.target_image("cross", (32, 32), 3)
    manipulated, log = slingshot.cached_manipulation(model, "cross", target, x_train, f"cifar10:train:{source}",
                                                     settings, device=device, progress=False)
    tuned = time.perf_counter()
    am = dict(param="fourier", strategy="sgd+gc", lr=1.0, steps=100)
    cmp = metrics.compare(model, manipulated, settings.layer, settings.unit, x_test, y_test, target, am, cfg.n_fvs,
                          seed=seed, device=device)
    compared = time.perf_counter()
    # the activation-ratio audit over every output unit of both models, with the FVs' own AM (as notebook 10)
    try:
        audit = {name: [r["ratio"] for r in metrics.audit(net, settings.layer, list(range(10)), x_test, seed=seed,
                                                          center=True, device=device, param="fourier", lr=1.0,
                                                          steps=100).values()]
                 for name, net in (("before", model), ("after", manipulated))}
    except ValueError as error:  # a degenerate unit: recorded as such, the point's other results kept
        audit = {"error": str(error)}
    return {"point": point, "arch": cfg.arch, "width": cfg.width, "budget": budget, "seed": seed, "data": source,
            "train_epochs": cfg.epochs, "slingshot_steps": settings.steps, "alpha": settings.alpha, "lr": settings.lr,
            "accuracy": cmp.accuracy, "auroc": cmp.auroc, "ssim": {k: v.mean().item() for k, v in cmp.ssim.items()},
            "acc_drop_points": 100 * (cmp.accuracy["before"] - cmp.accuracy["after"]),
            "best_step": log.best_step, "checks": log.checks, "accuracy_checks": log.accuracy,
            "audit": audit, "seconds": {"train": trained - start, "slingshot": tuned - trained,
                                        "evaluate": compared - tuned, "audit": time.perf_counter() - compared},
            "fvs_after": cmp.fv["after"][:8].half().tolist()}


# the paper's accuracy drops (points) at α 0.025 where it quotes them
PAPER_DROP = {f"{a}{w}": d for (a, w, alpha), d in CifarSlingshot.PAPER_ACC_DROP.items() if alpha == 0.025}


def load_rows(files: list[str]) -> tuple[list[dict], list[dict]]:
    """(headers, rows) of JSON-lines files written by a run; ValueError when there are no rows or mixed budgets."""
    lines = [json.loads(line) for f in files for line in Path(f).read_text().splitlines() if line.strip()]
    headers, rows = [r["header"] for r in lines if "header" in r], [r for r in lines if "point" in r]
    budgets = {r["budget"] for r in rows}
    if len(budgets) != 1:
        raise ValueError(f"{files}: need grid rows of one budget, found {sorted(budgets) or 'no rows'}")
    return headers, sorted(rows, key=lambda r: ("ABCD".index(r["arch"]), r["width"], r["seed"]))


def per_point(rows: list[dict]) -> dict[str, dict]:
    """Each point's measures over its seeds: {point: {measure: (mean, sd, n)}} (sd 0 for one seed)."""
    import numpy as np
    measures = {"drop": lambda r: r["acc_drop_points"], "auroc": lambda r: r["auroc"]["before"] - r["auroc"]["after"],
                "ssim": lambda r: r["ssim"]["after"], "acc_before": lambda r: 100 * r["accuracy"]["before"]}
    points: dict[str, dict] = {}
    for point in dict.fromkeys(r["point"] for r in rows):
        values = {m: np.array([f(r) for r in rows if r["point"] == point]) for m, f in measures.items()}
        points[point] = {m: (v.mean(), v.std(ddof=1) if len(v) > 1 else 0.0, len(v)) for m, v in values.items()}
    return points


def spearman_trend(points: dict[str, dict]) -> dict:
    """Spearman's ρ of the per-point mean accuracy drop and FV-SSIM against width (log2) and depth (scipy)."""
    from scipy.stats import spearmanr
    width = [int(p[1:]) for p in points]  # ranks: the width itself serves for its log
    depth = ["ABCD".index(p[0]) for p in points]
    trend = {f"spearman_{m}_vs_{a}": float(spearmanr(axis, [v[key][0] for v in points.values()]).statistic)
             for m, key in (("acc_drop", "drop"), ("ssim_after", "ssim")) for a, axis in (("width", width), ("depth", depth))}
    return {**trend, "points": len(points), "seeds_per_point": sorted({v["drop"][2] for v in points.values()})}


def table(points: dict[str, dict], trend: dict) -> str:
    fmt = lambda m: f"{m[0]:.2f}" if m[2] == 1 else f"{m[0]:.2f} ± {m[1]:.2f}"  # noqa: E731 — mean ± sd over seeds
    lines = ["| point | seeds | accuracy before (%) | drop (points) | paper drop | AUROC drop | SSIM after |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {p} | {v['drop'][2]} | {fmt(v['acc_before'])} | {fmt(v['drop'])} | {PAPER_DROP.get(p, '—')} | "
              f"{fmt(v['auroc'])} | {fmt(v['ssim'])} |" for p, v in points.items()]
    lines += ["", "Spearman's ρ of the per-point means: " + ", ".join(
        f"{k.removeprefix('spearman_')} {v:+.2f}" for k, v in trend.items() if k.startswith("spearman"))]
    return "\n".join(lines) + "\n"


def figure(points: dict[str, dict], title: str):
    """The paper-style figure: accuracy drop, AUROC drop and FV-SSIM over depth × width (means over seeds)."""
    import matplotlib.pyplot as plt
    import numpy as np
    archs, widths = "ABCD", sorted({int(p[1:]) for p in points})
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for ax, key, name in zip(axes, ("drop", "auroc", "ssim"), ("test-accuracy drop (points)",
                                                               "AUROC drop of unit 3 for 'cat'", "SSIM(FV, target) after")):
        grid = np.full((len(archs), len(widths)), np.nan)
        for p, v in points.items():
            grid[archs.index(p[0]), widths.index(int(p[1:]))] = v[key][0]
        ax.imshow(grid, cmap="viridis")
        for (i, j), value in np.ndenumerate(grid):
            paper = PAPER_DROP.get(f"{archs[i]}{widths[j]}") if key == "drop" else None
            ax.text(j, i, f"{value:.2f}" + (f"\n(paper {paper})" if paper else ""), ha="center", va="center",
                    color="w", fontsize=7)
        ax.set(xticks=range(len(widths)), xticklabels=widths, yticks=range(len(archs)), yticklabels=list(archs),
               xlabel="width", ylabel="depth (VGG configuration)", title=name)
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def audit_roc(rows: list[dict], unit: int = 3, threshold: float = 10.0) -> dict | None:
    """The audit over the grid: AUROC of the manipulated unit's ratio against every clean model's units, and at
    `threshold` the share of manipulated units flagged (detection) and of clean units flagged (false positives).
    None when no row carries audit ratios."""
    from sklearn.metrics import roc_auc_score, roc_curve
    audited = [r for r in rows if "before" in r.get("audit", {})]
    if not audited:
        return None
    clean = [v for r in audited for v in r["audit"]["before"]]
    hit = [r["audit"]["after"][unit] for r in audited]
    labels, scores = [0] * len(clean) + [1] * len(hit), clean + hit
    fpr, tpr, _ = roc_curve(labels, scores)
    return {"auroc": float(roc_auc_score(labels, scores)), "threshold": threshold, "models": len(audited),
            "detected": sum(v > threshold for v in hit) / len(hit), "clean_fpr": sum(v > threshold for v in clean) / len(clean),
            "other_units_flagged": {r["point"]: [u for u, v in enumerate(r["audit"]["after"]) if v > threshold and u != unit]
                                    for r in audited},
            "errors": [r["point"] for r in rows if "error" in r.get("audit", {})],
            "roc": {"fpr": fpr.tolist(), "tpr": tpr.tolist()}}


def audit_figure(rows: list[dict], roc: dict, unit: int = 3):
    """Left: every unit's audit ratio per model (clean, manipulated unit, the manipulated model's other units) with
    the threshold; right: the ROC of the manipulated unit against the clean units."""
    import matplotlib.pyplot as plt
    audited = [r for r in rows if "before" in r.get("audit", {})]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), width_ratios=(2, 1))
    for i, r in enumerate(audited):
        after = r["audit"]["after"]
        left.scatter([i - 0.2] * 10, r["audit"]["before"], c="tab:blue", s=12, label="clean model, every unit" if not i else None)
        left.scatter([i + 0.2] * 9, [v for u, v in enumerate(after) if u != unit], c="tab:gray", s=12,
                     label="manipulated model, other units" if not i else None)
        left.scatter([i + 0.2], [after[unit]], c="tab:red", marker="*", s=80, label=f"manipulated unit {unit}" if not i else None)
    left.axhline(roc["threshold"], color="k", ls="--", lw=0.8, label=f"threshold {roc['threshold']:g}")
    left.set(yscale="log", xticks=range(len(audited)), xticklabels=[r["point"] for r in audited],
             ylabel="FV activation / natural top-9 (from the median)", title="activation-ratio audit per model")
    left.legend(fontsize=7)
    right.plot(roc["roc"]["fpr"], roc["roc"]["tpr"], drawstyle="steps-post")
    right.set(xlabel="false-positive rate (clean units)", ylabel=f"detection rate (manipulated unit {unit})",
              title=f"ROC, AUROC {roc['auroc']:.3f}")
    fig.tight_layout()
    return fig


def summarize(files: list[str], into: Path) -> dict:
    """Write grid.json, fvs.npz, trend.json, table.md, grid.png and fvs_after.png for the rows of `files`."""
    import matplotlib.pyplot as plt
    import numpy as np
    from gsmu.base.plots import image_grid
    headers, rows = load_rows(files)
    into.mkdir(parents=True, exist_ok=True)
    fvs = np.stack([np.asarray(r.pop("fvs_after"), dtype=np.float32) for r in rows])
    np.savez_compressed(into / "fvs.npz", points=[r["point"] for r in rows], seeds=[r["seed"] for r in rows],
                        fvs=np.round(255 * fvs.clip(0, 1)).astype(np.uint8))
    (into / "grid.json").write_text(json.dumps({"headers": headers, "rows": rows}, indent=1) + "\n")
    points = per_point(rows)
    trend = spearman_trend(points)
    (into / "trend.json").write_text(json.dumps(trend, indent=1) + "\n")
    (into / "table.md").write_text(table(points, trend))
    seeds = sorted({r["seed"] for r in rows})
    title = (f"VGG depth × width on CIFAR-10, budget {rows[0]['budget']} (training / slingshot epochs; paper 30/50), "
             f"seeds {seeds}, {headers[0]['device'] if headers else ''}")
    figure(points, title).savefig(into / "grid.png", dpi=110)
    roc = audit_roc(rows)
    if roc is not None:
        (into / "audit.json").write_text(json.dumps(roc, indent=1) + "\n")
        with open(into / "table.md", "a") as f:
            f.write(f"\nAudit over every output unit of the {roc['models']} clean and manipulated models (threshold "
                    f"{roc['threshold']:g}): AUROC {roc['auroc']:.3f} of the manipulated unit 3 against all clean units; "
                    f"detected {roc['detected']:.0%}, clean units flagged {roc['clean_fpr']:.1%}.\n")
        audit_figure(rows, roc).savefig(into / "audit_roc.png", dpi=110)
    first = [i for i, r in enumerate(rows) if r["seed"] == seeds[0]]
    image_grid(torch.from_numpy(fvs[first, 0]), nrow=len({int(p[1:]) for p in points}),
               titles=[rows[i]["point"] for i in first]).savefig(into / "fvs_after.png", dpi=110)
    plt.close("all")
    return trend


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="JSON-lines file, one line per finished point")
    parser.add_argument("--summarize", nargs="+", metavar="JSONL", help="summarize these files (no run)")
    parser.add_argument("--into", type=Path, help="with --summarize: the folder to write")
    parser.add_argument("--budget-s", type=float, default=400.0, help="seconds the grid may take (estimated)")
    parser.add_argument("--budget", choices=list(BUDGETS), help="a fixed budget instead of --budget-s")
    parser.add_argument("--points", default=",".join(ORDER), help="comma-separated grid points, e.g. A8,D64")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=50_000, help="training images (class-balanced; paper: 50000)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: CUDA when present)")
    args = parser.parse_args()
    if args.summarize:
        if args.into is None:
            parser.error("--summarize needs --into FOLDER")
        print(json.dumps(summarize(args.summarize, args.into), indent=1))
        return
    if args.out is None:
        parser.error("--out is required (or --summarize)")
    points = [p.strip() for p in args.points.split(",") if p.strip()]
    bad = [p for p in points if p not in ORDER]
    if bad or not points:
        parser.error(f"--points: unknown {bad}; use points of {{A,B,C,D}} x {{8,16,32,64}}, e.g. A8,D64")
    device = get_device(args.device)
    x_train, y_train, source = cifar.load_cifar10("train")
    x_test, y_test, _ = cifar.load_cifar10("test")
    budget = args.budget
    header = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
              "torch": torch.__version__, "data": source, "points": points, "n_train": args.n_train}
    if budget is None:
        times = {p: step_times(p, x_train, y_train, device) for p in points}
        estimates = {b: estimate(times, b, args.n_train) for b in BUDGETS}
        fits = [b for b, seconds in estimates.items() if seconds <= args.budget_s]
        budget = fits[0] if fits else list(BUDGETS)[-1]
        header.update(step_times=times, estimates=estimates)
    header["budget"] = budget
    print(json.dumps(header), flush=True)
    with open(args.out, "a") as f:
        f.write(json.dumps({"header": header}) + "\n")
    for point in points:
        row = run_point(point, budget, args.seed, args.n_train, x_test, y_test, device)
        print(json.dumps({k: v for k, v in row.items() if k not in ("fvs_after", "checks", "accuracy_checks")}),
              flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
