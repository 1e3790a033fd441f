"""Oracles for gsmu.mu.influence: autograd Hessians and Jacobians, dense solves, finite differences."""
import pytest
import torch
from torch import nn
from torch.func import functional_call

from gsmu.mu.influence import (Curvature, Objective, ParamSpace, conjugate_gradient, gradient_difference,
                           gradient_residual, lissa, loss_gradient, solve_exact, top_eigenvalue)


@pytest.fixture
def problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x = torch.randn(30, 5, dtype=torch.float64)
    y = torch.randint(0, 3, (30,))
    return model, x, y


def _total_loss(model, space, objective, x, y):
    def f(theta):
        out = functional_call(model, space.split(theta), (x,))
        return objective.criterion(out, y) + objective.l2 / 2 * theta @ theta
    return f


def test_hvp_matches_autograd_hessian(problem):
    model, x, y = problem
    objective, space = Objective(l2=0.5), ParamSpace(model)
    hessian = torch.autograd.functional.hessian(_total_loss(model, space, objective, x, y), space.flat(model))
    curvature = Curvature(model, objective, space, (x, y), batch_size=7)
    v = torch.randn(space.dim, dtype=torch.float64)
    torch.testing.assert_close(curvature(v), hessian @ v)
    torch.testing.assert_close(curvature.dense(), hessian)
    assert curvature.evals == 30 + 30 * space.dim


def test_hvp_on_parameter_subset(problem):
    model, x, y = problem
    objective, space = Objective(l2=0.1), ParamSpace(model, ["2"])
    full = ParamSpace(model)
    hessian = torch.autograd.functional.hessian(_total_loss(model, full, objective, x, y), full.flat(model))
    tail = hessian[-space.dim:, -space.dim:]
    torch.testing.assert_close(Curvature(model, objective, space, (x, y)).dense(), tail)


def test_gauss_newton_is_jt_hout_j(problem):
    model, x, y = problem
    objective, space = Objective(l2=0.5), ParamSpace(model)
    theta = space.flat(model)
    jac = torch.autograd.functional.jacobian(
        lambda t: functional_call(model, space.split(t), (x,)).reshape(-1), theta)
    out = model(x).detach().reshape(-1)
    h_out = torch.autograd.functional.hessian(lambda o: objective.criterion(o.view(30, 3), y), out)
    expected = jac.T @ h_out @ jac + 0.5 * torch.eye(space.dim, dtype=torch.float64)
    dense = Curvature(model, objective, space, (x, y), kind="gauss-newton", batch_size=11).dense()
    torch.testing.assert_close(dense, expected)
    assert torch.linalg.eigvalsh(dense).min() >= 0.5 - 1e-8


def test_gradient_difference_matches_autograd(problem):
    model, x, y = problem
    objective, space = Objective(), ParamSpace(model)
    y2 = (y + 1) % 3

    def grad(targets):
        model.zero_grad()
        objective(model, x[:9], targets[:9]).backward()
        return torch.cat([p.grad.reshape(-1) for p in model.parameters()])

    expected = grad(y2) - grad(y)
    got = gradient_difference(model, objective, space, (x[:9], y[:9]), (x[:9], y2[:9]), batch_size=4)
    torch.testing.assert_close(got, expected)
    torch.testing.assert_close(loss_gradient(model, objective, space, (x[:9], y[:9]), batch_size=2), grad(y))


def test_cg_agrees_with_exact_solve(problem):
    model, x, y = problem
    objective, space = Objective(l2=0.3), ParamSpace(model)
    curvature = Curvature(model, objective, space, (x, y), kind="gauss-newton")
    b = torch.randn(space.dim, dtype=torch.float64)
    exact, _ = solve_exact(curvature.dense(), b, damping=0.2)
    x_cg, stats = conjugate_gradient(curvature, b, damping=0.2, tol=1e-10, max_iter=500)
    assert stats["converged"] and not stats["negative_curvature"] and stats["residual"] <= 1e-10
    torch.testing.assert_close(x_cg, exact, rtol=1e-6, atol=1e-8)


