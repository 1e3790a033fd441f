"""Feature unlearning on the MU authors' own data (Drebin, Adult, Diabetes): the comparison of §6.1.

*Machine Unlearning of Features and Labels* (Warnecke et al., NDSS 2023), §6.1 "Unlearning features":
an L2-regularized logistic regression (summed loss, λ/2‖θ‖²) is trained to its optimum; k of the features
the authors list (`relevant_features.txt`) are removed — zeroed in every row where any of them is non-zero
(Z: those rows; Z̃: the same rows with the features zeroed) — and every method of the paper is compared
with retraining on the corrected data: occlusion (unchanged model, features zeroed at test time),
fine-tuning (one SGD pass over Z̃), SISA (20 shards, majority vote), first-order `θ − τG` (τ chosen on
validation rows by agreement with retraining, the paper's fidelity), second-order `θ − H⁻¹G` with H from the
original data D (the paper) and from the corrected data D̃ (ours: one Newton step on the corrected objective),
all through the one method list of `unlearn.compare_methods`.

The updates come from `gsmu.mu.unlearn`; H is formed and Cholesky-factorized once per trained model with
`gsmu.mu.curvature.Factorization` (Kronecker route of a linear model), so each request then costs its
gradient difference and two triangular solves. Costs are in full-model pass equivalents
(`gsmu.mu.cost`: one per-example gradient = 1 pass = 3 forward MACs per example of the logistic
regression; forming H is counted by its MACs), the one-off cost per trained model apart from each
request's, with the number of requests that amortize it (`curvature.break_even`).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..base import models, tabular
from ..base.runtime import check_choice, check_int, check_range
from . import cost, curvature, unlearn
from .curvature import Factorization, Factorized
from .influence import Objective, binary_cross_entropy_sum

# `unlearn.compare_methods`'s methods (its order) as §6.1 and this module name them (D: the original data, D̃:
# the corrected data).
NAMES = {"second-order (original H)": "second-order (D)", "second-order (corrected H)": "second-order (D̃)"}
METHODS = tuple(NAMES.get(m, m) for m in unlearn.METHODS)


@dataclass
class Task:
    """One data set ready for unlearning: float64 tensors (train / validation / test), column names, the
    authors' features to unlearn (column indices present in the training rows), the objective, the trained
    model and H over the training data, factorized."""
    name: str
    train: tuple[Tensor, Tensor]
    valid: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    names: list[str]
    relevant: list[int]
    relevant_listed: int
    objective: Objective
    model: nn.Module
    hessian: Factorization
    fit_passes: float

    def new_model(self) -> nn.Module:
        return models.LogisticRegression(self.train[0].shape[1]).double()

    @property
    def dim(self) -> int:
        return self.train[0].shape[1] + 1


def _rows(n: int, keep: int | None, generator: np.random.Generator) -> np.ndarray:
    return np.arange(n) if keep is None or keep >= n else np.sort(generator.choice(n, keep, replace=False))


def _dense(x) -> np.ndarray:
    return x.toarray() if hasattr(x, "toarray") else np.asarray(x)


def prepare(name: str, seed: int, *, l2: float, train_rows: int | None = None, test_rows: int | None = None,
            valid_share: float = 0.2, scaling: str = "minmax") -> Task:
    """Load data set `name` (`gsmu.base.tabular`), subsample rows (`train_rows`, `test_rows`; None keeps all),
    hold out validation rows (Drebin: the authors' validation split, subsampled in proportion; otherwise
    `valid_share` of the training rows), train the logistic regression with L-BFGS to the optimum of
    Σℓ + l2/2‖θ‖² and factorize its H. All randomness from `seed`."""
    check_choice("name", name, tabular.DATASETS)
    check_range("l2", l2, 1e-8, 1e8)
    check_range("valid_share", valid_share, 0.05, 0.5)
    for label, value in (("train_rows", train_rows), ("test_rows", test_rows)):
        if value is not None:
            check_int(label, value, 50)
    rng = np.random.default_rng(seed)
    data = tabular.load(name, seed, scaling=scaling) if name == "Diabetes" else tabular.load(name, seed)
    if data.x_valid is None:
        order = rng.permutation(len(data.y_train))
        cut = int(round(valid_share * len(order)))
        x_valid, y_valid = data.x_train[order[:cut]], data.y_train[order[:cut]]
        x_train, y_train = data.x_train[order[cut:]], data.y_train[order[cut:]]
    else:
        x_train, y_train, x_valid, y_valid = data.x_train, data.y_train, data.x_valid, data.y_valid
    tr = _rows(len(y_train), train_rows, rng)
    va = _rows(len(y_valid), None if train_rows is None else max(50, len(tr) * len(y_valid) // len(y_train)), rng)
    te = _rows(len(data.y_test), test_rows, rng)
    arrays = [(_dense(x[i]), y[i]) for x, y, i in ((x_train, y_train, tr), (x_valid, y_valid, va),
                                                    (data.x_test, data.y_test, te))]
    train, valid, test = ((torch.tensor(x, dtype=torch.float64), torch.tensor(y)) for x, y in arrays)
    present = (train[0] != 0).any(0)
    relevant = [c for c in data.relevant_columns if bool(present[c])]
    objective = Objective(criterion=binary_cross_entropy_sum, l2=l2)
    torch.manual_seed(seed)
    model = models.LogisticRegression(train[0].shape[1]).double()
    fit = unlearn.fit_lbfgs(model, objective, train)
    hessian = Factorization.build(model, objective, train)
    return Task(name, train, valid, test, data.names, relevant, len(data.relevant), objective, model, hessian,
                cost.passes(gradients=fit.grad_evals))


@dataclass
class Unlearning:
    """One request: the removed columns, the request (Z, Z̃), the corrected training data and the test /
    validation data with the columns zeroed."""
    features: list[int]
    request: unlearn.Request
    corrected: tuple[Tensor, Tensor]
    test: tuple[Tensor, Tensor]
    valid: tuple[Tensor, Tensor]


def feature_request(task: Task, k: int, generator: torch.Generator) -> Unlearning:
    """Remove k of the task's relevant features, drawn at random (all of them when k ≥ their number)."""
    check_int("k", k, 1)
    pool = torch.tensor(task.relevant)
    chosen = pool if k >= len(pool) else pool[torch.randperm(len(pool), generator=generator)[:k]]
    features = sorted(chosen.tolist())
    request = unlearn.remove_features(*task.train, features)
    return Unlearning(features, request, unlearn.apply_request(task.train, request),
                      (unlearn.zero_features(task.test[0], features), task.test[1]),
                      (unlearn.zero_features(task.valid[0], features), task.valid[1]))


