"""Oracles for gsmu.mu.unlearn: exact retraining (closed-form ridge, L-BFGS), autograd gradients, brute force."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from gsmu.mu.influence import Objective, binary_cross_entropy_sum, gradient_residual
from gsmu.mu.unlearn import (Request, Sisa, apply_request, best_first_order, certified_run, certify_constant,
                         certifying_sigma, compare_methods, example_losses, first_order, fix_labels, fit_lbfgs,
                         fine_tune, is_certified, param_distance, perturbation, remove_features, replace_tokens,
                         request_from_datasets, retrain, second_order, text_windows, zero_features)


def _mse_sum(out, target):
    return (out.squeeze(-1) - target).square().sum()


@pytest.fixture
def ridge():
    """Linear least squares + L2: quadratic, so one Newton step on the corrected objective is exact."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(60, 6, generator=gen, dtype=torch.float64)
    y = x @ torch.randn(6, generator=gen, dtype=torch.float64) + 0.1 * torch.randn(60, generator=gen,
                                                                                        dtype=torch.float64)
    objective = Objective(criterion=_mse_sum, l2=2.0)
    model = nn.Linear(6, 1).double()
    w = torch.from_numpy(_ridge_solution(x, y, 2.0))
    with torch.no_grad():  # start at the exact optimum: the updates assume ∇L(θ*; D) = 0
        model.weight.copy_(w[:6].reshape(1, 6))
        model.bias.copy_(w[6:])
    return model, objective, x, y


def _ridge_solution(x, y, l2):
    """Closed form of Σ(w·x + c − y)² + l2/2 (‖w‖² + c²), solved with numpy (independent of torch)."""
    a = np.hstack([x.numpy(), np.ones((len(x), 1))])
    w = np.linalg.solve(2 * a.T @ a + l2 * np.eye(a.shape[1]), 2 * a.T @ y.numpy())
    return w