def test_cg_stops_on_negative_curvature():
    matrix = torch.diag(torch.tensor([2.0, -1.0], dtype=torch.float64))
    _, stats = conjugate_gradient(lambda v: matrix @ v, torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert stats["negative_curvature"] and not stats["converged"]


def test_top_eigenvalue_matches_eigvalsh():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(30, 30, generator=gen, dtype=torch.float64)
    matrix = a @ a.T
    top = top_eigenvalue(lambda v: matrix @ v, 30, iterations=500, generator=gen, dtype=torch.float64)
    assert top == pytest.approx(float(torch.linalg.eigvalsh(matrix).max()), rel=1e-4)


def test_lissa_converges_to_effectively_damped_inverse():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(20, 20, generator=gen, dtype=torch.float64)
    matrix = a @ a.T / 20 + 0.5 * torch.eye(20, dtype=torch.float64)
    b = torch.randn(20, generator=gen, dtype=torch.float64)
    scale, damping = 1.1 * float(torch.linalg.eigvalsh(matrix).max()), 0.05
    u, stats = lissa(lambda v: matrix @ v, b, damping=damping, scale=scale, iterations=20000, tol=1e-14)
    expected = torch.linalg.solve(matrix + damping * scale * torch.eye(20, dtype=torch.float64), b)
    assert stats["converged"] and stats["effective_damping"] == pytest.approx(damping * scale)
    torch.testing.assert_close(u, expected, rtol=1e-9, atol=1e-11)
    undamped, _ = lissa(lambda v: matrix @ v, b, damping=0.0, scale=scale, iterations=20000, tol=1e-14)
    torch.testing.assert_close(undamped, torch.linalg.solve(matrix, b), rtol=1e-9, atol=1e-11)


def test_lissa_reports_divergence():
    matrix = torch.diag(torch.tensor([10.0, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="scale"):
        lissa(lambda v: matrix @ v, torch.ones(2, dtype=torch.float64), scale=1.0, iterations=5000)


class _TinyLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(7, 4)
        self.lstm = nn.LSTM(4, 6, batch_first=True)
        self.head = nn.Linear(6, 7)

    def forward(self, tokens):
        return self.head(self.lstm(self.embed(tokens))[0])


def test_lstm_hvp_matches_finite_differences():
    torch.manual_seed(1)
    model = _TinyLSTM().double()
    tokens, targets = torch.randint(0, 7, (4, 8)), torch.randint(0, 7, (4, 8))
    objective, space = Objective(l2=0.1), ParamSpace(model, ["lstm", "head"])
    v = torch.randn(space.dim, dtype=torch.float64)
    theta = space.flat(model)

    def grad_at(t):
        space.assign(model, t)
        return loss_gradient(model, objective, space, (tokens, targets)) + 0.1 * t

    eps = 1e-5
    fd = (grad_at(theta + eps * v) - grad_at(theta - eps * v)) / (2 * eps)
    space.assign(model, theta)
    torch.testing.assert_close(Curvature(model, objective, space, (tokens, targets))(v), fd,
                               rtol=1e-5, atol=1e-6)
    gn = Curvature(model, objective, space, (tokens, targets), kind="gauss-newton")
    assert float(v @ gn(v)) >= 0.1 * float(v @ v) - 1e-9


def test_hessian_subsample_estimates_the_full_sum(problem):
    model, x, y = problem
    objective, space = Objective(l2=0.5), ParamSpace(model)
    v = torch.randn(space.dim, dtype=torch.float64)
    full = Curvature(model, objective, space, (x, y))(v)
    same = Curvature(model, objective, space, (x, y), rows=30, generator=torch.Generator().manual_seed(0))(v)
    torch.testing.assert_close(same, full)
    half = Curvature(model, objective, space, (x, y), rows=15, generator=torch.Generator().manual_seed(0))
    assert half.scale == 2.0 and len(half.data[0]) == 15


def test_bad_arguments_raise(problem):
    model, x, y = problem
    with pytest.raises(ValueError, match="prefix 'fc9'"):
        ParamSpace(model, ["fc9"])
    with pytest.raises(ValueError, match="curvature"):
        Curvature(model, Objective(), ParamSpace(model), (x, y), kind="fisher")
    with pytest.raises(ValueError, match="hessian_rows"):
        Curvature(model, Objective(), ParamSpace(model), (x, y), rows=31)
    with pytest.raises(ValueError, match="l2"):
        Objective(l2=-1.0)
    with pytest.raises(ValueError, match="linear"):
        gradient_residual(model, Objective(), (x, y), linear=torch.zeros(3))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_lstm_products_on_cuda_match_cpu():
    torch.manual_seed(2)
    model = _TinyLSTM().double()
    tokens, targets = torch.randint(0, 7, (4, 8)), torch.randint(0, 7, (4, 8))
    objective, space = Objective(l2=0.1), ParamSpace(model, ["lstm", "head"])
    v = torch.randn(space.dim, dtype=torch.float64)
    for kind in ("exact", "gauss-newton"):
        cpu = Curvature(model, objective, space, (tokens, targets), kind=kind)(v)
        gpu = Curvature(model.cuda(), objective, space, (tokens, targets), kind=kind)(v.cuda())
        model.cpu()
        torch.testing.assert_close(gpu.cpu(), cpu)
    gpu_grad = gradient_difference(model.cuda(), objective, space, (tokens, targets), (tokens, targets.roll(1, 1)))
    model.cpu()
    cpu_grad = gradient_difference(model, objective, space, (tokens, targets), (tokens, targets.roll(1, 1)))
    torch.testing.assert_close(gpu_grad.cpu(), cpu_grad)
