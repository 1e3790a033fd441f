import numpy as np
import pytest
import torch

from gsmu.mu import curvature, features, unlearn
from gsmu.mu.profiles import NOTEBOOKS, SpamCertified, SpamFeatures


def test_scaling_keeps_zero_and_maps_the_training_maximum_to_one():
    x = np.array([[0.0, 3.0], [1.0, 0.0], [7.0, 0.0]])
    scaled = features.scale_features(x, np.array([0, 1]))
    assert scaled[0, 0] == 0 and scaled[1, 1] == 0  # zero stays zero: no centring
    assert scaled[1, 0] == pytest.approx(1.0) and scaled[0, 1] == pytest.approx(1.0)
    assert scaled[2, 0] == pytest.approx(np.log1p(7) / np.log1p(1))  # test rows may exceed 1
    with pytest.raises(ValueError, match=">= 0"):
        features.scale_features(-x, np.array([0]))


def test_spambase_setup_is_seeded_and_at_the_optimum():
    a, b, c = features.spambase(0), features.spambase(0), features.spambase(1)
    assert torch.equal(a.x_train, b.x_train) and not torch.equal(a.x_train, c.x_train)
    assert len(a.x_train) + len(a.x_test) == 4601 and len(a.donor) == 9
    from gsmu.mu.influence import gradient_residual
    assert gradient_residual(a.model, a.objective, a.train) < 1e-3  # ∇L(θ*; D) ≈ 0, as the updates assume


def test_certify_raises_sigma_until_every_draw_is_certified():
    spam = features.spambase(0)
    holders = unlearn.remove_features(*spam.train, spam.donor).rows
    request = unlearn.remove_features(*spam.train, spam.donor, rows=holders[:3])
    corrected = unlearn.apply_request(spam.train, request)
    first = lambda m: unlearn.first_order(m, spam.objective, request, tau=1e-3)[0]  # noqa: E731
    out = features.certify(spam.model, spam.objective, spam.train, corrected, first, (spam.x_test, spam.y_test),
                           sigma0=1e-6, epsilon=0.1, delta=0.01, draws=2, rounds=6, seed=0)
    assert out.sigma > out.sigma0 and out.certified_at_sigma0 < 2  # a tiny σ does not certify
    assert out.all_certified and len(out.accuracies) == 2
    with pytest.raises(ValueError, match="draws"):
        features.certify(spam.model, spam.objective, spam.train, corrected, first, (spam.x_test, spam.y_test),
                         sigma0=1.0, epsilon=0.1, delta=0.01, draws=0, rounds=1, seed=0)


def test_mu_notebooks_are_registered_with_three_seeds():
    assert set(NOTEBOOKS) == {"05_unlearning_features", "06_unlearning_certified", "07_unlearning_labels",
                              "08_unlearning_canary", "09_unlearning_authors_data", "11_unlearning_backdoor"}
    for cls in NOTEBOOKS.values():
        assert cls.grid("quick")["seed"] == [0, 1, 2]
    assert SpamFeatures.for_profile("paper").runs > SpamFeatures.for_profile("quick").runs
    assert SpamCertified.for_profile("paper").draws > SpamCertified.for_profile("quick").draws


def _relative_gap(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return unlearn.param_distance(a, b) / float(torch.nn.utils.parameters_to_vector(b.parameters()).detach().norm())


def test_factorized_update_equals_the_per_request_exact_solve_on_spambase():
    spam = features.spambase(0)
    solver = features.factorized(spam)  # H formed and factorized once for every request below
    holders = unlearn.remove_features(*spam.train, spam.donor).rows
    for n in (1, 5, 20):
        request = unlearn.remove_features(*spam.train, spam.donor, rows=holders[:n])
        exact, _ = unlearn.second_order(spam.model, spam.objective, request, spam.train, solver="exact")
        amortized, result = unlearn.second_order(spam.model, spam.objective, request, spam.train, solver=solver)
        assert _relative_gap(amortized, exact) < 1e-10
        assert result.hvps == 0 and result.grad_evals == request.grad_evals  # no H formed per request
        assert features.request_passes(solver, result) < 1e-2 * solver.factorization.dim * len(spam.x_train)
    # The corrected H changes per request: the fallback solves it densely, the same update as before.
    corrected, _ = unlearn.second_order(spam.model, spam.objective, request, spam.train, solver=solver,
                                        hessian="corrected")
    fresh, _ = unlearn.second_order(spam.model, spam.objective, request, spam.train, solver="exact",
                                    hessian="corrected")
    assert _relative_gap(corrected, fresh) < 1e-12


def test_factorized_update_equals_the_per_request_exact_solve_on_drebin_sized_counts():
    # Drebin's shape: 2,081 sparse count features (a few dozen non-zero per app); few rows keep the
    # per-request dense H (one HVP per parameter) fast enough for the oracle.
    generator = torch.Generator().manual_seed(0)
    rows, width = 120, 2081
    mask = torch.rand(rows, width, generator=generator) < 0.02
    x = (mask * torch.randint(1, 4, (rows, width), generator=generator)).double()
    y = (x[:, :50].sum(1) > x[:, 50:100].sum(1)).long()
    from gsmu.base import models
    from gsmu.mu.influence import Objective, binary_cross_entropy_sum
    objective = Objective(criterion=binary_cross_entropy_sum, l2=1.0)
    torch.manual_seed(0)
    model = models.LogisticRegression(width).double()
    unlearn.fit_lbfgs(model, objective, (x, y))
    solver = unlearn.Factorized.build(model, objective, (x, y))
    assert solver.factorization.dim == width + 1
    touched = torch.nonzero(x[:, :30].sum(1) > 0).reshape(-1)
    for n in (2, 8):
        request = unlearn.remove_features(x, y, list(range(30)), rows=touched[:n])
        exact, _ = unlearn.second_order(model, objective, request, (x, y), solver="exact")
        amortized, _ = unlearn.second_order(model, objective, request, (x, y), solver=solver)
        assert _relative_gap(amortized, exact) < 1e-10


def test_affected_rows_sweep_reports_the_per_request_cost_apart_from_the_factorization():
    spam = features.spambase(0)
    solver = features.factorized(spam)
    request = unlearn.remove_features(*spam.train, spam.donor)
    table = features.affected_rows_sweep(spam, request, [3], runs=1, taus=[1e-3],
                                         generator=torch.Generator().manual_seed(0), solver=solver)
    # Per request: G over 3 rows (Z and Z̃: 6 gradients) and one solve, far below the one-off H.
    fact = solver.factorization
    once, expected = curvature.passes(fact.cost.macs, fact.dim), 6 + curvature.passes(fact.solve_macs, fact.dim)
    assert float(table["passes (original H)"].iloc[0]) == pytest.approx(expected)
    assert expected < once / 100
