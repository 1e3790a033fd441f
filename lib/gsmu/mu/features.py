"""The feature-unlearning set-up shared by the Spambase notebooks (MU paper §5 and §6.1): data, split,
scaling and the L2-regularized logistic regression trained to its optimum.

Spambase's features are scaled by `log1p` and divided by the training maximum — without centring, so a
zeroed feature means "absent", as with the paper's binary bag-of-words features. The model is trained to the
optimum of `Σ ℓ + λ/2‖θ‖²` (summed loss) with full-batch L-BFGS in float64: the influence updates assume
`∇L(θ*; D) = 0`.

Several requests on one trained model share the paper's H (§4: the Hessian over the original data D), so
`factorized` forms and Cholesky-factorizes it once (`gsmu.mu.curvature`) and every request then costs its
gradient difference and two triangular solves; H over a request's corrected data changes per request and
stays a dense solve per request.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ..base import data, models
from ..base.runtime import check_range, get_device
from . import cost, curvature, unlearn
from .influence import Objective, binary_cross_entropy_sum, gradient_residual


@dataclass
class SpamSetup:
    """The split data (float64 tensors), feature names, objective and the trained model."""
    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    names: list[str]
    objective: Objective
    model: nn.Module
    iterations: int  # L-BFGS iterations of the training

    @property
    def train(self) -> tuple[Tensor, Tensor]:
        return self.x_train, self.y_train

    @property
    def donor(self) -> list[int]:
        """Column indices of the donor's identifying features (`gsmu.base.data.DONOR_FEATURES`)."""
        return [self.names.index(w) for w in data.DONOR_FEATURES]

    def new_model(self) -> nn.Module:
        """An untrained logistic regression of the same shape, dtype and device."""
        return models.LogisticRegression(self.x_train.shape[1]).double().to(self.x_train.device)


def scale_features(x: np.ndarray, train_rows: np.ndarray) -> np.ndarray:
    """`log1p(x)` divided by the training rows' maximum of `log1p(x)` per column (no centring; zero stays
    zero). Columns that are zero on every training row are left at zero."""
    if (x < 0).any():
        raise ValueError("features must be >= 0 (counts or frequencies) for the log1p scaling.")
    top = np.log1p(x[train_rows]).max(0)
    return np.log1p(x) / np.where(top > 0, top, 1.0)


def spambase(seed: int, *, l2: float = 1.0, train_share: float = 0.8,
             device: str | torch.device | None = None) -> SpamSetup:
    """Spambase split at random (`seed`) into train/test, scaled, with the logistic regression trained."""
    check_range("l2", l2, 1e-8, 1e8)
    check_range("train_share", train_share, 0.1, 0.95)
    device = get_device(device)
    x, y, names = data.load_spambase()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed)).numpy()
    cut = int(train_share * len(x))
    train_rows, test_rows = order[:cut], order[cut:]
    x = scale_features(x, train_rows)
    tensors = [torch.tensor(a, device=device) for a in (x[train_rows], y[train_rows], x[test_rows], y[test_rows])]
    objective = Objective(criterion=binary_cross_entropy_sum, l2=l2)
    torch.manual_seed(seed)
    model = models.LogisticRegression(x.shape[1]).double().to(device)
    record = unlearn.fit_lbfgs(model, objective, (tensors[0], tensors[1]))
    return SpamSetup(*tensors, list(names), objective, model, int(record["iterations"]))


@dataclass
class Certification:
    """Outcome of `certify`: the σ reached, how many of the last round's draws are certified, and the
    test accuracies of the last round's models (all certified when `certified == draws`)."""
    sigma: float
    sigma0: float
    certified_at_sigma0: int
    certified: int
    draws: int
    rounds: int
    accuracies: list[float]

    @property
    def all_certified(self) -> bool:
        return self.certified == self.draws