def _flat(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy()


def test_fit_lbfgs_reaches_the_closed_form(ridge):
    _, objective, x, y = ridge
    model = nn.Linear(6, 1).double()
    fit_lbfgs(model, objective, (x, y))
    np.testing.assert_allclose(_flat(model), _ridge_solution(x, y, 2.0), rtol=1e-7, atol=1e-9)
    assert gradient_residual(model, objective, (x, y)) < 1e-6


@pytest.mark.parametrize("steps", [1, 3])
def test_corrected_newton_step_is_exact_retraining_on_a_quadratic(ridge, steps):
    model, objective, x, y = ridge
    request = remove_features(x, y, [1, 4], rows=[3, 10, 11, 40])
    before = _flat(model).copy()
    new, record = second_order(model, objective, request, (x, y), hessian="corrected", solver="exact",
                               steps=steps)
    corrected = apply_request((x, y), request)
    np.testing.assert_allclose(_flat(new), _ridge_solution(*corrected, 2.0), rtol=1e-7, atol=1e-9)
    np.testing.assert_array_equal(_flat(model), before)  # the original model is untouched
    assert record["steps"] == steps and record["grad_evals"] >= 2 * len(request)


def test_cg_update_matches_exact_update(ridge):
    model, objective, x, y = ridge
    request = remove_features(x, y, [0], rows=[5])
    exact, _ = second_order(model, objective, request, (x, y), solver="exact")
    cg, record = second_order(model, objective, request, (x, y), solver="cg", tol=1e-12)
    assert record["solver"][0]["converged"]
    np.testing.assert_allclose(_flat(cg), _flat(exact), rtol=1e-8, atol=1e-10)


@pytest.fixture
def logreg():
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(200, 5, generator=gen, dtype=torch.float64)
    y = (x @ torch.tensor([3.0, -2.0, 1.0, 0.5, -1.0], dtype=torch.float64) + 0.2 * torch.randn(
        200, generator=gen, dtype=torch.float64) > 0.3).long()
    objective = Objective(criterion=binary_cross_entropy_sum, l2=1.0)
    model = nn.Sequential(nn.Linear(5, 1), nn.Flatten(0)).double()
    fit_lbfgs(model, objective, (x, y))
    return model, objective, x, y


def test_second_order_lands_near_retraining_when_one_point_changes(logreg):
    model, objective, x, y = logreg
    request = fix_labels(x, y, 1 - y, rows=[17], num_classes=2)
    corrected = apply_request((x, y), request)
    target, _ = retrain(model, objective, corrected)
    assert gradient_residual(target, objective, corrected) < 1e-6
    first, _ = first_order(model, objective, request, tau=1e-3)
    second, _ = second_order(model, objective, request, (x, y), solver="cg", tol=1e-10)
    gap = param_distance(model, target)
    assert param_distance(second, target) < 0.02 * gap
    assert param_distance(second, target) < 0.1 * param_distance(first, target)
    assert gradient_residual(second, objective, corrected) < 0.02 * gradient_residual(model, objective, corrected)


def test_first_order_is_theta_minus_tau_g(logreg):
    model, objective, x, y = logreg
    request = fix_labels(x, y, 1 - y, rows=[2, 9])

    def grad(inputs, targets):
        model.zero_grad()
        objective(model, inputs, targets).backward()
        return torch.cat([p.grad.reshape(-1) for p in model.parameters()])

    g = grad(*request.z_tilde) - grad(*request.z)
    new, record = first_order(model, objective, request, tau=0.01)
    np.testing.assert_allclose(_flat(new), _flat(model) - 0.01 * g.numpy(), rtol=1e-12)
    assert record["grad_evals"] == 4


def test_second_order_on_a_parameter_subset_moves_only_it():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    x, y = torch.randn(40, 4, dtype=torch.float64), torch.randint(0, 3, (40,))
    request = fix_labels(x, y, (y + 1) % 3, rows=[0, 1, 2], num_classes=3)
    new, record = second_order(model, Objective(l2=0.1), request, (x, y), params=["2"],
                               curvature="gauss-newton", damping=1.0)
    torch.testing.assert_close(new[0].weight, model[0].weight)
    assert not torch.equal(new[2].weight, model[2].weight)
    assert not record["solver"][0]["negative_curvature"]


def test_lissa_update_with_scale_and_stats(ridge):
    model, objective, x, y = ridge
    request = remove_features(x, y, [2], rows=[7])
    exact, _ = second_order(model, objective, request, (x, y), solver="exact")
    approx, record = second_order(model, objective, request, (x, y), solver="lissa", lissa_iterations=3000,
                                  tol=1e-12)
    assert record["solver"][0]["effective_damping"] == 0.0
    np.testing.assert_allclose(_flat(approx), _flat(exact), rtol=1e-5, atol=1e-7)


def test_fine_tune_and_sisa(logreg):
    model, objective, x, y = logreg
    request = fix_labels(x, y, 1 - y, rows=[0, 1, 2, 3])
    tuned, record = fine_tune(model, objective, request, lr=0.1, epochs=2, batch_size=2)
    assert record["grad_evals"] == 8 and param_distance(tuned, model) > 0

    def build():
        return nn.Sequential(nn.Linear(5, 1), nn.Flatten(0)).double()

    sisa = Sisa(build, lambda m, d: fit_lbfgs(m, objective, d), (x, y), shards=5, seed=0)
    untouched = set(range(5)) - set(sisa.shard_of[request.rows].tolist())
    kept = {s: sisa.models[s] for s in untouched}
    record = sisa.unlearn(request)
    assert record["shards_retrained"] == 5 - len(untouched)
    assert all(sisa.models[s] is kept[s] for s in untouched)
    assert torch.equal(sisa.data[1][request.rows], 1 - y[request.rows])
    # Each retrained shard model is the exact optimum of its corrected shard.
    for s in set(range(5)) - untouched:
        idx = (sisa.shard_of == s).nonzero().reshape(-1)
        assert gradient_residual(sisa.models[s], objective, (sisa.data[0][idx], sisa.data[1][idx])) < 1e-6
    assert 0.5 < sisa.accuracy(x, y) <= 1.0


def test_certified_training_and_sigma(logreg):
    model, objective, x, y = logreg
    b = perturbation(6, sigma=2.0, generator=torch.Generator().manual_seed(0))
    noisy, _ = retrain(model, objective, (x, y), linear=b)
    assert gradient_residual(noisy, objective, (x, y), linear=b) < 1e-6
    assert gradient_residual(noisy, objective, (x, y)) == pytest.approx(float(b.norm()), rel=1e-6)
    c = math.sqrt(2 * math.log(1.5 / 0.01))
    assert certify_constant(0.01) == pytest.approx(c)
    sigma = certifying_sigma(3.0, epsilon=0.1, delta=0.01)
    assert sigma == pytest.approx(c * 3.0 / 0.1)
    assert is_certified(3.0, sigma * 1.0001, 0.1, 0.01) and not is_certified(3.0, sigma * 0.99, 0.1, 0.01)


def test_replace_tokens_matches_brute_force():
    stream = torch.tensor([5, 1, 2, 3, 5, 5, 1, 2, 3, 4, 0, 0, 1, 2, 5, 1, 2, 3])
    request = replace_tokens(stream, [1, 2, 3], [7, 7, 7], length=4, stride=2)
    inputs, targets = text_windows(stream, 4, 2)
    fixed = torch.tensor([5, 7, 7, 7, 5, 5, 7, 7, 7, 4, 0, 0, 1, 2, 5, 7, 7, 7])
    new_inputs, new_targets = text_windows(fixed, 4, 2)
    expected = [i for i in range(len(inputs))
                if not (torch.equal(inputs[i], new_inputs[i]) and torch.equal(targets[i], new_targets[i]))]
    assert request.rows.tolist() == expected
    assert torch.equal(request.z_tilde[0], new_inputs[expected])
    assert torch.equal(request.z_tilde[1], new_targets[expected])


def test_bad_requests_raise_clear_errors():
    x, y = torch.rand(10, 4), torch.randint(0, 2, (10,))
    with pytest.raises(ValueError, match="feature index out of range"):
        remove_features(x, y, [4])
    with pytest.raises(ValueError, match="empty"):
        remove_features(torch.zeros(10, 4), y, [1])
    with pytest.raises(ValueError, match="differ in shape"):
        Request(torch.tensor([0]), (x[:1], y[:1]), (x[:1, :3], y[:1]))
    with pytest.raises(ValueError, match=r"labels outside \[0, 1\]"):
        fix_labels(x, y, y + 1, rows=[0], num_classes=2)
    with pytest.raises(ValueError, match="rows must index"):
        fix_labels(x, y, 1 - y, rows=[10])
    with pytest.raises(ValueError, match="duplicate"):
        fix_labels(x, y, 1 - y, rows=[1, 1])
    with pytest.raises(ValueError, match="same shapes"):
        request_from_datasets((x, y), (x[:, :2], y))
    with pytest.raises(ValueError, match="equally"):
        replace_tokens(torch.arange(10), [1, 2], [3], length=4, stride=1)
    with pytest.raises(ValueError, match="2-D"):
        zero_features(torch.rand(3, 2, 2), [0])
    model = nn.Linear(4, 2)
    request = fix_labels(x, y, 1 - y, rows=[0, 1])
    with pytest.raises(ValueError, match="tau"):
        first_order(model, Objective(), request, tau=-1.0)
    with pytest.raises(ValueError, match="steps=3"):
        first_order(model, Objective(), request, tau=0.1, steps=3)
    with pytest.raises(ValueError, match="hessian"):
        second_order(model, Objective(), request, (x, y), hessian="new")
    with pytest.raises(ValueError, match="solver"):
        second_order(model, Objective(), request, (x, y), solver="newton")
    with pytest.raises(ValueError, match="delta"):
        certify_constant(1.5)


def test_best_first_order_picks_the_smallest_residual(logreg):
    model, objective, x, y = logreg
    request = fix_labels(x, y, 1 - y, rows=[4, 5, 6])
    corrected = apply_request((x, y), request)
    taus = [1e-4, 1e-2, 1.0]
    residuals = [gradient_residual(first_order(model, objective, request, tau=t)[0], objective, corrected)
                 for t in taus]
    _, record = best_first_order(model, objective, request, corrected, taus)
    assert record["tau"] == taus[int(np.argmin(residuals))]
    assert record["grad_evals"] == 3 * (6 + 200)


def test_example_losses_are_per_row_objectives(logreg):
    model, objective, x, y = logreg
    expected = torch.stack([objective(model, x[i:i + 1], y[i:i + 1]) for i in range(5)]).detach()
    torch.testing.assert_close(example_losses(model, objective, x[:5], y[:5]), expected)


def test_compare_methods_rows(logreg):
    model, objective, x, y = logreg
    request = remove_features(x, y, [0], rows=list(range(8)))
    test = (zero_features(x, [0]), y)
    sisa = Sisa(lambda: nn.Sequential(nn.Linear(5, 1), nn.Flatten(0)).double(),
                lambda m, d: fit_lbfgs(m, objective, d), (x, y), shards=4)
    rows, fitted = compare_methods(model, objective, (x, y), request, test, taus=[1e-3, 1e-2],
                                   fine_tune_lr=0.1, sisa=sisa)
    table = {r["method"]: r for r in rows}
    assert set(table) == {"occlusion", "retraining", "fine-tuning", "first-order", "second-order (original H)",
                          "second-order (corrected H)", "SISA"}
    assert table["retraining"]["residual"] < 1e-5 and table["retraining"]["distance"] == 0.0
    assert table["second-order (corrected H)"]["distance"] < table["first-order"]["distance"]
    assert math.isnan(table["SISA"]["residual"]) and set(fitted) == set(table) - {"SISA"}
    assert sisa.shard_of is not None and torch.equal(sisa.data[0], x)  # the given ensemble is not modified


def test_certified_run_measures_the_perturbed_residual(logreg):
    model, objective, x, y = logreg
    request = fix_labels(x, y, 1 - y, rows=[3])
    corrected = apply_request((x, y), request)
    # No noise: β is the plain residual of the update applied to the (re)trained model.
    new, rec = certified_run(model, objective, (x, y), corrected,
                             lambda m: first_order(m, objective, request, tau=1e-2)[0],
                             sigma=0.0, epsilon=0.1, delta=0.01, seed=0)
    assert rec["residual"] == pytest.approx(gradient_residual(new, objective, corrected), rel=1e-9)
    assert not rec["certified"]
    # Retraining on the perturbed corrected objective is exact: β ≈ 0, certified for any σ > 0.
    b = perturbation(6, 0.5, torch.Generator().manual_seed(7))
    _, rec = certified_run(model, objective, (x, y), corrected,
                           lambda m: retrain(m, objective, corrected, linear=b)[0],
                           sigma=0.5, epsilon=0.1, delta=0.01, seed=7)
    assert rec["residual"] < 1e-5 and rec["certified"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_updates_on_cuda_match_cpu():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4)).double()
    x, y = torch.rand(30, 1, 6, 6, dtype=torch.float64), torch.randint(0, 4, (30,))
    request = fix_labels(x, y, (y + 1) % 4, rows=[0, 1, 2], num_classes=4)
    kw = dict(params=["3"], curvature="gauss-newton", damping=1.0, tol=1e-10)
    cpu, _ = second_order(model, Objective(l2=0.1), request, (x, y), **kw)
    gpu, _ = second_order(model.cuda(), Objective(l2=0.1), request, (x, y), **kw)
    assert next(gpu.parameters()).is_cuda
    np.testing.assert_allclose(_flat(gpu.cpu()), _flat(cpu), rtol=1e-8, atol=1e-10)
