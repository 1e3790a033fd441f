"""Oracles for gsmu.mu.unlearn: exact retraining (closed-form ridge, L-BFGS), autograd gradients, brute force."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from gsmu.base import train
from gsmu.mu.influence import CG, Exact, LiSSA, Objective, SolveStats, binary_cross_entropy_sum, gradient_residual
from gsmu.mu.unlearn import (Factorization, Factorized, Request, SecondOrder, Sisa, UpdateResult, accuracy,
                             apply_request, best_first_order,
                             certified_run, certify_constant, certifying_sigma, compare_methods, concat,
                             example_losses, first_order, first_order_sweep, fix_labels, fit_lbfgs, fine_tune,
                             is_certified, landing, param_distance, perturbation, relabel, remove_features,
                             remove_rows, replace_tokens, request_from_datasets, retrain, retrain_fraction,
                             second_order, text_windows, zero_features)
from gsmu.mu.unlearn import METHODS as unlearn_methods


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
    torch.manual_seed(0)
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
    torch.manual_seed(0)
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
    assert record["tau"] == taus[int(np.argmin(residuals))] and record["criterion"] == "residual"
    np.testing.assert_allclose([-s[0] for s in record["scores"]], residuals, rtol=1e-12)
    assert record["grad_evals"] == 6 + 3 * 200  # G once, then one residual pass per τ


def test_example_losses_are_per_row_objectives(logreg):
    model, objective, x, y = logreg
    expected = torch.stack([objective(model, x[i:i + 1], y[i:i + 1]) for i in range(5)]).detach()
    torch.testing.assert_close(example_losses(model, objective, x[:5], y[:5]), expected)


def _feature_removal_with_sisa(logreg):
    """The `logreg` fixture, a request removing feature 0 from 8 rows, the test data without it and a
    4-shard SISA ensemble of the same model."""
    model, objective, x, y = logreg
    request = remove_features(x, y, [0], rows=list(range(8)))
    sisa = Sisa(lambda: nn.Sequential(nn.Linear(5, 1), nn.Flatten(0)).double(),
                lambda m, d: fit_lbfgs(m, objective, d), (x, y), shards=4)
    return model, objective, x, y, request, (zero_features(x, [0]), y), sisa


def test_compare_methods_rows(logreg):
    model, objective, x, y, request, test, sisa = _feature_removal_with_sisa(logreg)
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
    assert accuracy(gpu, x, y) == accuracy(cpu, x, y)  # each model on its own device
    np.testing.assert_allclose(_flat(gpu.cpu()), _flat(cpu), rtol=1e-8, atol=1e-10)
    mixed = concat([remove_rows(x, y, [5]), request.weighted(0.5)])
    for solver in (Exact(damping=1.0), LiSSA(damping=1.0, max_iter=50)):
        cpu, _ = second_order(model.cpu(), Objective(l2=0.1), mixed, (x, y), solver=solver, params=["3"])
        gpu, _ = second_order(model.cuda(), Objective(l2=0.1), mixed, (x, y), solver=solver, params=["3"])
        np.testing.assert_allclose(_flat(gpu.cpu()), _flat(cpu), rtol=1e-8, atol=1e-10)


# ---- solver objects, settings and records ----------------------------------------------------------------

@pytest.mark.parametrize("obj, name, legacy", [
    (Exact(), "exact", {}),
    (Exact(damping=3.0), "exact", dict(damping=3.0, tol=1e-3)),  # tol never applied to the dense solve
    (CG(tol=1e-12, max_iter=40), "cg", dict(tol=1e-12, max_iter=40)),
    (CG(damping=0.5), "cg", dict(damping=0.5)),
    (LiSSA(recursion_damping=0.01, scale=400.0, max_iter=300, tol=1e-12), "lissa",
     dict(damping=0.01, lissa_scale=400.0, lissa_iterations=300, tol=1e-12)),
    (LiSSA(max_iter=200), "lissa", dict(lissa_iterations=200)),
])
def test_second_order_with_a_solver_object_equals_the_string_path(logreg, obj, name, legacy):
    model, objective, x, y = logreg
    request = fix_labels(x, y, 1 - y, rows=[4, 17, 30], num_classes=2)
    new, res = second_order(model, objective, request, (x, y), solver=obj, steps=2)
    old, old_res = second_order(model, objective, request, (x, y), solver=name, steps=2, **legacy)
    assert torch.equal(_t(new), _t(old))
    assert [s.iterations for s in res.solves] == [s.iterations for s in old_res.solves]


def _t(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def test_settings_object_equals_the_former_keywords(logreg):
    model, objective, x, y = logreg
    request = fix_labels(x, y, 1 - y, rows=[4, 17], num_classes=2)
    settings = SecondOrder(hessian="corrected", curvature="gauss-newton", hessian_rows=150, step=0.5, seed=3)
    a, _ = second_order(model, objective, request, (x, y), solver=CG(tol=1e-10), settings=settings)
    b, _ = second_order(model, objective, request, (x, y), solver="cg", tol=1e-10, hessian="corrected",
                        curvature="gauss-newton", hessian_rows=150, step=0.5, seed=3)
    assert torch.equal(_t(a), _t(b))


def test_update_result_fields_and_the_former_dict_keys(logreg):
    model, objective, x, y = logreg
    request = fix_labels(x, y, 1 - y, rows=[4, 17], num_classes=2)
    _, res = second_order(model, objective, request, (x, y), solver=CG(tol=1e-10), steps=2)
    assert isinstance(res, UpdateResult) and res.method == "second-order (original H)"
    assert res.params == ("0.weight", "0.bias") and res.steps == 2 and len(res.solves) == 2
    assert all(isinstance(s, SolveStats) for s in res.solves)
    assert res.hvps == sum(s.hvps for s in res.solves) > 0
    assert res.hvp_evals == res.hvps * len(x)  # each HVP touches every row once
    assert res.grad_evals == 2 * len(request) + res.hvp_evals
    assert res.residual == max(s.residual for s in res.solves) <= 1e-10 and res.converged
    # Compatibility shim: the former dict keys.
    assert res["seconds"] == res.seconds and res["grad_evals"] == res.grad_evals and res["steps"] == 2
    assert res["solver"][0]["iterations"] == res.solves[0].iterations and "solver" in res
    assert res.get("nope", 7) == 7
    res["grad_evals"] += 5
    assert res.grad_evals == 2 * len(request) + res.hvps * len(x) + 5
    _, first = first_order(model, objective, request, tau=0.1)
    assert first["tau"] == 0.1 and first.extra["tau"] == 0.1 and first.solves == [] and first.residual is None
    with pytest.raises(KeyError, match="nope"):
        first["nope"]


# ---- requests: weights, repeated rows, removal -------------------------------------------------------------

def test_weighted_request_equals_the_same_request_with_rows_repeated(logreg):
    model, objective, x, y = logreg
    base = fix_labels(x, y, 1 - y, rows=[3, 8, 21], num_classes=2)
    weighted = Request(base.rows, base.z, base.z_tilde, weights=torch.tensor([2.0, 1.0, 3.0]))
    expanded = concat([base, base[[0]], base[[2]], base[[2]]])
    assert not expanded.is_edit and len(expanded) == 6
    for update in (lambda r: first_order(model, objective, r, tau=0.05),
                   lambda r: second_order(model, objective, r, (x, y), solver=Exact())):
        a, _ = update(weighted)
        b, _ = update(expanded)
        torch.testing.assert_close(_t(a), _t(b), rtol=1e-12, atol=1e-14)
    # A number weights every row (float64, exactly as the pair-wise updates scale G).
    a, _ = first_order(model, objective, Request(base.rows, base.z, base.z_tilde, weights=0.1), tau=0.05)
    b, _ = first_order(model, objective, base, tau=0.005)
    torch.testing.assert_close(_t(a), _t(b), rtol=1e-14, atol=1e-15)
    # Weights 1/k over k copies: the same G as the plain request.
    a, _ = first_order(model, objective, base.tiled(4), tau=0.05)
    b, _ = first_order(model, objective, base, tau=0.05)
    torch.testing.assert_close(_t(a), _t(b), rtol=1e-12, atol=1e-14)


def test_tiled_request_with_steps_takes_fractional_steps(logreg):
    model, objective, x, y = logreg
    request = fix_labels(x, y, 1 - y, rows=[3, 8], num_classes=2)
    new, res = second_order(model, objective, request.tiled(3), (x, y), solver=Exact(), steps=3)
    manual = model
    for _ in range(3):  # oracle: three updates, each with a third of G, re-linearized at the current θ
        manual, _ = second_order(manual, objective, request.weighted(1 / 3), (x, y), solver=Exact())
    torch.testing.assert_close(_t(new), _t(manual), rtol=1e-12, atol=1e-14)
    assert res.steps == 3 and len(res.solves) == 3


def test_relabel_is_fix_labels_with_per_row_labels(logreg):
    _, _, x, y = logreg
    a = relabel(x, y, [5, 2], [1 - int(y[5]), 1 - int(y[2])], num_classes=2)
    b = fix_labels(x, y, 1 - y, [5, 2], num_classes=2)
    assert torch.equal(a.z_tilde[1], b.z_tilde[1]) and torch.equal(a.rows, b.rows)


def test_row_removal_on_a_quadratic_is_exact_retraining(ridge):
    model, objective, x, y = ridge
    request = remove_rows(x, y, [2, 7, 30])
    assert request.removed.all() and request.grad_evals == 3
    corrected = apply_request((x, y), request)
    assert len(corrected[0]) == 57 and torch.equal(corrected[0][2], x[3])
    target, _ = retrain(model, objective, corrected, tol=1e-12, max_iter=2000)
    np.testing.assert_allclose(_flat(target), _ridge_solution(*corrected, 2.0), rtol=1e-7, atol=1e-9)
    for steps in (1, 3):
        new, _ = second_order(model, objective, request, (x, y), solver=Exact(), hessian="corrected",
                              steps=steps)
        np.testing.assert_allclose(_flat(new), _flat(target), rtol=1e-7, atol=1e-9)


def test_row_removal_on_logistic_regression_lands_on_retraining(logreg):
    model, objective, x, y = logreg
    request = remove_rows(x, y, [11])
    corrected = apply_request((x, y), request)
    target, _ = retrain(model, objective, corrected, tol=1e-12, max_iter=2000)
    assert gradient_residual(target, objective, corrected) < 1e-6  # H ⪰ l2·I: θ within 1e-6 of the optimum
    new, _ = second_order(model, objective, request, (x, y), solver=CG(tol=1e-12), hessian="corrected")
    gap = param_distance(model, target)
    # One Newton step from θ*: the error is second order in the gap (here ~2e-3 of it).
    assert gap > 1e-3 and param_distance(new, target) < 5e-3 * gap
    # Mixed request: one row removed, one relabelled, against retraining on that edit.
    mixed = concat([remove_rows(x, y, [11]), fix_labels(x, y, 1 - y, [40], num_classes=2)])
    corrected = apply_request((x, y), mixed)
    assert len(corrected[0]) == 199 and int(corrected[1][39]) == 1 - int(y[40])
    target, _ = retrain(model, objective, corrected, tol=1e-12, max_iter=2000)
    new, _ = second_order(model, objective, mixed, (x, y), solver=Exact(), hessian="corrected")
    assert param_distance(new, target) < 0.03 * param_distance(model, target)  # gap 0.1: Newton error ~1.5%


def test_sisa_removal_leaves_the_rows_out(logreg):
    _, objective, x, y = logreg
    sizes = []

    def fit(m, d):
        sizes.append(len(d[0]))
        fit_lbfgs(m, objective, d)

    sisa = Sisa(lambda: nn.Sequential(nn.Linear(5, 1), nn.Flatten(0)).double(), fit, (x, y), shards=2)
    shard = int(sisa.shard_of[0])
    before = int((sisa.shard_of == shard).sum())
    res = sisa.unlearn(remove_rows(x, y, [0]))
    assert sizes[-1] == before - 1 and res.extra["shards_retrained"] == 1 and res.grad_evals is None


def test_first_order_sweep_equals_first_order_per_tau(logreg):
    model, objective, x, y = logreg
    request = fix_labels(x, y, 1 - y, rows=[3, 8], num_classes=2)
    swept = first_order_sweep(model, objective, request, [0.01, 0.1])
    for (m, res), tau in zip(swept, [0.01, 0.1]):
        single, _ = first_order(model, objective, request, tau=tau)
        torch.testing.assert_close(_t(m), _t(single), rtol=1e-14, atol=0)
        assert res.extra["tau"] == tau and res.grad_evals == 4


def test_accuracy_is_the_base_accuracy(logreg):
    model, _, x, y = logreg
    assert accuracy(model, x, y) == train.accuracy(model, x, y, device="cpu")


def test_bad_request_shapes_and_update_options_raise_clear_errors(logreg):
    model, objective, x, y = logreg
    request = fix_labels(x, y, 1 - y, rows=[3, 8], num_classes=2)
    with pytest.raises(ValueError, match="weights has 3 entries"):
        Request(request.rows, request.z, request.z_tilde, weights=torch.ones(3))
    with pytest.raises(ValueError, match="weights must be finite and > 0"):
        Request(request.rows, request.z, request.z_tilde, weights=torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="removed must be a bool vector"):
        Request(request.rows, request.z, request.z_tilde, removed=torch.tensor([1, 0]))
    with pytest.raises(ValueError, match="removed must be a bool vector"):
        Request(request.rows, request.z, request.z_tilde, removed=torch.tensor([True]))
    with pytest.raises(ValueError, match="1-D integer"):
        Request(request.rows.float(), request.z, request.z_tilde)
    with pytest.raises(ValueError, match=r"rows \(2\), inputs \(3\)"):
        Request(request.rows, (x[:3], y[:3]), None)
    with pytest.raises(ValueError, match="labels has 1 entries"):
        relabel(x, y, [1, 2], [0])
    with pytest.raises(ValueError, match="duplicate"):
        remove_rows(x, y, [4, 4])
    with pytest.raises(ValueError, match="rows appear once"):
        apply_request((x, y), request.tiled(2))
    with pytest.raises(ValueError, match="hessian='corrected' needs"):
        second_order(model, objective, request.tiled(2), (x, y), hessian="corrected")
    with pytest.raises(ValueError, match="with a solver object"):
        second_order(model, objective, request, (x, y), solver=CG(), damping=1.0)
    with pytest.raises(ValueError, match="inside settings"):
        second_order(model, objective, request, (x, y), settings=SecondOrder(), hessian="corrected")
    with pytest.raises(TypeError, match="unexpected keyword"):
        second_order(model, objective, request, (x, y), dampin=1.0)
    with pytest.raises(ValueError, match="damping"):
        second_order(model, objective, request, (x, y), solver="cg", damping=-1.0)
    with pytest.raises(ValueError, match="tol"):
        second_order(model, objective, request, (x, y), solver="cg", tol=0.0)
    with pytest.raises(ValueError, match="max_iter"):
        second_order(model, objective, request, (x, y), solver="cg", max_iter=0)
    with pytest.raises(ValueError, match="step="):
        SecondOrder(step=0.0)
    with pytest.raises(ValueError, match="hessian_rows"):
        SecondOrder(hessian_rows=0)
    with pytest.raises(ValueError, match="curvature"):
        SecondOrder(curvature="fisher")
    with pytest.raises(ValueError, match="every row"):
        fine_tune(model, objective, remove_rows(x, y, [1]), lr=0.1)


# ---------------------------------------------------------------------------------------------------------
# Amortized curvature: one factorization answers request after request


def test_one_factorization_serves_two_requests_like_fresh_exact_updates(logreg):
    model, objective, x, y = logreg
    solver = Factorized.build(model, objective, (x, y))
    requests = [fix_labels(x, y, 1 - y, rows=[3, 17, 40], num_classes=2),
                remove_features(x, y, [1], rows=list(range(0, 200, 7)))]
    for request in requests:
        fresh, _ = second_order(model, objective, request, (x, y), solver=Exact())
        reused, record = second_order(model, objective, request, (x, y), solver=solver)
        torch.testing.assert_close(_flat(reused), _flat(fresh), rtol=1e-10, atol=1e-12)
        assert record.hvps == 0 and record.hvp_evals == 0 and record.residual < 1e-12
        assert record.grad_evals == request.grad_evals and record.solves[0].solver == "factorized"


def test_factorized_update_with_damping_matches_the_damped_exact_update(logreg):
    model, objective, x, y = logreg
    fact = Factorization.build(model, objective, (x, y), method="eigh")
    request = fix_labels(x, y, 1 - y, rows=[5, 6], num_classes=2)
    for damping in (0.0, 2.0):
        fresh, _ = second_order(model, objective, request, (x, y), solver=Exact(damping))
        reused, _ = second_order(model, objective, request, (x, y), solver=Factorized(fact, damping))
        torch.testing.assert_close(_flat(reused), _flat(fresh), rtol=1e-10, atol=1e-12)


def test_factorized_update_refuses_what_it_did_not_factorize(logreg):
    model, objective, x, y = logreg
    solver = Factorized.build(model, objective, (x, y))
    request = fix_labels(x, y, 1 - y, rows=[3, 17], num_classes=2)
    with pytest.raises(ValueError, match="other data"):
        second_order(model, objective, request, (x, y), solver=solver, settings=SecondOrder(hessian="corrected"))
    with pytest.raises(ValueError, match="other parameter values"):
        second_order(model, objective, request, (x, y), solver=solver, steps=2)
    with pytest.raises(ValueError, match="subsample"):
        second_order(model, objective, request, (x, y), solver=solver, settings=SecondOrder(hessian_rows=50))


def _augmented(x):
    return np.hstack([x.numpy(), np.ones((len(x), 1))])


@pytest.mark.parametrize("k", [1, 4])
def test_iterative_updates_on_a_quadratic_equal_the_closed_form(ridge, k):
    model, objective, x, y = ridge
    # Second order, k fractional steps: new targets leave H unchanged, so on a quadratic every step lands on
    # the path exactly and the k-step update is the ridge solution on the corrected data.
    new_targets = y[[4, 9, 33]] + torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    request = relabel(x, y, [4, 9, 33], new_targets)
    new, res = second_order(model, objective, request.tiled(k), (x, y), solver=Exact(), steps=k)
    np.testing.assert_allclose(_flat(new), _ridge_solution(*apply_request((x, y), request), 2.0), rtol=1e-8,
                               atol=1e-10)
    assert res.steps == k and len(res.solves) == k
    # First order, k steps of τ/k: G(θ) = Mθ − c is affine here, so θ_k follows the affine recursion (numpy).
    request = remove_features(x, y, [0, 2], rows=[1, 5, 8, 20])
    tau = 0.01
    new, _ = first_order(model, objective, request.tiled(k), tau=tau, steps=k)
    a, at = _augmented(request.z[0]), _augmented(request.z_tilde[0])
    m = 2 * (at.T @ at - a.T @ a)
    c = 2 * (at - a).T @ request.z[1].numpy()
    theta = _flat(model)
    for _ in range(k):
        theta = theta - tau / k * (m @ theta - c)
    np.testing.assert_allclose(_flat(new), theta, rtol=1e-10, atol=1e-12)


def test_damping_scales_each_eigendirection_and_tends_to_first_order(ridge):
    model, objective, x, y = ridge
    request = remove_features(x, y, [1, 3], rows=[2, 6, 9])
    a, at, targets = _augmented(request.z[0]), _augmented(request.z_tilde[0]), request.z[1].numpy()
    theta = _flat(model)
    g = 2 * at.T @ (at @ theta - targets) - 2 * a.T @ (a @ theta - targets)  # G by hand
    full = _augmented(x)
    h, v = np.linalg.eigh(2 * full.T @ full + 2.0 * np.eye(7))  # H of Σ(aθ − y)² + l2/2‖θ‖², l2 = 2
    for mu in (0.0, 5.0, 300.0):
        new, _ = second_order(model, objective, request, (x, y), solver=Exact(damping=mu))
        expected = theta - v @ ((v.T @ g) / (h + mu))
        np.testing.assert_allclose(_flat(new), expected, rtol=1e-9, atol=1e-11)
    # μ far above H's largest eigenvalue: the damped update is first-order with τ = 1/μ, up to h_max/μ.
    mu = 1e4 * h.max()
    damped, _ = second_order(model, objective, request, (x, y), solver=Exact(damping=mu))
    first, _ = first_order(model, objective, request, tau=1 / mu)
    step = np.linalg.norm(_flat(first) - theta)
    assert np.linalg.norm(_flat(damped) - _flat(first)) < 2e-4 * step


def _logreg_data(seed, n, l2):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 5, generator=gen, dtype=torch.float64)
    y = (x @ torch.tensor([3.0, -2.0, 1.0, 0.5, -1.0], dtype=torch.float64) + 0.2 * torch.randn(
        n, generator=gen, dtype=torch.float64) > 0.3).long()
    return x, y


def _strong_l2_case():
    """Logistic regression with strong L2 (100 on 200 rows) and 20 flipped labels: H is close to a multiple of I,
    so some τ along −G lands well and a τ choice is not "a τ that does nothing". Returns the training data,
    300 validation rows, the objective, the fitted model, the request and the τ grid."""
    (x, y), valid = _logreg_data(3, 200, 100.0), _logreg_data(4, 300, 100.0)
    objective = Objective(criterion=binary_cross_entropy_sum, l2=100.0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 1), nn.Flatten(0)).double()
    fit_lbfgs(model, objective, (x, y))
    request = fix_labels(x, y, 1 - y, rows=list(range(0, 40, 2)), num_classes=2)
    return (x, y), valid, objective, model, request, [1e-4, 1e-3, 3e-3, 1e-2, 3e-2]


def test_validation_fidelity_chooses_a_tau_that_lands_closer_than_no_update():
    (x, y), valid, objective, model, request, taus = _strong_l2_case()
    corrected = apply_request((x, y), request)
    target, _ = retrain(model, objective, corrected)
    new, record = best_first_order(model, objective, request, corrected, taus, valid=valid, reference=target)
    # Oracle: the same choice from agreement and probability gap computed here from the logits.
    with torch.no_grad():
        p_ref = torch.sigmoid(target(valid[0]))
        scores = []
        for tau in taus:
            m, _ = first_order(model, objective, request, tau=tau)
            p = torch.sigmoid(m(valid[0]))
            scores.append((float(((p > 0.5) == (p_ref > 0.5)).double().mean()), -float((p - p_ref).abs().mean())))
    assert record["tau"] == taus[max(range(len(taus)), key=scores.__getitem__)] and record["criterion"] == "fidelity"
    assert record["forwards"] == (len(taus) + 1) * 300 and record["grad_evals"] == request.grad_evals
    smallest, _ = first_order(model, objective, request, tau=min(taus))
    assert retrain_fraction(model, smallest, target) > 0.95  # τ → 0 does (almost) nothing
    assert retrain_fraction(model, new, target) < 0.6  # the chosen τ lands measurably closer
    # Without a reference the labels of valid are the target (accuracy, then the held-out loss).
    _, by_labels = best_first_order(model, objective, request, corrected, taus, valid=valid)
    assert by_labels["criterion"] == "fidelity" and by_labels["tau"] in taus


def test_newton_steps_are_newtons_method_on_the_corrected_objective(logreg):
    model, objective, x, y = logreg
    request = fix_labels(x, y, 1 - y, rows=[3, 8, 15, 40, 41], num_classes=2)
    new, res = second_order(model, objective, request, (x, y), solver=Exact(),
                            settings=SecondOrder(hessian="corrected", newton_steps=3))
    # Oracle: Newton's method in numpy on Σ logistic loss + l2/2‖θ‖² over the corrected labels.
    a, labels, theta = _augmented(x), apply_request((x, y), request)[1].numpy(), _flat(model)
    for _ in range(3):
        p = 1 / (1 + np.exp(-a @ theta))
        grad = a.T @ (p - labels) + 1.0 * theta
        theta = theta - np.linalg.solve(a.T @ (a * (p * (1 - p))[:, None]) + np.eye(6), grad)
    np.testing.assert_allclose(_flat(new), theta, rtol=1e-8, atol=1e-9)  # θ* itself is optimal to ~1e-10
    assert len(res.solves) == 3 and res.grad_evals - res.hvp_evals == request.grad_evals + 2 * (200 + 10)
    with pytest.raises(ValueError, match="newton_steps=0"):
        SecondOrder(newton_steps=0)


def test_damped_newton_steps_land_where_one_step_overshoots():
    # Weak L2 (1e-2) and ten flipped labels: one Newton step from θ* overshoots retraining almost threefold.
    x, y = _logreg_data(3, 200, 1e-2)
    objective = Objective(criterion=binary_cross_entropy_sum, l2=1e-2)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 1), nn.Flatten(0)).double()
    fit_lbfgs(model, objective, (x, y))
    request = fix_labels(x, y, 1 - y, rows=list(range(0, 20, 2)), num_classes=2)
    corrected = apply_request((x, y), request)
    target, _ = retrain(model, objective, corrected, tol=1e-12, max_iter=2000)
    one, _ = second_order(model, objective, request, (x, y), solver=Exact())
    assert retrain_fraction(model, one, target) > 2
    new, res = second_order(model, objective, request, (x, y), solver=Exact(), newton_steps=8)
    assert retrain_fraction(model, new, target) < 1e-6
    assert res.extra["forwards"] >= 8 * 2 * (200 + 20)  # the line search's passes: ≥ 2 values per step


def test_landing_rows_are_fractions_of_the_retrain_distance(logreg):
    model, objective, x, y = logreg
    valid = _logreg_data(4, 100, 1.0)
    request = fix_labels(x, y, 1 - y, rows=[3, 8, 15], num_classes=2)
    rows, models = landing(model, objective, (x, y), request, valid=valid, taus=[1e-3, 1e-2, 1e-1], steps=5,
                           damping=10.0)
    table = {r["method"]: r for r in rows}
    assert list(table) == ["retraining", "first-order (validation τ)", "second-order", "second-order, damped (μ=10)",
                           "second-order, 5 fractional steps", "second-order, 5 Newton steps"]
    target = models["retraining"]
    gap = param_distance(model, target)
    for name, r in table.items():
        assert r["fraction"] == pytest.approx(param_distance(models[name], target) / gap, rel=1e-12)
    assert table["retraining"]["fraction"] == 0 and table["first-order (validation τ)"]["tau"] in (1e-3, 1e-2, 1e-1)
    # Three flips with l2 = 1: one Newton step is close already; k fractional steps get closer, and k
    # Newton steps converge (quadratically) onto retraining.
    assert table["second-order, 5 fractional steps"]["fraction"] < table["second-order"]["fraction"] < 0.1
    assert table["second-order, 5 Newton steps"]["fraction"] < 1e-6


def test_relabel_request_gives_the_same_update_as_the_full_length_form(logreg):
    model, objective, x, y = logreg
    rows = [5, 2, 70]
    a, _ = second_order(model, objective, relabel(x, y, rows, 1 - y[rows], num_classes=2), (x, y), solver=Exact())
    b, _ = second_order(model, objective, fix_labels(x, y, 1 - y, rows, num_classes=2), (x, y), solver=Exact())
    torch.testing.assert_close(_t(a), _t(b), rtol=0, atol=0)


def test_tau_choice_and_landing_raise_clear_errors(logreg):
    model, objective, x, y = logreg
    request = fix_labels(x, y, 1 - y, rows=[3], num_classes=2)
    corrected = apply_request((x, y), request)
    with pytest.raises(ValueError, match="pass valid="):
        best_first_order(model, objective, request, corrected, [1e-2], reference=model)
    with pytest.raises(ValueError, match="steps must be 1"):
        best_first_order(model, objective, request, corrected, [1e-2], steps=2)
    with pytest.raises(ValueError, match="steps=1 must be an integer >= 2"):
        landing(model, objective, (x, y), request, valid=(x, y), taus=[1e-2], steps=1, damping=1.0)
    with pytest.raises(ValueError, match="damping=0"):
        landing(model, objective, (x, y), request, valid=(x, y), taus=[1e-2], steps=2, damping=0)
    with pytest.raises(ValueError, match="coincide"):
        retrain_fraction(model, model, model)


def test_compare_methods_hook_receives_every_methods_model(logreg):
    model, objective, x, y, request, test, sisa = _feature_removal_with_sisa(logreg)
    seen = []

    def hook(m):
        seen.append(m)
        # an independent measure of each model: its mean predicted label on the test rows
        return {"mean_label": float(m.predict(test[0]).double().mean()) if isinstance(m, Sisa)
                else float((m(test[0]) > 0).double().mean())}

    rows, fitted = compare_methods(model, objective, (x, y), request, test, taus=[1e-3, 1e-2], fine_tune_lr=0.1,
                                   sisa=sisa, metrics=hook, names={"occlusion": "none"})
    assert [r["method"] for r in rows] == ["none"] + list(unlearn_methods[1:])
    assert len(seen) == len(rows) and all(a is b for a, b in zip(seen, fitted.values()))  # each model, once
    assert isinstance(seen[-1], Sisa) and seen[-1] is not sisa  # the unlearned copy, not the given ensemble
    for row, m in zip(rows, seen):
        assert row["mean_label"] == hook(m)["mean_label"]
        predicted = m.predict(test[0]) if isinstance(m, Sisa) else (m(test[0]) > 0).long()
        assert row["accuracy"] == pytest.approx(float((predicted == y).double().mean()), abs=1e-7)
        assert row["fidelity"] == float((predicted == (fitted["retraining"](test[0]) > 0).long()).double().mean())
    with pytest.raises(ValueError, match="metrics"):
        compare_methods(model, objective, (x, y), request, test, taus=[1e-3], fine_tune_lr=0.1,
                        metrics=lambda m: {"accuracy": 1.0})
    with pytest.raises(ValueError, match="names"):
        compare_methods(model, objective, (x, y), request, test, taus=[1e-3], fine_tune_lr=0.1,
                        names={"second order": "x"})
    with pytest.raises(ValueError, match="solver"):
        compare_methods(model, objective, (x, y), request, test, taus=[1e-3], fine_tune_lr=0.1,
                        solver={"original": "exact"})
    with pytest.raises(ValueError, match="taus"):
        compare_methods(model, objective, (x, y), request, test, taus=[], fine_tune_lr=0.1)


def test_compare_methods_takes_one_solver_per_hessian(logreg):
    model, objective, x, y = logreg
    request = remove_features(x, y, [1], rows=list(range(10)))
    corrected = apply_request((x, y), request)
    solvers = {"original": Factorized(Factorization.build(model, objective, (x, y))),
               "corrected": Factorized(Factorization.build(model, objective, corrected))}
    _, by_mapping = compare_methods(model, objective, (x, y), request, (zero_features(x, [1]), y), taus=[1e-2],
                                    fine_tune_lr=0.1, solver=solvers)
    for hessian in ("original", "corrected"):
        dense, _ = second_order(model, objective, request, (x, y), solver=Exact(),
                                settings=SecondOrder(hessian=hessian))
        np.testing.assert_allclose(_flat(by_mapping[f"second-order ({hessian} H)"]), _flat(dense), rtol=1e-9,
                                   atol=1e-11)


def test_compare_methods_chooses_tau_by_validation_agreement_with_exact_retraining():
    (x, y), valid, objective, model, request, taus = _strong_l2_case()
    rows, fitted = compare_methods(model, objective, (x, y), request, valid, taus=taus, fine_tune_lr=0.1,
                                   valid=valid)
    table = {r["method"]: r for r in rows}
    # Oracle: the corrected objective's optimum by Newton's method in numpy (cold start), then each τ's
    # agreement with its validation predictions (ties: the smaller mean probability gap), computed here.
    xb, labels = np.hstack([x.numpy(), np.ones((len(x), 1))]), apply_request((x, y), request)[1].numpy()
    theta = np.zeros(6)
    for _ in range(50):
        p = 1 / (1 + np.exp(-xb @ theta))
        theta -= np.linalg.solve(xb.T @ (xb * (p * (1 - p))[:, None]) + 100.0 * np.eye(6),
                                 xb.T @ (p - labels) + 100.0 * theta)
    vb = np.hstack([valid[0].numpy(), np.ones((len(valid[0]), 1))])
    p_exact = 1 / (1 + np.exp(-vb @ theta))
    scores = []
    for tau in taus:
        m, _ = first_order(model, objective, request, tau=tau)
        p = 1 / (1 + np.exp(-vb @ _flat(m)))
        scores.append((float(np.mean((p > 0.5) == (p_exact > 0.5))), -float(np.abs(p - p_exact).mean())))
    best = max(range(len(taus)), key=scores.__getitem__)
    assert table["first-order"]["tau"] == taus[best] and taus[best] > min(taus)
    assert all(math.isnan(r["tau"]) for r in rows if r["method"] != "first-order")
    # the chosen τ lands: much closer to retraining than leaving θ* alone
    assert table["first-order"]["distance"] < 0.6 * table["occlusion"]["distance"]
    np.testing.assert_allclose(_flat(fitted["retraining"]), theta, atol=1e-6)  # the reference is exact


def test_sisa_counts_the_gradients_of_its_fits(logreg):
    _, objective, x, y = logreg
    counted = []

    def fit(m, d):  # the oracle: the evaluations each L-BFGS fit reports, summed here
        result = fit_lbfgs(m, objective, d)
        counted.append(result.grad_evals)
        return result

    sisa = Sisa(lambda: nn.Sequential(nn.Linear(5, 1), nn.Flatten(0)).double(), fit, (x, y), shards=4, seed=1)
    assert sisa.training_grad_evals == sum(counted) > 0
    counted.clear()
    res = sisa.unlearn(fix_labels(x, y, 1 - y, rows=[0, 1], num_classes=2))
    assert len(counted) == res.extra["shards_retrained"] and res.grad_evals == sum(counted)