def certify(model: nn.Module, objective: Objective, train: tuple[Tensor, Tensor], corrected: tuple[Tensor, Tensor],
            update, test: tuple[Tensor, Tensor], *, sigma0: float, epsilon: float, delta: float, draws: int,
            rounds: int, seed: int) -> Certification:
    """Raise σ from `sigma0` until every one of `draws` noise draws is (ε, δ)-certified, at most `rounds`
    rounds of fresh draws: after a round with an uncertified draw, σ ← max(1.5σ, 1.1·c·max β/ε), β the
    residuals measured on the noise-trained models (the noiseless residual under-estimates them)."""
    if draws < 1 or rounds < 1 or sigma0 <= 0:
        raise ValueError(f"need draws >= 1, rounds >= 1 and sigma0 > 0; got {draws}, {rounds}, {sigma0}.")
    sigma, first = sigma0, None
    for r in range(rounds):
        runs = [unlearn.certified_run(model, objective, train, corrected, update, sigma=sigma, epsilon=epsilon,
                                      delta=delta, seed=seed * 1000 + 100 * r + d) for d in range(draws)]
        ok = sum(rec["certified"] for _, rec in runs)
        first = ok if first is None else first
        if ok == draws or r == rounds - 1:
            return Certification(sigma, sigma0, first, ok, draws, r + 1,
                                 [unlearn.accuracy(m, *test) for m, _ in runs])
        beta = max(rec["residual"] for _, rec in runs)
        sigma = max(1.5 * sigma, 1.1 * unlearn.certifying_sigma(beta, epsilon, delta))
    raise AssertionError("unreachable")


def factorized(setup: SpamSetup) -> unlearn.Factorized:
    """The solver for every request on `setup.model`: H over the training data formed and Cholesky-factorized
    once (its one-off cost in `.factorization.cost`); any other curvature — H over a request's corrected data
    — is handed to a dense per-request solve (`Exact`), so `unlearn.compare_methods(..., solver=...)` takes it."""
    return unlearn.Factorized.build(setup.model, setup.objective, setup.train, fallback=unlearn.Exact())


def request_passes(solver: unlearn.Factorized, result: unlearn.UpdateResult) -> float:
    """Pass equivalents of one request answered with the factorized H: its gradients (G) and one solve."""
    fact = solver.factorization
    return cost.passes(gradients=result.grad_evals) + curvature.passes(fact.solve_macs, fact.dim)


def affected_rows_sweep(setup: SpamSetup, request: unlearn.Request, counts: list[int], *, runs: int,
                        taus: list[float], generator: torch.Generator, solver: unlearn.Factorized | None = None):
    """The donor request restricted to `n` random rows of it, for every `n` in `counts` (`runs` draws each,
    one for the whole request): gradient residuals of no update, the best first-order update and the
    second-order update with H from the original and from the corrected data, the second/first ratios, and
    the per-request cost of the original-H update (pass equivalents and seconds, the factorization of
    `solver` — built here once when None — excluded: it is paid once per model). Returns a pandas DataFrame,
    one row per draw."""
    import pandas as pd  # the notebooks' table library; not needed by the rest of the module
    if runs < 1 or not counts or min(counts) < 1 or max(counts) > len(request):
        raise ValueError(f"need runs >= 1 and counts in [1, {len(request)}]; got runs={runs}, counts={counts}.")
    model, objective, train = setup.model, setup.objective, setup.train
    solver = factorized(setup) if solver is None else solver
    rows = []
    for n in counts:
        for run in range(runs if n < len(request) else 1):
            chosen = request.rows[torch.randperm(len(request), generator=generator)[:n]]
            req = unlearn.remove_features(*train, setup.donor, rows=chosen)
            corrected = unlearn.apply_request(train, req)
            first, _ = unlearn.best_first_order(model, objective, req, corrected, taus)
            res = {"none": gradient_residual(model, objective, corrected),
                   "first-order": gradient_residual(first, objective, corrected)}
            for hessian in unlearn.HESSIANS:
                # The original H is the factorized one; the corrected H changes per request: a dense solve.
                second, result = unlearn.second_order(model, objective, req, train, hessian=hessian,
                                                      solver=solver if hessian == "original" else "exact")
                res[f"second ({hessian} H)"] = gradient_residual(second, objective, corrected)
                if hessian == "original":
                    res["passes (original H)"] = request_passes(solver, result)
                    res["seconds (original H)"] = result.seconds
            rows.append(dict(res, rows=n, run=run))
    table = pd.DataFrame(rows)
    for hessian in unlearn.HESSIANS:
        table[f"ratio {hessian} H"] = table[f"second ({hessian} H)"] / table["first-order"]
    return table