def sisa(task: Task, shards: int, seed: int) -> unlearn.Sisa:
    """The SISA ensemble of `shards` L-BFGS-trained logistic regressions on the task's training data (it
    counts the gradients its shards' training evaluates: `training_grad_evals`)."""
    check_int("shards", shards, 2)
    # tol 1e-6: the shard models vote, their predictions do not change below it (checked here on Adult and
    # Drebin); the tighter tol of the single model only costs L-BFGS iterations.
    fit = lambda model, data: unlearn.fit_lbfgs(model, task.objective, data, tol=1e-6)
    return unlearn.Sisa(task.new_model, fit, task.train, shards=shards, seed=seed)


def _hessian_passes(task: Task, fact: Factorization) -> float:
    # Forming and factorizing H, in passes of 3·dim MACs per example (forward dim MACs, backward twice that).
    return curvature.passes(fact.cost.macs, task.dim)


def run_methods(task: Task, job: Unlearning, *, taus: list[float], fine_tune_lr: float,
                ensemble: unlearn.Sisa | None, seed: int) -> tuple[list[dict], dict[str, nn.Module]]:
    """Every method of §6.1 on one request: `unlearn.compare_methods` with first-order's τ chosen on the
    validation rows (features removed) by agreement with retraining, second-order solving with H of D
    factorized once per model and H of D̃ formed and factorized for the request. Rows as there (method names
    of `METHODS`; `tau`: the chosen τ on the first-order row), with the distance to the retrained θ relative
    to the original θ's (occlusion = 1), the request's costs — second-order (D̃)'s include forming and
    factorizing its H — and the one-off pass equivalents and seconds paid once per trained model and shared
    by every request: forming and factorizing H of D for second-order (D), training the shards for SISA
    (whose seconds are not measured here, NaN). `ensemble=None` leaves SISA out."""
    corrected_h = Factorization.build(task.model, task.objective, job.corrected)
    solvers = {"original": Factorized(task.hessian), "corrected": Factorized(corrected_h)}
    rows, fitted = unlearn.compare_methods(task.model, task.objective, task.train, job.request, job.test, taus=taus,
                                           fine_tune_lr=fine_tune_lr, sisa=ensemble, solver=solvers, seed=seed,
                                           valid=job.valid, names=NAMES)
    table = {row["method"]: row for row in rows}
    scale = table["occlusion"]["distance"]  # ‖θ* − θ_retrained‖
    for row in rows:
        row["distance"] = row["distance"] / scale if scale > 0 else 0.0
        row["one-off passes"], row["one-off seconds"] = 0.0, 0.0
    table["second-order (D̃)"]["passes"] += _hessian_passes(task, corrected_h)
    table["second-order (D̃)"]["seconds"] += corrected_h.cost.seconds
    table["second-order (D)"]["one-off passes"] = _hessian_passes(task, task.hessian)
    table["second-order (D)"]["one-off seconds"] = task.hessian.cost.seconds
    if ensemble is not None:
        table["SISA"]["one-off passes"] = cost.passes(gradients=ensemble.training_grad_evals)
        table["SISA"]["one-off seconds"] = float("nan")
    return rows, fitted


def timings(task: Task, job: Unlearning, *, taus: list[float], repeats: int) -> dict[str, float]:
    """Median wall time (seconds, `repeats` calls) of first-order (all τ, scored on the validation rows
    against the retrained model, which is trained once beforehand and not timed here), second-order with the
    factorized H of D, second-order forming and factorizing H of D̃, and warm-started retraining."""
    model, objective, request = task.model, task.objective, job.request
    retrained, _ = unlearn.retrain(model, objective, job.corrected)
    calls = {
        "first-order": lambda: unlearn.best_first_order(model, objective, request, job.corrected, taus,
                                                        valid=job.valid, reference=retrained),
        "second-order (D)": lambda: unlearn.second_order(model, objective, request, task.train,
                                                         solver=Factorized(task.hessian)),
        "second-order (D̃)": lambda: unlearn.second_order(
            model, objective, request, task.train, solver=Factorized(Factorization.build(model, objective,
                                                                                         job.corrected)),
            settings=unlearn.SecondOrder(hessian="corrected")),
        "retraining": lambda: unlearn.retrain(model, objective, job.corrected),
    }
    return {name: cost.median_seconds(fn, repeats) for name, fn in calls.items()}


def conditioning(task: Task, job: Unlearning) -> dict[str, float]:
    """Why a second-order step can fail: the extreme eigenvalues of H over D and D̃ (λ, the L2 weight, is the
    floor of both), the curvature H_D keeps in the removed columns (D̃ has only λ there), and the smallest
    curvature left to the kept parameters — in H_D after the removed columns absorb what they can (the
    Schur complement H_KK − H_KR H_RR⁻¹ H_RK, which governs the kept part of H_D⁻¹G) against H_D̃'s kept
    block. A Schur complement far below it means H_D lets the removed columns stand in for kept ones, so
    the paper's step moves the kept weights much further than retraining does. `intercept_cosine`: the
    largest cosine between a removed column and the constant column (the bias's input) over the training
    rows — near 1, the column is almost a multiple of the bias, so H_D has a direction (that column up, the
    bias down) whose only curvature is about λ; `bottom_share`: the weight of H_D's lowest eigenvector on
    the removed columns and the bias."""
    h_d = task.hessian._h
    h_dt = Factorization.build(task.model, task.objective, job.corrected)._h
    ev_d, ev_dt = torch.linalg.eigvalsh(h_d), torch.linalg.eigvalsh(h_dt)
    bottom = torch.linalg.eigh(h_d).eigenvectors[:, 0]
    x = task.train[0][:, job.features]
    cosine = x.sum(0) / (x.norm(dim=0) * len(x) ** 0.5).clamp_min(1e-300)
    cols = torch.tensor(job.features)
    kept = torch.tensor([i for i in range(task.dim) if i not in set(job.features)])
    h_kr = h_d[kept][:, cols]
    schur = h_d[kept][:, kept] - h_kr @ torch.linalg.solve(h_d[cols][:, cols], h_kr.T)
    return {"l2": task.objective.l2, "eig_min_D": float(ev_d[0]), "eig_max_D": float(ev_d[-1]),
            "cond_D": float(ev_d[-1] / ev_d[0]), "eig_min_Dt": float(ev_dt[0]), "eig_max_Dt": float(ev_dt[-1]),
            "cond_Dt": float(ev_dt[-1] / ev_dt[0]),
            "removed_diag_D": float(torch.diagonal(h_d)[cols].mean()),
            "removed_diag_Dt": float(torch.diagonal(h_dt)[cols].mean()),
            "intercept_cosine": float(cosine.max()),
            "bottom_share": float((bottom[cols] ** 2).sum() + bottom[-1] ** 2),
            "schur_min_D": float(torch.linalg.eigvalsh(schur)[0]),
            "kept_min_Dt": float(torch.linalg.eigvalsh(h_dt[kept][:, kept])[0]),
            "affected_share": len(job.request) / len(task.train[0])}


def feature_counts(task: Task, wanted: tuple[int, ...] | list[int]) -> list[int]:
    """The k of `wanted` the data has relevant features for; where some k exceeds their number, all of them
    (once) instead."""
    n = len(task.relevant)
    return sorted({min(k, n) for k in wanted})


def compare(task: Task, wanted: tuple[int, ...] | list[int], *, taus: list[float], fine_tune_lr: float, shards: int,
            seed: int) -> tuple["pandas.DataFrame", dict[int, Unlearning]]:  # noqa: F821
    """`run_methods` for every k of `feature_counts(task, wanted)` (one random feature set each, drawn with
    `seed`; one SISA ensemble of `shards` shards, copied per request). Returns the table (one row per k and
    method, with the affected rows) and the requests by k."""
    import pandas as pd  # the notebooks' table library; not needed by the rest of the module
    generator = torch.Generator().manual_seed(seed)
    ensemble = sisa(task, shards, seed) if shards > 1 else None
    rows, jobs = [], {}
    for k in feature_counts(task, wanted):
        jobs[k] = job = feature_request(task, k, generator)
        table, _ = run_methods(task, job, taus=taus, fine_tune_lr=fine_tune_lr, ensemble=ensemble, seed=seed)
        rows += [dict(r, k=k, affected=len(job.request)) for r in table]
    return pd.DataFrame(rows).set_index(["k", "method"]), jobs
